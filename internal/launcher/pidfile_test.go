package launcher

import (
	"os"
	"path/filepath"
	"testing"
)

// pids/rankN holds the pid and a newline, readable by other users' tools
// (py-spy, a fault script). That a reader never catches it half-written is
// atomicfile's test.
func TestPIDFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rank2")
	writePIDFile(path, 41)
	writePIDFile(path, 4242)
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "4242\n" {
		t.Fatalf("read %q (%v), want %q", b, err, "4242\n")
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v (%v), want 0644", fi.Mode(), err)
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("files left in the pids dir: %v", names)
	}
}
