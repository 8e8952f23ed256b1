package events

import (
	"math"
	"testing"
	"time"
)

// timeline builds a run's events the way the supervisor does: steps go
// through a StepClock, closed stretches become steps events.
type timeline struct {
	evs []Event
	c   StepClock
	now float64      // the time of the advance being made
	imp [][2]float64 // intervals in which standbys imported
}

// importing sets the intervals in which standbys imported (the launcher's
// ImportingSince, seen at the time of each advance).
func (tl *timeline) importing(iv ...[2]float64) {
	tl.imp = iv
	tl.c.Importing = func(since time.Time) (began time.Time, ok bool) {
		for _, x := range tl.imp {
			if at(x[0]).Before(at(tl.now)) && at(x[1]).After(since) && (!ok || at(x[0]).Before(began)) {
				began, ok = at(x[0]), true
			}
		}
		return began, ok
	}
}

func (tl *timeline) ev(e Event) { tl.evs = append(tl.evs, e) }

// steps advances gen (world) from step `from` to `to`, the first at t0 and
// then one every dt seconds; it returns the time of the last.
func (tl *timeline) steps(gen, world, from, to int, t0, dt float64) float64 {
	t := t0
	for s := from; s <= to; s++ {
		tl.now = t
		if st := tl.c.Advance(gen, world, s, at(t)); st != nil {
			tl.ev(Event{Time: at(t), Type: StretchEnd, Stretch: st})
		}
		if s < to {
			t += dt
		}
	}
	return t
}

func (tl *timeline) finish(t float64, outcome string) []Event {
	if st := tl.c.Flush(); st != nil {
		tl.ev(Event{Time: at(t), Type: StretchEnd, Stretch: st})
	}
	tl.ev(Event{Time: at(t), Type: RunFinished, Outcome: outcome})
	return tl.evs
}

func TestSummarizeFromStretches(t *testing.T) {
	tests := []struct {
		name string
		run  func(tl *timeline) []Event
		want Summary // the float fields checked, plus Faults
	}{
		{"fault-free: all useful", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 4})
			last := tl.steps(1, 4, 0, 99, 2, 0.1)
			return tl.finish(last+0.3, "succeeded")
		}, Summary{ShutdownS: 0.3, WallS: 12.2, UsefulS: 12.2, HealthyStepS: 0.1, Goodput: 1}},
		{"live: shrink, slower steps at world 3, grow", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 4})
			tl.steps(1, 4, 0, 99, 2, 0.1) // to 11.9
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(12.05), Type: FaultDetected, DetectMS: 50})
			tl.c.Cause(StretchRegroup) // the regroup after the fault: still the fault's
			last := tl.steps(2, 3, 100, 149, 12.3, 0.12)
			tl.ev(Event{Time: at(12.3001), Type: Recovered, RecoverMS: 250})
			tl.c.Cause(StretchGrow)
			last = tl.steps(3, 4, 150, 153, last+0.5, 0.15)
			last = tl.steps(3, 4, 154, 299, last+0.1, 0.1)
			return tl.finish(last+0.27, "succeeded")
		}, Summary{ShutdownS: 0.27, WallS: 34, UsefulS: 32.17, HealthyStepS: 0.1, Faults: 1,
			DetectS: 0.05, RestartS: 0.31, SmallerS: 0.92, GrowS: 0.55, LostS: 1.83, Goodput: 32.17 / 34}},
		{"restart: steps re-done from a checkpoint are rollback", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.steps(1, 2, 0, 49, 1, 0.1) // to 5.9
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(6.5), Type: FaultDetected, DetectMS: 500})
			tl.ev(Event{Time: at(9), Type: Recovered, RecoverMS: 2500, RolledBack: 10}) // first step 40 at 9.0
			// steps 40..49 re-done (not advances), 50 at 10.1
			last := tl.steps(2, 2, 50, 99, 10.1, 0.1)
			return tl.finish(last+0.2, "succeeded")
		}, Summary{ShutdownS: 0.2, WallS: 15.2, UsefulS: 1 + 9.9 + 0.2, HealthyStepS: 0.1, Faults: 1,
			DetectS: 0.5, RestartS: 2.5, RollbackS: 4.2 - 0.1 - 3, LostS: 15.2 - 11.1, Goodput: 11.1 / 15.2}},
		{"a fault after the last step: the rest is lost", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.steps(1, 2, 0, 10, 1, 0.1) // to 2.0
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(2.5), Type: FaultDetected, DetectMS: 400})
			return tl.finish(4, "failed")
		}, Summary{WallS: 4, UsefulS: 2, HealthyStepS: 0.1, Faults: 1, DetectS: 0.4, RestartS: 1.6, LostS: 2, Goodput: 0.5}},
		{"a fault before the first step: startup is the last generation's", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.ev(Event{Time: at(0), Type: GenerationStart, Gen: 1})
			tl.ev(Event{Time: at(1), Type: FaultDetected, DetectMS: 300})
			tl.ev(Event{Time: at(1.5), Type: GenerationStart, Gen: 2})
			tl.ev(Event{Time: at(3), Type: Recovered, RecoverMS: 2000})
			last := tl.steps(2, 2, 0, 10, 3, 0.1) // 1.5 s of startup
			return tl.finish(last, "succeeded")
		}, Summary{WallS: 4, UsefulS: 2.5, HealthyStepS: 0.1, Faults: 1, DetectS: 0.3, RestartS: 1.2, LostS: 1.5, Goodput: 2.5 / 4}},
		{"a live regroup before the first step keeps the processes: startup stays useful", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.ev(Event{Time: at(0), Type: GenerationStart, Gen: 1})
			tl.ev(Event{Time: at(2), Type: FaultDetected, Cause: "collective_failed"})
			tl.ev(Event{Time: at(2), Type: GenerationStart, Gen: 2, Cause: "regroup"})
			tl.ev(Event{Time: at(2.1), Type: Recovered, RecoverMS: 100})
			last := tl.steps(2, 2, 0, 10, 2.5, 0.1)
			return tl.finish(last, "succeeded")
		}, Summary{WallS: 3.5, UsefulS: 3.5, HealthyStepS: 0.1, Faults: 1, Goodput: 1}},
		{"fault-free: steps while the pool first fills are useful at their pace", func(tl *timeline) []Event {
			tl.importing([2]float64{0.5, 4.05}) // steps 1..20 (to 4.0) at 0.15 s
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 4})
			last := tl.steps(1, 4, 0, 20, 1, 0.15)
			last = tl.steps(1, 4, 21, 120, last+0.1, 0.1)
			return tl.finish(last+0.2, "succeeded")
		}, Summary{ShutdownS: 0.2, WallS: 14.2, UsefulS: 14.2, HealthyStepS: 0.1, Goodput: 1,
			FillS: 20*0.15 + 0.1, FillSteps: 21}}, // and step 21: it began while the last import ran
		{"restart: steps while the pool refills are in the healthy pace", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.steps(1, 2, 0, 40, 1, 0.1) // to 5.0: 40 steady steps
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(5.1), Type: FaultDetected, DetectMS: 100})
			tl.ev(Event{Time: at(5.4), Type: Recovered, RecoverMS: 200})
			tl.importing([2]float64{5.4, 8.9})
			// 41 at 5.6; 3 warm steps at 0.11; 20 at 0.15 while the pool
			// refills (to 8.93); 40 steady at 0.1. The pace: (4+3+4)/100.
			last := tl.steps(2, 2, 41, 44, 5.6, 0.11)
			last = tl.steps(2, 2, 45, 64, last+0.15, 0.15)
			last = tl.steps(2, 2, 65, 104, last+0.1, 0.1)
			return tl.finish(last+0.2, "succeeded")
		}, Summary{ShutdownS: 0.2, WallS: 13.13, UsefulS: 1 + 104*0.11 + 0.2, HealthyStepS: 0.11, Faults: 1,
			DetectS: 0.1, RestartS: 0.2, RollbackS: 0.6 - 0.11 - 0.3, LostS: 0.49, Goodput: 12.64 / 13.13}},
		{"a fault during the pool's first fill: the fill's later steps are still the startup's", func(tl *timeline) []Event {
			// The first fill runs 0.5..3.05; the refill after the fault 3.1..5.15.
			tl.importing([2]float64{0.5, 3.05}, [2]float64{3.1, 5.15})
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.steps(1, 2, 0, 10, 1, 0.15) // to 2.5, fill
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(2.6), Type: FaultDetected, DetectMS: 100})
			tl.ev(Event{Time: at(2.7), Type: Recovered, RecoverMS: 100})
			last := tl.steps(2, 2, 11, 14, 2.7, 0.1)     // 3 warm steps to 3.0
			last = tl.steps(2, 2, 15, 15, last+0.15, 0)  // 3.15: fill (its import began at 0.5)
			last = tl.steps(2, 2, 16, 78, last+0.1, 0.1) // to 9.35: refill (to 5.15), then steady
			return tl.finish(last+0.2, "succeeded")
		}, Summary{ShutdownS: 0.2, WallS: 9.65, UsefulS: 1 + 0.5 + 0.05 + 7.8 + 0.2, HealthyStepS: 0.1, Faults: 1,
			DetectS: 0.1, LostS: 0.1, Goodput: 9.55 / 9.65,
			FillS: 1.5 + 0.15, FillSteps: 11}},
		{"a grow that failed: the wait is the grow's", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			tl.steps(1, 1, 0, 10, 1, 0.1) // to 2.0, world 1
			tl.c.Cause(StretchGrow)
			tl.ev(Event{Time: at(2.05), Type: GenerationStart, Gen: 2, Cause: StretchGrow})
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(5), Type: FaultDetected, Cause: "collective_failed"})
			tl.ev(Event{Time: at(5), Type: GenerationStart, Gen: 3, Cause: "regroup"})
			tl.ev(Event{Time: at(6), Type: Recovered, RecoverMS: 1000})
			last := tl.steps(3, 2, 11, 20, 6, 0.1)
			return tl.finish(last, "succeeded")
		}, Summary{WallS: 6.9, UsefulS: 1 + 2, HealthyStepS: 0.1, Faults: 1,
			RestartS: 1, GrowS: 2.9, LostS: 3.9, Goodput: 3 / 6.9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.run(&timeline{}), time.Second)
			w := tt.want
			if got.Faults != w.Faults || got.FillSteps != w.FillSteps {
				t.Errorf("Faults, FillSteps = %d, %d, want %d, %d", got.Faults, got.FillSteps, w.Faults, w.FillSteps)
			}
			for _, f := range []struct {
				name      string
				got, want float64
			}{
				{"WallS", got.WallS, w.WallS}, {"UsefulS", got.UsefulS, w.UsefulS},
				{"HealthyStepS", got.HealthyStepS, w.HealthyStepS},
				{"DetectS", got.DetectS, w.DetectS}, {"RestartS", got.RestartS, w.RestartS},
				{"RollbackS", got.RollbackS, w.RollbackS}, {"GrowS", got.GrowS, w.GrowS},
				{"SmallerS", got.SmallerS, w.SmallerS}, {"OtherS", got.OtherS, w.OtherS},
				{"LostS", got.LostS, w.LostS}, {"Goodput", got.Goodput, w.Goodput},
				{"FillS", got.FillS, w.FillS}, {"ShutdownS", got.ShutdownS, w.ShutdownS},
			} {
				if math.Abs(f.got-f.want) > 1e-6 {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			// The identity the user relies on: useful + lost = wall, and the
			// causes add up to the lost time.
			if d := got.UsefulS + got.LostS - got.WallS; math.Abs(d) > 1e-9 {
				t.Errorf("useful %v + lost %v != wall %v", got.UsefulS, got.LostS, got.WallS)
			}
			sum := got.DetectS + got.RestartS + got.RollbackS + got.GrowS + got.SmallerS + got.OtherS
			if math.Abs(sum-got.LostS) > 1e-9 {
				t.Errorf("causes add to %v, lost is %v", sum, got.LostS)
			}
		})
	}
}

func TestStepClockStretches(t *testing.T) {
	var c StepClock
	steps := []struct {
		gen, step int
		t         float64
		closes    bool
	}{
		{1, 0, 1, false}, {1, 1, 1.1, false}, {1, 1, 1.15, false}, // another rank's report of step 1
		{1, 2, 1.2, false},
		{2, 1, 3, false}, // re-done after a restart: not an advance
		{2, 3, 3.5, true}, {2, 4, 3.6, false}, {2, 5, 3.7, false}, {2, 6, 3.8, false}, {2, 7, 3.9, false},
		{1, 8, 4.0, false}, // a straggler of the old generation: counted in the current stretch
	}
	var closed []*Stretch
	for i, s := range steps {
		if i == 3 {
			c.Cause(StretchFault)
			c.Cause(StretchGrow) // a fault outranks a grow
		}
		got := c.Advance(s.gen, 2, s.step, at(s.t))
		if (got != nil) != s.closes {
			t.Fatalf("step %d of gen %d: closed %v, want %v", s.step, s.gen, got, s.closes)
		}
		if got != nil {
			closed = append(closed, got)
		}
	}
	closed = append(closed, c.Flush())
	first, second := closed[0], closed[1]
	if first.Cause != StretchStart || first.FromStep != 0 || first.ToStep != 2 || first.SteadySteps != 2 || first.WarmSteps != 0 {
		t.Errorf("first stretch %+v", first)
	}
	if second.Cause != StretchFault || second.GapSteps != 1 || math.Abs(second.GapS-2.3) > 1e-9 ||
		second.WarmSteps != WarmSteps || second.SteadySteps != 2 || second.ToStep != 8 {
		t.Errorf("second stretch %+v", second)
	}
	if c.Flush() != nil {
		t.Error("Flush twice returned a stretch")
	}
}

// The summary says where its healthy step came from, and a run in which no
// step ran clear of a regroup or an import is priced at the caller's median.
func TestSummarizeHealthyFrom(t *testing.T) {
	tests := []struct {
		name    string
		run     func(tl *timeline) []Event
		from    string
		healthy float64
	}{
		{"steady steps at full size", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			last := tl.steps(1, 2, 0, 20, 1, 0.1)
			return tl.finish(last, "succeeded")
		}, HealthyFull, 0.1},
		{"steady steps at a smaller size only", func(tl *timeline) []Event {
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			last := tl.steps(1, 1, 0, 20, 1, 0.2)
			return tl.finish(last, "succeeded")
		}, HealthySmaller, 0.2},
		{"every step warm or in the pool's first fill: the median", func(tl *timeline) []Event {
			tl.importing([2]float64{0.5, 100})
			tl.ev(Event{Time: at(0), Type: RunStarted, WorldSize: 2})
			last := tl.steps(1, 2, 0, 10, 1, 0.15)
			tl.c.Cause(StretchFault)
			tl.ev(Event{Time: at(last + 0.1), Type: FaultDetected, DetectMS: 100})
			last = tl.steps(2, 2, 11, 20, last+0.5, 0.15)
			return tl.finish(last, "succeeded")
		}, HealthyMedian, 0.12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.run(&timeline{}), 120*time.Millisecond)
			if got.HealthyFrom != tt.from || math.Abs(got.HealthyStepS-tt.healthy) > 1e-9 {
				t.Errorf("HealthyFrom, HealthyStepS = %q, %v, want %q, %v", got.HealthyFrom, got.HealthyStepS, tt.from, tt.healthy)
			}
		})
	}
}
