package netlab

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeTB records Skipf and Fatalf instead of acting on them.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()                          {}
func (f *fakeTB) Skipf(format string, args ...any) { f.skipped = fmt.Sprintf(format, args...) }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestRequire(t *testing.T) {
	unavailable := errors.New("netlab: no namespaces here")
	for _, tc := range []struct {
		env        string
		err        error
		skip, fail bool
	}{
		{env: "", err: nil},
		{env: "1", err: nil},
		{env: "", err: unavailable, skip: true},
		{env: "0", err: unavailable, skip: true},
		{env: "1", err: unavailable, fail: true},
	} {
		t.Setenv(EnvRequire, tc.env)
		f := &fakeTB{TB: t}
		require(f, tc.err)
		if (f.skipped != "") != tc.skip || (f.failed != "") != tc.fail {
			t.Errorf("%s=%q, err %v: skipped %q, failed %q; want skip %v, fail %v",
				EnvRequire, tc.env, tc.err, f.skipped, f.failed, tc.skip, tc.fail)
		}
	}
}

func TestCheckHosts(t *testing.T) {
	many := make([]string, maxHosts+1)
	for i := range many {
		many[i] = fmt.Sprint("h", i)
	}
	for _, hosts := range [][]string{nil, {"a", "a"}, {"has space"}, {""}, {"a/b"}, {strings.Repeat("x", 33)}, many} {
		if err := checkHosts(hosts); err == nil {
			t.Errorf("checkHosts(%q) = nil, want an error", hosts)
		}
	}
	for _, hosts := range [][]string{{"a"}, {"coordinator", "agent-0", "agent_1", "x.y"}, many[:maxHosts]} {
		if err := checkHosts(hosts); err != nil {
			t.Errorf("checkHosts(%q): %v", hosts, err)
		}
	}
}

// TestRemoveStale: the namespaces of a lab number whose process died are
// removed, processes and all, by the next process to take the number.
func TestRemoveStale(t *testing.T) {
	Require(t)
	n, lock, err := allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	hub := prefix + strconv.Itoa(n)
	stale := []string{hub, hub + "-x"}
	for _, ns := range stale {
		if err := run("", ipPath, "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	orphan := exec.Command(ipPath, "netns", "exec", hub+"-x", "sleep", "300")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// Wait for ip to exec into the namespace.
		if out, _ := exec.Command(ipPath, "netns", "pids", hub+"-x").Output(); len(out) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the process never showed up in the namespace")
		}
	}
	if err := removeStale(n); err != nil {
		t.Fatal(err)
	}
	if err := orphan.Wait(); err == nil {
		t.Errorf("process in a stale namespace survived")
	}
	names, err := listNetns()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if slices.Contains(stale, ns) {
			t.Errorf("stale namespace %s left", ns)
		}
	}
}
