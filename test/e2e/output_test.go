package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// What a fault puts on the terminal, with real torch: one line, the right
// cause, where the full output is. The survivors' errors that follow (gloo's
// "Connection reset/closed by peer" tracebacks) go to the rank logs only.

var peerError = regexp.MustCompile(`by peer`)

// survivorErrors counts the gloo errors in the rank logs: what the terminal
// was spared.
func survivorErrors(t *testing.T, runDir string) int {
	n := 0
	logs, _ := filepath.Glob(filepath.Join(runDir, "logs", "rank*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		n += len(peerError.FindAll(b, -1))
	}
	return n
}

func TestTorchKilledWorkerIsOneLine(t *testing.T) {
	requireTorch(t)
	cmd, out, runDir := startBulsajo(t, append([]string{"--nproc-per-node", "3", "--run-id", "oneline"}, trainArgs(t, "200")...)...)
	waitFor(t, 60*time.Second, "training to start", func() bool { return strings.Contains(out.String(), "step 20 ") })
	killRank(t, runDir, 1)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("bulsajo: %v\n%s", err, out.String())
	}
	term := out.String()
	faults := regexp.MustCompile(`(?m)^! .*$`).FindAllString(term, -1)
	if len(faults) == 0 {
		t.Fatalf("no fault line:\n%s", term)
	}
	// The cause is the signal alone, and the line says where rank 1's output is.
	want := regexp.MustCompile(`^! rank 1 exited \(SIGKILL\) · detected in [0-9.]+ m?s · see \S*/logs/rank1\.log$`)
	if !want.MatchString(faults[0]) {
		t.Errorf("fault line %q, want %v", faults[0], want)
	}
	if peerError.MatchString(term) || strings.Contains(term, "Traceback") {
		t.Errorf("the survivors' errors reached the terminal:\n%s", term)
	}
	t.Logf("survivors' errors kept in the rank logs: %d; terminal:\n%s", survivorErrors(t, runDir), term)
}

func TestTorchOwnExceptionIsShown(t *testing.T) {
	requireTorch(t)
	r := bulsajo(t, 3*time.Minute, append([]string{"--nproc-per-node", "3", "--max-restarts", "0"},
		trainArgs(t, "200", "--fail-at-step", "30")...)...)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", r.code, r.out)
	}
	// Rank 0's own traceback stays on the terminal, before the fault line,
	// which names it as the cause: its exit, or (torch can take seconds to
	// exit after an exception) a hang whose culprit it is.
	// torch 2.x prints an uncaught exception's lines behind "[rankN]: ".
	tb := index(r.out, `\[rank0\] (?:\[rank0\]: )?Traceback \(most recent call last\):`)
	exc := index(r.out, `\[rank0\] (?:\[rank0\]: )?RuntimeError: injected failure at step 30`)
	want := regexp.MustCompile(`(?m)^! (rank 0 exited \(exit code 1: RuntimeError: injected failure at step 30\) · detected in [0-9.]+ m?s · see \S*/logs/rank0\.log|` +
		`hang: .* · rank 0: printed RuntimeError: injected failure at step 30, not exited · detected in [0-9.]+ m?s)$`)
	line := regexp.MustCompile(`(?m)^! .*$`).FindStringIndex(r.out)
	if tb < 0 || exc < tb || line == nil || line[0] < exc || !want.MatchString(r.out[line[0]:line[1]]) {
		t.Errorf("want rank 0's traceback, then the fault line %v:\n%s", want, r.out)
	}
	for _, rank := range []string{"1", "2"} {
		if index(r.out, `\[rank`+rank+`\] (?:\[rank`+rank+`\]: )?Traceback`) >= 0 {
			t.Errorf("a survivor's traceback reached the terminal:\n%s", r.out)
		}
	}
	if peerError.MatchString(r.out) {
		t.Errorf("the survivors' errors reached the terminal:\n%s", r.out)
	}
	t.Logf("survivors' errors kept in the rank logs: %d; terminal:\n%s", survivorErrors(t, r.runDir), r.out)
}

// index is the offset of the first match of re in s, or -1.
func index(s, re string) int {
	if m := regexp.MustCompile(re).FindStringIndex(s); m != nil {
		return m[0]
	}
	return -1
}

// A worker that dies of a native crash (abort(), as an uncaught C++
// exception inside torch ends) leaves every thread's Python stack in its
// rank log, through the faulthandler bulsajo turns on for its workers; the
// fault line names the crash and where that log is.
func TestTorchNativeCrashLeavesItsStacks(t *testing.T) {
	requireTorch(t)
	r := bulsajo(t, 3*time.Minute, append([]string{"--nproc-per-node", "3", "--max-restarts", "0"},
		trainArgs(t, "200", "--abort-at-step", "30")...)...)
	if r.code == 0 {
		t.Fatalf("exit 0, want a failure:\n%s", r.out)
	}
	want := regexp.MustCompile(`(?m)^! rank 0 exited \(SIGABRT: Fatal Python error: Aborted\) · detected in [0-9.]+ m?s · see \S*/logs/rank0\.log$`)
	if !want.MatchString(r.out) {
		t.Errorf("no fault line %v:\n%s", want, r.out)
	}
	b, err := os.ReadFile(filepath.Join(r.runDir, "logs", "rank0.log"))
	if err != nil {
		t.Fatal(err)
	}
	// The main thread's stack, down to the line that aborted.
	stack := regexp.MustCompile(`(?s)Fatal Python error: Aborted.*Current thread 0x[0-9a-f]+ \(most recent call first\):\n\s+File "[^"]*ddp_train\.py", line \d+ in main`)
	if !stack.Match(b) {
		t.Errorf("rank0.log has no Python stack of the abort:\n%s", b)
	}
	if peerError.MatchString(r.out) {
		t.Errorf("the survivors' errors reached the terminal:\n%s", r.out)
	}
	t.Logf("terminal:\n%s", r.out)
}
