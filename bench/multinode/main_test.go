// Package multinode is the multi-node benchmark: bulsajo's coordinator and
// agents in network namespaces (test/netlab), measured under node loss,
// partition and coordinator failover, and side by side with torchrun across
// namespaces on a real PyTorch job. It runs only with BULSAJO_BENCH=1, so
// `go test ./...` skips it:
//
//	BULSAJO_BENCH=1 go test ./bench/multinode -v -timeout 30m
//
// Results are merged into bench/results-multinode.json (scenarios that ran
// replace their earlier entry) and bench/results-multinode.md is rewritten
// from the JSON. BULSAJO_BENCH_TRIALS=N caps every scenario's trial count
// (a smoke run); BULSAJO_BENCH_OUT=DIR writes the results there instead.
package multinode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

var (
	enabled    = os.Getenv("BULSAJO_BENCH") == "1"
	bulsajoBin string
	fakeBin    string
	repoRoot   string
)

// torchPython: env BULSAJO_TEST_PYTHON (e.g. scripts/torch2/python3, into
// the torch 2.x chroot under scripts/in-torch2.sh --host), else Debian's.
var torchPython = func() string {
	if p := os.Getenv("BULSAJO_TEST_PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}()

func TestMain(m *testing.M) {
	if !enabled {
		os.Exit(m.Run()) // every test skips itself
	}
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	dir, err := os.MkdirTemp("", "bulsajo-bench-mn-")
	if err != nil {
		panic(err)
	}
	buildCommit = gitCommit()
	bulsajoBin = filepath.Join(dir, "bulsajo")
	fakeBin = filepath.Join(dir, "fakeworker")
	for bin, pkg := range map[string]string{bulsajoBin: "./cmd/bulsajo", fakeBin: "./tools/fakeworker"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if err := writeResults(); err != nil {
		fmt.Fprintf(os.Stderr, "writing results: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildCommit is the commit the binaries were built from, taken just before
// building (other work may be committed while the benchmark runs).
var buildCommit string

func gitCommit() string {
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = repoRoot
	b, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(b))
	st := exec.Command("git", "status", "--porcelain", "--", "cmd", "internal", "python", "tools", "examples")
	st.Dir = repoRoot
	if out, err := st.Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
		c += " + uncommitted changes under cmd/internal/python/tools/examples"
	}
	return c
}

func gate(t *testing.T) {
	t.Helper()
	if !enabled {
		t.Skip("benchmark: set BULSAJO_BENCH=1 to run it")
	}
}

// trials is n, or less when BULSAJO_BENCH_TRIALS caps it.
func trials(n int) int {
	if v, err := strconv.Atoi(os.Getenv("BULSAJO_BENCH_TRIALS")); err == nil && v > 0 && v < n {
		return v
	}
	return n
}
