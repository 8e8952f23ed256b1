package supervisor

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/straggler"
)

// slowNode is a live-mode node of 3 ranks that report work time every
// few ms, rank 2 at half the others' speed; it records regroups.
type slowNode struct {
	scriptedNode
	regroups []launcher.RegroupSpec
	rmu      sync.Mutex
}

func (n *slowNode) SlotOfRank(gen, rank int) int { return rank }

func (n *slowNode) Regroup(s launcher.RegroupSpec) error {
	n.rmu.Lock()
	n.regroups = append(n.regroups, s)
	n.rmu.Unlock()
	return nil
}

func (n *slowNode) moved() []launcher.RegroupSpec {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	return append([]launcher.RegroupSpec(nil), n.regroups...)
}

type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// The action: replace moves a straggler at once when the GPU's throttle
// reasons back it, otherwise only after ReplaceAfter; warn never moves;
// and never on a single window.
func TestStragglerAction(t *testing.T) {
	cases := []struct {
		name, action string
		evidence     string
		replaceAfter time.Duration
		wantMove     bool
		wantLine     string
	}{
		{"replace with hardware evidence", "replace", "HW_SLOWDOWN", time.Hour, true, "(GPU 2: HW_SLOWDOWN)"},
		{"replace without evidence waits", "replace", "", time.Hour, false, "(GPU 2: no hardware evidence)"},
		{"replace without evidence after the sustained period", "replace", "", 50 * time.Millisecond, true, "(GPU 2: no hardware evidence)"},
		{"warn never moves", "warn", "HW_SLOWDOWN", 0, false, "(GPU 2: HW_SLOWDOWN)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			var once sync.Once
			node := &slowNode{scriptedNode: scriptedNode{ev: make(chan launcher.Event, 1024)}}
			node.onGen = func(n *scriptedNode, s launcher.GenerationSpec) {
				n.ev <- launcher.Launched{Gen: s.Gen, World: s.WorldSize, At: time.Now()}
				step := 0
				for {
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
					step++
					for r := 0; r < s.WorldSize; r++ {
						n.ev <- launcher.Progress{Gen: s.Gen, Rank: r, Step: step, At: time.Now()}
						work := 4 * time.Millisecond
						if r == 2 {
							work = 8 * time.Millisecond
						}
						n.ev <- launcher.Work{Gen: s.Gen, Rank: r, Steps: 1, Work: work, Wall: 10 * time.Millisecond}
					}
				}
			}
			out := &syncWriter{}
			sigs := make(chan os.Signal, 1)
			cfg := Config{RunID: "t", Tick: 5 * time.Millisecond, Console: console.New(out),
				Policy: policy.Config{WorldSize: 3, MaxRestarts: 3, Live: true, Replace: true},
				Straggler: StragglerConfig{Action: tc.action, ReplaceAfter: tc.replaceAfter, Node: "b",
					Detector: straggler.Config{Window: 20 * time.Millisecond},
					Evidence: func(slot int) string {
						if slot == 2 {
							return tc.evidence
						}
						return ""
					}}}
			done := make(chan Result, 1)
			go func() { done <- Run(cfg, node, sigs) }()
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) && !strings.Contains(out.String(), "⚠ straggler") {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // 15 windows more: a move would have come
			once.Do(func() { close(stop) })
			sigs <- syscall.SIGTERM
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not end")
			}
			s := out.String()
			if !strings.Contains(s, "⚠ straggler: rank 2 on node b at 0.5") || !strings.Contains(s, tc.wantLine) {
				t.Fatalf("want rank 2 named with %q; output:\n%s", tc.wantLine, s)
			}
			for _, r := range []string{"rank 0", "rank 1"} {
				if strings.Contains(s, "⚠ straggler: "+r) {
					t.Errorf("%s named:\n%s", r, s)
				}
			}
			moves := node.moved()
			if tc.wantMove {
				if len(moves) != 1 || len(moves[0].Kill) != 1 || moves[0].Kill[0] != 2 || !strings.Contains(s, "↻ straggler: moving rank 2") {
					t.Fatalf("want one regroup killing rank 2, got %+v; output:\n%s", moves, s)
				}
			} else if len(moves) > 0 || strings.Contains(s, "moving") {
				t.Fatalf("moved: %+v; output:\n%s", moves, s)
			}
		})
	}
}
