package events

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Summary is the end-of-run account: what happened and where time went.
//
// When the job reports its steps, the account is made against the run that
// would have had no fault: useful time is the startup, every step the job
// advanced priced at the healthy step time (the mean step at full world
// size past each regroup's warm steps), the extra time of the steps while the standby pool
// first filled (a fault-free run pays it too), and the shutdown; lost time is the rest of the wall time, so UsefulS + LostS ==
// WallS. The lost time is broken down by what
// the job was doing in each stretch of time (see Stretch): waiting for a
// fault's detection, regrouping or restarting, re-doing work, admitting
// replacements, running slower at a smaller world size.
type Summary struct {
	Outcome     string  `json:"outcome"`
	WallS       float64 `json:"wall_s"`
	Steps       int     `json:"steps"`
	Generations int     `json:"generations"`
	Faults      int     `json:"faults"`
	Recoveries  int     `json:"recoveries"`

	// HealthyStepS is the step time the useful time is priced at (0 when
	// the job reported no steps).
	HealthyStepS float64 `json:"healthy_step_s,omitempty"`
	// HealthyFrom says where HealthyStepS came from: HealthyFull (steady
	// and refill steps at full world size), HealthySmaller (those at a
	// smaller world only) or HealthyMedian (none at all: the median of
	// every step, regroups' warm steps and the first fill's included, so
	// the useful time is overstated by as much as those are slower).
	HealthyFrom string  `json:"healthy_from,omitempty"`
	UsefulS     float64 `json:"useful_s,omitempty"`
	// StartupS: from the start to the first step (counted useful: a
	// fault-free run pays it too, unless faults came before the first step).
	StartupS float64 `json:"startup_s,omitempty"`
	// FillS: the wall time of the FillSteps steps taken while the standby
	// pool first filled (imports begun before the job's first break),
	// counted useful at their own pace: a fault-free run pays them too, at
	// a pace set by the machine's load while torch imported.
	FillS     float64 `json:"fill_s,omitempty"`
	FillSteps int     `json:"fill_steps,omitempty"`
	// ShutdownS: from the last step to the end (counted useful unless
	// faults came after the last step).
	ShutdownS float64 `json:"shutdown_s,omitempty"`

	// Lost time, in seconds, by cause:
	// DetectS: from the fault to its detection.
	DetectS float64 `json:"detect_s"`
	// RestartS: from detection to the first step after it (stop, restart
	// or regroup, state transfer, verification), plus the slower first
	// steps after it. (Steps while the standby pool refilled are priced in
	// the healthy pace, so their slowdown is not here: see account.)
	RestartS float64 `json:"restart_s"`
	// RollbackS: work re-done or thrown away (the step in flight, steps
	// rolled back to a checkpoint).
	RollbackS float64 `json:"rollback_s"`
	// GrowS: survivors' pauses while replacements were admitted.
	GrowS float64 `json:"grow_s,omitempty"`
	// SmallerS: steps slower (or faster: negative) than healthy while the
	// world was smaller than asked for.
	SmallerS float64 `json:"smaller_world_s,omitempty"`
	// OtherS: what no cause explains (healthy steps that were slower than
	// the healthy mean by chance are not here: they average out).
	OtherS float64 `json:"other_s,omitempty"`
	LostS  float64 `json:"lost_s"`
	// Goodput is useful/wall: the share of wall time spent training forward,
	// that is, about fault-free wall time / this run's wall time.
	Goodput float64 `json:"goodput"`

	// Pauses: what each regroup or restart cost the job, in order.
	Pauses []Pause `json:"pauses,omitempty"`
}

// Pause is the cost of one regroup: how long the job's step clock stopped
// (Gap: from the last step before to the first step after), and how much
// of that was more than the healthy pace (PauseS).
type Pause struct {
	Gen    int     `json:"gen"`
	Cause  string  `json:"cause"`
	World  int     `json:"world"`
	GapS   float64 `json:"gap_s"`
	PauseS float64 `json:"pause_s"`
	// WarmS: the extra time of the first steps after it.
	WarmS float64 `json:"warm_s"`
	// ImportS: the extra time over the healthy pace of the steps after it
	// while standby processes imported (the pool refilling); information
	// only: those steps are in the pace, not in the lost time.
	ImportS float64 `json:"import_s,omitempty"`
}

// Where a summary's healthy step time came from (Summary.HealthyFrom).
const (
	HealthyFull    = "steady"
	HealthySmaller = "steady_smaller_world"
	HealthyMedian  = "median_step"
)

// Summarize accounts a run from its events. stepTime prices rolled-back
// steps of a job whose steps the log does not hold (0: unpriced).
func Summarize(evs []Event, stepTime time.Duration) Summary {
	var s Summary
	var start, end time.Time
	var stretches []Stretch
	var faults []Event
	var recovers []Event
	world := 0
	var launches, grows []time.Time // generations started as new processes; grows
	var genStarts []time.Time       // every generation's start
	noProgress := 0                 // the last generations ran without progress
	for _, e := range evs {
		switch e.Type {
		case RunStarted:
			// A run dir used again: account the latest run only.
			s, start, end = Summary{}, e.Time, e.Time
			stretches, faults, recovers = nil, nil, nil
			launches, grows, genStarts, noProgress = nil, nil, nil, 0
			world = e.WorldSize
		case GenerationStart:
			s.Generations++
			genStarts = append(genStarts, e.Time)
			switch e.Cause {
			case "": // a launch: all processes new
				launches = append(launches, e.Time)
			case StretchGrow:
				grows = append(grows, e.Time)
			}
		case FaultDetected:
			s.Faults++
			faults = append(faults, e)
			if e.Step != nil && *e.Step > s.Steps {
				s.Steps = *e.Step
			}
		case Recovered:
			s.Recoveries++
			recovers = append(recovers, e)
		case StretchEnd:
			if e.Stretch != nil {
				stretches = append(stretches, *e.Stretch)
			}
		case RunFinished:
			end = e.Time
			s.Outcome = e.Outcome
			noProgress = e.NoProgressGens
			if e.Step != nil && *e.Step > s.Steps {
				s.Steps = *e.Step
			}
		}
		if e.Time.After(end) {
			end = e.Time
		}
	}
	if !start.IsZero() {
		s.WallS = end.Sub(start).Seconds()
	}
	if len(stretches) == 0 || start.IsZero() {
		// No steps to measure by: detection, restart and rollback as timed.
		for _, f := range faults {
			s.DetectS += f.DetectMS / 1000
		}
		for _, r := range recovers {
			s.RestartS += r.RecoverMS / 1000
			s.RollbackS += float64(r.RolledBack) * stepTime.Seconds()
		}
		if n := noProgress; n > 0 && n <= len(genStarts) {
			// A crash loop: its generations did nothing (the policy judged
			// so), however long each lived. Their time is restart time, less
			// the detection and restarts already counted in it.
			from := genStarts[len(genStarts)-n]
			counted := 0.0
			for _, f := range faults {
				if !f.Time.Before(from) {
					counted += f.DetectMS / 1000
				}
			}
			for _, r := range recovers {
				if !r.Time.Before(from) {
					counted += r.RecoverMS / 1000
				}
			}
			s.RestartS += max(0, end.Sub(from).Seconds()-counted)
		}
		s.LostS = s.DetectS + s.RestartS + s.RollbackS
		if s.WallS > 0 {
			s.Goodput = max(0, 1-s.LostS/s.WallS)
			s.UsefulS = s.WallS - s.LostS
		}
		return s
	}
	s.account(start, end, world, launches, grows, stretches, faults, recovers, stepTime)
	return s
}

func (s *Summary) account(start, end time.Time, world int, launches, grows []time.Time, st []Stretch, faults, recovers []Event, stepTime time.Duration) {
	for _, x := range st {
		world = max(world, x.World)
	}
	// The healthy pace: the mean of the steps past each regroup's warm steps
	// at full world size, the pool's refills included; failing those, at any
	// size; failing those, the median the caller knows. Not the steady steps
	// alone: at a fault every 5 s those exist only where a refill ended
	// early, which is where the machine had CPU to spare, so they ran 10-15%
	// faster than a fault-free run's and the goodput read up to 0.26 low.
	// A refill's own slowdown (4-8% a step at nice 19) is then in the pace.
	var sum float64
	var n int
	s.HealthyFrom = HealthyMedian
	for _, full := range []bool{true, false} {
		for _, x := range st {
			if !full || x.World == world {
				sum += x.SteadyS + x.ImportS
				n += x.SteadySteps + x.ImportSteps
			}
		}
		if n > 0 {
			s.HealthyFrom = HealthySmaller
			if full {
				s.HealthyFrom = HealthyFull
			}
			break
		}
	}
	mean := stepTime.Seconds()
	if n > 0 {
		mean = sum / float64(n)
	}
	s.HealthyStepS = mean

	first, last := st[0], st[len(st)-1]
	steps := last.ToStep - first.FromStep
	startup := first.FirstAt.Sub(start).Seconds()
	s.StartupS = startup
	teardown := end.Sub(last.LastAt).Seconds()
	s.ShutdownS = teardown

	// Each fault belongs to the first stretch that began after it (none:
	// the run ended before steps resumed); each recovery to the fault
	// before it.
	owner := func(t time.Time) int {
		for i, x := range st {
			if !x.FirstAt.Before(t) {
				return i
			}
		}
		return len(st)
	}
	detect := make([]float64, len(st)+1)
	recover := make([]float64, len(st)+1)
	faulted := make([]bool, len(st)+1)
	for _, f := range faults {
		i := owner(f.Time)
		detect[i] += f.DetectMS / 1000
		faulted[i] = true
	}
	for _, r := range recovers {
		i := -1
		for _, f := range faults {
			if !f.Time.After(r.Time) {
				i = owner(f.Time)
			}
		}
		if i >= 0 {
			recover[i] += r.RecoverMS / 1000
		}
	}

	// split lays a stretch of lost time over detection, then the restart,
	// then work thrown away (or, when replacements were being admitted in
	// that time, their admission).
	split := func(lost float64, i int) {
		d := min(max(detect[i], 0), max(lost, 0))
		r := min(max(recover[i], 0), max(lost-d, 0))
		s.DetectS += d
		s.RestartS += r
		rest := max(lost-d-r, 0) // a gap shorter than its steps: noise, left in OtherS
		from := start
		if i > 0 {
			from = st[i-1].LastAt
		}
		to := end
		if i < len(st) {
			to = st[i].FirstAt
		}
		switch {
		case slices.ContainsFunc(grows, func(g time.Time) bool { return g.After(from) && g.Before(to) }):
			s.GrowS += rest
		case i == len(st):
			s.RestartS += rest // the run ended while recovering: no work after it to redo
		default:
			s.RollbackS += rest
		}
	}
	for i, x := range st {
		if i == 0 {
			continue // its steady steps are healthy by definition
		}
		gap := x.GapS - float64(x.GapSteps)*mean
		warm := x.WarmS - float64(x.WarmSteps)*mean
		imp := x.ImportS - float64(x.ImportSteps)*mean // in the pace: shown per pause only
		switch {
		case x.Cause == StretchGrow && !faulted[i]:
			s.GrowS += gap + warm
		default:
			split(gap, i)
			s.RestartS += warm
		}
		if x.World < world {
			s.SmallerS += x.SteadyS + x.ImportS - float64(x.SteadySteps+x.ImportSteps)*mean
		}
		s.Pauses = append(s.Pauses, Pause{Gen: x.Gen, Cause: x.Cause, World: x.World,
			GapS: round3(x.GapS), PauseS: round3(gap), WarmS: round3(warm), ImportS: round3(imp)})
	}
	if st[0].World < world {
		s.SmallerS += st[0].SteadyS + st[0].ImportS - float64(st[0].SteadySteps+st[0].ImportSteps)*mean
	}
	// Steps while the pool first filled: at their own pace.
	var fill float64
	for _, x := range st {
		fill += x.FillS - float64(x.FillSteps)*mean
		s.FillS += x.FillS
		s.FillSteps += x.FillSteps
	}
	s.UsefulS = startup + fill + float64(steps)*mean + teardown
	if faulted[0] {
		// Faults before the first step: a fault-free run would have started
		// like the processes that made it (the last launch before it; a
		// live regroup keeps the processes), the rest is the faults'.
		var launch time.Time
		for _, l := range launches {
			if l.Before(first.FirstAt) {
				launch = l
			}
		}
		if launch.After(start) {
			s.StartupS = first.FirstAt.Sub(launch).Seconds()
			s.UsefulS -= launch.Sub(start).Seconds()
			split(launch.Sub(start).Seconds(), 0)
		}
	}
	if faulted[len(st)] {
		// Faults after the last step: the job never resumed, so the time
		// after the last step is theirs, not a shutdown's.
		s.UsefulS -= teardown
		s.ShutdownS = 0
		split(teardown, len(st))
	}
	s.LostS = s.WallS - s.UsefulS
	explained := s.DetectS + s.RestartS + s.RollbackS + s.GrowS + s.SmallerS
	s.OtherS = s.LostS - explained
	if s.WallS > 0 {
		s.Goodput = max(0, s.UsefulS/s.WallS)
	}
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5*sign(x))) / 1000 }

func sign(x float64) float64 {
	if x < 0 {
		return -1
	}
	return 1
}

// Line renders the summary as the one line a user pastes into a report.
func (s Summary) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "in %.1f s", s.WallS)
	if s.Steps > 0 {
		fmt.Fprintf(&b, " · last step %d", s.Steps) // the highest step index reported
	}
	fmt.Fprintf(&b, " · %d %s, %d %s · %.1f s lost", s.Faults, plural(s.Faults, "fault", "faults"),
		s.Recoveries, plural(s.Recoveries, "recovery", "recoveries"), noNegZero(s.LostS))
	if s.Faults > 0 || s.LostS >= 0.05 {
		parts := []string{fmt.Sprintf("detect %.1f", s.DetectS), fmt.Sprintf("restart %.1f", s.RestartS),
			fmt.Sprintf("rollback %.1f", s.RollbackS)}
		for _, p := range []struct {
			name string
			v    float64
		}{{"grow", s.GrowS}, {"smaller world", s.SmallerS}, {"other", s.OtherS}} {
			if p.v >= 0.05 || p.v <= -0.05 {
				parts = append(parts, fmt.Sprintf("%s %.1f", p.name, p.v))
			}
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, " · goodput %.2f", s.Goodput)
	if s.Faults > 0 && s.HealthyFrom == HealthyMedian {
		// Every step was a regroup's warm step or the pool's first fill's.
		b.WriteString(" (likely high: no step ran clear of a regroup or the first imports to measure the healthy pace by)")
	}
	return b.String()
}

// noNegZero: a lost time of -0.00001 s (float rounding) prints as 0.0, not -0.0.
func noNegZero(x float64) float64 {
	if x > -0.05 && x < 0 {
		return 0
	}
	return x
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// LostByCause is the lost time broken down by cause (metrics, the dashboard):
// the parts add up to LostS.
func (s Summary) LostByCause() map[string]float64 {
	return map[string]float64{"detect": s.DetectS, "restart": s.RestartS, "rollback": s.RollbackS,
		"grow": s.GrowS, "smaller_world": s.SmallerS, "other": s.OtherS}
}
