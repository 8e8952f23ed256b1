package sim

import (
	"math"
	"testing"
	"time"
)

// Each fault class alone, sampled over many node-days: the count of faults
// that hit the job recovers its rate within 3 standard errors (Poisson).
// With lemons the fleet average must still be the table's rate.
func TestClassRates(t *testing.T) {
	for c := Class(0); c < NumClasses; c++ {
		for _, lemon := range []bool{false, true} {
			p := closedForm(4096, 0, time.Minute, 0, time.Hour)
			var r Rates
			switch c {
			case Crash:
				r.Crash = 0.02
			case GPU:
				r.GPU = 0.02
			case NodeLoss:
				r.NodeLoss = 0.02
			case Network:
				r.Network = 0.02
			case Hang:
				r.Hang = 0.02
			case Maintenance:
				r.Maintenance = 0.02
			case Straggler:
				r.Straggler = 0.02
			}
			p.Rates = r
			p.Days = 20
			p.NetworkGroupP = 0 // one node per network fault here
			p.Spares = 64
			if lemon {
				if c != Crash && c != Hang {
					// Lemons fail more only in the unexpected classes; and where
					// a fault sends the node to repair, lemons spend more time
					// away and the job's own fault rate is lower than the
					// fleet's (selection), so only in-place classes are exact.
					continue
				}
				p.LemonFraction, p.LemonMultiplier = 0.05, 10
			}
			for _, m := range []Mode{ModeRestart, ModeLive} {
				res := RunMode(&p, m, 4, 5)
				var n int
				var nodeDays float64
				for _, tr := range res.Trials {
					checkSums(t, &tr)
					n += tr.Faults[c]
					nodeDays += float64(p.Nodes()) * tr.Wall / 86400
				}
				want := 0.02 * nodeDays
				se := math.Sqrt(want)
				t.Logf("%s lemon=%v %s: %d faults, expected %.0f ± %.0f", c, lemon, m, n, want, se)
				if math.Abs(float64(n)-want) > 3*se {
					t.Errorf("%s lemon=%v %s: %d faults, expected %.0f ± %.0f (3 SE)", c, lemon, m, n, want, se)
				}
			}
		}
	}
}

// Stragglers: the job runs at the slowest node's pace while any straggler is
// in it, so the slow share of training time is P(≥1 episode active) × (1 −
// 1/slowdown), with active episodes Poisson(N·r·D). Node faults during an
// episode must not make it last forever.
func TestStragglerShare(t *testing.T) {
	p := closedForm(4096, 0, time.Minute, 0, time.Hour)
	p.Rates = Rates{Straggler: 0.02, Crash: 0.02}
	p.Days = 30
	res := RunMode(&p, ModeRestart, 4, 3)
	var slow, train float64
	for _, tr := range res.Trials {
		checkSums(t, &tr)
		slow += tr.Time[Slow]
		train += tr.Time[Slow] + tr.Time[Productive] + tr.Time[Rollback] + tr.Time[CkptCost]
	}
	active := float64(p.Nodes()) * 0.02 * p.StragglerMean.Seconds() / 86400
	want := (1 - math.Exp(-active)) * (1 - 1/p.StragglerSlow)
	got := slow / train
	t.Logf("slow share of training %.4f, expected %.4f", got, want)
	if math.Abs(got/want-1) > 0.1 {
		t.Errorf("slow share %.4f, expected %.4f ± 10%%", got, want)
	}
}
