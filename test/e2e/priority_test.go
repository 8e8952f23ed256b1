package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An unprivileged user's workers train at normal priority, replacements
// included. Standbys import at nice 19 only where the launcher may raise
// them again: it may not without CAP_SYS_NICE, and a replacement left at
// nice 19 would be a straggler for the rest of the job.
func TestUnprivilegedReplacementTrainsAtNormalPriority(t *testing.T) {
	requireTorch(t)
	// Everything nobody needs, in a directory it can reach.
	uid, gid, dir := nobodyDir(t, "bulsajo-unpriv-")
	bin := filepath.Join(dir, "bulsajo")
	if b, err := os.ReadFile(bulsajoBin); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatalf("copy bulsajo: %v", err)
	}
	stop := filepath.Join(dir, "stop")
	script := filepath.Join(dir, "work.py")
	os.WriteFile(script, []byte(`import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
`), 0o644)
	runDir := filepath.Join(dir, "run")
	cmd := exec.Command(bin, "run", "--run-dir", runDir, "--nproc-per-node", "2", "--max-restarts", "5",
		"--", torchPython, script, stop)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })

	waitFor(t, 2*time.Minute, "both ranks started", func() bool { return livePID(runDir, 0) > 0 && livePID(runDir, 1) > 0 })
	first := []int{livePID(runDir, 0), livePID(runDir, 1)}
	// The standbys that will replace them: started once the job runs.
	var pool []int
	waitFor(t, time.Minute, "standbys", func() bool { pool = standbys(runDir, first...); return len(pool) >= 2 })
	killRank(t, runDir, 0)
	// Restart mode: the whole next generation is the standbys.
	waitFor(t, 2*time.Minute, "both ranks restarted", func() bool {
		p0, p1 := livePID(runDir, 0), livePID(runDir, 1)
		return p0 > 0 && p1 > 0 && p0 != first[0] && p1 != first[1]
	})
	time.Sleep(500 * time.Millisecond) // past their activation (where main raised them, and failed)
	for rank := 0; rank < 2; rank++ {
		pid := livePID(runDir, rank)
		if !slices.Contains(pool, pid) {
			t.Errorf("rank %d restarted as pid %d, not as one of the standbys %v", rank, pid, pool)
		}
		for _, tid := range tasks(pid) {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/stat")
			if err != nil {
				continue
			}
			f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
			if f[16] != "0" { // field 19: nice
				t.Errorf("rank %d (pid %d, thread %d) runs at nice %s, want 0 (the launcher's)", rank, pid, tid, f[16])
			}
		}
	}
	os.WriteFile(stop, nil, 0o644)
	select {
	case <-done:
		if waitErr != nil {
			t.Errorf("bulsajo run as nobody: %v\n%s", waitErr, out.String())
		}
	case <-time.After(time.Minute):
		t.Errorf("bulsajo did not finish after the stop file; output:\n%s", out.String())
	}
}

// standbys: the run's shim processes that hold no rank (the zygote, which
// forks them, is not one).
func standbys(runDir string, ranks ...int) []int {
	zyg := zygotes(runDir)
	var out []int
	for _, pid := range shimProcesses(runDir) {
		if !slices.Contains(ranks, pid) && !slices.Contains(zyg, pid) {
			out = append(out, pid)
		}
	}
	return out
}

// shimProcesses: the run's live processes started through the standby shim.
func shimProcesses(runDir string) []int {
	var out []int
	shim := filepath.Join(runDir, "sdk", "bulsajo", "_standby.py")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), shim) {
			out = append(out, pid)
		}
	}
	return out
}

func tasks(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out
}
