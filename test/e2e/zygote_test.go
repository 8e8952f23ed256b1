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

// A refill forks the zygote (internal/launcher/zygote.go) instead of
// importing torch again: the standbys cost next to no CPU, they are
// bulsajo's own children (so it reaps them and they die with it), and the
// ranks they become train as a fresh process would.
func TestTorchStandbysAreForksOfOneImport(t *testing.T) {
	requireTorch(t)
	id := "zygote"
	cmd, out, runDir, first, pool, zyg := startWithPool(t, "--run-id", id)
	zcpu := cpuTicks(zyg[0])
	for _, pid := range append(pool, zyg[0]) {
		if pp := statField(pid, 4); pp != strconv.Itoa(cmd.Process.Pid) {
			t.Errorf("pid %d's parent is %s, want bulsajo (%d)", pid, pp, cmd.Process.Pid)
		}
	}
	for _, pid := range pool {
		// An import costs the zygote about a second of CPU; a fork waiting
		// for its rank next to nothing.
		if c := cpuTicks(pid); c*4 > zcpu {
			t.Errorf("standby %d used %d ticks of CPU, the zygote's import %d: not a fork", pid, c, zcpu)
		}
		// A fork is visible in /proc the moment it is cloned, in the
		// zygote's group until it (and the launcher, before tracking it)
		// calls setpgid: what must hold is where it settles.
		pg := statField(pid, 5)
		for end := time.Now().Add(10 * time.Second); pg != strconv.Itoa(pid) && pg != "" && time.Now().Before(end); pg = statField(pid, 5) {
			time.Sleep(20 * time.Millisecond)
		}
		if pg != strconv.Itoa(pid) {
			t.Errorf("standby %d is in process group %s, want its own", pid, pg)
		}
	}
	killRank(t, runDir, 0)
	waitFor(t, 2*time.Minute, "both ranks restarted", func() bool {
		p0, p1 := livePID(runDir, 0), livePID(runDir, 1)
		return p0 > 0 && p1 > 0 && p0 != first[0] && p1 != first[1]
	})
	for rank := 0; rank < 2; rank++ {
		if pid := livePID(runDir, rank); !slices.Contains(pool, pid) {
			t.Errorf("rank %d restarted as pid %d, not as one of the forked standbys %v", rank, pid, pool)
		}
	}
	// The restarted ranks train: the step count passes where it was.
	mark := len(out.String())
	waitFor(t, time.Minute, "training after the restart", func() bool {
		return strings.Count(out.String()[mark:], " loss ") >= 3
	})
	// And the pool is refilled by the same zygote.
	again := []int{livePID(runDir, 0), livePID(runDir, 1)}
	waitFor(t, time.Minute, "the pool refilled", func() bool {
		p := standbys(runDir, again...)
		return len(p) >= 2 && !slices.ContainsFunc(p, func(pid int) bool { return slices.Contains(pool, pid) })
	})
	if z := zygotes(runDir); len(z) != 1 || z[0] != zyg[0] {
		t.Errorf("zygotes %v after the restart, want still %d", z, zyg[0])
	}
	// Nothing outlives bulsajo, even a SIGKILL of it: not the zygote, not
	// its forks.
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitNone(t, "BULSAJO_RUN_ID="+id, 5*time.Second)
}

// startWithPool starts a 2-rank training job and waits until it trains
// and its pool holds two standbys; it returns the ranks' pids, the
// standbys' and the zygote's (one).
func startWithPool(t *testing.T, args ...string) (cmd *exec.Cmd, out *syncBuffer, runDir string, ranks, pool, zyg []int) {
	t.Helper()
	cmd, out, runDir = startBulsajo(t, append(append([]string{"--nproc-per-node", "2"}, args...), trainArgs(t, "100000")...)...)
	waitFor(t, 2*time.Minute, "training to start", func() bool { return strings.Contains(out.String(), "step 10 ") })
	ranks = []int{livePID(runDir, 0), livePID(runDir, 1)}
	waitFor(t, time.Minute, "two standbys", func() bool { pool = standbys(runDir, ranks...); return len(pool) >= 2 })
	if zyg = zygotes(runDir); len(zyg) != 1 {
		t.Fatalf("zygotes %v, want one", zyg)
	}
	return
}

// zygotes: the run's zygote, from pids/zygote (a fork is named
// bulsajo-zygote too until it renames itself), if it is alive.
func zygotes(runDir string) []int {
	b, _ := os.ReadFile(filepath.Join(runDir, "pids", "zygote"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 || !alive(pid) {
		return nil
	}
	if c, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); strings.TrimSpace(string(c)) != "bulsajo-zygote" {
		return nil
	}
	return []int{pid}
}

// statField is field n (1-based, as proc(5) counts) of /proc/PID/stat.
func statField(pid, n int) string {
	return statFileField("/proc/"+strconv.Itoa(pid)+"/stat", n)
}

// statFileField is field n of a stat file (a process's, or a thread's
// /proc/PID/task/TID/stat).
func statFileField(path string, n int) string {
	b, err := os.ReadFile(path)
	i := strings.LastIndexByte(string(b), ')')
	if err != nil || i < 0 {
		return ""
	}
	f := strings.Fields(string(b)[i+1:])
	if n-3 < 0 || n-3 >= len(f) {
		return ""
	}
	return f[n-3]
}

// cpuTicks: user and system time of pid, in clock ticks.
func cpuTicks(pid int) int {
	u, _ := strconv.Atoi(statField(pid, 14))
	s, _ := strconv.Atoi(statField(pid, 15))
	return u + s
}

// A zygote that dies (the OOM killer, an operator) costs nothing but the
// forks: the pool goes back to standbys that import, said once on the
// terminal, and the job recovers from the next faults as before.
func TestTorchZygoteLostStandbysImportAgain(t *testing.T) {
	requireTorch(t)
	cmd, out, runDir, _, _, zyg := startWithPool(t)
	syscall.Kill(zyg[0], syscall.SIGKILL)
	for round := 0; round < 2; round++ {
		before := []int{livePID(runDir, 0), livePID(runDir, 1)}
		killRank(t, runDir, 1)
		waitFor(t, 2*time.Minute, "both ranks restarted", func() bool {
			p0, p1 := livePID(runDir, 0), livePID(runDir, 1)
			return p0 > 0 && p1 > 0 && p0 != before[0] && p1 != before[1]
		})
		mark := len(out.String())
		waitFor(t, time.Minute, "training after the restart", func() bool {
			return strings.Count(out.String()[mark:], " loss ") >= 3
		})
		now := []int{livePID(runDir, 0), livePID(runDir, 1)}
		waitFor(t, time.Minute, "the pool refilled", func() bool { return len(standbys(runDir, now...)) >= 2 })
	}
	if z := zygotes(runDir); len(z) != 0 {
		t.Errorf("zygotes %v after the first one was killed, want none (standbys import)", z)
	}
	if n := strings.Count(out.String(), "standbys import torch themselves from now on"); n != 1 {
		t.Errorf("the fallback said %d times, want once:\n%s", n, out.String())
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); exitCode(err) != 130 {
		t.Errorf("exit %d after SIGINT, want 130:\n%s", exitCode(err), out.String())
	}
}

// Nothing a run's shims import is left in the temporary directory, however
// the processes end: torch 2.x's import (torch._dynamo, in the default
// preload) makes a directory there that only a normal exit removes, and
// /tmp gained one for each rank a fault killed, each standby discarded and
// each zygote. Named in the preload here, the same module makes it on
// torch 1.x too. The run gets a TMPDIR of its own.
func TestTorchImportsLeaveNoTemporaryFiles(t *testing.T) {
	requireTorch(t)
	tmp := t.TempDir()
	runDir := filepath.Join(t.TempDir(), "run")
	cmd := exec.Command(bulsajoBin, "run", "--run-dir", runDir, "--recovery", "live", "--nproc-per-node", "4",
		"--standby-preload", "torch,torch.distributed,torch.nn.parallel,torch._dynamo,torch.distributed.nn.jit.instantiator",
		"--chaos", "kill-at-step=60,kill-at-step=140", "--",
		torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"), "--steps", "240", "--sleep-ms", "10")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 faults, 2 recoveries") {
		t.Fatalf("%v, want a success after the 2 faults:\n%s", err, out)
	}
	ents, _ := os.ReadDir(tmp)
	var left []string
	for _, e := range ents {
		inside, _ := os.ReadDir(filepath.Join(tmp, e.Name()))
		var names []string
		for _, f := range inside {
			names = append(names, f.Name())
		}
		left = append(left, e.Name()+"/"+strings.Join(names, ","))
	}
	if len(left) > 0 {
		t.Errorf("left in TMPDIR: %v", left)
	}
}
