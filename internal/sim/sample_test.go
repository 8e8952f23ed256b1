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
