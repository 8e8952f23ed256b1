package launcher

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
)

func TestMaskLine(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"[GPU0] Epoch 6 | Batchsize: 32 | Steps: 16", "[GPU0] Epoch 7 | Batchsize: 32 | Steps: 16", false},
		{"step 1200 loss 2.3012", "step 1200 loss 2.2871", true},
		{"step 1200 loss 2.3012", "step 1210 loss 2.3012", false},
		{"2026-12-02 03:01:02,123 INFO starting", "2026-12-03 04:11:12,456 INFO starting", true},
		{"[W socket.cpp:601] [c10d] The client socket has failed to connect to [localhost]:29517 (errno: 99 - Cannot assign requested address).",
			"[W socket.cpp:601] [c10d] The client socket has failed to connect to [localhost]:41233 (errno: 99 - Cannot assign requested address).", true},
		{"RuntimeError: Connection closed by peer [127.0.0.1]:52348", "RuntimeError: Connection closed by peer [127.0.0.1]:6011", true},
		{"loaded data in 0.51s", "loaded data in 1.7s", true},
		{"object at 0x7f3a2c1b", "object at 0x7f99ee00", true},
	} {
		if got := maskLine(tt.a) == maskLine(tt.b); got != tt.same {
			t.Errorf("%q vs %q: same=%v, want %v (%q, %q)", tt.a, tt.b, got, tt.same, maskLine(tt.a), maskLine(tt.b))
		}
	}
}

func TestLineBookNewPerGeneration(t *testing.T) {
	var b lineBook
	steps := []struct {
		gen  int
		line string
		new  bool
	}{
		{1, "Epoch 0", true},
		{1, "Epoch 0", true}, // another rank, same generation: new to this one too
		{1, "Epoch 1", true},
		{2, "Epoch 0", false},
		{2, "Epoch 1", false},
		{2, "Epoch 2", true},
		{3, "Epoch 2", false},
	}
	for _, s := range steps {
		if got := b.note(s.gen, s.line); got != s.new {
			t.Errorf("gen %d %q: new=%v, want %v", s.gen, s.line, got, s.new)
		}
	}
}

// Exited carries what the generation printed before the death, and how much
// of it no earlier generation printed. Real processes (sh).
func TestExitedCountsNewOutput(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "w.sh")
	// Rank 0 waits for rank 1's line, prints a time (masked), an epoch (1
	// in generations 1-2, then 2) and fails; rank 1 prints a line and waits.
	os.WriteFile(script, []byte(`#!/bin/sh
ready="$(dirname "$0")/ready.$BULSAJO_GENERATION"
if [ "$RANK" = 0 ]; then
  while [ ! -e "$ready" ]; do sleep 0.05; done
  sleep 0.2
  echo "started at $(date +%T.%N)"
  e=1; [ "$BULSAJO_GENERATION" -ge 3 ] && e=2
  echo "Epoch $e"
  echo "Traceback: boom" >&2
  exit 3
fi
echo "rank 1 ready"
touch "$ready"
exec sleep 60
`), 0o755)
	a, err := New(Config{Command: []string{script}, RunID: "outputtest", RunDir: dir,
		StopGrace: 100 * time.Millisecond, Console: console.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i, want := range []struct{ out, fresh int }{{4, 4}, {4, 0}, {4, 1}} {
		gen := i + 1
		spec := GenerationSpec{Gen: gen, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1, MasterAddr: "127.0.0.1", MasterPort: 1}
		if err := a.StartGeneration(spec); err != nil {
			t.Fatal(err)
		}
		var ex *Exited
		for ex == nil {
			select {
			case e := <-a.Events():
				if x, ok := e.(Exited); ok && x.Gen == gen && x.Rank == 0 {
					ex = &x
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("generation %d: no exit of rank 0", gen)
			}
		}
		if ex.Output != want.out || ex.NewOutput != want.fresh {
			t.Errorf("generation %d: output %d, new %d; want %d, %d", gen, ex.Output, ex.NewOutput, want.out, want.fresh)
		}
		a.StopGeneration(gen, 0)
		for stopped := false; !stopped; {
			select {
			case e := <-a.Events():
				_, stopped = e.(Stopped)
			case <-time.After(10 * time.Second):
				t.Fatalf("generation %d not stopped", gen)
			}
		}
	}
}
