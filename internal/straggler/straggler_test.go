package straggler

import (
	"math/rand"
	"testing"
	"time"
)

// world simulates windows of a lockstep job of 10 steps each: each rank's
// work per step is base/speed times a jitter factor (uniform ± jitter, drawn
// per step, or per window with perWindow: the harsh case); a step's wall
// time is the slowest rank's work (a collective ends every rank's step
// together).
type world struct {
	ranks     int
	speed     func(w, rank int) float64 // relative speed of rank in window w
	jitter    float64
	perWindow bool
	rng       *rand.Rand
}

func (s world) window(d *Detector, w int) {
	const steps = 10
	base := 0.1 // s of work per step at full speed
	work := make([]float64, s.ranks)
	wall := 0.0
	wj := make([]float64, s.ranks)
	for r := range wj {
		wj[r] = 1 + s.jitter*(2*s.rng.Float64()-1)
	}
	for i := 0; i < steps; i++ {
		slowest := 0.0
		for r := range work {
			j := wj[r]
			if !s.perWindow {
				j = 1 + s.jitter*(2*s.rng.Float64()-1)
			}
			x := base / s.speed(w, r) * j
			work[r] += x
			slowest = max(slowest, x)
		}
		wall += slowest
	}
	for r, wk := range work {
		d.Add(Report{Rank: r, Steps: steps, Work: secs(wk), Wall: secs(wall)})
	}
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func TestDetector(t *testing.T) {
	full := func(int, int) float64 { return 1 }
	cases := []struct {
		name    string
		w       world
		windows int
		// want: rank -> window index (0-based, counting every closed
		// window) in which it is first flagged; absent: never.
		want     map[int]int
		wantBack map[int]int
		jobSlow  int // window the job slowdown is first reported, -1 never
	}{
		{name: "jitter 10% on 4 ranks is never flagged", w: world{ranks: 4, speed: full, jitter: 0.10}, windows: 400, jobSlow: -1},
		{name: "jitter 10% per window on 4 ranks: no straggler", w: world{ranks: 4, speed: full, jitter: 0.10, perWindow: true}, windows: 400, jobSlow: anyJob},
		{name: "jitter 10% per window on 2 ranks: no straggler", w: world{ranks: 2, speed: full, jitter: 0.10, perWindow: true}, windows: 400, jobSlow: anyJob},
		{name: "jitter 10% on 2 ranks is never flagged", w: world{ranks: 2, speed: full, jitter: 0.10}, windows: 400, jobSlow: -1},
		{name: "jitter 10% on 16 ranks is never flagged", w: world{ranks: 16, speed: full, jitter: 0.10}, windows: 200, jobSlow: -1},
		{name: "one rank at 0.6 from window 4: flagged in its third slow window",
			w: world{ranks: 4, jitter: 0.05, speed: func(w, r int) float64 {
				if r == 2 && w >= 4 {
					return 0.6
				}
				return 1
			}}, windows: 20, want: map[int]int{2: 6}, jobSlow: 8},
		{name: "two ranks, one slow: only the slow one",
			w: world{ranks: 2, jitter: 0.05, speed: func(w, r int) float64 {
				if r == 1 && w >= 7 {
					return 0.5
				}
				return 1
			}}, windows: 16, want: map[int]int{1: 9}, jobSlow: 11},
		{name: "slow in 2 of every 5 windows is not persistent",
			w: world{ranks: 4, jitter: 0.05, speed: func(w, r int) float64 {
				if r == 0 && w%5 < 2 {
					return 0.5
				}
				return 1
			}}, windows: 100, jobSlow: -1},
		{name: "warm-up window is skipped",
			w: world{ranks: 4, speed: func(w, r int) float64 {
				if r == 3 && w == 0 {
					return 0.1
				}
				return 1
			}}, windows: 10, jobSlow: -1},
		{name: "a rank that recovers is back once at most one of the last 5 windows was slow",
			w: world{ranks: 4, jitter: 0.05, speed: func(w, r int) float64 {
				if r == 1 && w >= 7 && w < 13 {
					return 0.5
				}
				return 1
			}}, windows: 24, want: map[int]int{1: 9}, wantBack: map[int]int{1: 16}, jobSlow: 11},
		{name: "whole job at 0.8: job slowdown, no straggler",
			w: world{ranks: 4, jitter: 0.03, speed: func(w, r int) float64 {
				if w >= 6 {
					return 0.8
				}
				return 1
			}}, windows: 20, jobSlow: 10},
		{name: "whole job at 0.95: nothing",
			w: world{ranks: 4, jitter: 0.03, speed: func(w, r int) float64 {
				if w >= 6 {
					return 0.95
				}
				return 1
			}}, windows: 40, jobSlow: -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := int64(1); seed <= 5; seed++ {
				tc.w.rng = rand.New(rand.NewSource(seed))
				d := New(Config{})
				now := time.Duration(0)
				d.Generation(now, 1, false)
				flagged, back := map[int]int{}, map[int]int{}
				jobSlow := -1
				for w := 0; w < tc.windows; w++ {
					tc.w.window(d, w)
					now += d.Config().Window
					v := d.Close(now)
					for _, s := range v.New {
						if _, ok := flagged[s.Rank]; !ok {
							flagged[s.Rank] = w
						}
						if s.Speed > 0.8 || s.For < 2*d.Config().Window {
							t.Errorf("window %d: rank %d flagged at speed %.2f, slow for %s", w, s.Rank, s.Speed, s.For)
						}
					}
					for _, r := range v.Back {
						if _, ok := back[r]; !ok {
							back[r] = w
						}
					}
					if v.JobSlow != nil && jobSlow < 0 {
						jobSlow = w
					}
				}
				if !equal(flagged, tc.want) {
					t.Errorf("seed %d: flagged (rank: window) %v, want %v", seed, flagged, tc.want)
				}
				if !equal(back, tc.wantBack) {
					t.Errorf("seed %d: back (rank: window) %v, want %v", seed, back, tc.wantBack)
				}
				if jobSlow != tc.jobSlow && tc.jobSlow != anyJob {
					t.Errorf("seed %d: job slowdown in window %d, want %d", seed, jobSlow, tc.jobSlow)
				}
			}
		})
	}
}

// anyJob: the case does not check the job-level verdict.
const anyJob = -2

func equal(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A new generation renumbers ranks: the history starts over, with a new
// warm-up, and the job's best rate is kept only for the same world size.
func TestGenerationStartsOver(t *testing.T) {
	d := New(Config{})
	now := time.Duration(0)
	d.Generation(now, 1, false)
	slow := world{ranks: 4, rng: rand.New(rand.NewSource(2)), speed: func(w, r int) float64 {
		if r == 0 {
			return 0.5
		}
		return 1
	}}
	for w := 0; w < 3; w++ { // warm-up + 2 slow windows: not yet flagged
		slow.window(d, w)
		now += 5 * time.Second
		if v := d.Close(now); len(v.New) > 0 {
			t.Fatalf("window %d: flagged %v too early", w, v.New)
		}
	}
	d.Generation(now, 2, true)
	for w := 0; w < 3; w++ {
		slow.window(d, w)
		now += 5 * time.Second
		if v := d.Close(now); len(v.New) > 0 {
			t.Fatalf("generation 2 window %d: flagged %v, its history should have started over", w, v.New)
		}
	}
	slow.window(d, 3)
	now += 5 * time.Second
	if v := d.Close(now); len(v.New) != 1 || v.New[0].Rank != 0 {
		t.Fatalf("generation 2: want rank 0 flagged in its third slow window, got %+v", v)
	}
}

// Windows in which nothing was reported (a step longer than the window)
// are not windows: they neither count as slow nor as fast.
func TestEmptyWindowsDoNotCount(t *testing.T) {
	d := New(Config{})
	d.Generation(0, 1, false)
	now := time.Duration(0)
	w := world{ranks: 3, rng: rand.New(rand.NewSource(3)), speed: func(w, r int) float64 {
		if r == 1 {
			return 0.5
		}
		return 1
	}}
	var got []int
	for i := 0; i < 12; i++ {
		if i%2 == 0 {
			w.window(d, i)
		}
		now += 5 * time.Second
		v := d.Close(now)
		for _, s := range v.New {
			got = append(got, i)
			if s.Rank != 1 {
				t.Errorf("flagged rank %d", s.Rank)
			}
		}
	}
	// Reports in windows 0 (warm-up), 2, 4, 6: the third slow one is 6.
	if len(got) != 1 || got[0] != 6 {
		t.Errorf("flagged in windows %v, want [6]", got)
	}
}
