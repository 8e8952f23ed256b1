package multinode

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/test/netlab"
)

// d) A real PyTorch job (examples/ddp_train.py, gloo, 1 worker per node)
// across namespaces, one node crashed (every process on it SIGKILLed):
// torchrun (c10d rendezvous) against bulsajo, interleaved trial by trial.

const trialCap = 120 * time.Second

// Every namespace's hostname resolves to 127.0.0.1 (one /etc/hosts), so
// gloo must be told which interface to use, on both launchers.
var torchEnv = []string{"GLOO_SOCKET_IFNAME=eth0", "OMP_NUM_THREADS=1"}

// torchrunShim runs torchrun with socket.getfqdn answering this host's
// address: torchrun's agent publishes getfqdn() as MASTER_ADDR, which here
// would be the shared hostname (127.0.0.1 everywhere). On a real cluster the
// hostname resolves to the node's address and no shim is needed.
const torchrunShim = `import socket, sys
ip = sys.argv.pop(1)
socket.getfqdn = lambda *a, **k: ip
sys.argv[0] = "torchrun"
from torch.distributed.run import main
main()
`

// The c10d rendezvous store, hosted on its own host (as bulsajo's
// coordinator is): torchrun's agents only host it themselves when the
// endpoint matches their hostname, which none does here.
const storeServer = `import datetime, sys, time
import torch.distributed as dist
s = dist.TCPStore("0.0.0.0", int(sys.argv[1]), None, True, datetime.timedelta(seconds=900), wait_for_workers=False)
print("store listening", flush=True)
time.sleep(1e9)
`

// sample is one line of ddp_train.py's --sample-log, with the time the
// benchmark saw it.
type sample struct {
	gen        string
	step, rank int
	at         time.Time
}

// sampleTail polls a --sample-log file every 5 ms and timestamps new lines.
type sampleTail struct {
	mu   sync.Mutex
	recs []sample
	stop chan struct{}
}

func tailSamples(t testing.TB, path string) *sampleTail {
	st := &sampleTail{stop: make(chan struct{})}
	var off int64
	var part []byte
	go func() {
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-st.stop:
				return
			case <-tk.C:
			}
			f, err := os.Open(path)
			if err != nil {
				continue
			}
			fi, _ := f.Stat()
			if fi.Size() > off {
				buf := make([]byte, fi.Size()-off)
				k, _ := f.ReadAt(buf, off)
				off += int64(k)
				now := time.Now()
				part = append(part, buf[:k]...)
				for {
					i := bytes.IndexByte(part, '\n')
					if i < 0 {
						break
					}
					fs := strings.Fields(string(part[:i]))
					part = part[i+1:]
					if len(fs) < 3 {
						continue
					}
					step, e1 := strconv.Atoi(fs[1])
					rank, e2 := strconv.Atoi(fs[2])
					if e1 == nil && e2 == nil {
						st.mu.Lock()
						st.recs = append(st.recs, sample{gen: fs[0], step: step, rank: rank, at: now})
						st.mu.Unlock()
					}
				}
			}
			f.Close()
		}
	}()
	t.Cleanup(func() { close(st.stop) })
	return st
}

func (st *sampleTail) snapshot() []sample {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]sample(nil), st.recs...)
}

func (st *sampleTail) maxStep() int {
	m := -1
	for _, r := range st.snapshot() {
		m = max(m, r.step)
	}
	return m
}

// afterFault: the first line of a process that had not written before the
// fault (a new generation), and what it resumed with.
type afterFault struct {
	ok          bool
	first       time.Time
	firstStep   int
	lastBefore  int
	world       int
	newMarkers  []string
	linesBefore int
}

func analyze(recs []sample, faultAt time.Time) afterFault {
	seen := map[string]bool{}
	a := afterFault{lastBefore: -1}
	for _, r := range recs {
		if !r.at.After(faultAt) {
			seen[r.gen] = true
			a.lastBefore = max(a.lastBefore, r.step)
			a.linesBefore++
		}
	}
	ranks := map[int]bool{}
	markers := map[string]bool{}
	for _, r := range recs {
		if r.at.After(faultAt) && !seen[r.gen] {
			if !a.ok {
				a.ok, a.first, a.firstStep = true, r.at, r.step
			}
			if r.at.Before(a.first.Add(2 * time.Second)) {
				ranks[r.rank] = true
				if !markers[r.gen] {
					markers[r.gen] = true
					a.newMarkers = append(a.newMarkers, r.gen)
				}
			}
		}
	}
	a.world = len(ranks)
	return a
}

// launched is a started job: the host to crash, the launchers' output (for
// failures), and when the launcher noticed the crash (zero: unknown).
type launched struct {
	victim string
	logs   func() string
	detect func(after time.Time) time.Time
	// phases: ms from the crash to the launcher's milestones after it.
	phases func(after time.Time) map[string]float64
}

type starter func(t *testing.T, dir, ckpt, samples string, tail *sampleTail) (*netlab.Lab, launched)

func trainArgs(ckpt, samples string) []string {
	return []string{filepath.Join(repoRoot, "bench", "multinode", "train_steplog.py"), "--backend", "gloo", "--steps", "1000000",
		"--ckpt-dir", ckpt, "--sample-log", samples, "--log-every", "100"}
}

func waitTraining(t *testing.T, tail *sampleTail, step int, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(trialCap)
	for tail.maxStep() < step {
		if time.Now().After(deadline) {
			t.Fatalf("training did not reach step %d in %v:\n%s", step, trialCap, logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startTorchrun: a TCPStore on coord, torchrun on t1 and t2 (and, with a
// spare, t3 once the first two train).
func startTorchrun(spare bool) starter {
	return func(t *testing.T, dir, ckpt, samples string, tail *sampleTail) (*netlab.Lab, launched) {
		hosts := []string{"coord", "t1", "t2"}
		nnodes := "1:2"
		if spare {
			hosts, nnodes = append(hosts, "t3"), "2"
		}
		lab := netlab.New(t, hosts...)
		store := startIn(t, lab, "coord", dir, nil, torchPython, "-c", storeServer, "29400")
		waitFor(t, 60*time.Second, "the rendezvous store", func() bool {
			return strings.Contains(store.out.String(), "store listening") || store.exited()
		})
		procs := map[string]*proc{}
		launch := func(h string) {
			args := append([]string{"-c", torchrunShim, lab.Host(h).IP, "--nnodes=" + nnodes, "--nproc_per_node=1",
				"--rdzv_backend=c10d", "--rdzv_endpoint=" + lab.Host("coord").IP + ":29400", "--rdzv_id=bench",
				"--max_restarts=3", "--redirects=1", "--tee=1", "--log_dir=" + filepath.Join(dir, "logs-"+h)},
				trainArgs(ckpt, samples)...)
			procs[h] = startIn(t, lab, h, dir, append([]string{"LOGLEVEL=INFO"}, torchEnv...), torchPython, args...)
		}
		l := launched{victim: "t2"}
		l.logs = func() string {
			var b strings.Builder
			for h, p := range procs {
				fmt.Fprintf(&b, "--- %s:\n%s\n", h, clip(p.out.String(), 3000))
			}
			return b.String()
		}
		l.detect = func(after time.Time) time.Time {
			var first time.Time
			for _, h := range []string{"t1", "t3"} {
				if p := procs[h]; p != nil {
					if at, ok := p.out.find("Worker group FAILED", after); ok && (first.IsZero() || at.Before(first)) {
						first = at
					}
					if at, ok := p.out.find("Worker group UNHEALTHY", after); ok && (first.IsZero() || at.Before(first)) {
						first = at
					}
				}
			}
			return first
		}
		l.phases = func(after time.Time) map[string]float64 {
			ph := map[string]float64{}
			for _, h := range []string{"t1", "t3"} {
				p := procs[h]
				if p == nil {
					continue
				}
				for name, line := range map[string]string{"failed": "Worker group FAILED", "rendezvous_complete": "Rendezvous complete",
					"workers_started": "Starting worker group"} {
					if at, ok := p.out.find(line, after); ok {
						ph[h+"_"+name] = round(msSince(after, at))
					}
				}
			}
			return ph
		}
		launch("t1")
		launch("t2")
		waitTraining(t, tail, 100, l.logs)
		if spare {
			// The spare's agent joins, finds the round complete and full,
			// and waits for the next one.
			launch("t3")
			waitFor(t, 60*time.Second, "t3's agent to reach the rendezvous", func() bool {
				return strings.Contains(procs["t3"].out.String(), "Rendezvous'ing worker group") || procs["t3"].exited()
			})
			time.Sleep(3 * time.Second)
			if procs["t3"].exited() {
				t.Fatalf("t3 exited:\n%s", procs["t3"].out.String())
			}
		}
		return lab, l
	}
}

// startBulsajoTorch: coordinator on coord, agents (1 slot) on n1, n2 (and
// the spare s1), submit from coord.
func startBulsajoTorch(spare bool) starter {
	return func(t *testing.T, dir, ckpt, samples string, tail *sampleTail) (*netlab.Lab, launched) {
		nodes, nnodes := []string{"n1", "n2"}, "1:2"
		if spare {
			nodes, nnodes = append(nodes, "s1"), "2"
		}
		c := newCluster(t, nodes, 1, torchEnv)
		sub := startIn(t, c.lab, "coord", c.dir, nil, bulsajoBin, append([]string{"submit", "--coordinator", c.coordAddr(),
			"--token-file", c.tokenFile(), "--nnodes", nnodes, "--nproc-per-node", "1", "--run-id", "job1", "--max-restarts", "3",
			"--", torchPython}, trainArgs(ckpt, samples)...)...)
		l := launched{victim: "n2"}
		l.logs = func() string {
			var b strings.Builder
			fmt.Fprintf(&b, "--- coordinator:\n%s\n--- submit:\n%s\n", clip(c.coord.out.String(), 3000), clip(sub.out.String(), 2000))
			for h, p := range c.agents {
				fmt.Fprintf(&b, "--- %s:\n%s\n", h, clip(p.out.String(), 2000))
			}
			return b.String()
		}
		l.detect = func(after time.Time) time.Time {
			if f := faultAfter(c.events("coord"), after); f != nil {
				return f.Time
			}
			return time.Time{}
		}
		l.phases = func(after time.Time) map[string]float64 {
			ph := map[string]float64{}
			evs := c.events("coord")
			if f := faultAfter(evs, after); f != nil {
				ph["fault_event"] = round(msSince(after, f.Time))
			}
			for _, e := range evs {
				if e.Type == events.GenerationStart && e.Gen == 2 {
					ph["generation2_started"] = round(msSince(after, e.Time))
				}
				if e.Type == events.Recovered && e.Gen == 2 {
					ph["recovered_event"] = round(msSince(after, e.Time))
				}
			}
			for h, p := range c.agents {
				if at, ok := p.out.find("▶ generation 2", after); ok {
					ph[h+"_start_generation2"] = round(msSince(after, at))
				}
			}
			return ph
		}
		waitTraining(t, tail, 100, l.logs)
		return c.lab, l
	}
}

func TestTorchNodeCrash(t *testing.T) {
	gate(t)
	netlab.Require(t)
	if err := exec.Command(torchPython, "-c", "import torch.distributed").Run(); err != nil {
		t.Skipf("PyTorch: %v", err)
	}
	nTorchrun, nBulsajo := trials(3), trials(5)
	common := "Job: examples/ddp_train.py (run through bench/multinode/train_steplog.py, which only adds a per-process marker to its " +
		"--sample-log lines), gloo over each namespace's eth0 (GLOO_SOCKET_IFNAME=eth0), OMP_NUM_THREADS=1, 1 worker per node (world 2), " +
		"checkpoint every 20 steps, no extra sleep. Once a rank has logged step 100, every process on the victim node is SIGKILLed " +
		"(node crash; the network stays up, so peers see their connections close). Training again: the first --sample-log line " +
		"written by a process that had written none before the crash. Each trial is capped at 120 s after the crash."
	type cfg struct {
		key, title, method string
		config             map[string]string
		start              starter
		n                  int
	}
	cfgs := []cfg{
		{"torch_node_crash_torchrun_spare", "torchrun, node crash, with a waiting spare node",
			"torchrun (`python3 -m torch.distributed.run`, through a shim that makes socket.getfqdn() return the host's address, since " +
				"every namespace shares one hostname) on t1, t2 and t3, --nnodes=2 --rdzv_backend=c10d with the c10d TCPStore on host coord, " +
				"--max_restarts=3, --monitor_interval 5 (default), LOGLEVEL=INFO (logging only). t3 starts once t1+t2 train: it finds the round " +
				"full and waits for the next one. t2 is crashed. " + common,
			map[string]string{"launcher": "torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --max_restarts=3 --redirects=1 --tee=1",
				"hosts": "coord (c10d TCPStore), t1, t2, t3 (waiting spare)", "victim": "t2", "trials": fmt.Sprint(nTorchrun)},
			startTorchrun(true), nTorchrun},
		{"torch_node_crash_bulsajo_spare", "bulsajo, node crash, with a spare node",
			"bulsajo coordinator on coord (defaults: lease 5s, embedded etcd), agents on n1, n2 and s1 (--spare) with --nproc-per-node 1, " +
				"submit --nnodes 2 --max-restarts 3 (standby on). n2 is crashed (agent, worker, standby). " + common,
			map[string]string{"launcher": "bulsajo submit --nnodes 2 --nproc-per-node 1 --max-restarts 3",
				"hosts": "coord, n1, n2, s1 (spare)", "victim": "n2", "trials": fmt.Sprint(nBulsajo)},
			startBulsajoTorch(true), nBulsajo},
		{"torch_node_crash_torchrun_1to2", "torchrun, node crash, no spare (--nnodes=1:2)",
			"As the spare case but only t1 and t2, --nnodes=1:2: after t2 is crashed, t1's next rendezvous completes with t1 alone " +
				"(world 1) once the last-call timeout (30 s default) has passed. " + common,
			map[string]string{"launcher": "torchrun --nnodes=1:2 --nproc_per_node=1 --rdzv_backend=c10d --max_restarts=3 --redirects=1 --tee=1",
				"hosts": "coord (c10d TCPStore), t1, t2", "victim": "t2", "trials": fmt.Sprint(nTorchrun)},
			startTorchrun(false), nTorchrun},
		{"torch_node_crash_bulsajo_1to2", "bulsajo, node crash, no spare (--nnodes 1:2)",
			"As the spare case but agents on n1 and n2 only, submit --nnodes 1:2: generation 2 runs on n1 alone (world 1). " + common,
			map[string]string{"launcher": "bulsajo submit --nnodes 1:2 --nproc-per-node 1 --max-restarts 3",
				"hosts": "coord, n1, n2", "victim": "n2", "trials": fmt.Sprint(nBulsajo)},
			startBulsajoTorch(false), nBulsajo},
	}
	var scs []*Scenario
	for _, c := range cfgs {
		sc := newScenario(c.key, c.title, c.method, c.config)
		sc.metric("training_again_ms", "ms", "crash → first step of a new worker process (sample log)")
		sc.metric("detect_ms", "ms", "crash → the launcher noticed (bulsajo: fault event; torchrun: a survivor's agent logs 'Worker group FAILED')")
		sc.metric("steps_redone", "steps", "last step before the crash − first step after it + 1")
		sc.metric("world_after", "ranks", "ranks of the new generation")
		sc.note("the four torch configurations run interleaved in one test; `seconds` is the time of all four together")
		scs = append(scs, sc)
	}
	defer func() {
		for _, sc := range scs {
			sc.finish()
		}
	}()
	// Interleaved: trial i of every configuration, then trial i+1.
	for i := range max(nTorchrun, nBulsajo) {
		for k, c := range cfgs {
			if i >= c.n {
				continue
			}
			t.Run(fmt.Sprintf("%s/trial%02d", c.key, i+1), func(t *testing.T) {
				defer func() {
					if t.Failed() {
						scs[k].fail("trial %d: %s", i+1, failReason(t))
					}
				}()
				dir := t.TempDir()
				ckpt, samples := filepath.Join(dir, "ckpt"), filepath.Join(dir, "samples.log")
				tail := tailSamples(t, samples)
				lab, l := c.start(t, dir, ckpt, samples, tail)
				crashAt := time.Now()
				crashHost(t, lab.Host(l.victim))
				record(t, scs[k], tail, crashAt, l)
			})
		}
	}
}

func record(t *testing.T, sc *Scenario, tail *sampleTail, crashAt time.Time, l launched) {
	t.Helper()
	var a afterFault
	deadline := crashAt.Add(trialCap)
	for {
		a = analyze(tail.snapshot(), crashAt)
		if a.ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	detect := l.detect(crashAt)
	if !a.ok {
		vals := map[string]float64{}
		if !detect.IsZero() {
			vals["detect_ms"] = msSince(crashAt, detect)
		}
		sc.trial(vals, map[string]any{"timeout": true, "cap_s": trialCap.Seconds()})
		sc.note("trial %d did not train again within %v of the crash (a timeout: no training_again value)", len(sc.Trials), trialCap)
		t.Logf("no training within %v after the crash:\n%s", trialCap, l.logs())
		return
	}
	time.Sleep(2 * time.Second) // every rank of the new generation shows up
	a = analyze(tail.snapshot(), crashAt)
	if detect.IsZero() {
		detect = l.detect(crashAt)
	}
	vals := map[string]float64{
		"training_again_ms": msSince(crashAt, a.first),
		"steps_redone":      float64(a.lastBefore - a.firstStep + 1),
		"world_after":       float64(a.world),
	}
	if !detect.IsZero() {
		vals["detect_ms"] = msSince(crashAt, detect)
	}
	t.Logf("%s: training again after %.0f ms (detected after %.0f ms), world %d, redone %d steps",
		t.Name(), vals["training_again_ms"], vals["detect_ms"], a.world, a.lastBefore-a.firstStep+1)
	sc.trial(vals, map[string]any{"last_step_before": a.lastBefore, "first_step_after": a.firstStep, "new_markers": a.newMarkers,
		"phases_ms_after_crash": l.phases(crashAt)})
	t.Logf("phases (ms after the crash): %v", l.phases(crashAt))
}
