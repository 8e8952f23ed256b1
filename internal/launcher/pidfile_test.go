package launcher

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// A tool polling pids/rankN while a grow rewrites it must always read a pid:
// with a truncate-then-write it reads "" now and then (a CI failure of
// TestLiveSecondFaultWhileAGrowForms).
func TestPIDFileIsNeverSeenEmpty(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rank2")
	writePIDFile(path, 1)
	const writes = 3000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 2; i <= writes; i++ {
			writePIDFile(path, i)
		}
	}()
	reads, last := 0, 0
	for last < writes {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid < last {
			t.Fatalf("read %d: %q after pid %d", reads, b, last)
		}
		last = pid
		reads++
	}
	wg.Wait()
	names, _ := os.ReadDir(dir)
	if len(names) != 1 {
		t.Errorf("files left in the pids dir: %v", names)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v (%v), want 0644 so that other users' tools can read it", fi.Mode(), err)
	}
	t.Logf("%d reads", reads)
}
