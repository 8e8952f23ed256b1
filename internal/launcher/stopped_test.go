package launcher

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
)

// runLauncher makes a launcher for cfg whose events are drained, closed at
// the end of the test.
func runLauncher(t *testing.T, cfg Config) *Launcher {
	t.Helper()
	cfg.Console = console.New(io.Discard)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	go func() {
		for range a.Events() {
		}
	}()
	return a
}

// rankPID waits (up to 10 s) for pids/rankN in dir and returns the pid.
func rankPID(t *testing.T, dir string, rank int) int {
	t.Helper()
	f := filepath.Join(dir, "pids", "rank"+strconv.Itoa(rank))
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(f); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid
			}
		}
	}
	t.Fatalf("no pid for rank %d", rank)
	return 0
}

// Stopped names the ranks whose process is stopped, from /proc, and only
// while they are: real processes, a real SIGSTOP and SIGCONT.
func TestStoppedNamesStoppedRanks(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("import time\ntime.sleep(60)\n"), 0o644)
	a := runLauncher(t, Config{Command: []string{py, script}, RunID: "stoppedtest", RunDir: dir, SDKDir: sdk,
		StopGrace: 100 * time.Millisecond})
	spec := GenerationSpec{Gen: 1, WorldSize: 3, Ranks: []int{0, 1, 2}, GroupWorldSize: 1,
		MasterAddr: "127.0.0.1", MasterPort: 1}
	if err := a.StartGeneration(spec); err != nil {
		t.Fatal(err)
	}
	pid := rankPID(t, dir, 1)
	want := func(what string, ranks []int) {
		t.Helper()
		var got []int
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if got = a.Stopped(1); slices.Equal(got, ranks) {
				return
			}
		}
		t.Fatalf("%s: Stopped(1) = %v, want %v", what, got, ranks)
	}
	want("all running", nil)
	syscall.Kill(pid, syscall.SIGSTOP)
	want("rank 1 stopped", []int{1})
	if got := a.Stopped(2); got != nil {
		t.Errorf("Stopped of a generation that does not exist = %v", got)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	want("rank 1 continued", nil)
}

// Stack-dump files left empty by processes killed mid-regroup are removed
// when the launcher closes; one with stacks in it is kept, and so is one of
// a process another launcher started (a run dir shared by nodes).
func TestCloseRemovesEmptyStackDumps(t *testing.T) {
	dir := t.TempDir()
	a := runLauncher(t, Config{Command: []string{"true"}, RunID: "stackstest", RunDir: dir, StopGrace: time.Second})
	spec := GenerationSpec{Gen: 1, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1, MasterAddr: "127.0.0.1", MasterPort: 1}
	if err := a.StartGeneration(spec); err != nil {
		t.Fatal(err)
	}
	pids := []string{strconv.Itoa(rankPID(t, dir, 0)), strconv.Itoa(rankPID(t, dir, 1))}
	logs := filepath.Join(dir, "logs")
	empty := filepath.Join(logs, "stacks-gen2-pid"+pids[0]+".txt")
	full := filepath.Join(logs, "stacks-gen3-pid"+pids[1]+".txt")
	others := filepath.Join(logs, "stacks-gen2-pid1.txt") // not started here
	other := filepath.Join(logs, "rank0.log")
	for _, f := range []string{empty, others, other} {
		os.WriteFile(f, nil, 0o644)
	}
	os.WriteFile(full, []byte("Thread 0x7f (most recent call first):\n"), 0o644)
	a.Close()
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Errorf("empty stack dump still there (%v)", err)
	}
	for _, f := range []string{full, others, other} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}
