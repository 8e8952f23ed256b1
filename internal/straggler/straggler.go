// Package straggler finds slow ranks from the work time the SDK reports:
// the time each rank spends in its own computation per step, without the
// time it waits in collectives (a collective ends every rank's step at the
// same moment, so step times alone cannot tell who is slow). Pure logic: no
// clock, no I/O; the supervisor feeds it reports and closes windows.
//
// Two verdicts, both on windows (default 5 s) so one noisy step never
// decides anything:
//   - a rank is a straggler when its relative speed (the median of the
//     other ranks' work per step over its own) is below SlowRatio in SlowIn
//     of the last SlowOf windows; it is back when at most one of the last
//     SlowOf windows is slow;
//   - the job is slowing when its step rate, smoothed over 3 windows, stays
//     below JobRatio of its best smoothed rate for JobWindows windows.
//
// The first Warmup windows after a (re)group are skipped (the SDK also
// leaves out the first steps after each group forms), and a new
// generation starts a new history: its ranks are renumbered.
package straggler

import (
	"sort"
	"time"
)

// Config holds the thresholds; zero fields take the defaults.
type Config struct {
	Window     time.Duration // length of a window (5 s)
	Warmup     int           // windows skipped after a (re)group (1)
	SlowRatio  float64       // relative speed below this is slow (0.8)
	SlowIn     int           // slow in this many ... (3)
	SlowOf     int           // ... of the last this many windows (5)
	JobRatio   float64       // job rate below this share of its best warns (0.9)
	JobWindows int           // ... for this many windows in a row (3)
}

func (c Config) withDefaults() Config {
	if c.Window <= 0 {
		c.Window = 5 * time.Second
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	} else if c.Warmup == 0 {
		c.Warmup = 1
	}
	if c.SlowRatio <= 0 {
		c.SlowRatio = 0.8
	}
	if c.SlowOf <= 0 {
		c.SlowOf = 5
	}
	if c.SlowIn <= 0 {
		c.SlowIn = 3
	}
	if c.SlowIn > c.SlowOf {
		c.SlowIn = c.SlowOf
	}
	if c.JobRatio <= 0 {
		c.JobRatio = 0.9
	}
	if c.JobWindows <= 0 {
		c.JobWindows = 3
	}
	return c
}

// Report is one rank's work over a few steps, as the SDK sends it.
type Report struct {
	Rank  int
	Steps int
	Work  time.Duration // own computation (collective waits left out)
	Wall  time.Duration // the steps' wall time
}

// Straggler is a rank found slow.
type Straggler struct {
	Rank  int
	Speed float64       // median relative speed over its slow windows
	Since time.Duration // start of the first slow window of this episode
	For   time.Duration // how long it has been slow (at the window's end)
}

// JobSlow: the job's step rate against its own best.
type JobSlow struct {
	Ratio    float64 // smoothed rate / best smoothed rate
	Rate     float64 // steps/s now (smoothed)
	Baseline float64 // best steps/s seen
}

// Verdict is what one closed window says.
type Verdict struct {
	// Speeds: every rank's relative speed in this window (nil when the
	// window did not count: warm-up, or too few ranks reported).
	Speeds map[int]float64
	// New: ranks flagged in this window; Slow: every flagged rank (new ones
	// included), as of this window; Back: ranks no longer slow.
	New, Slow []Straggler
	Back      []int
	// JobSlow is set in the window the job's slowdown is first seen;
	// JobBack when it ends.
	JobSlow *JobSlow
	JobBack bool
}

type acc struct {
	steps      int
	work, wall time.Duration
}

type rankHist struct {
	slow    []bool          // last SlowOf counted windows, oldest first
	speeds  []float64       // their speeds
	starts  []time.Duration // their start times
	flagged bool
	since   time.Duration
}

// Detector is the state of one job's detection. Not safe for concurrent use.
type Detector struct {
	cfg     Config
	gen     int
	counted int // windows of this generation closed, warm-up included
	cur     map[int]*acc
	ranks   map[int]*rankHist
	start   time.Duration // when the current window began

	rates   []float64 // recent window rates (steps/s), for smoothing
	best    float64
	below   int
	jobSlow bool
}

// New makes a detector.
func New(cfg Config) *Detector {
	return &Detector{cfg: cfg.withDefaults(), gen: -1, cur: map[int]*acc{}, ranks: map[int]*rankHist{}}
}

// Config is the detector's configuration with defaults filled in.
func (d *Detector) Config() Config { return d.cfg }

// Generation starts over for generation gen (ranks renumbered, a new
// warm-up) when it differs from the current one. The job's best rate is
// kept only when the world size is unchanged.
func (d *Detector) Generation(now time.Duration, gen int, sameWorld bool) {
	if gen == d.gen {
		return
	}
	d.gen = gen
	d.counted = 0
	d.cur = map[int]*acc{}
	d.ranks = map[int]*rankHist{}
	d.start = now
	d.rates = nil
	d.below = 0
	if !sameWorld {
		d.best = 0
		d.jobSlow = false
	}
}

// Add takes one report of the current generation.
func (d *Detector) Add(r Report) {
	if r.Steps <= 0 || r.Work < 0 || r.Wall <= 0 {
		return
	}
	a := d.cur[r.Rank]
	if a == nil {
		a = &acc{}
		d.cur[r.Rank] = a
	}
	a.steps += r.Steps
	a.work += r.Work
	a.wall += r.Wall
}

// Due reports whether the current window has run its length.
func (d *Detector) Due(now time.Duration) bool { return now-d.start >= d.cfg.Window }

// Close ends the current window at now and evaluates it.
func (d *Detector) Close(now time.Duration) Verdict {
	cur := d.cur
	winStart := d.start
	d.cur = map[int]*acc{}
	d.start = now
	var v Verdict
	if len(cur) == 0 {
		return v // nothing reported (a step longer than the window, a pause): not a window
	}
	d.counted++
	if d.counted <= d.cfg.Warmup {
		return v
	}
	// Work and wall per step, per rank.
	work := map[int]float64{}
	var walls []float64
	for r, a := range cur {
		work[r] = a.work.Seconds() / float64(a.steps)
		walls = append(walls, a.wall.Seconds()/float64(a.steps))
	}
	d.job(&v, median(walls))
	if len(work) < 2 {
		return v
	}
	v.Speeds = map[int]float64{}
	for r, w := range work {
		var others []float64
		for o, wo := range work {
			if o != r {
				others = append(others, wo)
			}
		}
		m := median(others)
		switch {
		case w > 0:
			v.Speeds[r] = min(m/w, maxSpeed)
		case m > 0:
			v.Speeds[r] = maxSpeed // no measurable work: not slow
		default:
			v.Speeds[r] = 1
		}
	}
	ranks := make([]int, 0, len(v.Speeds))
	for r := range v.Speeds {
		ranks = append(ranks, r)
	}
	sort.Ints(ranks)
	for _, r := range ranks {
		h := d.ranks[r]
		if h == nil {
			h = &rankHist{}
			d.ranks[r] = h
		}
		s := v.Speeds[r]
		h.slow = append(h.slow, s < d.cfg.SlowRatio)
		h.speeds = append(h.speeds, s)
		h.starts = append(h.starts, winStart)
		if len(h.slow) > d.cfg.SlowOf {
			h.slow, h.speeds, h.starts = h.slow[1:], h.speeds[1:], h.starts[1:]
		}
		n := 0
		var slowSpeeds []float64
		first := time.Duration(-1)
		for i, b := range h.slow {
			if b {
				n++
				slowSpeeds = append(slowSpeeds, h.speeds[i])
				if first < 0 {
					first = h.starts[i]
				}
			}
		}
		switch {
		case !h.flagged && n >= d.cfg.SlowIn:
			h.flagged = true
			h.since = first
			st := Straggler{Rank: r, Speed: median(slowSpeeds), Since: h.since, For: now - h.since}
			v.New = append(v.New, st)
		case h.flagged && n <= 1:
			h.flagged = false
			v.Back = append(v.Back, r)
		}
		if h.flagged {
			v.Slow = append(v.Slow, Straggler{Rank: r, Speed: median(slowSpeeds), Since: h.since, For: now - h.since})
		}
	}
	return v
}

// job updates the job-level rate with this window's wall time per step.
func (d *Detector) job(v *Verdict, wallPerStep float64) {
	if wallPerStep <= 0 {
		return
	}
	d.rates = append(d.rates, 1/wallPerStep)
	if len(d.rates) > jobSmooth {
		d.rates = d.rates[1:]
	}
	if len(d.rates) < jobSmooth {
		return
	}
	rate := median(d.rates)
	if rate > d.best {
		d.best = rate
	}
	ratio := rate / d.best
	if ratio < d.cfg.JobRatio {
		d.below++
	} else {
		d.below = 0
		if d.jobSlow {
			d.jobSlow = false
			v.JobBack = true
		}
	}
	if d.below >= d.cfg.JobWindows && !d.jobSlow {
		d.jobSlow = true
		v.JobSlow = &JobSlow{Ratio: ratio, Rate: rate, Baseline: d.best}
	}
}

// maxSpeed caps a relative speed (a rank with next to no work).
const maxSpeed = 10

// jobSmooth windows make the job's rate (their median): the best of
// single windows would be a noise peak that ordinary windows then fall
// short of.
const jobSmooth = 5

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
