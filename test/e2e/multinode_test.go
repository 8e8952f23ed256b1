package e2e

// Multi-host tests: the coordinator, each agent and submit run in their own
// network namespace (test/netlab), connected by a bridge, as real processes.
// Cutting a host's link is a network partition; kill -9 is a node crash.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/test/netlab"
	"github.com/bulsajo/bulsajo/tools/fakeworker/steplog"
	"github.com/chromedp/chromedp"
)

// mcluster is a coordinator and agents on namespaced hosts.
type mcluster struct {
	t       *testing.T
	lab     *netlab.Lab
	dir     string
	coord   *proc
	agents  map[string]*proc
	token   string
	args    []string // extra coordinator flags
	stepLog string
	pidDir  string
	tlsCA   string // with --tls: the CA clients trust
	slots   string // --nproc-per-node of every agent
}

// proc is a bulsajo process in a namespace.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	code int
}

func (m *mcluster) start(host string, args ...string) *proc {
	m.t.Helper()
	return m.startProg(host, bulsajoBin, args...)
}

func (m *mcluster) startProg(host, prog string, args ...string) *proc {
	m.t.Helper()
	cmd := m.lab.Host(host).Command(context.Background(), prog, args...)
	cmd.Dir = m.dir
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	go func() { p.code = exitCode(cmd.Wait()); close(p.done) }()
	m.t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if m.t.Failed() || os.Getenv("BULSAJO_TEST_LOG") != "" {
			m.t.Logf("--- %s %s output:\n%s", host, args[0], p.out.String())
		}
	})
	return p
}

func (p *proc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(within):
		t.Fatalf("process %v did not exit within %v; output:\n%s", p.cmd.Args, within, p.out.String())
	}
	return -1
}

func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (m *mcluster) coordAddr() string { return m.lab.Host("coord").IP + ":7070" }

// newCluster starts a coordinator on host "coord" and agents on the others.
// Spares are named s*.
func newCluster(t *testing.T, nodes []string, coordArgs ...string) *mcluster {
	t.Helper()
	return newClusterSlots(t, nodes, 2, coordArgs...)
}

// newClusterSlots is newCluster with agents of the given number of slots.
func newClusterSlots(t *testing.T, nodes []string, slots int, coordArgs ...string) *mcluster {
	t.Helper()
	netlab.Require(t)
	hosts := append([]string{"coord"}, nodes...)
	m := &mcluster{t: t, lab: netlab.New(t, hosts...), dir: t.TempDir(), agents: map[string]*proc{}, args: coordArgs,
		slots: strconv.Itoa(slots)}
	for _, a := range coordArgs {
		if a == "--tls" {
			m.tlsCA = filepath.Join(m.dir, "coord", "tls", "ca.pem")
		}
	}
	m.stepLog = filepath.Join(m.dir, "steps.log")
	m.pidDir = filepath.Join(m.dir, "pids")
	os.MkdirAll(m.pidDir, 0o755)
	m.startCoordinator()
	for _, n := range nodes {
		m.startAgent(n)
	}
	m.waitNodes(len(nodes))
	return m
}

func (m *mcluster) startCoordinator() {
	m.t.Helper()
	args := append([]string{"coordinator", "--listen", m.coordAddr(), "--data-dir", filepath.Join(m.dir, "coord"),
		"--lease", "3s", "--node-timeout", "1s"}, m.args...)
	m.coord = m.start("coord", args...)
	tok := filepath.Join(m.dir, "coord", "join.token")
	waitFor(m.t, 20*time.Second, "the coordinator to listen", func() bool {
		return strings.Contains(m.coord.out.String(), "bulsajo coordinator") || exited(m.coord)
	})
	if exited(m.coord) {
		m.t.Fatalf("coordinator exited: %s", m.coord.out.String())
	}
	b, err := os.ReadFile(tok)
	if err != nil {
		m.t.Fatal(err)
	}
	m.token = strings.TrimSpace(string(b))
}

func exited(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (m *mcluster) caArgs() []string {
	if m.tlsCA == "" {
		return nil
	}
	return []string{"--tls-ca", m.tlsCA}
}

func (m *mcluster) tokenFile() string { return filepath.Join(m.dir, "coord", "join.token") }

func (m *mcluster) startAgent(name string) *proc {
	args := []string{"agent", "--coordinator", m.coordAddr(), "--token-file", m.tokenFile(), "--node-name", name,
		"--nproc-per-node", m.slots, "--data-dir", filepath.Join(m.dir, "agent-"+name)}
	if strings.HasPrefix(name, "s") {
		args = append(args, "--spare")
	}
	args = append(args, m.caArgs()...)
	p := m.start(name, args...)
	m.agents[name] = p
	return p
}

// status asks the coordinator, from the coordinator's host.
func (m *mcluster) status() (coordinator.Status, error) {
	var st coordinator.Status
	args := append([]string{"status", "--json", "--coordinator", m.coordAddr()}, m.caArgs()...)
	out, err := m.lab.Host("coord").Command(context.Background(), bulsajoBin, args...).Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

func (m *mcluster) node(name string) coordinator.NodeStatus {
	st, err := m.status()
	if err != nil {
		m.t.Fatalf("status: %v", err)
	}
	for _, n := range st.Nodes {
		if n.Name == name {
			return n
		}
	}
	m.t.Fatalf("no node %s in status", name)
	return coordinator.NodeStatus{}
}

func (m *mcluster) waitNodes(n int) {
	m.t.Helper()
	waitFor(m.t, 20*time.Second, fmt.Sprintf("%d agents to join", n), func() bool {
		st, err := m.status()
		if err != nil {
			return false
		}
		ready := 0
		for _, nd := range st.Nodes {
			if nd.State == "ready" || nd.State == "training" {
				ready++
			}
		}
		return ready >= n
	})
}

// submit starts `bulsajo submit` of the fake worker from the coordinator's host.
func (m *mcluster) submit(nnodes string, workerArgs ...string) *proc {
	args := []string{"submit", "--coordinator", m.coordAddr(), "--token-file", m.tokenFile(), "--nnodes", nnodes,
		"--nproc-per-node", "2", "--run-id", "job1", "--stop-grace", "1s"}
	args = append(append(args, m.caArgs()...), "--", fakeBin,
		"-step-log", m.stepLog, "-pid-dir", m.pidDir)
	return m.start("coord", append(args, workerArgs...)...)
}

func (m *mcluster) events() []events.Event {
	evs, err := events.ReadFile(filepath.Join(m.dir, "coord", "runs", "job1", "events.jsonl"))
	if err != nil {
		m.t.Fatalf("events: %v", err)
	}
	return evs
}

// stepRecord is one line of the fake workers' step log.
type stepRecord = steplog.Record

func (m *mcluster) steps() []stepRecord { return steplog.Read(m.stepLog) }

// waitStep waits until some rank of generation gen has reached step.
func (m *mcluster) waitStep(gen, step int, within time.Duration) {
	m.t.Helper()
	waitFor(m.t, within, fmt.Sprintf("generation %d to reach step %d", gen, step), func() bool {
		for _, r := range m.steps() {
			if r.Gen == gen && r.Step >= step {
				return true
			}
		}
		return false
	})
}

// noOverlap proves fencing: every step of a generation happened after the
// last step of every older generation.
func noOverlap(t *testing.T, recs []stepRecord) {
	t.Helper()
	last := map[int]time.Time{}
	first := map[int]time.Time{}
	for _, r := range recs {
		if r.At.After(last[r.Gen]) {
			last[r.Gen] = r.At
		}
		if f, ok := first[r.Gen]; !ok || r.At.Before(f) {
			first[r.Gen] = r.At
		}
	}
	for g, f := range first {
		for og, l := range last {
			if og < g && !l.Before(f) {
				t.Errorf("generation %d still stepped at %s, after generation %d had started at %s: two generations trained at once",
					og, l.Format("15:04:05.000"), g, f.Format("15:04:05.000"))
			}
		}
	}
}

func countType(evs []events.Event, typ string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// waitNoWorkers checks that every worker that ever started is gone.
func (m *mcluster) waitNoWorkers(within time.Duration) {
	m.t.Helper()
	ents, _ := os.ReadDir(m.pidDir)
	waitFor(m.t, within, "every worker to be gone", func() bool {
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil && alive(pid) {
				return false
			}
		}
		return true
	})
}

func TestMultiNodeAgentKilledSpareTakesOver(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2", "s1"})
	sub := m.submit("2", "-steps", "60", "-step-time", "50ms")
	m.waitStep(1, 10, 30*time.Second)
	m.agents["n2"].kill9()
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	evs := m.events()
	var lostFault *events.Event
	for i, e := range evs {
		if e.Type == events.FaultDetected && e.Cause == "node_lost" {
			lostFault = &evs[i]
		}
	}
	if lostFault == nil {
		t.Fatalf("no node_lost fault in the event log")
	}
	if lostFault.DetectMS <= 0 || lostFault.DetectMS > 2000 {
		t.Errorf("node loss detected in %.0f ms, want <= 2000", lostFault.DetectMS)
	}
	if !strings.Contains(m.coord.out.String(), "generation 2 on 2 nodes ([n1 s1])") {
		t.Errorf("generation 2 should run on n1 and the spare s1; coordinator said:\n%s", m.coord.out.String())
	}
	if !strings.Contains(sub.out.String(), "recovered in") {
		t.Errorf("submit did not report the recovery:\n%s", sub.out.String())
	}
	noOverlap(t, m.steps())
	m.waitNoWorkers(5 * time.Second)
}

func TestMultiNodePartitionIsFenced(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2"})
	sub := m.submit("1:2", "-steps", "120", "-step-time", "50ms")
	m.waitStep(1, 10, 30*time.Second)
	cutAt := time.Now()
	m.lab.Host("n2").Cut()
	// n2 fences itself when its lease runs out; the coordinator restarts on
	// n1 alone only after that.
	waitFor(t, 10*time.Second, "n2 to fence its workers", func() bool {
		return strings.Contains(m.agents["n2"].out.String(), "fencing")
	})
	m.waitStep(2, 1, 20*time.Second)
	t.Logf("partition to the next generation's first step: %s", time.Since(cutAt).Round(time.Millisecond))
	m.lab.Host("n2").Heal()
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	noOverlap(t, m.steps())
	for _, r := range m.steps() {
		if r.Gen == 2 && r.Rank >= 2 {
			t.Fatalf("generation 2 should have 2 ranks (n1 only), saw rank %d", r.Rank)
		}
	}
	// Healed, n2 rejoins as a usable node.
	waitFor(t, 10*time.Second, "n2 to rejoin", func() bool { return m.node("n2").State == "ready" })
}

func TestMultiNodeCoordinatorKill9WorkersKeepTraining(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2"})
	sub := m.submit("2", "-steps", "100", "-step-time", "50ms")
	m.waitStep(1, 10, 30*time.Second)
	m.coord.kill9()
	killedAt := time.Now()
	time.Sleep(300 * time.Millisecond)
	m.startCoordinator()
	t.Logf("coordinator back in %s", time.Since(killedAt).Round(time.Millisecond))
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	// One generation from start to end: nobody restarted, no step lost.
	steps := m.steps()
	seen := map[int]map[int]bool{}
	for _, r := range steps {
		if r.Gen != 1 {
			t.Fatalf("a generation %d ran: the coordinator restart restarted the workers", r.Gen)
		}
		if seen[r.Rank] == nil {
			seen[r.Rank] = map[int]bool{}
		}
		seen[r.Rank][r.Step] = true
	}
	for rank := 0; rank < 4; rank++ {
		if len(seen[rank]) != 100 {
			t.Errorf("rank %d ran %d of 100 steps", rank, len(seen[rank]))
		}
	}
	evs := m.events()
	if countType(evs, events.CoordinatorResumed) != 1 || countType(evs, events.RunFinished) != 1 || countType(evs, events.RunStarted) != 1 {
		t.Errorf("event log after the restart: want run_started, coordinator_resumed, run_finished once each; got %v", evs)
	}
}

func TestMultiNodeQuarantineAndRelease(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2", "s1"}, "--quarantine-after", "1")
	// Rank 2 lives on n2 (2 slots per node): it fails in generation 1.
	sub := m.submit("2", "-steps", "40", "-step-time", "50ms", "-fail-rank", "2", "-fail-gens", "1", "-fail-at-step", "5")
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	n2 := m.node("n2")
	if !n2.Quarantined || !strings.Contains(n2.Reason, "rank 2") {
		t.Fatalf("n2 should be quarantined for rank 2's fault: %+v", n2)
	}
	if !strings.Contains(m.coord.out.String(), "generation 2 on 2 nodes ([n1 s1])") {
		t.Errorf("generation 2 should avoid the quarantined n2:\n%s", m.coord.out.String())
	}
	m.checkDashboardShowsQuarantine("n2")
	m.checkReport()
	out, err := m.lab.Host("coord").Command(context.Background(), bulsajoBin, "node", "release", "n2",
		"--coordinator", m.coordAddr(), "--token-file", m.tokenFile()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "released") {
		t.Fatalf("node release: %v: %s", err, out)
	}
	if m.node("n2").Quarantined {
		t.Fatal("n2 still quarantined after release")
	}
}

func TestMultiNodeWrongTokenIsRefused(t *testing.T) {
	m := newCluster(t, []string{"n1"})
	bad := filepath.Join(m.dir, "bad.token")
	os.WriteFile(bad, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	p := m.start("n1", "agent", "--coordinator", m.coordAddr(), "--token-file", bad, "--node-name", "intruder")
	if code := p.wait(t, 10*time.Second); code == 0 || !strings.Contains(p.out.String(), "token") {
		t.Fatalf("agent with a wrong token: exit %d, output:\n%s", code, p.out.String())
	}
	out, err := m.lab.Host("coord").Command(context.Background(), bulsajoBin, "submit", "--coordinator", m.coordAddr(),
		"--token-file", bad, "--", "/bin/true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "missing or wrong join token") {
		t.Fatalf("submit with a wrong token: %v: %s", err, out)
	}
	for _, n := range m.node("n1").Ranks {
		t.Fatalf("n1 was given rank %d", n)
	}
}

// haCluster: one external etcd member, two coordinators electing a leader,
// two agents that know both coordinators.
func haCluster(t *testing.T) (*mcluster, map[string]*proc, string) {
	t.Helper()
	netlab.Require(t)
	if _, err := os.Stat("/usr/bin/etcd"); err != nil {
		t.Fatalf("etcd is required (apt-get install -y etcd-server; `make test` does this): %v", err)
	}
	m := &mcluster{t: t, lab: netlab.New(t, "etcd", "c1", "c2", "n1", "n2"), dir: t.TempDir(), agents: map[string]*proc{}}
	m.stepLog = filepath.Join(m.dir, "steps.log")
	m.pidDir = filepath.Join(m.dir, "pids")
	os.MkdirAll(m.pidDir, 0o755)
	eip := m.lab.Host("etcd").IP
	etcd := m.startProg("etcd", "/usr/bin/etcd", "--name", "e1", "--data-dir", filepath.Join(m.dir, "etcd"),
		"--listen-client-urls", "http://"+eip+":2379", "--advertise-client-urls", "http://"+eip+":2379",
		"--listen-peer-urls", "http://"+eip+":2380", "--initial-advertise-peer-urls", "http://"+eip+":2380",
		"--initial-cluster", "e1=http://"+eip+":2380")
	waitFor(t, 20*time.Second, "etcd to serve", func() bool {
		return strings.Contains(etcd.out.String(), "ready to serve client requests") || exited(etcd)
	})
	token := filepath.Join(m.dir, "join.token")
	os.WriteFile(token, []byte("ha-test-token-0123456789abcdef\n"), 0o600)
	coords := map[string]*proc{}
	addrs := m.lab.Host("c1").IP + ":7070," + m.lab.Host("c2").IP + ":7070"
	for _, c := range []string{"c1", "c2"} {
		coords[c] = m.startHACoordinator(c, token, "http://"+eip+":2379")
		if c == "c1" {
			waitFor(t, 20*time.Second, "c1 to be elected", func() bool { return strings.Contains(coords["c1"].out.String(), "elected leader") })
		}
	}
	for _, n := range []string{"n1", "n2"} {
		m.agents[n] = m.start(n, "agent", "--coordinator", addrs, "--token-file", token, "--node-name", n,
			"--nproc-per-node", "2", "--data-dir", filepath.Join(m.dir, "agent-"+n))
	}
	for _, n := range []string{"n1", "n2"} {
		waitFor(t, 20*time.Second, n+" to join", func() bool {
			return strings.Contains(coords["c1"].out.String(), "node "+n+" joined")
		})
	}
	return m, coords, token
}

func (m *mcluster) startHACoordinator(host, token, etcd string) *proc {
	ip := m.lab.Host(host).IP
	return m.start(host, "coordinator", "--listen", ip+":7070", "--advertise", ip+":7070", "--token-file", token,
		"--data-dir", filepath.Join(m.dir, host), "--etcd-endpoints", etcd, "--lease", "5s", "--node-timeout", "1s")
}

// The leader coordinator dies (kill -9) or is cut off from everything: the
// standby takes over, and the workers never stop.
func TestMultiNodeLeaderFailoverWorkersKeepTraining(t *testing.T) {
	for _, how := range []string{"kill", "partition"} {
		t.Run(how, func(t *testing.T) {
			m, coords, token := haCluster(t)
			addrs := m.lab.Host("c1").IP + ":7070," + m.lab.Host("c2").IP + ":7070"
			sub := m.start("n1", "submit", "--coordinator", addrs, "--token-file", token, "--nnodes", "2",
				"--nproc-per-node", "2", "--run-id", "job1", "--", fakeBin, "-step-log", m.stepLog, "-steps", "120", "-step-time", "50ms")
			m.waitStep(1, 10, 30*time.Second)
			switch how {
			case "kill":
				coords["c1"].kill9()
			case "partition":
				m.lab.Host("c1").Cut()
				// The deposed leader notices it lost etcd and exits.
				if code := coords["c1"].wait(t, 10*time.Second); code == 0 {
					t.Errorf("deposed leader exited 0")
				}
			}
			waitFor(t, 15*time.Second, "c2 to take over", func() bool {
				return strings.Contains(coords["c2"].out.String(), "resuming job job1")
			})
			if code := sub.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
			}
			seen := map[int]int{}
			for _, r := range m.steps() {
				if r.Gen != 1 {
					t.Fatalf("generation %d ran: the failover restarted the workers", r.Gen)
				}
				seen[r.Rank]++
			}
			for rank := 0; rank < 4; rank++ {
				if seen[rank] != 120 {
					t.Errorf("rank %d ran %d of 120 steps", rank, seen[rank])
				}
			}
			// The new leader's log has the whole job (seeded from etcd).
			evs, err := events.ReadFile(filepath.Join(m.dir, "c2", "runs", "job1", "events.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			if countType(evs, events.RunStarted) != 1 || countType(evs, events.CoordinatorResumed) != 1 || countType(evs, events.RunFinished) != 1 {
				t.Errorf("c2's event log: want run_started, coordinator_resumed, run_finished once each; got %d events", len(evs))
			}
		})
	}
}

// With --tls the coordinator makes its certificates on first start; agents,
// submit and status trust its CA; a plain-HTTP client gets nowhere.
func TestMultiNodeTLS(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2"}, "--tls")
	if !strings.Contains(m.coord.out.String(), "generated TLS certificates") {
		t.Fatalf("coordinator did not say it generated certificates:\n%s", m.coord.out.String())
	}
	sub := m.submit("2", "-steps", "20")
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit over TLS: exit %d:\n%s", code, sub.out.String())
	}
	out, err := m.lab.Host("coord").Command(context.Background(), bulsajoBin, "status", "--coordinator", m.coordAddr()).CombinedOutput()
	if err == nil {
		t.Fatalf("plain-HTTP status against a TLS coordinator succeeded: %s", out)
	}
	if strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("want a one-line error, got:\n%s", out)
	}
}

// Live recovery across hosts with real PyTorch: a node dies and the ranks on
// the other nodes keep training in their processes (no restart), renumbered,
// with bit-identical parameters and at most one step lost.
func TestMultiNodeLiveNodeLossSurvivorsKeepTraining(t *testing.T) {
	requireTorch(t)
	m := newCluster(t, []string{"n1", "n2", "n3"})
	results := filepath.Join(m.dir, "results")
	steps := 300
	args := []string{"submit", "--coordinator", m.coordAddr(), "--token-file", m.tokenFile(), "--nnodes", "2:3",
		"--nproc-per-node", "1", "--run-id", "job1", "--recovery", "live", "--replace=false", "--",
		torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"), "--steps", strconv.Itoa(steps),
		"--sleep-ms", "30", "--result-dir", results}
	sub := m.start("coord", args...)
	// Let it train a little, then n3 dies.
	waitFor(t, 90*time.Second, "step 50", func() bool { return strings.Contains(m.agents["n1"].out.String(), "[rank0] step 50 ") })
	m.agents["n3"].kill9()
	if code := sub.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("submit exit %d:\n%s", code, sub.out.String())
	}
	out := m.coord.out.String()
	if !regexp.MustCompile(`regroup: generation \d+ on 2 nodes \[n1 n2\]`).MatchString(out) {
		t.Fatalf("want the survivors regrouped in place on n1 and n2; coordinator said:\n%s", out)
	}
	if regexp.MustCompile(`▶ generation [2-9]`).MatchString(out) {
		t.Fatalf("a full restart happened:\n%s", out)
	}
	for _, rr := range checkLiveResults(t, results, 2).ranks {
		if rr.Step != steps-1 {
			t.Errorf("rank %d ended at step %d, want %d", rr.Rank, rr.Step, steps-1)
		}
		if len(rr.History) != 1 {
			t.Errorf("rank %d: want one regroup, got %+v", rr.Rank, rr.History)
		}
	}
	for _, e := range m.events() {
		if e.Type == events.FaultDetected && e.Cause == "node_lost" {
			t.Logf("node loss detected in %.0f ms", e.DetectMS)
		}
		if e.Type == events.Recovered {
			t.Logf("survivors training again %.0f ms after detection, rolled back %d", e.RecoverMS, e.RolledBack)
		}
	}
}

// Live recovery with a hot spare: the survivors keep training at once, a
// replacement starts on the spare, receives the state from a survivor and
// joins at a step boundary; the job ends at full size on n1 and s1.
func TestMultiNodeLiveSpareJoins(t *testing.T) {
	requireTorch(t)
	m := newCluster(t, []string{"n1", "n2", "s1"})
	results := filepath.Join(m.dir, "results")
	steps := 300
	sub := m.start("coord", "submit", "--coordinator", m.coordAddr(), "--token-file", m.tokenFile(), "--nnodes", "1:2",
		"--nproc-per-node", "1", "--run-id", "job1", "--recovery", "live", "--",
		torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"), "--steps", strconv.Itoa(steps),
		"--sleep-ms", "30", "--result-dir", results)
	waitFor(t, 90*time.Second, "step 50", func() bool { return strings.Contains(m.agents["n1"].out.String(), "[rank0] step 50 ") })
	m.agents["n2"].kill9()
	if code := sub.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("submit exit %d:\n%s", code, sub.out.String())
	}
	out := m.coord.out.String()
	for _, want := range []string{"regroup: generation 2 on 1 nodes [n1]", "starting 1 replacement(s) on s1", "grow: generation 3 on 2 nodes [n1 s1]"} {
		if !strings.Contains(out, want) {
			t.Fatalf("coordinator did not say %q:\n%s", want, out)
		}
	}
	if regexp.MustCompile(`▶ generation [2-9]`).MatchString(out) {
		t.Fatalf("a full restart happened:\n%s", out)
	}
	if !checkLiveResults(t, results, 2).replacement {
		t.Error("no replacement took part")
	}
}

// A coordinator that stalls (SIGSTOP: a long GC, swapping, a frozen VM)
// longer than the agents' patience: they say bye, reconnect when it is back,
// and nobody restarts — the stall is not a node loss.
func TestMultiNodeCoordinatorStallIsNoFault(t *testing.T) {
	m := newCluster(t, []string{"n1", "n2"})
	sub := m.submit("2", "-steps", "100", "-step-time", "50ms")
	m.waitStep(1, 10, 30*time.Second)
	pid := m.coord.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGSTOP)
	time.Sleep(2200 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGCONT)
	if code := sub.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("submit exit %d, want 0:\n%s", code, sub.out.String())
	}
	for _, r := range m.steps() {
		if r.Gen != 1 {
			t.Fatalf("generation %d ran: the stall restarted the job:\n%s", r.Gen, m.coord.out.String())
		}
	}
	if evs := m.events(); countType(evs, events.FaultDetected) != 0 {
		t.Fatalf("faults recorded for a coordinator stall: %+v", evs)
	}
}

// checkDashboardShowsQuarantine opens the coordinator's dashboard in a real
// browser (through a local proxy into the coordinator's namespace) and finds
// the node in the node table, marked quarantined with its reason.
func (m *mcluster) checkDashboardShowsQuarantine(name string) {
	t := m.t
	t.Helper()
	coord := m.lab.Host("coord")
	target, _ := url.Parse("http://" + m.coordAddr())
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return coord.Dial(ctx, network, m.coordAddr())
	}}
	srv := httptest.NewServer(proxy)
	// The page's event stream stays open through the proxy: leave the page
	// first, then close without waiting on a stream the backend may still
	// be writing (srv.Close would wait for it).
	ctx := browser(t)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer func() {
		chromedp.Do(tctx, chromedp.Navigate("about:blank"))
		cancel()
		srv.Config.Close()
	}()
	if err := chromedp.Do(tctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatalf("opening the coordinator's dashboard: %v", err)
	}
	row := fmt.Sprintf(`document.querySelector('#nodes tr[data-node=%q]')`, name)
	waitFor(t, 20*time.Second, "the quarantined node in the dashboard's node table", func() bool {
		return evalInt(tctx, row+` !== null && `+row+`.classList.contains("quarantined") ? 1 : 0`) == 1
	})
	text, _ := chromedp.Run(tctx, chromedp.Evaluate[string](row+`.textContent`))
	if !strings.Contains(text, "quarantined") || !strings.Contains(text, "rank 2") {
		t.Errorf("node row %q should say quarantined and why", text)
	}
	screenshot(t, tctx, "dashboard-nodes.png")
}

// checkReport runs `bulsajo report` on the coordinator's job directory.
func (m *mcluster) checkReport() {
	t := m.t
	t.Helper()
	dir := filepath.Join(m.dir, "coord", "runs", "job1")
	out, err := exec.Command(bulsajoBin, "report", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 fault") {
		t.Errorf("report of the multi-node job: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "report.html")); err != nil || !strings.Contains(string(b), `"node_quarantined"`) {
		t.Errorf("report.html should hold the job's events, the quarantine included (%v)", err)
	}
}
