// Package e2e runs the real bulsajo binary against real processes: the
// scripted fake worker (tools/fakeworker) and, where torch is installed, real
// PyTorch DDP jobs over gloo.
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

var (
	bulsajoBin string
	fakeBin    string
	repoRoot   string
)

// torchPython is the interpreter with PyTorch that the torch tests run (and
// whose torchrun the environment-parity test compares with): env
// BULSAJO_TEST_PYTHON (scripts/in-torch2.sh --host points it into the torch
// 2.x chroot), else Debian 12's /usr/bin/python3 (torch 1.13).
var torchPython = envOr("BULSAJO_TEST_PYTHON", "/usr/bin/python3")

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bulsajo-e2e-")
	if err != nil {
		panic(err)
	}
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
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
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one finished bulsajo run.
type result struct {
	code   int
	out    string // stdout and stderr together
	runDir string
}

func (r result) events(t *testing.T) []events.Event {
	t.Helper()
	evs, err := events.ReadFile(filepath.Join(r.runDir, "events.jsonl"))
	if err != nil {
		t.Fatalf("read events: %v", err)
	}
	return evs
}

func (r result) count(typ string, evs []events.Event) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// bulsajo runs the binary to completion (or the timeout) in a fresh run dir.
func bulsajo(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	cmd, out, runDir := startBulsajo(t, args...)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return result{code: exitCode(err), out: out.String(), runDir: runDir}
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("bulsajo %v did not finish in %v; output:\n%s", args, timeout, out.String())
	}
	return result{}
}

// startBulsajo starts `bulsajo run --run-dir DIR ARGS...` in its own process
// group. The "run" subcommand is implied when args start with a flag.
func startBulsajo(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer, string) {
	t.Helper()
	runDir := filepath.Join(t.TempDir(), "run")
	if len(args) > 0 && strings.HasPrefix(args[0], "-") {
		args = append([]string{"run", "--run-dir", runDir}, args...)
	}
	cmd := exec.Command(bulsajoBin, args...)
	cmd.Dir = t.TempDir()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			logStacks(t, runDir)
		}
		keepCrashes(t, runDir)
	})
	return cmd, out, runDir
}

// keepCrashes reports every worker that died of a fatal signal it raised
// (faulthandler's "Fatal Python error" in its rank log) whether or not the
// test failed: a survivor that aborts inside torch is lost work even when
// bulsajo recovers, and its stacks go with the test's temp dir. With
// BULSAJO_E2E_KEEP=DIR set, the run's logs are copied there.
func keepCrashes(t *testing.T, runDir string) {
	logs, _ := filepath.Glob(filepath.Join(runDir, "logs", "rank*.log"))
	crashed := false
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if i := bytes.Index(b, []byte("Fatal Python error")); i >= 0 {
			crashed = true
			from := max(0, bytes.LastIndex(b[:i], []byte("\n"))-4000)
			t.Logf("%s: a worker died of a fatal signal:\n%s", filepath.Base(l), b[from:])
		}
	}
	keep := os.Getenv("BULSAJO_E2E_KEEP")
	if !crashed || keep == "" {
		return
	}
	dst := filepath.Join(keep, strings.NewReplacer("/", "_").Replace(t.Name())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	err := os.CopyFS(filepath.Join(dst, "logs"), os.DirFS(filepath.Join(runDir, "logs")))
	if err == nil {
		var ev []byte
		if ev, err = os.ReadFile(filepath.Join(runDir, "events.jsonl")); err == nil {
			err = os.WriteFile(filepath.Join(dst, "events.jsonl"), ev, 0o644)
		}
	}
	if err != nil {
		t.Logf("keeping the logs in %s: %v", dst, err)
		return
	}
	t.Logf("logs kept in %s", dst)
}

// logStacks prints the stack dumps the SDK wrote for regroups that got
// stuck (logs/stacks-*.txt): the run dir goes with the test.
func logStacks(t *testing.T, runDir string) {
	files, _ := filepath.Glob(filepath.Join(runDir, "logs", "stacks-*.txt"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		t.Logf("%s:\n%s", filepath.Base(f), b)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// processesWithEnv lists live (not zombie) processes whose environment holds kv.
func processesWithEnv(kv string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, []byte(kv+"\x00")) {
			continue
		}
		if alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// waitNone waits until no process matches kv, failing the test otherwise.
func waitNone(t *testing.T, kv string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pids := processesWithEnv(kv)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range pids {
				syscall.Kill(p, syscall.SIGKILL)
			}
			t.Fatalf("orphaned workers still running after %v: %v", within, pids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or the time runs out.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func requireTorch(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real PyTorch test skipped in -short mode")
	}
	if out, err := exec.Command(torchPython, "-c", "import torch.distributed").CombinedOutput(); err != nil {
		t.Fatalf("PyTorch is required in %s (apt-get install -y python3-torch; `make test` does this): %v\n%s", torchPython, err, out)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// livePID is the live process that holds rank in runDir (pids/rankN), or 0.
func livePID(runDir string, rank int) int {
	b, _ := os.ReadFile(filepath.Join(runDir, "pids", "rank"+strconv.Itoa(rank)))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid > 0 && !alive(pid) {
		return 0
	}
	return pid
}

// killRank SIGKILLs the process that holds rank in runDir (pids/rankN), from
// outside, as the OOM killer would.
func killRank(t *testing.T, runDir string, rank int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, "pids", fmt.Sprintf("rank%d", rank)))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		t.Fatalf("rank %d's pid file: %v %q", rank, err, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill rank %d (pid %d): %v", rank, pid, err)
	}
}

// nobodyDir: the uid and gid of the user nobody, and a directory it can
// reach (t.TempDir's parents are root's alone), removed after the test.
// Skips the test where it cannot run processes as nobody.
func nobodyDir(t *testing.T, prefix string) (uid, gid int, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run as the unprivileged user nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ = strconv.Atoi(nobody.Uid)
	gid, _ = strconv.Atoi(nobody.Gid)
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	return uid, gid, dir
}
