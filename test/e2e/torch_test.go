package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// These tests run examples/ddp_train.py, a real DDP job (gloo, CPU), under
// bulsajo. The script is deterministic and checkpoints every few steps, so a
// run interrupted by faults must end with the same parameters, bit for bit,
// as a run without faults.

var doneLine = regexp.MustCompile(`done steps=(\d+) loss=([0-9.]+) params_sha256=([0-9a-f]+)`)

func trainArgs(t *testing.T, steps string, extra ...string) []string {
	return append([]string{"--", torchPython, filepath.Join(repoRoot, "examples", "ddp_train.py"),
		"--steps", steps, "--ckpt-dir", filepath.Join(t.TempDir(), "ckpt")}, extra...)
}

func finalHash(t *testing.T, out string) string {
	t.Helper()
	m := doneLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no done line in output:\n%s", out)
	}
	return m[3]
}

func TestTorchFaultsDoNotChangeTheResult(t *testing.T) {
	requireTorch(t)
	clean := bulsajo(t, 3*time.Minute, append([]string{"--nproc-per-node", "3"}, trainArgs(t, "400")...)...)
	if clean.code != 0 {
		t.Fatalf("fault-free run: exit %d:\n%s", clean.code, clean.out)
	}
	// A SIGKILLed worker and a SIGSTOPped one, in the same run.
	faulty := bulsajo(t, 3*time.Minute, append([]string{"--nproc-per-node", "3", "--chaos", "kill-at=3s,stop-at=7s"},
		trainArgs(t, "400")...)...)
	if faulty.code != 0 {
		t.Fatalf("run with faults: exit %d:\n%s", faulty.code, faulty.out)
	}
	evs := faulty.events(t)
	var causes []string
	for _, e := range evs {
		if e.Type == events.FaultDetected {
			causes = append(causes, e.Cause)
			if e.Cause == "hang" && e.DetectMS > 3000 {
				t.Errorf("SIGSTOP detected after %.0f ms, want <= 3 s", e.DetectMS)
			}
		}
	}
	if len(causes) < 2 || !contains(causes, "worker_exit") || !contains(causes, "hang") {
		t.Fatalf("want a worker_exit and a hang fault, got %v:\n%s", causes, faulty.out)
	}
	if n := faulty.count(events.Recovered, evs); n != len(causes) {
		t.Errorf("%d faults (%v) but %d recoveries:\n%s", len(causes), causes, n, faulty.out)
	}
	if a, b := finalHash(t, clean.out), finalHash(t, faulty.out); a != b {
		t.Errorf("parameters differ after recovery: fault-free %s, with faults %s", a, b)
	}
}

func TestTorchExternalSigkillOfAWorker(t *testing.T) {
	requireTorch(t)
	cmd, out, runDir := startBulsajo(t, append([]string{"--nproc-per-node", "2", "--run-id", "extkill"}, trainArgs(t, "300")...)...)
	// Wait until training runs, then kill rank 1 from outside, as the OOM killer would.
	waitFor(t, 60*time.Second, "training to start", func() bool { return strings.Contains(out.String(), "step 20 ") })
	killRank(t, runDir, 1)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("bulsajo: %v\n%s", err, out.String())
	}
	evs, _ := events.ReadFile(filepath.Join(runDir, "events.jsonl"))
	var fault *events.Event
	for i := range evs {
		if evs[i].Type == events.FaultDetected {
			fault = &evs[i]
			break
		}
	}
	if fault == nil || fault.Rank == nil || *fault.Rank != 1 || !strings.Contains(fault.Detail, "SIGKILL") {
		t.Fatalf("first fault %+v, want rank 1 SIGKILL:\n%s", fault, out.String())
	}
	if fault.DetectMS > 100 {
		t.Errorf("exit detected after %.1f ms, want <= 100 ms", fault.DetectMS)
	}
	finalHash(t, out.String())
}

func TestTorchKill9OfBulsajoAndCtrlCLeaveNoWorker(t *testing.T) {
	requireTorch(t)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			id := "orphans" + strconv.Itoa(int(sig))
			cmd, out, _ := startBulsajo(t, append([]string{"--nproc-per-node", "3", "--run-id", id}, trainArgs(t, "100000")...)...)
			waitFor(t, 60*time.Second, "training to start", func() bool { return strings.Contains(out.String(), "step 10 ") })
			// Standbys (pre-started workers) count too: nothing may be left.
			waitFor(t, 30*time.Second, "standby workers", func() bool { return len(processesWithEnv("BULSAJO_RUN_ID="+id)) >= 4 })
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			if sig == syscall.SIGINT && exitCode(err) != 130 {
				t.Errorf("exit %d after SIGINT, want 130:\n%s", exitCode(err), out.String())
			}
			waitNone(t, "BULSAJO_RUN_ID="+id, 5*time.Second)
		})
	}
}

func TestTorchEnvironmentMatchesTorchrun(t *testing.T) {
	requireTorch(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "env.py")
	os.WriteFile(script, []byte(`import json, os, sys
with open(os.path.join(sys.argv[1], "env%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(dict(os.environ), f)
`), 0o644)
	tr := filepath.Join(dir, "torchrun")
	brun := filepath.Join(dir, "bulsajo")
	os.Mkdir(tr, 0o755)
	os.Mkdir(brun, 0o755)
	// The torchrun of the interpreter's own torch (scripts/torch2/torchrun.py:
	// its console script's main(), working where torch lacks libuv).
	c := exec.Command(torchPython, filepath.Join(repoRoot, "scripts", "torch2", "torchrun.py"), "--nproc_per_node=2", "--redirects=1", "--tee=1", "--max_restarts=3", "--rdzv_id=same", script, tr)
	c.Dir = dir
	// torchrun of a torch built without libuv (Debian's 2.x) needs the user
	// to say USE_LIBUV=0; bulsajo finds it out (the shim). Harmless elsewhere.
	c.Env = os.Environ()
	if _, ok := os.LookupEnv("USE_LIBUV"); !ok {
		c.Env = append(c.Env, "USE_LIBUV=0")
	}
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("torchrun: %v\n%s", err, out)
	}
	r := bulsajo(t, time.Minute, "--nproc-per-node", "2", "--max-restarts", "3", "--run-id", "same", "--", torchPython, script, brun)
	if r.code != 0 {
		t.Fatalf("bulsajo: exit %d\n%s", r.code, r.out)
	}
	for _, rank := range []string{"0", "1"} {
		want, got := readEnv(t, filepath.Join(tr, "env"+rank+".json")), readEnv(t, filepath.Join(brun, "env"+rank+".json"))
		// Every variable torchrun sets must be there...
		for k, v := range want {
			if _, inParent := os.LookupEnv(k); inParent || k == "USE_LIBUV" {
				continue
			}
			g, ok := got[k]
			switch {
			case !ok:
				t.Errorf("rank %s: %s missing (torchrun sets %q)", rank, k, v)
			case k == "MASTER_PORT" || k == "TORCHELASTIC_ERROR_FILE":
				// a different port and path by design
			case k == "TORCHELASTIC_USE_AGENT_STORE":
				// rank 0 hosts the store: no agent process is a single point of failure
				if g != "False" {
					t.Errorf("rank %s: %s=%q, want False", rank, k, g)
				}
			case g != v:
				t.Errorf("rank %s: %s=%q, torchrun gives %q", rank, k, g, v)
			}
		}
		// ...and nothing else but bulsajo's own, Python's output and crash
		// report settings (PYTHONFAULTHANDLER: a native crash's stacks),
		// USE_LIBUV=0 where torch lacks libuv, and the other torch version's
		// name of a variable torchrun sets, with the same value.
		var extra []string
		for k, g := range got {
			if alias, ok := nameInOtherTorch[k]; ok && want[alias] == g {
				continue
			}
			if k == "USE_LIBUV" && g == "0" {
				continue
			}
			if _, ok := want[k]; !ok && !strings.HasPrefix(k, "BULSAJO_") && k != "PYTHONUNBUFFERED" && k != "PYTHONPATH" &&
				k != "PYTHONFAULTHANDLER" {
				if _, inParent := os.LookupEnv(k); !inParent {
					extra = append(extra, k)
				}
			}
		}
		sort.Strings(extra)
		if len(extra) > 0 {
			t.Errorf("rank %s: variables torchrun does not set: %v", rank, extra)
		}
	}
}

// nameInOtherTorch: variables torchrun sets under a name that changed
// between torch 1.13 and 2.x (bulsajo sets both).
var nameInOtherTorch = map[string]string{
	"NCCL_ASYNC_ERROR_HANDLING":       "TORCH_NCCL_ASYNC_ERROR_HANDLING",
	"TORCH_NCCL_ASYNC_ERROR_HANDLING": "NCCL_ASYNC_ERROR_HANDLING",
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A rank that computes for seconds without reporting progress (rank 0
// writing a large checkpoint while the others wait for it in the next
// all-reduce, and again after the last step) is not hung: bulsajo sees it
// using CPU, says so once per stall, and the job ends without a fault. A
// SIGSTOPped rank is still a hang (TestTorchFaultsDoNotChangeTheResult).
func TestTorchSlowSaveIsNotAHang(t *testing.T) {
	requireTorch(t)
	r := bulsajo(t, 3*time.Minute, append([]string{"--nproc-per-node", "2"},
		trainArgs(t, "250", "--slow-save-s", "5")...)...)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	evs := r.events(t)
	if n := r.count(events.FaultDetected, evs); n != 0 {
		t.Fatalf("%d faults for a job that only saved slowly:\n%s", n, r.out)
	}
	if !strings.Contains(r.out, "but rank 0 is using CPU") {
		t.Fatalf("no line saying rank 0 was busy during a 5 s stall:\n%s", r.out)
	}
}
