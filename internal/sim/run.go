package sim

import (
	"math"
	"runtime"
	"sync"
)

// Stat is a mean over trials and its standard error.
type Stat struct {
	Mean float64 `json:"mean"`
	SE   float64 `json:"se"`
}

func stat(xs []float64) Stat {
	n := float64(len(xs))
	if n == 0 {
		return Stat{}
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	m := s / n
	if n < 2 {
		return Stat{Mean: m}
	}
	var v float64
	for _, x := range xs {
		v += (x - m) * (x - m)
	}
	return Stat{Mean: m, SE: math.Sqrt(v / (n - 1) / n)}
}

// ModeResult summarizes the trials of one mode.
type ModeResult struct {
	Mode        Mode             `json:"mode"`
	ETTR        Stat             `json:"ettr"`
	ETTRFull    Stat             `json:"ettr_full_stall"` // as if every overlapping fault had cost a full stall
	MTTFHours   Stat             `json:"job_mttf_hours"`
	Faults      map[string]Stat  `json:"faults"`       // per run, by class
	LostPct     map[string]Stat  `json:"lost_percent"` // % of wall, by cause
	Overlapped  Stat             `json:"overlapped"`
	SparesUsed  Stat             `json:"spares_used"`
	Requeues    Stat             `json:"requeues"`
	Quarantined Stat             `json:"quarantined"`
	QLemons     Stat             `json:"quarantined_lemons"`
	Resubmits   Stat             `json:"resubmits"`
	Trials      []TrialResult    `json:"-"`
	faults      [NumClasses]Stat // table order
	lost        [NumCauses]Stat  // table order
}

// RunMode runs trials of mode; trial i uses seed (seed, i), so results do
// not depend on how many run at once. Trial 0 records its timeline.
func RunMode(p *Params, mode Mode, trials int, seed uint64) ModeResult {
	res := make([]TrialResult, trials)
	workers := min(runtime.GOMAXPROCS(0), trials)
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res[i] = RunTrial(p, mode, seed, i, i == 0)
			}
		}()
	}
	for i := range trials {
		next <- i
	}
	close(next)
	wg.Wait()
	return summarize(mode, res)
}

func summarize(mode Mode, res []TrialResult) ModeResult {
	n := len(res)
	col := func(f func(r *TrialResult) float64) Stat {
		xs := make([]float64, n)
		for i := range res {
			xs[i] = f(&res[i])
		}
		return stat(xs)
	}
	mr := ModeResult{Mode: mode, Trials: res, Faults: map[string]Stat{}, LostPct: map[string]Stat{}}
	mr.ETTR = col(func(r *TrialResult) float64 { return r.ETTR() })
	mr.ETTRFull = col(func(r *TrialResult) float64 {
		// A fault that came during another's recovery cost, in this run, only
		// what it added; charged instead the mean stall of a fault that did
		// not overlap (everything but productive, checkpoint and slow time).
		single := r.Interrupts + r.Faults[Maintenance] - r.Overlapped
		if single <= 0 {
			return r.ETTR()
		}
		down := r.Wall - r.Time[Productive] - r.Time[CkptCost] - r.Time[Slow]
		return r.ETTR() - float64(r.Overlapped)*down/float64(single)/r.Wall
	})
	mr.MTTFHours = col(func(r *TrialResult) float64 {
		if r.Interrupts == 0 {
			return r.Wall / 3600
		}
		return r.Wall / 3600 / float64(r.Interrupts)
	})
	for c := Class(0); c < NumClasses; c++ {
		mr.faults[c] = col(func(r *TrialResult) float64 { return float64(r.Faults[c]) })
		mr.Faults[c.String()] = mr.faults[c]
	}
	for c := Cause(0); c < NumCauses; c++ {
		mr.lost[c] = col(func(r *TrialResult) float64 { return 100 * r.Time[c] / r.Wall })
		mr.LostPct[c.String()] = mr.lost[c]
	}
	mr.Overlapped = col(func(r *TrialResult) float64 { return float64(r.Overlapped) })
	mr.SparesUsed = col(func(r *TrialResult) float64 { return float64(r.SparesUsed) })
	mr.Requeues = col(func(r *TrialResult) float64 { return float64(r.Requeues) })
	mr.Quarantined = col(func(r *TrialResult) float64 { return float64(r.Quarantined) })
	mr.QLemons = col(func(r *TrialResult) float64 { return float64(r.QLemons) })
	mr.Resubmits = col(func(r *TrialResult) float64 { return float64(r.Resubmits) })
	return mr
}
