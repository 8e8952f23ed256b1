package multinode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/test/netlab"
	"github.com/bulsajo/bulsajo/tools/fakeworker/steplog"
)

// ---- processes with timestamped output ----

// lineBuf keeps a process's output, each line with the time it was read.
type lineBuf struct {
	mu    sync.Mutex
	all   bytes.Buffer
	part  []byte
	lines []tline
}

type tline struct {
	at time.Time
	s  string
}

func (b *lineBuf) Write(p []byte) (int, error) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.all.Write(p)
	b.part = append(b.part, p...)
	for {
		i := bytes.IndexByte(b.part, '\n')
		if i < 0 {
			break
		}
		b.lines = append(b.lines, tline{now, string(b.part[:i])})
		b.part = b.part[i+1:]
	}
	return len(p), nil
}

func (b *lineBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.all.String()
}

// find is the time of the first line at or after `after` that contains sub.
func (b *lineBuf) find(sub string, after time.Time) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.lines {
		if !l.at.Before(after) && strings.Contains(l.s, sub) {
			return l.at, true
		}
	}
	return time.Time{}, false
}

func clip(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// proc is a process in a namespace.
type proc struct {
	host string
	cmd  *exec.Cmd
	out  *lineBuf
	done chan struct{}
	code int
}

// startIn starts prog in host's namespace, in its own process group, with
// extra environment; cleanup kills its group and, on failure, logs its output.
func startIn(t testing.TB, lab *netlab.Lab, host, dir string, env []string, prog string, args ...string) *proc {
	t.Helper()
	cmd := lab.Host(host).Command(context.Background(), prog, args...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, env...)
	p := &proc{host: host, cmd: cmd, out: &lineBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.code = exitCode(cmd.Wait()); close(p.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() || os.Getenv("BULSAJO_BENCH_LOG") != "" {
			t.Logf("--- %s: %s %s output:\n%s", host, filepath.Base(prog), firstArg(args), clip(p.out.String(), 6000))
		}
	})
	return p
}

func firstArg(a []string) string {
	if len(a) == 0 {
		return ""
	}
	return a[0]
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill9 SIGKILLs the process itself (not its group) and waits for it.
func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// crashHost SIGKILLs every process in host's namespace, repeatedly until
// none is left: a node crash (the kernel closes their sockets, as a real
// crash of the processes would; the host's network stays up).
func crashHost(t testing.TB, h *netlab.Host) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(ipTool(), "netns", "pids", h.NS).Output()
		if err != nil {
			t.Fatalf("ip netns pids %s: %v", h.NS, err)
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v on %s survive SIGKILL", pids, h.Name)
		}
		for _, s := range pids {
			if pid, err := strconv.Atoi(s); err == nil && pid > 1 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reasons: why a trial failed, by test name, for the results file.
var reasons sync.Map

func failReason(t testing.TB) string {
	if r, ok := reasons.Load(t.Name()); ok {
		return r.(string)
	}
	return "failed (see the test log)"
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			reasons.Store(t.Name(), fmt.Sprintf("timed out after %v waiting for %s", within, what))
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- a bulsajo cluster in namespaces ----

type cluster struct {
	t         testing.TB
	lab       *netlab.Lab
	dir       string
	coordHost string
	coordArgs []string
	coord     *proc
	agents    map[string]*proc
	agentEnv  []string
	token     string
	stepLog   string
}

// newCluster builds a lab with a coordinator host "coord" and the given
// nodes (names starting with s are spares) and starts the coordinator and
// one agent with nproc slots per node.
func newCluster(t testing.TB, nodes []string, nproc int, agentEnv []string, coordArgs ...string) *cluster {
	t.Helper()
	hosts := append([]string{"coord"}, nodes...)
	c := &cluster{t: t, lab: netlab.New(t, hosts...), dir: t.TempDir(), coordHost: "coord", coordArgs: coordArgs,
		agents: map[string]*proc{}, agentEnv: agentEnv}
	c.stepLog = filepath.Join(c.dir, "steps.log")
	c.startCoordinator()
	for _, n := range nodes {
		c.startAgent(n, nproc, c.coordAddr())
	}
	c.waitJoined(c.coord, time.Time{}, nodes...)
	return c
}

func (c *cluster) coordAddr() string { return c.lab.Host(c.coordHost).IP + ":7070" }
func (c *cluster) tokenFile() string { return filepath.Join(c.dir, "coord", "join.token") }

// startCoordinator starts (or restarts, on the same data dir) the coordinator
// and waits until it listens.
func (c *cluster) startCoordinator() *proc {
	c.t.Helper()
	args := append([]string{"coordinator", "--listen", c.coordAddr(), "--data-dir", filepath.Join(c.dir, "coord")}, c.coordArgs...)
	c.coord = startIn(c.t, c.lab, c.coordHost, c.dir, nil, bulsajoBin, args...)
	waitFor(c.t, 20*time.Second, "the coordinator to listen", func() bool {
		return strings.Contains(c.coord.out.String(), "bulsajo coordinator") || c.coord.exited()
	})
	if c.coord.exited() {
		c.t.Fatalf("coordinator exited: %s", c.coord.out.String())
	}
	b, err := os.ReadFile(c.tokenFile())
	if err != nil {
		c.t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(b))
	return c.coord
}

func (c *cluster) startAgent(name string, nproc int, coords string) *proc {
	args := []string{"agent", "--coordinator", coords, "--token-file", c.tokenFile(), "--node-name", name,
		"--nproc-per-node", strconv.Itoa(nproc), "--data-dir", filepath.Join(c.dir, "agent-"+name)}
	if strings.HasPrefix(name, "s") {
		args = append(args, "--spare")
	}
	p := startIn(c.t, c.lab, name, c.dir, c.agentEnv, bulsajoBin, args...)
	c.agents[name] = p
	return p
}

// waitJoined waits until coordinator process co has said that every node
// joined (at or after since).
func (c *cluster) waitJoined(co *proc, since time.Time, nodes ...string) time.Time {
	c.t.Helper()
	var last time.Time
	waitFor(c.t, 30*time.Second, fmt.Sprintf("nodes %v to join", nodes), func() bool {
		last = time.Time{}
		for _, n := range nodes {
			at, ok := co.out.find("+ node "+n+" joined", since)
			if !ok {
				return false
			}
			if at.After(last) {
				last = at
			}
		}
		return true
	})
	return last
}

// submitFake submits the fake worker (-steps 1000000, a step log) from the
// coordinator's host.
func (c *cluster) submitFake(coords, host, nnodes string, nproc int, workerArgs ...string) *proc {
	args := []string{"submit", "--coordinator", coords, "--token-file", c.tokenFile(), "--nnodes", nnodes,
		"--nproc-per-node", strconv.Itoa(nproc), "--run-id", "job1", "--", fakeBin,
		"-step-log", c.stepLog, "-steps", "1000000"}
	return startIn(c.t, c.lab, host, c.dir, nil, bulsajoBin, append(args, workerArgs...)...)
}

func (c *cluster) events(coordDir string) []events.Event {
	evs, _ := events.ReadFile(filepath.Join(c.dir, coordDir, "runs", "job1", "events.jsonl"))
	return evs
}

// ---- the fake workers' step log: "GEN RANK STEP UNIXNANO" ----

type stepRecord = steplog.Record

func readSteps(path string) []stepRecord { return steplog.Read(path) }

// firstStep is the earliest step of generation gen.
func firstStep(recs []stepRecord, gen int) (time.Time, bool) {
	var first time.Time
	for _, r := range recs {
		if r.Gen == gen && (first.IsZero() || r.At.Before(first)) {
			first = r.At
		}
	}
	return first, !first.IsZero()
}

func (c *cluster) waitStep(gen, step int, within time.Duration) {
	c.t.Helper()
	waitFor(c.t, within, fmt.Sprintf("generation %d to reach step %d", gen, step), func() bool {
		for _, r := range readSteps(c.stepLog) {
			if r.Gen == gen && r.Step >= step {
				return true
			}
		}
		return false
	})
}

// gaps reports, over the steps of generation gen (< 0: any) in [from, to], the longest
// time between consecutive steps of one rank, and the median interval before
// `before` (the normal step time).
func gaps(recs []stepRecord, gen int, from, to, before time.Time) (maxGap, normal time.Duration, worstRank int, worstAt time.Time) {
	byRank := map[int][]time.Time{}
	for _, r := range recs {
		if gen < 0 || r.Gen == gen {
			byRank[r.Rank] = append(byRank[r.Rank], r.At)
		}
	}
	var normals []time.Duration
	worstRank = -1
	for rank, ts := range byRank {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		for i := 1; i < len(ts); i++ {
			d := ts[i].Sub(ts[i-1])
			if ts[i].Before(before) && ts[i].After(before.Add(-2*time.Second)) {
				normals = append(normals, d)
			}
			if ts[i].After(from) && !ts[i-1].After(to) && d > maxGap {
				maxGap, worstRank, worstAt = d, rank, ts[i-1]
			}
		}
	}
	sort.Slice(normals, func(i, j int) bool { return normals[i] < normals[j] })
	if len(normals) > 0 {
		normal = normals[len(normals)/2]
	}
	return maxGap, normal, worstRank, worstAt
}

func msSince(t0, t time.Time) float64 { return float64(t.Sub(t0).Microseconds()) / 1000 }

func writeFile(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func ipTool() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	return "/usr/sbin/ip"
}
