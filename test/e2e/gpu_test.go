package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/gpu"
	"github.com/bulsajo/bulsajo/test/netlab"
)

// GPU health with the scripted fake probe (BULSAJO_FAKE_GPU): bulsajo
// believes the machine has 4 GPUs, the workers are real torch processes
// (gloo, CPU). The test appends "xid 79 gpu 2" to the script once the job
// trains; the GPU of rank 2 must leave the job and the job must finish on
// the other three. (--hang-floor 20s: on a loaded 2-core machine a rank may
// take seconds to exit after its last step; hangs are not under test here.)

func fakeGPUs(t *testing.T, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gpus.txt")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("gpus %d\n", n)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(gpu.FakeEnv, p)
	return p
}

func appendScript(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

// drainDuringRun starts the job, waits until it trains, has the fake
// probe report XID 79 on GPU 2 and waits for the end.
func drainDuringRun(t *testing.T, script string, trained string, args ...string) result {
	t.Helper()
	cmd, out, runDir := startBulsajo(t, args...)
	waitFor(t, 2*time.Minute, "training", func() bool { return strings.Contains(out.String(), trained) })
	appendScript(t, script, "xid 79 gpu 2")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return result{code: exitCode(err), out: out.String(), runDir: runDir}
	case <-time.After(3 * time.Minute):
		t.Fatalf("did not finish; output:\n%s", out.String())
	}
	return result{}
}

// checkDrained: the event log says GPU 2 was drained for XID 79 and the
// rank on it faulted for that reason.
func checkDrained(t *testing.T, r result) []events.Event {
	t.Helper()
	evs := r.events(t)
	var drained, fault bool
	for _, e := range evs {
		switch {
		case e.Type == events.GPUDrained:
			if e.GPU == nil || *e.GPU != 2 || !strings.Contains(e.Detail, "XID 79") || e.UUID != "GPU-fake-0002" || e.WorldSize != 3 {
				t.Errorf("gpu_drained event %+v, want GPU 2 (GPU-fake-0002), XID 79, 3 GPUs left", e)
			}
			if e.Rank == nil || *e.Rank != 2 {
				t.Errorf("gpu_drained names rank %v, want 2", e.Rank)
			}
			drained = true
		case e.Type == events.FaultDetected && e.Cause == "gpu":
			if e.Rank == nil || *e.Rank != 2 || !strings.Contains(e.Detail, "XID 79") {
				t.Errorf("fault %+v, want rank 2 for XID 79", e)
			}
			fault = true
		}
	}
	if !drained || !fault {
		t.Fatalf("drained %v, gpu fault %v; output:\n%s", drained, fault, r.out)
	}
	if !strings.Contains(r.out, "✗ GPU 2 drained: XID 79 (GPU fell off the bus) · rank 2 leaves the job · 3 healthy GPU(s) left") {
		t.Errorf("terminal does not say why:\n%s", r.out)
	}
	return evs
}

func TestGPUDrainRestartModeContinuesOnTheRest(t *testing.T) {
	requireTorch(t)
	script := fakeGPUs(t, 4)
	r := drainDuringRun(t, script, "[rank0] step 20 ", append([]string{"--nproc-per-node", "4", "--hang-floor", "20s"}, trainArgs(t, "300")...)...)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	evs := checkDrained(t, r)
	// Restart mode: the next generation runs 3 workers, and none again
	// on GPU 2 (the fake probe would not tell; the launcher does).
	last := 0
	for _, e := range evs {
		if e.Type == events.GenerationStart {
			last = e.WorldSize
		}
	}
	if last != 3 {
		t.Errorf("last generation has %d workers, want 3", last)
	}
	if !strings.Contains(r.out, "done steps=300") {
		t.Errorf("job did not finish its steps:\n%s", r.out)
	}
	b, err := os.ReadFile(filepath.Join(r.runDir, "gpus.json"))
	if err != nil || !strings.Contains(string(b), `"state": "drained"`) {
		t.Errorf("gpus.json: %v %s", err, b)
	}
}

func TestGPUDrainLiveModeSurvivorsRegroup(t *testing.T) {
	requireTorch(t)
	script := fakeGPUs(t, 4)
	results := filepath.Join(t.TempDir(), "results")
	r := drainDuringRun(t, script, "step 20", "--recovery", "live", "--nproc-per-node", "4", "--hang-floor", "20s", "--",
		torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"), "--steps", "300", "--result-dir", results)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.out)
	}
	evs := checkDrained(t, r)
	// The generation formed after the drain is the survivors, 3 of them
	// (no healthy GPU is free for a replacement), and none is larger later.
	var regroup, after bool
	for _, e := range evs {
		switch {
		case e.Type == events.GPUDrained:
			after = true
		case e.Type == events.GenerationStart && after:
			if !regroup && e.Cause != "regroup" {
				t.Errorf("generation %d after the drain: cause %q, want a regroup:\n%s", e.Gen, e.Cause, r.out)
			}
			if e.WorldSize != 3 {
				t.Errorf("generation %d after the drain: world %d, want 3:\n%s", e.Gen, e.WorldSize, r.out)
			}
			regroup = true
		}
	}
	if !regroup {
		t.Fatalf("no regroup:\n%s", r.out)
	}
	checkLiveResults(t, results, 3)
}

// Multi-node: node b's fake probe reports XID 79 while the job trains. The
// coordinator quarantines b with the reason, the spare takes b's ranks and
// the job finishes.
func TestMultiNodeGPUDrainQuarantinesNode(t *testing.T) {
	m := newClusterWithout(t, []string{"a", "b", "s1"}, "b")
	script := fakeGPUs(t, 2) // only the agent started from here on reads it: b
	m.startAgent("b")
	m.waitNodes(3)
	sub := m.submit("2", "-steps", "80", "-step-time", "50ms")
	m.waitStep(1, 10, 60*time.Second)
	appendScript(t, script, "xid 79 gpu 1")
	if code := sub.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	evs := m.events()
	var quarantined, drained, lost bool
	for _, e := range evs {
		switch {
		case e.Type == events.NodeQuarantined && e.Node == "b":
			quarantined = strings.Contains(e.Detail, "GPU 1: XID 79 (GPU fell off the bus)")
		case e.Type == events.GPUDrained && e.Node == "b" && e.GPU != nil && *e.GPU == 1:
			drained = e.UUID == "GPU-fake-0001"
		case e.Type == events.FaultDetected && e.Cause == "node_lost":
			lost = strings.Contains(e.Detail, "node b drained: GPU 1: XID 79")
		}
	}
	if !quarantined || !drained || !lost {
		t.Fatalf("quarantined with the reason %v, gpu_drained %v, b's ranks faulted %v; events:\n%+v", quarantined, drained, lost, evs)
	}
	co := m.coord.out.String()
	if !strings.Contains(co, "generation 2 on 2 nodes ([a s1])") {
		t.Errorf("generation 2 should run on a and the spare s1; coordinator said:\n%s", co)
	}
	nb := m.node("b")
	if !nb.Quarantined || !strings.Contains(nb.Reason, "XID 79") || len(nb.GPUs) != 1 || nb.GPUs[0].State != "drained" {
		t.Errorf("status of b: %+v, want quarantined for XID 79 with GPU 1 drained", nb)
	}
	// Every step of the job was done, the last ones after the move.
	last := 0
	for _, r := range m.steps() {
		if r.Gen >= 2 && r.Step > last {
			last = r.Step
		}
	}
	if last != 79 {
		t.Errorf("last step after the move: %d, want 79", last)
	}
	noOverlap(t, m.steps())
	m.waitNoWorkers(5 * time.Second)
}

// newClusterWithout is newCluster with the agent of host late not started
// (the test starts it, e.g. with another environment).
func newClusterWithout(t *testing.T, nodes []string, late string) *mcluster {
	t.Helper()
	netlab.Require(t)
	m := &mcluster{t: t, lab: netlab.New(t, append([]string{"coord"}, nodes...)...), dir: t.TempDir(),
		agents: map[string]*proc{}, slots: "2"}
	m.stepLog = filepath.Join(m.dir, "steps.log")
	m.pidDir = filepath.Join(m.dir, "pids")
	os.MkdirAll(m.pidDir, 0o755)
	m.startCoordinator()
	for _, n := range nodes {
		if n != late {
			m.startAgent(n)
		}
	}
	m.waitNodes(len(nodes) - 1)
	return m
}

// Without NVML the job runs as before and says so once; a broken fake
// script is a usage error, in one line.
func TestGPUHealthUnavailableAndBadScript(t *testing.T) {
	t.Setenv(gpu.FakeEnv, "")
	r := bulsajo(t, 30*time.Second, "--nproc-per-node", "2", "--", "true")
	if r.code != 0 || strings.Count(r.out, "GPU health unavailable") != 1 {
		t.Fatalf("exit %d, want 0 with one \"GPU health unavailable\" line:\n%s", r.code, r.out)
	}
	p := filepath.Join(t.TempDir(), "gpus.txt")
	os.WriteFile(p, []byte("gpus 2\nxid seventy gpu 1\n"), 0o644)
	t.Setenv(gpu.FakeEnv, p)
	r = bulsajo(t, 30*time.Second, "--nproc-per-node", "2", "--", "true")
	if r.code != 2 || !strings.Contains(r.out, "gpus.txt:2") {
		t.Fatalf("exit %d, want 2 naming the bad line:\n%s", r.code, r.out)
	}
}

// Restart-class XIDs (13) on the same GPU restart its worker's generation
// on all four GPUs; the third within the hour drains the GPU and the job
// finishes on three. (The fake worker: this is about the decisions.)
func TestGPURestartClassEscalatesToDrain(t *testing.T) {
	script := fakeGPUs(t, 4)
	cmd, out, runDir := startBulsajo(t, "--nproc-per-node", "4", "--", fakeBin, "-steps", "150", "-step-time", "50ms")
	recovered := func() int {
		evs, _ := events.ReadFile(filepath.Join(runDir, "events.jsonl"))
		n := 0
		for _, e := range evs {
			if e.Type == events.Recovered {
				n++
			}
		}
		return n
	}
	waitFor(t, 30*time.Second, "training", func() bool {
		return strings.Contains(out.String(), "[rank0]") || fileExists(filepath.Join(runDir, "pids", "rank1"))
	})
	for i := 0; i < 3; i++ {
		waitFor(t, 60*time.Second, fmt.Sprintf("recovery %d", i), func() bool { return recovered() == i })
		appendScript(t, script, "xid 13 gpu 1")
		waitFor(t, 60*time.Second, fmt.Sprintf("fault %d handled", i+1), func() bool { return recovered() == i+1 })
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit %v:\n%s", err, out.String())
	}
	evs, _ := events.ReadFile(filepath.Join(runDir, "events.jsonl"))
	var faults, gpuFaults, drains, lastWorld int
	for _, e := range evs {
		switch e.Type {
		case events.FaultDetected:
			faults++
		case events.GPUFault:
			gpuFaults++
		case events.GPUDrained:
			drains++
			if !strings.Contains(e.Detail, "3 application-class faults on this GPU") {
				t.Errorf("drain reason %q, want the escalation named", e.Detail)
			}
		case events.GenerationStart:
			lastWorld = e.WorldSize
		}
	}
	if faults != 3 || gpuFaults != 2 || drains != 1 || lastWorld != 3 {
		t.Fatalf("faults %d, gpu_fault events %d, drains %d, last world %d; want 3, 2, 1, 3:\n%s", faults, gpuFaults, drains, lastWorld, out.String())
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
