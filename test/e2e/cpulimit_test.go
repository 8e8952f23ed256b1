package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// scripts/cpu-limit.sh holds make demo-slow-check's demo to half a core. Its
// own paths: bad arguments, a command held to its share and its status
// passed on, the cgroup gone afterwards, and "not run" (exit 0, the command
// never started) where no cgroup can be made.

// cpuLimit runs scripts/cpu-limit.sh ARGS as uid (0: as this process).
func cpuLimit(t *testing.T, script string, uid, gid int, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(script, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("cpu-limit.sh %v: %v", args, err)
	}
	return exitCode(err), o.String(), e.String()
}

// cpuLimitCgroups: the cgroups cpu-limit.sh made that are still there.
func cpuLimitCgroups() []string {
	var left []string
	for _, p := range []string{"/sys/fs/cgroup/cpu/bulsajo-cpu-limit-*", "/sys/fs/cgroup/bulsajo-cpu-limit-*"} {
		m, _ := filepath.Glob(p)
		left = append(left, m...)
	}
	return left
}

func TestCPULimitScript(t *testing.T) {
	script := filepath.Join(repoRoot, "scripts", "cpu-limit.sh")
	usage := "usage: cpu-limit.sh PERCENT CMD [ARG...]\n"
	for _, args := range [][]string{{}, {"50"}, {"half", "true"}, {"0", "true"}, {"-5", "true"}, {"5x", "true"}} {
		code, out, errOut := cpuLimit(t, script, 0, 0, args...)
		if code != 2 || out != "" || errOut != usage {
			t.Errorf("cpu-limit.sh %q: exit %d, stdout %q, stderr %q; want 2 and the usage line", args, code, out, errOut)
		}
	}

	if os.Geteuid() != 0 {
		t.Skip("needs root, to make a cgroup")
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err != nil {
		if b, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); !strings.Contains(string(b), "cpu") {
			t.Skip("no cgroup cpu controller here")
		}
	}
	before := len(cpuLimitCgroups())
	// The command runs in the cgroup from its first instruction, keeps its
	// status, and spins against a 10 % quota (10 ms each 100 ms period):
	// throttled in every period of its 0.5 s.
	code, out, errOut := cpuLimit(t, script, 0, 0, "10", "sh", "-c",
		`grep -q bulsajo-cpu-limit- /proc/self/cgroup || exit 9; timeout 0.5 sh -c 'while :; do :; done'; exit 3`)
	if code != 3 || errOut != "" {
		t.Fatalf("exit %d (stderr %q), want the command's 3:\n%s", code, errOut, out)
	}
	m := regexp.MustCompile(`cpu-limit.sh: 10% of one CPU, throttled (\d+) times: sh -c`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no throttling line:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < 2 {
		t.Errorf("throttled %d times in 0.5 s of spinning at 10%%:\n%s", n, out)
	}
	if left := cpuLimitCgroups(); len(left) != before {
		t.Errorf("cgroups left behind: %v", left)
	}

	// Where it cannot make a cgroup (here: as nobody), it says so, runs
	// nothing, and exits 0: the check it serves is skipped, not failed.
	uid, gid, dir := nobodyDir(t, "bulsajo-cpu-limit-")
	copyScript := filepath.Join(dir, "cpu-limit.sh")
	if b, err := os.ReadFile(script); err != nil || os.WriteFile(copyScript, b, 0o755) != nil {
		t.Fatalf("copy the script: %v", err)
	}
	marker := filepath.Join(dir, "ran")
	code, out, errOut = cpuLimit(t, copyScript, uid, gid, "50", "touch", marker)
	if code != 0 || !strings.Contains(out, ": not run: touch "+marker) || strings.Count(out, "\n") != 1 || errOut != "" {
		t.Errorf("as nobody: exit %d, stdout %q, stderr %q; want 0 and one line saying it did not run", code, out, errOut)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("as nobody, the command ran unlimited")
	}
}
