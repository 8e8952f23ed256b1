package sim

import (
	"fmt"
	"testing"
	"time"
)

func TestQuick(t *testing.T) {
	p := Default()
	for _, m := range Modes {
		st := time.Now()
		r := RunMode(&p, m, 20, 1)
		fmt.Printf("%-20s ettr %.4f±%.4f full %.4f mttf %.2fh spares %.1f req %.1f q %.1f resub %.1f  %v\n", m, r.ETTR.Mean, r.ETTR.SE, r.ETTRFull.Mean, r.MTTFHours.Mean, r.SparesUsed.Mean, r.Requeues.Mean, r.Quarantined.Mean, r.Resubmits.Mean, time.Since(st))
		for c := Cause(0); c < NumCauses; c++ {
			fmt.Printf(" %s=%.2f", c, r.lost[c].Mean)
		}
		fmt.Println()
		for c := Class(0); c < NumClasses; c++ {
			fmt.Printf(" %s=%.1f", c, r.faults[c].Mean)
		}
		fmt.Println()
	}
}
