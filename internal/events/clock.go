package events

import "time"

// Stretch causes: why a stretch of steps began.
const (
	StretchStart   = "start"   // the run's first steps
	StretchFault   = "fault"   // after a fault (a live regroup or a restart)
	StretchGrow    = "grow"    // replacements were admitted
	StretchRegroup = "regroup" // a new generation for another reason
)

// WarmSteps is how many steps after a regroup still count as its cost: the
// first steps of a rebuilt DDP (bucket rebuild, cold caches) are slower, and
// that is the regroup's doing, not the job's pace.
const WarmSteps = 3

// Stretch is an unbroken run of job-level step advances in one generation:
// the unit from which the summary reconstructs where the wall time went.
// Step times are when the job's furthest step first advanced, so Gap + Warm +
// Fill + Import + Steady of all stretches, plus the time before the first and
// after the last, tile the run's wall time exactly.
type Stretch struct {
	Gen      int       `json:"gen"`
	World    int       `json:"world"`
	Cause    string    `json:"cause"`
	FromStep int       `json:"from_step"` // first step this stretch advanced to
	ToStep   int       `json:"to_step"`   // last
	FirstAt  time.Time `json:"first_at"`
	LastAt   time.Time `json:"last_at"`
	// Gap: from the previous stretch's last advance to this one's first,
	// covering GapSteps steps (more than 1 when steps were re-done or lost).
	// What the survivors of a regroup waited.
	GapS     float64 `json:"gap_s,omitempty"`
	GapSteps int     `json:"gap_steps,omitempty"`
	// Warm: the first WarmSteps steps after the gap (not for the first stretch).
	WarmS     float64 `json:"warm_s,omitempty"`
	WarmSteps int     `json:"warm_steps,omitempty"`
	// Fill and Import: steps taken while standby processes imported torch
	// on this node (StepClock.Importing). Fill: imports that began before
	// the job's first break (the pool's first fill, which a fault-free run
	// pays too; up to half again as slow, 2 cores, 4 ranks, MLP), counted
	// at their own pace. Import: the pool's refills after a fault or a
	// grow (4-8% slower at nice 19, transformer), which the summary prices
	// in the healthy pace (see Summary.account for why).
	FillS       float64 `json:"fill_s,omitempty"`
	FillSteps   int     `json:"fill_steps,omitempty"`
	ImportS     float64 `json:"import_s,omitempty"`
	ImportSteps int     `json:"import_steps,omitempty"`
	// Steady: the rest.
	SteadyS     float64 `json:"steady_s,omitempty"`
	SteadySteps int     `json:"steady_steps,omitempty"`
}

// StepClock turns the job's step reports into stretches. Not safe for
// concurrent use (the supervisor's loop owns it).
type StepClock struct {
	cur     *Stretch
	pending string // cause of the next stretch
	// Importing reports whether processes were importing at any time since
	// the given one, and when the earliest of those imports began (nil: never).
	Importing  func(since time.Time) (began time.Time, ok bool)
	firstBreak time.Time // the first stretch's last step: the job's first break
}

// Cause marks why the next generation's steps will begin; a fault outranks a grow.
func (c *StepClock) Cause(cause string) {
	if c.pending == StretchFault && cause != StretchFault {
		return
	}
	c.pending = cause
}

// Advance records that a rank of generation gen (world ranks) committed step
// at time at. A step at or below the furthest one already seen (a re-done
// step, another rank's report) is not an advance. When the advance opens a
// new stretch the previous one is returned, closed.
func (c *StepClock) Advance(gen, world, step int, at time.Time) (closed *Stretch) {
	cur := c.cur
	if cur != nil && step <= cur.ToStep {
		return nil
	}
	if cur == nil || gen > cur.Gen {
		next := &Stretch{Gen: gen, World: world, FromStep: step, ToStep: step, FirstAt: at, LastAt: at, Cause: StretchStart}
		if cur != nil {
			if c.firstBreak.IsZero() {
				c.firstBreak = cur.LastAt
			}
			next.Cause = c.pending
			if next.Cause == "" {
				next.Cause = StretchRegroup
			}
			next.GapS = at.Sub(cur.LastAt).Seconds()
			next.GapSteps = step - cur.ToStep
		}
		c.pending = ""
		c.cur = next
		return cur
	}
	d, k := at.Sub(cur.LastAt).Seconds(), step-cur.ToStep
	if cur.Cause != StretchStart && cur.WarmSteps < WarmSteps {
		cur.WarmS += d
		cur.WarmSteps += k
	} else if began, ok := c.imports(cur.LastAt); ok {
		if c.firstBreak.IsZero() || began.Before(c.firstBreak) {
			cur.FillS += d
			cur.FillSteps += k
		} else {
			cur.ImportS += d
			cur.ImportSteps += k
		}
	} else {
		cur.SteadyS += d
		cur.SteadySteps += k
	}
	cur.ToStep, cur.LastAt = step, at
	return nil
}

func (c *StepClock) imports(since time.Time) (time.Time, bool) {
	if c.Importing == nil {
		return time.Time{}, false
	}
	return c.Importing(since)
}

// Flush returns the open stretch (at the end of the run) and forgets it.
func (c *StepClock) Flush() *Stretch {
	s := c.cur
	c.cur = nil
	return s
}
