// Package health holds the fault probes: the progress watchdog (pure: time is
// an argument) and the process inspection used to name the culprit of a hang.
package health

import (
	"sort"
	"time"
)

// Watchdog decides when a job has stopped making progress. Its threshold
// adapts to the step time it has observed: Factor × p99 of recent intervals,
// never below Floor. A fixed Timeout, when set, overrides the adaptive rule.
//
// The watchdog has no clock of its own: every call takes "now", so the policy
// and the simulator drive it with logical time.
type Watchdog struct {
	Floor   time.Duration // lowest adaptive threshold
	Factor  float64       // multiple of the p99 step interval
	Timeout time.Duration // fixed threshold; 0 means adaptive

	last      time.Duration
	seen      bool
	intervals []time.Duration // ring of recent intervals
	next      int
}

// windowSize bounds the interval history so the p99 follows the recent step
// time (a job can slow down or speed up over its life).
const windowSize = 256

// DefaultWatchdog returns the settings used by `bulsajo run`: a SIGSTOPped
// rank at ~30 ms steps is caught in about two seconds, while a job printing
// progress every 10 steps, or pausing to checkpoint, is not flagged.
func DefaultWatchdog() Watchdog {
	return Watchdog{Floor: 2 * time.Second, Factor: 5}
}

// Reset forgets the last progress time (a new generation starts), but keeps
// the step-time history: the next generation runs the same script.
func (w *Watchdog) Reset() { w.seen = false }

// Observe records progress at now.
func (w *Watchdog) Observe(now time.Duration) {
	if w.seen {
		iv := now - w.last
		if len(w.intervals) < windowSize {
			w.intervals = append(w.intervals, iv)
		} else {
			w.intervals[w.next] = iv
			w.next = (w.next + 1) % windowSize
		}
	}
	w.last, w.seen = now, true
}

// Armed reports whether progress has been seen since the last Reset.
func (w *Watchdog) Armed() bool { return w.seen }

// LastProgress is the time of the last observed progress.
func (w *Watchdog) LastProgress() time.Duration { return w.last }

// Threshold is the stall length that counts as a hang.
func (w *Watchdog) Threshold() time.Duration {
	if w.Timeout > 0 {
		return w.Timeout
	}
	th := w.Floor
	if n := len(w.intervals); n > 0 {
		s := append([]time.Duration(nil), w.intervals...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		p99 := s[(n*99)/100]
		if adaptive := time.Duration(float64(p99) * w.Factor); adaptive > th {
			th = adaptive
		}
	}
	return th
}

// Stalled reports whether progress was seen and none has come for longer than
// the threshold, and for how long it has been silent.
func (w *Watchdog) Stalled(now time.Duration) (bool, time.Duration) {
	if !w.seen {
		return false, 0
	}
	silent := now - w.last
	return silent > w.Threshold(), silent
}
