package chaos

import (
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		in   string
		want Plan
	}{
		{"", Plan{}},
		{"   ", Plan{}},
		{"kill-every=15s", Plan{Seed: 1, Actions: []Action{{Signal: syscall.SIGKILL, At: 15 * time.Second, Every: 15 * time.Second}}}},
		{"kill-at=5s", Plan{Seed: 1, Actions: []Action{{Signal: syscall.SIGKILL, At: 5 * time.Second}}}},
		{"stop-every=30s", Plan{Seed: 1, Actions: []Action{{Signal: syscall.SIGSTOP, At: 30 * time.Second, Every: 30 * time.Second}}}},
		{"stop-at=1m30s", Plan{Seed: 1, Actions: []Action{{Signal: syscall.SIGSTOP, At: 90 * time.Second}}}},
		{"seed=7", Plan{Seed: 7}},
		{"seed=-3", Plan{Seed: -3}},
		{"kill-every=10s,stop-at=25s,seed=1", Plan{Seed: 1, Actions: []Action{
			{Signal: syscall.SIGKILL, At: 10 * time.Second, Every: 10 * time.Second},
			{Signal: syscall.SIGSTOP, At: 25 * time.Second},
		}}},
		{" kill-at=500ms , seed=42 ", Plan{Seed: 42, Actions: []Action{{Signal: syscall.SIGKILL, At: 500 * time.Millisecond}}}},
		{"seed=9,kill-at=1s,kill-at=2s", Plan{Seed: 9, Actions: []Action{
			{Signal: syscall.SIGKILL, At: time.Second},
			{Signal: syscall.SIGKILL, At: 2 * time.Second},
		}}},
		{"kill-at-step=300,stop-at-step=800,kill-at-step=1000", Plan{Seed: 1, Actions: []Action{
			{Signal: syscall.SIGKILL, AtStep: 300},
			{Signal: syscall.SIGSTOP, AtStep: 800},
			{Signal: syscall.SIGKILL, AtStep: 1000},
		}}},
		{"kill-every=10s,max-faults=3", Plan{Seed: 1, MaxFaults: 3, Actions: []Action{
			{Signal: syscall.SIGKILL, At: 10 * time.Second, Every: 10 * time.Second},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"kill-every", "want key=value"},
		{"kill-at=5s,", "want key=value"},
		{"kill-every=15", "want a positive duration"},
		{"kill-every=0s", "want a positive duration"},
		{"kill-at=-5s", "want a positive duration"},
		{"stop-at=soon", "want a positive duration"},
		{"stop-every=", "want a positive duration"},
		{"seed=abc", `seed "abc": not an integer`},
		{"seed=1.5", "not an integer"},
		{"explode-at=5s", `unknown key "explode-at"`},
		{"Kill-At=5s", `unknown key "Kill-At"`},
		{"kill-at=5s,bogus=1s", `unknown key "bogus"`},
		{"kill-at-step=0", "want a positive integer"},
		{"kill-at-step=1.5", "want a positive integer"},
		{"stop-at-step=-3", "want a positive integer"},
		{"stop-at-step=5s", "want a positive integer"},
		{"max-faults=0", "want a positive integer"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = nil error, want one containing %q", tt.in, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%q) error = %q, want it to contain %q", tt.in, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "chaos: ") {
				t.Errorf("Parse(%q) error = %q, want the \"chaos: \" prefix", tt.in, err)
			}
		})
	}
}

// tick is one call of Due on the virtual clock and what it should return.
type tick struct {
	at        time.Duration
	canInject bool
	wantSig   syscall.Signal
	wantOK    bool
}

func TestInjectorDue(t *testing.T) {
	s := time.Second
	tests := []struct {
		name  string
		plan  string
		ticks []tick
	}{
		{"no plan never fires", "", []tick{
			{0, true, 0, false}, {time.Hour, true, 0, false},
		}},
		{"kill-every repeats", "kill-every=10s", []tick{
			{0, true, 0, false},
			{9 * s, true, 0, false},
			{10 * s, true, syscall.SIGKILL, true},
			{10 * s, true, 0, false}, // once per due time
			{15 * s, true, 0, false},
			{20 * s, true, syscall.SIGKILL, true},
			{29 * s, true, 0, false},
			{30 * s, true, syscall.SIGKILL, true},
		}},
		{"kill-every schedules from the firing time", "kill-every=10s", []tick{
			{12 * s, true, syscall.SIGKILL, true},
			{20 * s, true, 0, false},
			{21 * s, true, 0, false},
			{22 * s, true, syscall.SIGKILL, true},
		}},
		{"kill-at fires once", "kill-at=5s", []tick{
			{4 * s, true, 0, false},
			{5 * s, true, syscall.SIGKILL, true},
			{6 * s, true, 0, false},
			{time.Hour, true, 0, false},
		}},
		{"stop-at fires once", "stop-at=3s", []tick{
			{3 * s, true, syscall.SIGSTOP, true},
			{30 * s, true, 0, false},
		}},
		{"stop-every repeats", "stop-every=2s", []tick{
			{2 * s, true, syscall.SIGSTOP, true},
			{4 * s, true, syscall.SIGSTOP, true},
			{5 * s, true, 0, false},
			{6 * s, true, syscall.SIGSTOP, true},
		}},
		{"held while cannot inject, fires once allowed", "kill-at=5s", []tick{
			{5 * s, false, 0, false},
			{8 * s, false, 0, false},
			{9 * s, true, syscall.SIGKILL, true},
			{10 * s, true, 0, false},
		}},
		{"held faults do not pile up", "kill-every=1s", []tick{
			{1 * s, false, 0, false},
			{2 * s, false, 0, false},
			{5 * s, false, 0, false},
			{6 * s, true, syscall.SIGKILL, true},
			{6 * s, true, 0, false}, // the missed ones are not replayed
			{6500 * time.Millisecond, true, 0, false},
			{7 * s, true, syscall.SIGKILL, true},
		}},
		{"repeat waits while cannot inject", "stop-every=10s", []tick{
			{10 * s, true, syscall.SIGSTOP, true},
			{20 * s, false, 0, false},
			{25 * s, true, syscall.SIGSTOP, true},
			{34 * s, true, 0, false},
			{35 * s, true, syscall.SIGSTOP, true},
		}},
		{"two due actions fire on successive calls", "kill-at=5s,stop-at=5s", []tick{
			{5 * s, true, syscall.SIGKILL, true},
			{5 * s, true, syscall.SIGSTOP, true},
			{5 * s, true, 0, false},
		}},
		{"mixed plan", "kill-every=10s,stop-at=25s,seed=1", []tick{
			{10 * s, true, syscall.SIGKILL, true},
			{20 * s, true, syscall.SIGKILL, true},
			{25 * s, true, syscall.SIGSTOP, true},
			{30 * s, true, syscall.SIGKILL, true},
			{35 * s, true, 0, false},
			{40 * s, true, syscall.SIGKILL, true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.plan)
			if err != nil {
				t.Fatal(err)
			}
			in := NewInjector(p)
			for i, tk := range tt.ticks {
				sig, ok := in.Due(tk.at, tk.canInject)
				if sig != tk.wantSig || ok != tk.wantOK {
					t.Errorf("tick %d: Due(%v, %v) = (%v, %v), want (%v, %v)",
						i, tk.at, tk.canInject, sig, ok, tk.wantSig, tk.wantOK)
				}
			}
		})
	}
}

// stepTick is one call of DueAt.
type stepTick struct {
	at        time.Duration
	step      int
	canInject bool
	wantSig   syscall.Signal
	wantOK    bool
}

func TestInjectorDueAtStep(t *testing.T) {
	s := time.Second
	tests := []struct {
		name  string
		plan  string
		ticks []stepTick
	}{
		{"by step, whatever the time", "kill-at-step=100,stop-at-step=200", []stepTick{
			{time.Hour, -1, true, 0, false},
			{time.Hour, 99, true, 0, false},
			{time.Hour + s, 100, true, syscall.SIGKILL, true},
			{time.Hour + 2*s, 150, true, 0, false},
			{time.Hour + 3*s, 230, true, syscall.SIGSTOP, true},
			{time.Hour + 4*s, 1000, true, 0, false},
		}},
		{"a step reached while restarting waits for training", "kill-at-step=10", []stepTick{
			{s, 12, false, 0, false},
			{2 * s, 12, true, syscall.SIGKILL, true},
			{3 * s, 13, true, 0, false},
		}},
		{"two due on the same step fire one per call", "kill-at-step=10,kill-at-step=10", []stepTick{
			{s, 10, true, syscall.SIGKILL, true},
			{s, 10, true, syscall.SIGKILL, true},
			{s, 10, true, 0, false},
		}},
		{"max-faults bounds a repeating plan", "kill-every=1s,max-faults=2", []stepTick{
			{s, -1, true, syscall.SIGKILL, true},
			{2 * s, -1, true, syscall.SIGKILL, true},
			{3 * s, -1, true, 0, false},
			{time.Hour, -1, true, 0, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.plan)
			if err != nil {
				t.Fatal(err)
			}
			in := NewInjector(p)
			for i, tk := range tt.ticks {
				sig, ok := in.DueAt(tk.at, tk.step, tk.canInject)
				if sig != tk.wantSig || ok != tk.wantOK {
					t.Errorf("tick %d: DueAt(%v, %d, %v) = (%v, %v), want (%v, %v)",
						i, tk.at, tk.step, tk.canInject, sig, ok, tk.wantSig, tk.wantOK)
				}
			}
		})
	}
}

func TestPickDeterministic(t *testing.T) {
	ranks := []int{0, 1, 2, 3, 4, 5, 6, 7}
	picks := func(seed int64, n int) []int {
		in := NewInjector(Plan{Seed: seed})
		out := make([]int, n)
		for i := range out {
			out[i] = in.Pick(ranks)
		}
		return out
	}
	tests := []struct {
		name string
		seed int64
	}{{"seed 1", 1}, {"seed 7", 7}, {"seed 0", 0}, {"seed -42", -42}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := picks(tt.seed, 50), picks(tt.seed, 50)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("same seed gave %v and %v", a, b)
			}
			for _, r := range a {
				if r < 0 || r > 7 {
					t.Fatalf("Pick returned %d, not one of %v", r, ranks)
				}
			}
		})
	}
	if reflect.DeepEqual(picks(1, 50), picks(2, 50)) {
		t.Errorf("seeds 1 and 2 gave the same 50 picks")
	}
}

func TestPickFromGivenRanks(t *testing.T) {
	tests := []struct {
		name  string
		ranks []int
	}{
		{"single", []int{3}},
		{"sparse", []int{2, 5, 11}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := NewInjector(Plan{Seed: 5})
			for range 100 {
				r := in.Pick(tt.ranks)
				found := false
				for _, x := range tt.ranks {
					found = found || x == r
				}
				if !found {
					t.Fatalf("Pick(%v) = %d", tt.ranks, r)
				}
			}
		})
	}
}
