package sim

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

func TestQueueOrder(t *testing.T) {
	var q queue
	rng := rand.New(rand.NewPCG(1, 2))
	type key struct {
		at  time.Duration
		tag int
	}
	var want []key
	for i := range 2000 {
		at := time.Duration(rng.IntN(50)) // many equal times: ties go first-in first-out
		q.push(event{at: at, a: i})
		want = append(want, key{at, i})
	}
	sort.SliceStable(want, func(i, j int) bool { return want[i].at < want[j].at })
	for i, w := range want {
		if q.len() != len(want)-i {
			t.Fatalf("len %d, want %d", q.len(), len(want)-i)
		}
		e := q.pop()
		if e.at != w.at || e.a != w.tag {
			t.Fatalf("pop %d: got (%v, %d), want (%v, %d)", i, e.at, e.a, w.at, w.tag)
		}
	}
	// interleaved pushes and pops stay ordered
	q.push(event{at: 5, a: 1})
	q.push(event{at: 3, a: 2})
	if e := q.pop(); e.a != 2 {
		t.Fatalf("got %d, want 2", e.a)
	}
	q.push(event{at: 4, a: 3})
	q.push(event{at: 5, a: 4})
	for _, w := range []int{3, 1, 4} {
		if e := q.pop(); e.a != w {
			t.Fatalf("got %d, want %d", e.a, w)
		}
	}
}

// The same seed gives the same numbers, however many goroutines run trials.
func TestDeterministic(t *testing.T) {
	p := Default()
	p.GPUs = 4096
	p.Days = 10
	var out [2][]byte
	for i := range out {
		var b bytes.Buffer
		for _, m := range Modes {
			r := RunMode(&p, m, 6, 42)
			json.NewEncoder(&b).Encode(r)
		}
		out[i] = b.Bytes()
	}
	if !bytes.Equal(out[0], out[1]) {
		t.Fatal("two runs with one seed differ")
	}
	p2 := p
	r1, r2 := RunMode(&p, ModeLive, 3, 42), RunMode(&p2, ModeLive, 3, 43)
	if r1.ETTR == r2.ETTR {
		t.Fatal("different seeds gave the same result")
	}
}

// Every mode at the defaults: time adds up to the wall clock, the modes are
// ordered as their costs say, and the policy ran (faults were decided).
func TestModesDefaults(t *testing.T) {
	p := Default()
	p.Days = 20
	ettr := map[Mode]float64{}
	for _, m := range Modes {
		r := RunMode(&p, m, 6, 1)
		for i := range r.Trials {
			tr := &r.Trials[i]
			checkSums(t, tr)
			if tr.Decisions == 0 || tr.Interrupts == 0 {
				t.Fatalf("%s: %d interrupts, %d policy faults", m, tr.Interrupts, tr.Decisions)
			}
		}
		ettr[m] = r.ETTR.Mean
		t.Logf("%s: ETTR %.4f ± %.4f", m, r.ETTR.Mean, r.ETTR.SE)
	}
	if !(ettr[ModeCR] < ettr[ModeRestart] && ettr[ModeRestart] < ettr[ModePeer] && ettr[ModeRestart] < ettr[ModeLive]) {
		t.Errorf("ETTR order: %v", ettr)
	}
}
