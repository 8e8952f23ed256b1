package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/store"
)

// scriptedNode is a Node whose workers exist only as events: a unit-test
// double for the supervisor's wiring (the real agent is tested end to end).
type scriptedNode struct {
	mu     sync.Mutex
	ev     chan launcher.Event
	specs  []launcher.GenerationSpec
	stops  []int
	onGen  func(n *scriptedNode, spec launcher.GenerationSpec)
	signal []syscall.Signal
	// live
	regroups  []launcher.RegroupSpec
	onRegroup func(n *scriptedNode, spec launcher.RegroupSpec)
	stopped   []int // what Stopped reports
	culprit   int   // what Culprit reports (with its CPU samples)
}

func (n *scriptedNode) StartGeneration(s launcher.GenerationSpec) error {
	n.mu.Lock()
	n.specs = append(n.specs, s)
	n.mu.Unlock()
	go n.onGen(n, s)
	return nil
}

func (n *scriptedNode) StopGeneration(gen int, _ time.Duration) {
	n.mu.Lock()
	n.stops = append(n.stops, gen)
	n.mu.Unlock()
	go func() { n.ev <- launcher.Stopped{Gen: gen, At: time.Now()} }()
}

func (n *scriptedNode) Regroup(s launcher.RegroupSpec) error {
	n.mu.Lock()
	n.regroups = append(n.regroups, s)
	n.mu.Unlock()
	if n.onRegroup != nil {
		go n.onRegroup(n, s)
	}
	return nil
}

func (n *scriptedNode) SpawnJoiners(int) error                { return nil }
func (n *scriptedNode) Signal(int, int, syscall.Signal) error { return nil }
func (n *scriptedNode) LiveRanks(int) []int                   { return []int{0} }
func (n *scriptedNode) Culprit(int, bool) (int, string)       { return n.culprit, "scripted" }
func (n *scriptedNode) Busy(int) []int                        { return nil }
func (n *scriptedNode) Stopped(int) []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopped
}
func (n *scriptedNode) Events() <-chan launcher.Event { return n.ev }

func TestRestartAfterExitIsLoggedAndStored(t *testing.T) {
	node := &scriptedNode{ev: make(chan launcher.Event, 64), culprit: -1, onGen: func(n *scriptedNode, s launcher.GenerationSpec) {
		now := time.Now()
		n.ev <- launcher.Launched{Gen: s.Gen, At: now}
		for r := 0; r < s.WorldSize; r++ {
			n.ev <- launcher.Progress{Gen: s.Gen, Rank: r, Step: 5, At: now}
		}
		if s.Gen == 1 {
			n.ev <- launcher.Exited{Gen: 1, Rank: 1, Code: 137, Signal: "SIGKILL", At: time.Now()}
			return
		}
		for r := 0; r < s.WorldSize; r++ {
			n.ev <- launcher.Exited{Gen: s.Gen, Rank: r, At: time.Now()}
		}
	}}
	dir := t.TempDir()
	log, err := events.Create(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewMemory()
	res := Run(Config{RunID: "t", Policy: policy.Config{WorldSize: 2, MaxRestarts: 3},
		Console: console.New(io.Discard), Log: log, Store: st}, node, nil)
	if res.Outcome != policy.Succeeded {
		t.Fatalf("outcome %v (%s)", res.Outcome, res.Reason)
	}
	if len(node.specs) != 2 || node.specs[1].RestartCount != 1 || node.specs[0].MasterPort == 0 {
		t.Fatalf("specs %+v: want 2 generations, the second with restart count 1", node.specs)
	}
	if len(node.stops) != 1 || node.stops[0] != 1 {
		t.Errorf("stops %v, want [1]", node.stops)
	}
	evs, err := events.ReadFile(log.Path())
	if err != nil {
		t.Fatal(err)
	}
	var fault events.Event
	for _, e := range evs {
		if e.Type == events.FaultDetected {
			fault = e
		}
	}
	if fault.Rank == nil || *fault.Rank != 1 || fault.Detail != "SIGKILL" || fault.DetectMS < 0 {
		t.Errorf("fault %+v: want rank 1 SIGKILL with a detection latency", fault)
	}
	stored, _ := st.List(context.Background(), "/bulsajo/runs/t/events/")
	if len(stored) != len(evs) {
		t.Errorf("%d events in the store, %d in the log", len(stored), len(evs))
	}
	gen, err := st.Get(context.Background(), "/bulsajo/runs/t/generation")
	var g events.Event
	if err != nil || json.Unmarshal(gen.Value, &g) != nil || g.Gen != 2 {
		t.Errorf("stored generation %s (%v), want gen 2", gen.Value, err)
	}
}

// Live mode: a collective failure names no one, so the culprit is looked
// for by process state only. A stopped rank is killed and left out of the
// regroup; with none stopped, the same members re-form, and the rank the
// CPU samples would blame is not killed for a collective failure.
func TestCollectiveFailureBlamesOnlyAStoppedRank(t *testing.T) {
	for _, tt := range []struct {
		name      string
		stopped   []int
		survivors []int
		kill      []int
	}{
		{"rank 2 stopped", []int{2}, []int{0, 1, 3}, []int{2}},
		{"none stopped", nil, []int{0, 1, 2, 3}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			node := &scriptedNode{ev: make(chan launcher.Event, 64), stopped: tt.stopped, culprit: 1,
				onGen: func(n *scriptedNode, s launcher.GenerationSpec) {
					n.ev <- launcher.Launched{Gen: s.Gen, At: time.Now()}
					n.ev <- launcher.CollectiveFailed{Gen: s.Gen, Rank: 0, Detail: "store never listened", At: time.Now()}
				},
				onRegroup: func(n *scriptedNode, s launcher.RegroupSpec) {
					n.mu.Lock()
					n.stopped = nil // killed
					n.mu.Unlock()
					n.ev <- launcher.Launched{Gen: s.Gen, At: time.Now()}
					for r := 0; r < s.WorldSize; r++ {
						n.ev <- launcher.Exited{Gen: s.Gen, Rank: r, At: time.Now()}
					}
				}}
			var out bytes.Buffer
			res := Run(Config{RunID: "t", Policy: policy.Config{WorldSize: 4, MaxRestarts: 3, Live: true, MinWorld: 1},
				Console: console.New(&out)}, node, nil)
			if res.Outcome != policy.Succeeded {
				t.Fatalf("outcome %v (%s)", res.Outcome, res.Reason)
			}
			// the fault has its line on the terminal, as every fault does
			if n := strings.Count(out.String(), "! collective failed, no rank lost (rank 0: store never listened)\n"); n != 1 {
				t.Errorf("%d fault lines, want 1:\n%s", n, out.String())
			}
			if len(node.regroups) != 1 {
				t.Fatalf("regroups %+v, want one", node.regroups)
			}
			g := node.regroups[0]
			if !slices.Equal(g.Survivors, tt.survivors) || !slices.Equal(g.Kill, tt.kill) {
				t.Errorf("regroup survivors %v kill %v, want %v and %v", g.Survivors, g.Kill, tt.survivors, tt.kill)
			}
		})
	}
}

// A survivor that died before its node moved it into the regroup's
// generation reports its exit under the old one; the policy counts it as
// the new generation's rank (renumbered), and its fault line still names
// its own log and its own error.
func TestAnExitCarriedIntoTheNextGenerationNamesItsOwnLog(t *testing.T) {
	node := &scriptedNode{ev: make(chan launcher.Event, 64),
		onGen: func(n *scriptedNode, s launcher.GenerationSpec) {
			n.ev <- launcher.Launched{Gen: s.Gen, At: time.Now()}
			n.ev <- launcher.Exited{Gen: 1, Rank: 0, Code: 1, LastError: "E0", Log: "/x/rank0.log", At: time.Now()}
			n.ev <- launcher.Exited{Gen: 1, Rank: 1, Code: 1, LastError: "E1", Log: "/x/rank1.log", At: time.Now()}
		},
		onRegroup: func(n *scriptedNode, s launcher.RegroupSpec) {
			n.ev <- launcher.Launched{Gen: s.Gen, At: time.Now()}
			if s.WorldSize == 1 {
				n.ev <- launcher.Exited{Gen: s.Gen, Rank: 0, At: time.Now()}
			}
		}}
	var out bytes.Buffer
	res := Run(Config{RunID: "t", Policy: policy.Config{WorldSize: 3, MaxRestarts: 3, Live: true, MinWorld: 1},
		Console: console.New(&out)}, node, nil)
	if res.Outcome != policy.Succeeded {
		t.Fatalf("outcome %v (%s):\n%s", res.Outcome, res.Reason, out.String())
	}
	if len(node.regroups) != 2 || !slices.Equal(node.regroups[1].Survivors, []int{1}) {
		t.Fatalf("regroups %+v, want [1 2] and then [1] (old rank 2, now rank 1)", node.regroups)
	}
	for _, want := range []string{
		"! rank 0 exited (exit code 1: E0) · detected in ",
		"· see /x/rank0.log\n",
		"! rank 0 exited (exit code 1: E1) · detected in ", // old rank 1 is rank 0 of generation 2
		"· see /x/rank1.log\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q on the terminal:\n%s", want, out.String())
		}
	}
}
