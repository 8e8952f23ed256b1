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

// eventLauncher is runLauncher for a test that reads the events: they come
// back on the channel returned (buffered; nothing here emits many).
func eventLauncher(t *testing.T, cfg Config) (*Launcher, <-chan Event) {
	t.Helper()
	cfg.Console = console.New(io.Discard)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	evs := make(chan Event, 256)
	go func() {
		for e := range a.Events() {
			evs <- e
		}
	}()
	return a, evs
}

// nextEvent returns the next event of type E within d, and the events of
// other types that came before it; ok is false if none came.
func nextEvent[E Event](evs <-chan Event, d time.Duration) (got E, before []Event, ok bool) {
	end := time.After(d)
	for {
		select {
		case e := <-evs:
			if x, is := e.(E); is {
				return x, before, true
			}
			before = append(before, e)
		case <-end:
			return got, before, false
		}
	}
}

// waitFile waits (up to 10 s) for path to exist.
func waitFile(t *testing.T, path string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s never appeared", filepath.Base(path))
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

// A generation stopped while the launch waits for rank 0's store (an
// interrupt, the coordinator's stop) ends the wait at once, starts none of
// its other ranks, and says Stopped once rank 0 is gone. Real shims; rank
// 0's preload sleeps 20 s and ignores SIGTERM, so only the stop ends the wait.
func TestStopDuringTheLaunchStartsNoOtherRank(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	slowPreload(t, dir, "20")
	ignoring := filepath.Join(dir, "ignoring")
	os.WriteFile(filepath.Join(dir, "mods", "slowpreload.py"), []byte("import os, signal, time\n"+
		"signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"+
		"open('"+ignoring+"-%d' % os.getpid(), 'a').close()\n"+
		"time.sleep(20)\n"), 0o644)
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("import time\ntime.sleep(60)\n"), 0o644)
	a, evs := eventLauncher(t, Config{Command: []string{py, script}, RunID: "stoplaunch", RunDir: dir, SDKDir: sdk,
		Standby: true, StandbyCount: 3, Preload: "slowpreload", StopGrace: 100 * time.Millisecond})
	spec := GenerationSpec{Gen: 1, WorldSize: 3, Ranks: []int{0, 1, 2}, GroupWorldSize: 1,
		MasterAddr: "127.0.0.1", MasterPort: freePort(t)}
	started := make(chan error, 1)
	go func() { started <- a.StartGeneration(spec) }()
	waitFile(t, ignoring+"-"+strconv.Itoa(rankPID(t, dir, 0)))
	a.StopGeneration(1, time.Minute)
	// Without the check the wait lasts the 20 s preload and 2 s more.
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("StartGeneration: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the launch still waited for rank 0's store after its generation was stopped")
	}
	if _, _, ok := nextEvent[Stopped](evs, 300*time.Millisecond); ok {
		t.Fatal("Stopped while rank 0 still runs")
	}
	a.StopGeneration(1, 0) // rank 0 ignores SIGTERM: kill it
	_, before, ok := nextEvent[Stopped](evs, 15*time.Second)
	if !ok {
		t.Fatal("no Stopped after the generation was stopped during its launch")
	}
	for _, e := range before {
		if _, ok := e.(Launched); ok {
			t.Error("Launched for a generation stopped before its ranks all started")
		}
	}
	for _, r := range []string{"rank1", "rank2"} {
		if _, err := os.Stat(filepath.Join(dir, "pids", r)); err == nil {
			t.Errorf("%s was started into a generation already stopping", r)
		}
	}
}

// A second stop without grace (the second Ctrl-C) kills the workers at once
// instead of waiting out the first stop's grace: a worker that ignores
// SIGTERM, a 60 s grace.
func TestSecondStopWithoutGraceKillsAtOnce(t *testing.T) {
	py, dir, _ := shimEnv(t)
	script := filepath.Join(dir, "w.py")
	ready := filepath.Join(dir, "ready")
	os.WriteFile(script, []byte("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen('"+ready+"', 'w').close()\ntime.sleep(120)\n"), 0o644)
	a, evs := eventLauncher(t, Config{Command: []string{py, script}, RunID: "secondstop", RunDir: dir, StopGrace: time.Minute})
	spec := GenerationSpec{Gen: 1, WorldSize: 1, Ranks: []int{0}, GroupWorldSize: 1, MasterAddr: "127.0.0.1", MasterPort: 1}
	if err := a.StartGeneration(spec); err != nil {
		t.Fatal(err)
	}
	waitFile(t, ready)
	a.StopGeneration(1, time.Minute)
	if _, _, ok := nextEvent[Stopped](evs, 300*time.Millisecond); ok {
		t.Fatal("a worker that ignores SIGTERM stopped within its grace")
	}
	a.StopGeneration(1, 0)
	if _, _, ok := nextEvent[Stopped](evs, 10*time.Second); !ok {
		t.Fatal("a second stop without grace did not kill the worker (it waits out the first stop's 60 s grace)")
	}
}

// A stop that reaches the launcher before the start it cancels (a Ctrl-C as
// the supervisor hands the launch to its goroutine) wins: nothing starts,
// and Stopped follows. The next generation, which no stop names, runs.
func TestStopBeforeTheStartWins(t *testing.T) {
	dir := t.TempDir()
	a, evs := eventLauncher(t, Config{Command: []string{"sleep", "60"}, RunID: "stopfirst", RunDir: dir, StopGrace: time.Second})
	spec := func(gen int) GenerationSpec {
		return GenerationSpec{Gen: gen, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1, MasterAddr: "127.0.0.1", MasterPort: 1}
	}
	a.StopGeneration(1, time.Second)
	if err := a.StartGeneration(spec(1)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-evs:
		if s, ok := e.(Stopped); !ok || s.Gen != 1 {
			t.Fatalf("first event %#v, want Stopped{Gen: 1}", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Stopped for a generation stopped before it started")
	}
	if _, err := os.Stat(filepath.Join(dir, "pids", "rank0")); err == nil {
		t.Error("a rank of a generation stopped before its start was started")
	}
	if err := a.StartGeneration(spec(2)); err != nil {
		t.Fatal(err)
	}
	if l, _, ok := nextEvent[Launched](evs, 5*time.Second); !ok || l.Gen != 2 {
		t.Fatalf("generation 2 never launched (%+v)", l)
	}
	if got := a.LiveRanks(2); len(got) != 2 {
		t.Errorf("LiveRanks(2) = %v, want both", got)
	}
}
