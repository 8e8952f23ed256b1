package launcher

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/ports"
	"github.com/bulsajo/bulsajo/python"
)

func TestParsePreloaded(t *testing.T) {
	for _, c := range []struct {
		in  string
		pid int
		ok  bool
	}{
		{"preloaded 1234", 1234, true},
		{"preloaded 1234\n", 1234, true},
		{"preloaded", 0, false},
		{"preloaded x", 0, false},
		{"preloaded 0", 0, false},
		{"preloaded -3", 0, false},
		{"preloaded 1 2", 0, false},
		{"torch nolibuv", 0, false},
		{"step 1 0 5", 0, false},
	} {
		pid, ok := parsePreloaded([]byte(c.in))
		if pid != c.pid && c.ok || ok != c.ok {
			t.Errorf("parsePreloaded(%q) = %d, %v; want %d, %v", c.in, pid, ok, c.pid, c.ok)
		}
	}
}

// The other ranks start once rank 0's store listens, even when rank 0's
// shim takes longer than the cap to preload (a fresh shim importing torch on
// a loaded machine): the cap counts from the end of the preload. Counted
// from the activation, the launch gave up on the wait, every later
// generation started all ranks at once, and torch's one-second retry of a
// refused connection was paid at every restart. Real processes: the shim
// under a plain python3, a preloaded module that takes 2.6 s, and a script
// whose rank 0 listens on MASTER_PORT while the others note whether it did
// by the time they started.
func TestOtherRanksWaitForRankZerosStoreAfterASlowPreload(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	// Longer than rendezvousWait, and no CPU: the standbys finish it while
	// the test waits, whatever the machine's load.
	slowPreload(t, dir, "2.6")
	out := filepath.Join(dir, "out")
	os.MkdirAll(out, 0o755)
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte(`import os, socket, sys, time
rank, gen, port = os.environ["RANK"], os.environ["BULSAJO_GENERATION"], int(os.environ["MASTER_PORT"])
res = os.path.join(sys.argv[1], "g%s_r%s" % (gen, rank))
if rank == "0":
    time.sleep(0.3)  # the script's own start-up, after the preload
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    open(res, "w").write("listening")
else:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        open(res, "w").write("connected")
    except OSError as e:
        open(res, "w").write("refused: %s" % e)
time.sleep(60)
`), 0o644)
	a, err := New(Config{Command: []string{py, script, out}, RunID: "staggertest", RunDir: dir, SDKDir: sdk,
		Standby: true, StandbyCount: 3, Preload: "slowpreload", StopGrace: 100 * time.Millisecond,
		Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go func() { // drain events
		for range a.Events() {
		}
	}()
	for gen := 1; gen <= 2; gen++ {
		if gen == 2 {
			// The refilled pool has preloaded (a sleep, no CPU needed).
			time.Sleep(3500 * time.Millisecond)
		}
		spec := GenerationSpec{Gen: gen, WorldSize: 3, Ranks: []int{0, 1, 2}, GroupWorldSize: 1,
			MasterAddr: "127.0.0.1", MasterPort: freePort(t)}
		if err := a.StartGeneration(spec); err != nil {
			t.Fatal(err)
		}
		for _, rank := range []string{"1", "2"} {
			f := filepath.Join(out, fmt.Sprintf("g%d_r%s", gen, rank))
			var got string
			for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
				if b, err := os.ReadFile(f); err == nil && len(b) > 0 {
					got = string(b)
					break
				}
			}
			if got != "connected" {
				t.Errorf("generation %d rank %s: %q, want connected (started before rank 0's store listened)", gen, rank, got)
			}
		}
		if a.noStagger.Load() {
			t.Errorf("generation %d: staggering turned off", gen)
		}
		a.StopGeneration(gen, 0)
	}
}

// freePort: what bulsajo run gives each generation (below the ephemeral range).
func freePort(t *testing.T) int {
	t.Helper()
	p, err := ports.Free("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ImportingSince follows the standbys' imports, for the step clock: true
// from a refill's start until every standby said it had preloaded, and
// afterwards for any time before that. Real shims, a preload that sleeps.
func TestImportingSinceFollowsTheStandbysPreload(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	slowPreload(t, dir, "1.5")
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("pass\n"), 0o644)
	a, err := New(Config{Command: []string{py, script}, RunID: "importtest", RunDir: dir, SDKDir: sdk,
		Standby: true, StandbyCount: 2, Preload: "slowpreload", StopGrace: 100 * time.Millisecond,
		Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go func() {
		for range a.Events() {
		}
	}()
	importing := func(t time.Time) bool { _, ok := a.ImportingSince(t); return ok }
	before := time.Now()
	if importing(before) {
		t.Fatal("importing before any standby started")
	}
	a.Prewarm()
	for !importing(time.Now()) {
		if time.Since(before) > 2*time.Second {
			t.Fatal("not importing 2 s after the pool began to fill")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for importing(time.Now()) {
		if time.Since(before) > 20*time.Second {
			t.Fatal("still importing 20 s after the pool began to fill")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(before); took < 1500*time.Millisecond {
		t.Errorf("imports over after %v, shorter than the preload's 1.5 s", took)
	}
	if began, ok := a.ImportingSince(before); !ok || began.Before(before) || began.After(before.Add(2*time.Second)) {
		t.Errorf("imports since the start: began %v (%v), want within 2 s after %v", began, ok, before)
	}
}

// shimEnv: python3 (or a skip), a temp dir and the SDK extracted into it,
// for tests that start real shims.
func shimEnv(t *testing.T) (py, dir, sdk string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	dir = t.TempDir()
	sdk, err = python.Extract(filepath.Join(dir, "sdk"))
	if err != nil {
		t.Fatal(err)
	}
	return py, dir, sdk
}

// slowPreload makes a module "slowpreload" that sleeps secs when imported
// (no CPU: done whatever the machine's load) and puts it on PYTHONPATH.
func slowPreload(t *testing.T, dir, secs string) {
	t.Helper()
	mods := filepath.Join(dir, "mods")
	os.MkdirAll(mods, 0o755)
	os.WriteFile(filepath.Join(mods, "slowpreload.py"), []byte("import time\ntime.sleep("+secs+")\n"), 0o644)
	t.Setenv("PYTHONPATH", mods)
}

// A rank 0 stopped (SIGSTOP) before its store listens does not hold the
// other ranks' start for the preload cap (30 s): the launch goes on, so
// that the stopped process is called a hang after the hang threshold. Real
// shims, a preload that sleeps 5 s, a real SIGSTOP of rank 0's process.
func TestStoppedRankZeroDoesNotHoldTheLaunch(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	slowPreload(t, dir, "5")
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("import time\ntime.sleep(60)\n"), 0o644)
	a := runLauncher(t, Config{Command: []string{py, script}, RunID: "stoppedzero", RunDir: dir, SDKDir: sdk,
		Standby: true, StandbyCount: 3, Preload: "slowpreload", StopGrace: 100 * time.Millisecond})
	spec := GenerationSpec{Gen: 1, WorldSize: 3, Ranks: []int{0, 1, 2}, GroupWorldSize: 1,
		MasterAddr: "127.0.0.1", MasterPort: freePort(t)}
	started := make(chan error, 1)
	go func() { started <- a.StartGeneration(spec) }()
	pid := rankPID(t, dir, 0)
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGCONT)
	// Without the check the wait ends at the 30 s preload cap; 15 s leaves
	// a loaded machine room, and is less than the 5 s preload plus that cap.
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the launch still waited for the stopped rank 0 after 15 s")
	}
	if got := a.Stopped(1); len(got) != 1 || got[0] != 0 {
		t.Errorf("Stopped(1) = %v, want [0]", got)
	}
	if a.noStagger.Load() {
		t.Error("a stopped rank 0 turned staggering off for good")
	}
}
