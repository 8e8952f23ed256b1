package atomicfile

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(string, []byte, os.FileMode) error
		perm  os.FileMode
	}{
		{"plain, world-readable", Write, 0o644},
		{"durable, owner only", WriteDurable, 0o600},
		{"durable, world-readable", WriteDurable, 0o644},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			for _, want := range []string{"first, the longer contents\n", "2\n"} {
				if err := tc.write(path, []byte(want), tc.perm); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(path)
				if err != nil || string(got) != want {
					t.Fatalf("read %q (%v), want %q", got, err, want)
				}
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != tc.perm {
				t.Errorf("mode %v (%v), want %v", fi.Mode(), err, tc.perm)
			}
			if names, _ := os.ReadDir(dir); len(names) != 1 {
				t.Errorf("files left: %v", names)
			}
		})
	}
}

// A failed write leaves the target as it was and no temporary file behind.
func TestFailedWriteLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "adir") // a non-empty directory cannot be renamed over
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, w := range []func(string, []byte, os.FileMode) error{Write, WriteDurable} {
		if err := w(target, []byte("x"), 0o644); err == nil {
			t.Fatal("renaming a file over a non-empty directory succeeded")
		}
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644); err == nil {
		t.Error("a write into a missing directory succeeded")
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 1 || names[0].Name() != "adir" {
		t.Errorf("files left: %v", names)
	}
}

// A reader polling the file while it is rewritten must always read a whole
// value: with a truncate-then-write it reads "" now and then.
func TestReaderNeverSeesAPart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rank2")
	if err := Write(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const writes = 3000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 2; i <= writes; i++ {
			if err := Write(path, []byte(strconv.Itoa(i)+"\n"), 0o644); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	reads, last := 0, 0
	for last < writes && !t.Failed() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n < last {
			t.Fatalf("read %d: %q after %d", reads, b, last)
		}
		last = n
		reads++
	}
	wg.Wait()
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("files left: %v", names)
	}
	t.Logf("%d reads", reads)
}
