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

func TestCleanRunExitsZero(t *testing.T) {
	r := bulsajo(t, 30*time.Second, "--nproc-per-node", "3", "--", fakeBin, "-steps", "10")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.code, r.out)
	}
	for rank := 0; rank < 3; rank++ {
		if !strings.Contains(r.out, "[rank"+strconv.Itoa(rank)+"] step 9") {
			t.Errorf("rank %d output not streamed with its prefix:\n%s", rank, r.out)
		}
		log, err := os.ReadFile(filepath.Join(r.runDir, "logs", "rank"+strconv.Itoa(rank)+".log"))
		if err != nil || !strings.Contains(string(log), "step 9") {
			t.Errorf("rank %d log missing or incomplete (%v): %q", rank, err, log)
		}
	}
	evs := r.events(t)
	last := evs[len(evs)-1]
	if last.Type != events.RunFinished || last.Outcome != "succeeded" || last.Summary == nil {
		t.Fatalf("last event %+v, want run_finished succeeded with summary", last)
	}
	if last.Summary.Steps != 9 {
		t.Errorf("summary steps %d, want 9", last.Summary.Steps)
	}
}

func TestWorkerExitIsRestarted(t *testing.T) {
	// Rank 1 exits with code 3 at step 5, in generation 1 only.
	r := bulsajo(t, 30*time.Second, "--nproc-per-node", "2", "--", fakeBin,
		"-steps", "15", "-fail-at-step", "5", "-fail-rank", "1", "-fail-gens", "1", "-exit-code", "3", "-stderr", "boom: bad batch")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.code, r.out)
	}
	evs := r.events(t)
	var fault *events.Event
	for i := range evs {
		if evs[i].Type == events.FaultDetected {
			fault = &evs[i]
		}
	}
	if fault == nil || fault.Rank == nil || *fault.Rank != 1 || !strings.Contains(fault.Detail, "exit code 3: boom: bad batch") {
		t.Fatalf("fault event %+v: want rank 1, exit code 3 with the last stderr line", fault)
	}
	if fault.DetectMS > 100 {
		t.Errorf("exit detected after %.1f ms, want within 100 ms", fault.DetectMS)
	}
	if n := r.count(events.Recovered, evs); n != 1 {
		t.Errorf("%d recovered events, want 1", n)
	}
	if !strings.Contains(r.out, "! rank 1 exited (exit code 3: boom: bad batch)") {
		t.Errorf("no fault line on the terminal:\n%s", r.out)
	}
}

func TestRestartCountIncreases(t *testing.T) {
	// A worker that fails in generations 1 and 2 sees TORCHELASTIC_RESTART_COUNT 0, 1, 2.
	script := filepath.Join(t.TempDir(), "w.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
echo "count=$TORCHELASTIC_RESTART_COUNT max=$TORCHELASTIC_MAX_RESTARTS gen=$BULSAJO_GENERATION"
sleep 0.2
[ "$TORCHELASTIC_RESTART_COUNT" -ge 2 ] || exit 7
`), 0o755)
	r := bulsajo(t, 30*time.Second, "--nproc-per-node", "1", "--max-restarts", "5", "--crash-loop-limit", "10", "--", script)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	for i := 0; i <= 2; i++ {
		want := "count=" + strconv.Itoa(i) + " max=5 gen=" + strconv.Itoa(i+1)
		if !strings.Contains(r.out, want) {
			t.Errorf("missing %q in:\n%s", want, r.out)
		}
	}
}

func TestCrashLoopIsReported(t *testing.T) {
	start := time.Now()
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--max-restarts", "100", "--", fakeBin,
		"-fail-at-step", "0", "-exit-code", "2", "-stderr", "SyntaxError: invalid syntax")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", r.code, r.out)
	}
	if !strings.Contains(r.out, "crash loop") || !strings.Contains(r.out, "SyntaxError: invalid syntax") {
		t.Errorf("want a crash-loop message with the last error:\n%s", r.out)
	}
	if n := strings.Count(r.out, "! rank"); n > 3 {
		t.Errorf("%d faults before giving up, want 3", n)
	}
	t.Logf("crash loop reported after %v", time.Since(start))
}

func TestMaxRestartsExhausted(t *testing.T) {
	// Fails after making progress (so not a crash loop), every generation.
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "1", "--max-restarts", "2", "--", fakeBin,
		"-steps", "50", "-fail-at-step", "3", "-exit-code", "9")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", r.code, r.out)
	}
	if !strings.Contains(r.out, "max restarts (2) exhausted") {
		t.Errorf("want the reason on the terminal:\n%s", r.out)
	}
	if n := r.count(events.GenerationStart, r.events(t)); n != 3 {
		t.Errorf("%d generations, want 3 (1 + 2 restarts)", n)
	}
}

func TestHangIsDetectedAndRecovered(t *testing.T) {
	// Rank 0 stops at step 10 in generation 1 and rank 1 waits for it at
	// step 12, as in a collective; steps are 20 ms, so the adaptive
	// threshold is its floor (lowered here to 1 s).
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--hang-floor", "1s", "--", fakeBin,
		"-steps", "30", "-hang-at-step", "10", "-others-hang-at-step", "12", "-fail-rank", "0", "-fail-gens", "1")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.code, r.out)
	}
	evs := r.events(t)
	found := false
	for _, e := range evs {
		if e.Type == events.FaultDetected && e.Cause == "hang" {
			found = true
			if e.DetectMS < 1000 || e.DetectMS > 2500 {
				t.Errorf("hang detected after %.0f ms of silence, want 1–2.5 s", e.DetectMS)
			}
			if e.Rank == nil || *e.Rank != 0 {
				t.Errorf("culprit %v, want rank 0 (behind the other rank)", e.Rank)
			}
		}
	}
	if !found {
		t.Fatalf("no hang fault in events:\n%s", r.out)
	}
}

func TestSigstoppedWorkerIsDetected(t *testing.T) {
	// --chaos sends a real SIGSTOP at about step 50; the other rank waits at
	// step 100 as in a collective. The stopped process is named as the
	// culprit. (Detection time is checked with real PyTorch.)
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--chaos", "stop-at=1s", "--", fakeBin,
		"-steps", "150", "-step-time", "20ms", "-fail-gens", "1", "-hang-at-step", "100")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.code, r.out)
	}
	if !strings.Contains(r.out, "! hang") {
		t.Fatalf("SIGSTOP not detected as a hang:\n%s", r.out)
	}
	named := false
	for _, e := range r.events(t) {
		if e.Type == events.FaultDetected && e.Cause == "hang" && strings.Contains(e.Detail, "process stopped") {
			named = true
		}
	}
	if !named {
		t.Errorf("the stopped process was not named as the culprit:\n%s", r.out)
	}
}

func TestRankThatNeverExitsEndsTheJob(t *testing.T) {
	// Rank 0 finishes; rank 1 hangs (forever) at its last step: after the
	// exit grace the job ends with an error naming it, instead of waiting.
	r := bulsajo(t, 30*time.Second, "--nproc-per-node", "2", "--exit-grace", "1s", "--", fakeBin,
		"-steps", "20", "-fail-rank", "1", "-hang-at-step", "19")
	if r.code != 1 || !strings.Contains(r.out, "ranks [1] still running 1s after rank 0 finished") {
		t.Fatalf("exit %d, want 1 with the hung rank named:\n%s", r.code, r.out)
	}
}

func TestWorkerIgnoringSigtermIsKilled(t *testing.T) {
	// Rank 0 dies; rank 1 ignores SIGTERM, so the stop must escalate.
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--stop-grace", "500ms", "--", fakeBin,
		"-steps", "200", "-fail-at-step", "5", "-fail-rank", "0", "-fail-gens", "1", "-ignore-sigterm")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	if n := r.count(events.Recovered, r.events(t)); n != 1 {
		t.Fatalf("%d recoveries, want 1:\n%s", n, r.out)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"run"}, "no command to run"},
		{"unknown flag", []string{"run", "--bogus", "--", "true"}, "unknown flag: --bogus"},
		{"nproc zero", []string{"run", "--nproc-per-node", "0", "--", "true"}, "must be at least 1"},
		{"nproc not a number", []string{"run", "--nproc-per-node", "four", "--", "true"}, "want an integer"},
		{"command not found", []string{"run", "--", "/no/such/program"}, "command not found: /no/such/program"},
		{"bad chaos", []string{"run", "--chaos", "explode=1s", "--", "true"}, "unknown key"},
		{"bad regex", []string{"run", "--progress-regex", "step", "--", "true"}, "capturing the step"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bad gpu health", []string{"run", "--gpu-health", "maybe", "--", "true"}, "want auto or off"},
		{"bad gpu xid", []string{"run", "--gpu-xid", "evict=79", "--", "true"}, "--gpu-xid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := bulsajo(t, 10*time.Second, c.args...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2; output:\n%s", r.code, r.out)
			}
			lines := strings.Split(strings.TrimSpace(r.out), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Errorf("want one line containing %q, got:\n%s", c.want, r.out)
			}
		})
	}
}

func TestTorchrunSpellingsAccepted(t *testing.T) {
	r := bulsajo(t, 30*time.Second, "--nproc_per_node=2", "--max_restarts=1", "--redirects=1", "--tee=1", "--", fakeBin, "-steps", "3")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	if !strings.Contains(r.out, "[rank1] step 2") {
		t.Errorf("--nproc_per_node=2 not honoured:\n%s", r.out)
	}
}

func TestSignalsStopEverything(t *testing.T) {
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 130}, {syscall.SIGTERM, 143}} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			pidDir := t.TempDir()
			cmd, out, _ := startBulsajo(t, "--nproc-per-node", "3", "--", fakeBin, "-steps", "100000", "-pid-dir", pidDir)
			waitFor(t, 10*time.Second, "3 workers", func() bool { n, _ := os.ReadDir(pidDir); return len(n) == 3 })
			cmd.Process.Signal(tc.sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if c := exitCode(err); c != tc.code {
					t.Errorf("exit %d, want %d:\n%s", c, tc.code, out.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("bulsajo did not stop on %v:\n%s", tc.sig, out.String())
			}
			assertPidsDead(t, pidDir)
		})
	}
}

func TestKill9OfBulsajoLeavesNoWorker(t *testing.T) {
	pidDir := t.TempDir()
	cmd, _, runDir := startBulsajo(t, "--nproc-per-node", "3", "--", fakeBin, "-steps", "100000", "-pid-dir", pidDir)
	waitFor(t, 10*time.Second, "3 workers", func() bool { n, _ := os.ReadDir(pidDir); return len(n) == 3 })
	cmd.Process.Kill() // SIGKILL: no cleanup code runs
	cmd.Wait()
	assertPidsDead(t, pidDir)
	// What was logged before the kill is intact.
	evs, err := events.ReadFile(filepath.Join(runDir, "events.jsonl"))
	if err != nil || len(evs) < 2 || evs[0].Type != events.RunStarted {
		t.Fatalf("event log after kill -9: %v %+v", err, evs)
	}
}

func assertPidsDead(t *testing.T, pidDir string) {
	t.Helper()
	ents, _ := os.ReadDir(pidDir)
	if len(ents) == 0 {
		t.Fatal("no worker pids recorded")
	}
	waitFor(t, 5*time.Second, "workers to be gone", func() bool {
		for _, e := range ents {
			pid, _ := strconv.Atoi(e.Name())
			if alive(pid) {
				return false
			}
		}
		return true
	})
}
