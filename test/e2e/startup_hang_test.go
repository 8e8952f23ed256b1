package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// Rank 0 stopped from outside while it is still importing torch (its
// standby's preload), the moment its pid is known: the other ranks are not
// held back waiting for its store (the launch would wait up to 30 s for the
// import to end), and the hang is called about two seconds later. The
// stop's time is the test's own, so the detection is measured from it.
func TestTorchStopDuringRankZerosImportIsAHang(t *testing.T) {
	requireTorch(t)
	script := filepath.Join(repoRoot, "test", "e2e", "testdata", "tutorial_train.py")
	cmd, out, runDir := startBulsajo(t, "--nproc-per-node", "3", "--", torchPython, script, "4", "2", "--samples", "1024")
	var pid int
	waitFor(t, 60*time.Second, "rank 0's pid", func() bool {
		b, err := os.ReadFile(filepath.Join(runDir, "pids", "rank0"))
		if err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return pid > 0
	})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(err); code != 0 || !strings.Contains(out.String(), "✓ done") {
			t.Fatalf("exit %d, want a success:\n%s", code, out.String())
		}
	case <-time.After(4 * time.Minute):
		t.Fatalf("not done in 4 min:\n%s", out.String())
	}
	r := result{out: out.String(), runDir: runDir}
	var hang *events.Event
	for _, e := range r.events(t) {
		if e.Type == events.FaultDetected {
			if hang != nil {
				t.Fatalf("more than one fault:\n%s", r.out)
			}
			hang = &e
		}
	}
	if hang == nil || hang.Cause != "hang" || hang.Rank == nil || *hang.Rank != 0 {
		t.Fatalf("fault %+v, want a hang of rank 0:\n%s", hang, r.out)
	}
	// About 2 s (the threshold); 15 s leaves a loaded machine room and is
	// half the 30 s the launch waited for the import before.
	if d := hang.Time.Sub(stoppedAt); d > 15*time.Second {
		t.Errorf("the hang was called %s after the stop, want about 2 s:\n%s", d.Round(time.Millisecond), r.out)
	}
}

// Ctrl-C while rank 0 imports (the launch holds the other ranks until rank
// 0's store listens, up to a 30 s cap): bulsajo stops at once, not when the
// import ends. A standby preload that sleeps 60 s stands for a slow import;
// the first case's preload ignores SIGTERM, so it takes the second Ctrl-C
// (kill now) with a 60 s stop grace. No torch needed.
func TestCtrlCDuringRankZerosImport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ignore bool
	}{{"dies on SIGTERM", false}, {"ignores SIGTERM: second Ctrl-C", true}} {
		t.Run(tc.name, func(t *testing.T) {
			mods := t.TempDir()
			mod := "import os, signal, sys, time\n"
			if tc.ignore {
				mod += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
			}
			mod += "open(os.path.join(" + strconv.Quote(mods) + ", 'importing-%d' % os.getpid()), 'w').close()\ntime.sleep(60)\n"
			os.WriteFile(filepath.Join(mods, "slowimport.py"), []byte(mod), 0o644)
			script := filepath.Join(mods, "train.py")
			os.WriteFile(script, []byte("import time\ntime.sleep(60)\n"), 0o644)
			t.Setenv("PYTHONPATH", mods)
			id := "ctrlcimport" + strconv.FormatBool(tc.ignore)
			cmd, out, runDir := startBulsajo(t, "--nproc-per-node", "3", "--run-id", id, "--standby-preload", "slowimport",
				"--stop-grace", "60s", "--", torchPython, script)
			var pid int
			waitFor(t, 30*time.Second, "rank 0 importing", func() bool {
				b, err := os.ReadFile(filepath.Join(runDir, "pids", "rank0"))
				if err == nil {
					pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				}
				_, err = os.Stat(filepath.Join(mods, "importing-"+strconv.Itoa(pid)))
				return pid > 0 && err == nil
			})
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			cmd.Process.Signal(syscall.SIGINT)
			if tc.ignore {
				select {
				case err := <-done:
					t.Fatalf("exited (%v) while rank 0 ignores SIGTERM within its grace:\n%s", err, out.String())
				case <-time.After(time.Second):
				}
				cmd.Process.Signal(syscall.SIGINT)
			}
			select {
			case err := <-done:
				if c := exitCode(err); c != 130 {
					t.Errorf("exit %d, want 130:\n%s", c, out.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("bulsajo did not stop within 15 s of Ctrl-C during rank 0's import:\n%s", out.String())
			}
			if strings.Contains(out.String(), "did not run for") {
				t.Errorf("the launch's wait was reported as bulsajo not running:\n%s", out.String())
			}
			waitFor(t, 5*time.Second, "rank 0 gone", func() bool { return !alive(pid) })
			for _, r := range []string{"rank1", "rank2"} {
				if _, err := os.Stat(filepath.Join(runDir, "pids", r)); err == nil {
					t.Errorf("%s was started after the Ctrl-C", r)
				}
			}
			waitNone(t, "BULSAJO_RUN_ID="+id, 5*time.Second)
		})
	}
}

// A rank 0 whose import is slow (3 s here) holds the launch that long; that
// is the job starting, not bulsajo failing to run. The first generation
// fails at once, so the restart activates standbys still importing. Before,
// the tick after that launch said "bulsajo did not run for 3.0s" and left
// the time out of the policy's clock.
func TestSlowImportIsNotBulsajoStalling(t *testing.T) {
	mods := t.TempDir()
	os.WriteFile(filepath.Join(mods, "slowimport.py"), []byte("import time\ntime.sleep(3)\n"), 0o644)
	script := filepath.Join(mods, "train.py")
	os.WriteFile(script, []byte("import os, sys\n"+
		"if os.environ['TORCHELASTIC_RESTART_COUNT'] == '0': sys.exit(3)\n"+
		"print('trained', flush=True)\n"), 0o644)
	t.Setenv("PYTHONPATH", mods)
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--max-restarts", "1", "--standby-preload", "slowimport",
		"--", torchPython, script)
	if r.code != 0 || strings.Count(r.out, "trained") != 2 {
		t.Fatalf("exit %d, want both ranks of the restart to run:\n%s", r.code, r.out)
	}
	if strings.Contains(r.out, "did not run for") {
		t.Errorf("the launch's wait for rank 0's import was reported as bulsajo not running:\n%s", r.out)
	}
}
