package launcher

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/python"
)

// Joiners discarded by a full restart are killed on purpose: that must not
// count against the standby pool (enough such kills would turn it off).
// Real processes: the shim runs under a plain python3, preloading nothing.
func TestDiscardedJoinersDoNotDisableStandbys(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("import time\ntime.sleep(60)\n"), 0o644)
	a, err := New(Config{Command: []string{py, script}, RunID: "joinertest", RunDir: dir, SDKDir: sdk,
		Standby: true, StandbyCount: 2, Preload: "os", Live: true, StopGrace: 100 * time.Millisecond,
		Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go func() { // drain events
		for range a.Events() {
		}
	}()
	for gen := 1; gen <= 4; gen++ {
		if err := a.SpawnJoiners(3); err != nil {
			t.Fatal(err)
		}
		spec := GenerationSpec{Gen: gen, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1,
			MasterAddr: "127.0.0.1", MasterPort: 1}
		if err := a.StartGeneration(spec); err != nil { // discards the 3 joiners
			t.Fatal(err)
		}
		a.StopGeneration(gen, 0)
	}
	// The discarded processes are reaped within milliseconds; watch for 2 s.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		a.mu.Lock()
		failed := a.standbyFailed
		a.mu.Unlock()
		if failed != 0 {
			t.Fatalf("%d discarded processes counted as failed standbys", failed)
		}
	}
}

// A joiner that says hello with wait is not offered for admission until it
// says ready (the SDK says it when the script enters steps(), so its setup
// does not pause the survivors). Real processes speaking the control
// protocol; a file tells the script when to say ready.
func TestJoinerIsReadyWhenItSaysSo(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	dir := t.TempDir()
	sdk, err := python.Extract(filepath.Join(dir, "sdk"))
	if err != nil {
		t.Fatal(err)
	}
	gate := filepath.Join(dir, "go")
	script := filepath.Join(dir, "j.py")
	os.WriteFile(script, []byte(`import os, sys, time
sys.path.insert(0, os.environ["SDK"])
from bulsajo import _live
link = _live.AgentLink(os.environ["BULSAJO_AGENT_CTL"], lambda m: None)
link.send({"type": "hello", "pid": os.getpid(), "gen": 0, "rank": -1, "wait": True}, timeout=5)
link.start()
while not os.path.exists(os.environ["GATE"]):
    time.sleep(0.01)
link.send({"type": "ready"}, timeout=5)
time.sleep(60)
`), 0o644)
	t.Setenv("SDK", sdk)
	t.Setenv("GATE", gate)
	a, err := New(Config{Command: []string{py, script}, RunID: "readytest", RunDir: dir, SDKDir: sdk,
		Live: true, StopGrace: 100 * time.Millisecond, Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ready := make(chan time.Time, 1)
	go func() {
		for ev := range a.Events() {
			if r, ok := ev.(JoinerReady); ok {
				ready <- r.At
			}
		}
	}()
	if err := a.SpawnJoiners(1); err != nil {
		t.Fatal(err)
	}
	// Its hello has arrived (its connection is registered) ...
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a.ctl.mu.Lock()
		n := len(a.ctl.conns)
		a.ctl.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the joiner's hello did not arrive within 10 s")
		}
	}
	// ... and it is not ready.
	select {
	case <-ready:
		t.Fatal("a joiner that said hello with wait was reported ready before it said ready")
	case <-time.After(500 * time.Millisecond):
	}
	opened := time.Now()
	os.WriteFile(gate, nil, 0o644)
	select {
	case at := <-ready:
		if at.Before(opened) {
			t.Fatalf("ready at %v, before the script said so (%v)", at, opened)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no JoinerReady within 10 s of the joiner saying ready")
	}
}

// A regroup decided from a generation whose members have all exited since
// (each reported under it: every rank failed at start within milliseconds)
// forms the new one with none carried over, rather than failing the job
// with an unknown generation. Real processes.
func TestRegroupFromAGenerationThatHasEnded(t *testing.T) {
	py, dir, sdk := shimEnv(t)
	script := filepath.Join(dir, "w.py")
	os.WriteFile(script, []byte("import sys\nsys.exit(1)\n"), 0o644)
	a, err := New(Config{Command: []string{py, script}, RunID: "regrouptest", RunDir: dir, SDKDir: sdk,
		Live: true, StopGrace: 100 * time.Millisecond, Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	spec := GenerationSpec{Gen: 1, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1,
		MasterAddr: "127.0.0.1", MasterPort: 1}
	if err := a.StartGeneration(spec); err != nil {
		t.Fatal(err)
	}
	exited := 0
	for stopped := false; !stopped; {
		select {
		case ev := <-a.Events():
			switch e := ev.(type) {
			case Exited:
				exited++
			case Stopped:
				stopped = e.Gen == 1
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("generation 1 did not end (%d exited)", exited)
		}
	}
	if exited != 2 {
		t.Fatalf("%d exits, want 2", exited)
	}
	if err := a.Regroup(RegroupSpec{From: 1, Gen: 2, WorldSize: 1, Survivors: []int{1},
		MasterAddr: "127.0.0.1", MasterPort: 1}); err != nil {
		t.Fatalf("regroup: %v", err)
	}
	for {
		select {
		case ev := <-a.Events():
			if l, ok := ev.(Launched); ok && l.Gen == 2 {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("generation 2 was not launched")
		}
	}
}
