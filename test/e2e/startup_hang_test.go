package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// A rank stopped (SIGSTOP) before the job's first step: no progress has
// armed the watchdog, so only the process state tells. testdata/stop_first.py
// stops rank 0 of the first generation before it runs the training script;
// rank 0 hosts the rendezvous (restart mode) or the generation's store (live
// mode), so the others wait for it without end. Before the fix, restart mode
// waited for the 5 min startup timeout, and live mode failed the group after
// 78 s and then kept the stopped rank as a survivor, hanging again.

func stopFirst() string { return filepath.Join(repoRoot, "test", "e2e", "testdata", "stop_first.py") }

// firstStoppedHang checks that the run's first fault is the stopped rank 0,
// named as a stopped process before any step, and that it was the only one.
func firstStoppedHang(t *testing.T, r result) {
	t.Helper()
	var faults []events.Event
	for _, e := range r.events(t) {
		if e.Type == events.FaultDetected {
			faults = append(faults, e)
		}
	}
	if len(faults) != 1 {
		t.Fatalf("%d faults, want exactly the one hang:\n%s", len(faults), r.out)
	}
	f := faults[0]
	if f.Cause != "hang" || f.Rank == nil || *f.Rank != 0 || !strings.Contains(f.Detail, "process stopped") {
		t.Fatalf("fault %+v, want a hang of rank 0 named as a stopped process:\n%s", f, r.out)
	}
	if f.Step != nil && *f.Step >= 0 {
		t.Errorf("fault at step %d, want before the first step", *f.Step)
	}
	if !strings.Contains(r.out, "stop_first: rank 0 stops itself") {
		t.Errorf("rank 0 did not stop itself:\n%s", r.out)
	}
}

// Restart mode, an unmodified script that reports no progress at all.
func TestTorchStopBeforeFirstStepIsAHang(t *testing.T) {
	requireTorch(t)
	script := filepath.Join(repoRoot, "test", "e2e", "testdata", "tutorial_train.py")
	r := bulsajo(t, 4*time.Minute, "--nproc-per-node", "3", "--",
		torchPython, stopFirst(), script, "4", "2", "--samples", "1024")
	if r.code != 0 || !strings.Contains(r.out, "✓ done") {
		t.Fatalf("exit %d, want a success:\n%s", r.code, r.out)
	}
	firstStoppedHang(t, r)
}

// Live mode: the survivors regroup without the stopped rank (killed), a
// replacement takes its place, and the ranks end with identical parameters.
func TestLiveStopBeforeTheGroupFormsIsAHang(t *testing.T) {
	requireTorch(t)
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	script := filepath.Join(repoRoot, "examples", "live_ddp.py")
	r := bulsajo(t, 4*time.Minute, "--recovery", "live", "--nproc-per-node", "4", "--",
		torchPython, stopFirst(), script, "--steps", "300", "--result-dir", results)
	if r.code != 0 || !strings.Contains(r.out, "✓ done") {
		t.Fatalf("exit %d, want a success:\n%s", r.code, r.out)
	}
	firstStoppedHang(t, r)
	ents, _ := os.ReadDir(results)
	if n := len(ents); n < 3 || n > 4 {
		t.Fatalf("%d result files, want 3 or 4 (the survivors, and the replacement if it joined in time)", n)
	}
	checkLiveResults(t, results, len(ents))
}
