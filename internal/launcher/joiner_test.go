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
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	dir := t.TempDir()
	sdk, err := python.Extract(filepath.Join(dir, "sdk"))
	if err != nil {
		t.Fatal(err)
	}
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
