package multinode

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/test/netlab"
)

// controlSteps: the failover scenarios kill at this step (9 s at 20 ms), so
// that the 8 s before the kill give a control window of the same length.
const controlSteps = 450

// The fake worker's step time in these scenarios: "training again" includes
// one of it (a step is logged when it ends).
const fakeStep = "20ms"

// faultAfter is the coordinator's first fault event at or after t0.
func faultAfter(evs []events.Event, t0 time.Time) *events.Event {
	for i, e := range evs {
		if e.Type == events.FaultDetected && !e.Time.Before(t0.Add(-50*time.Millisecond)) {
			return &evs[i]
		}
	}
	return nil
}

func eventOf(evs []events.Event, typ string, gen int) *events.Event {
	for i, e := range evs {
		if e.Type == typ && (gen == 0 || e.Gen == gen) {
			return &evs[i]
		}
	}
	return nil
}

// overlapMS: how long the older generation still stepped after the newer
// one's first step (> 0: two generations trained at once).
func overlapMS(recs []stepRecord, oldGen, newGen int) float64 {
	first, ok := firstStep(recs, newGen)
	if !ok {
		return 0
	}
	var last time.Time
	for _, r := range recs {
		if r.Gen == oldGen && r.At.After(last) {
			last = r.At
		}
	}
	return msSince(first, last)
}

// a) Node loss: kill -9 of a worker node's agent while training; a spare
// is present.
func TestNodeLoss(t *testing.T) {
	gate(t)
	netlab.Require(t)
	n := trials(20)
	sc := newScenario("node_loss", "node loss: kill -9 of a worker node's agent, spare present",
		"Hosts coord, n1, n2, s1 (spare); 2 fake workers per node, --nnodes 2 (world 4), -step-time "+fakeStep+
			". At generation 1's step 50 the agent on n2 is SIGKILLed (its workers die with it: parent-death signal). "+
			"The agent's TCP connection closes at once, so the coordinator sees the loss without waiting for heartbeats.",
		map[string]string{"nodes": "n1, n2 + spare s1", "workers": "fake worker, 2 per node, step " + fakeStep,
			"coordinator": "defaults (lease 5s, heartbeat 250ms, node timeout 1.5s), embedded etcd", "trials": fmt.Sprint(n)})
	sc.Targets["detect_ms"] = "<= 2 s"
	sc.Targets["training_again_ms"] = "<= 3 s"
	sc.metric("detect_ms", "ms", "kill → coordinator's fault event")
	sc.metric("detect_ms_reported", "ms", "the fault event's own detect_ms")
	sc.metric("training_again_ms", "ms", "kill → first step of generation 2 (step log)")
	sc.metric("fault_to_launch_ms", "ms", "fault event → generation_started (2)")
	sc.metric("launch_to_step_ms", "ms", "generation_started (2) → its first step")
	defer sc.finish()
	sc.runTrials(t, n, func(t *testing.T, i int) {
		c := newCluster(t, []string{"n1", "n2", "s1"}, 2, nil)
		c.submitFake(c.coordAddr(), "coord", "2", 2, "-step-time", fakeStep)
		c.waitStep(1, 50, 30*time.Second)
		killAt := time.Now()
		c.agents["n2"].kill9()
		c.waitStep(2, 0, 20*time.Second)
		var evs []events.Event
		waitFor(t, 5*time.Second, "the recovered event", func() bool {
			evs = c.events("coord")
			return eventOf(evs, events.Recovered, 2) != nil
		})
		recs := readSteps(c.stepLog)
		first2, _ := firstStep(recs, 2)
		f := faultAfter(evs, killAt)
		gs := eventOf(evs, events.GenerationStart, 2)
		if f == nil || gs == nil {
			t.Fatalf("no fault or generation 2 start in %v", evs)
		}
		placed := strings.Contains(c.coord.out.String(), "generation 2 on 2 nodes ([n1 s1])")
		if !placed {
			t.Errorf("generation 2 not on [n1 s1]:\n%s", c.coord.out.String())
		}
		ov := overlapMS(recs, 1, 2)
		if ov >= 0 {
			t.Errorf("generation 1 stepped %.0f ms after generation 2 started", ov)
		}
		sc.trial(map[string]float64{
			"detect_ms":          msSince(killAt, f.Time),
			"detect_ms_reported": f.DetectMS,
			"training_again_ms":  msSince(killAt, first2),
			"fault_to_launch_ms": msSince(f.Time, gs.Time),
			"launch_to_step_ms":  msSince(gs.Time, first2),
		}, map[string]any{"cause": f.Cause, "detail": f.Detail, "gen2_on_n1_s1": placed, "rolled_back": eventOf(evs, events.Recovered, 2).RolledBack})
	})
}

// b) Partition: Host.Cut of a worker node (no RST: its connections just go
// silent); the coordinator may hand its ranks to the spare only after the
// node's lease has run out (the node fences itself first).
func TestPartition(t *testing.T) {
	gate(t)
	netlab.Require(t)
	for _, lease := range []string{"5s", "2s"} {
		t.Run("lease"+lease, func(t *testing.T) { partition(t, lease) })
	}
}

func partition(t *testing.T, lease string) {
	n := trials(20)
	var args []string
	cfg := "defaults: lease 5s (default), heartbeat 250ms, node timeout 1.5s"
	if lease != "5s" {
		args = []string{"--lease", lease}
		cfg = "--lease " + lease + "; heartbeat 250ms, node timeout 1.5s (defaults)"
	}
	sc := newScenario("partition_lease"+lease, "partition of a worker node (Host.Cut), lease "+lease,
		"Hosts coord, n1, n2, s1 (spare); 2 fake workers per node, --nnodes 2, -step-time "+fakeStep+
			". At generation 1's step 50 n2's bridge port is disabled (Host.Cut: frames dropped, no RST, n2's processes keep running). "+
			"The coordinator declares n2 lost after the node timeout, stops the generation, and waits until n2's lease has certainly "+
			"run out (n2 fences, i.e. kills, its own workers a little before) before it launches generation 2 on n1 + s1.",
		map[string]string{"nodes": "n1, n2 + spare s1", "workers": "fake worker, 2 per node, step " + fakeStep,
			"coordinator": cfg + ", embedded etcd", "trials": fmt.Sprint(n)})
	sc.Targets["detect_ms"] = "<= 2 s"
	sc.metric("detect_ms", "ms", "cut → coordinator's fault event (node timeout)")
	sc.metric("fence_ms", "ms", "cut → n2's agent prints that it fenced its workers")
	sc.metric("n2_last_step_ms", "ms", "cut → last step of n2's (fenced) workers")
	sc.metric("training_again_ms", "ms", "cut → first step of generation 2")
	sc.metric("margin_ms", "ms", "n2's last step → generation 2's first step (> 0: never two generations at once)")
	defer sc.finish()
	sc.runTrials(t, n, func(t *testing.T, i int) {
		c := newCluster(t, []string{"n1", "n2", "s1"}, 2, nil, args...)
		c.submitFake(c.coordAddr(), "coord", "2", 2, "-step-time", fakeStep)
		c.waitStep(1, 50, 30*time.Second)
		cutAt := time.Now()
		c.lab.Host("n2").Cut()
		c.waitStep(2, 0, 30*time.Second)
		var evs []events.Event
		waitFor(t, 5*time.Second, "the recovered event", func() bool {
			evs = c.events("coord")
			return eventOf(evs, events.Recovered, 2) != nil
		})
		recs := readSteps(c.stepLog)
		first2, _ := firstStep(recs, 2)
		var n2last time.Time
		for _, r := range recs {
			if r.Gen == 1 && r.Rank >= 2 && r.At.After(n2last) { // n2 holds ranks 2-3
				n2last = r.At
			}
		}
		f := faultAfter(evs, cutAt)
		if f == nil {
			t.Fatalf("no fault after the cut: %v", evs)
		}
		fenceAt, fenced := c.agents["n2"].out.find("fencing", cutAt)
		vals := map[string]float64{
			"detect_ms":         msSince(cutAt, f.Time),
			"n2_last_step_ms":   msSince(cutAt, n2last),
			"training_again_ms": msSince(cutAt, first2),
			"margin_ms":         msSince(n2last, first2),
		}
		if fenced {
			vals["fence_ms"] = msSince(cutAt, fenceAt)
		} else {
			t.Errorf("n2 did not say it fenced its workers")
		}
		if !strings.Contains(c.coord.out.String(), "generation 2 on 2 nodes ([n1 s1])") {
			t.Errorf("generation 2 not on [n1 s1]:\n%s", c.coord.out.String())
		}
		if first2.Before(n2last) {
			t.Errorf("n2's cut-off workers stepped until %s, after generation 2 started at %s", n2last.Format("15:04:05.000"), first2.Format("15:04:05.000"))
		}
		sc.trial(vals, map[string]any{"cause": f.Cause, "detail": f.Detail})
	})
}

// c) Coordinator restart (embedded etcd): kill -9 of the coordinator while
// training, restarted at once on the same data dir; the workers should not
// notice.
func TestCoordinatorRestart(t *testing.T) {
	gate(t)
	netlab.Require(t)
	n := trials(5)
	sc := newScenario("coordinator_restart_embedded", "coordinator kill -9 and restart (embedded etcd)",
		"Hosts coord, n1, n2; 2 fake workers per node, --nnodes 2, -step-time "+fakeStep+
			". At step 450 (9 s of training, for the control window) the coordinator is SIGKILLed and started again at once (same --data-dir: its embedded etcd holds the job). "+
			"The agents keep their workers for their lease and reconnect; the new coordinator adopts the running generation.",
		map[string]string{"nodes": "n1, n2", "workers": "fake worker, 2 per node, step " + fakeStep,
			"coordinator": "defaults (lease 5s), embedded etcd, restarted right after the kill", "trials": fmt.Sprint(n)})
	sc.Targets["extra_pause_ms"] = "0 (workers never stop)"
	sc.metric("extra_pause_ms", "ms", "longest step interval across the restart − normal step interval")
	sc.metric("longest_interval_ms", "ms", "longest interval between consecutive steps of one rank, kill−1s … kill+8s")
	sc.metric("normal_interval_ms", "ms", "median step interval in the 2 s before the kill")
	sc.metric("control_longest_ms", "ms", "control: longest interval in the 8 s before the kill (kill−9s … kill−1s), same trial, no fault")
	sc.metric("listening_ms", "ms", "kill → the new coordinator listens (embedded etcd started, job loaded)")
	sc.metric("agents_back_ms", "ms", "kill → both agents joined the new coordinator")
	sc.metric("resumed_event_ms", "ms", "kill → coordinator_resumed event")
	defer sc.finish()
	sc.runTrials(t, n, func(t *testing.T, i int) {
		c := newCluster(t, []string{"n1", "n2"}, 2, nil)
		c.submitFake(c.coordAddr(), "coord", "2", 2, "-step-time", fakeStep)
		c.waitStep(1, controlSteps, 60*time.Second)
		killAt := time.Now()
		c.coord.kill9()
		co := c.startCoordinator()
		listening, _ := co.out.find("bulsajo coordinator", killAt)
		back := c.waitJoined(co, killAt, "n1", "n2")
		time.Sleep(time.Until(killAt.Add(8 * time.Second)))
		recs := readSteps(c.stepLog)
		maxGap, normal, rank, worstAt := gaps(recs, -1, killAt.Add(-time.Second), killAt.Add(8*time.Second), killAt)
		ctlGap, _, _, _ := gaps(recs, -1, killAt.Add(-9*time.Second), killAt.Add(-time.Second), killAt)
		gens := map[int]bool{}
		for _, r := range recs {
			gens[r.Gen] = true
		}
		if len(gens) != 1 || !gens[1] {
			t.Errorf("generations seen: %v; the restart restarted the workers", gens)
		}
		evs := c.events("coord")
		res := eventOf(evs, events.CoordinatorResumed, 0)
		vals := map[string]float64{
			"extra_pause_ms":      float64((maxGap - normal).Microseconds()) / 1000,
			"longest_interval_ms": float64(maxGap.Microseconds()) / 1000,
			"normal_interval_ms":  float64(normal.Microseconds()) / 1000,
			"control_longest_ms":  float64(ctlGap.Microseconds()) / 1000,
			"listening_ms":        msSince(killAt, listening),
			"agents_back_ms":      msSince(killAt, back),
		}
		if res != nil {
			vals["resumed_event_ms"] = msSince(killAt, res.Time)
		} else {
			t.Errorf("no coordinator_resumed event")
		}
		if strings.Contains(c.agents["n1"].out.String()+c.agents["n2"].out.String(), "fencing") {
			t.Errorf("an agent fenced its workers")
		}
		sc.trial(vals, map[string]any{"worst_rank": rank, "worst_interval_starts_ms_after_kill": round(msSince(killAt, worstAt)),
			"only_generation_1": len(gens) == 1 && gens[1]})
	})
}

// c') Leader failover: a 3-member external etcd cluster (on host "etcd"),
// two coordinators c1 (leader) and c2 (standby); kill -9 of the leader.
func TestCoordinatorFailoverHA(t *testing.T) {
	gate(t)
	netlab.Require(t)
	t.Run("lease5s", func(t *testing.T) { haFailover(t, "coordinator_failover_ha", "5s", trials(5)) })
	// A lease shorter than the election's takeover: the agents fence first.
	t.Run("lease2s", func(t *testing.T) { haFailover(t, "coordinator_failover_ha_lease2s", "2s", trials(3)) })
}

func haFailover(t *testing.T, key, lease string, n int) {
	title := "leader coordinator kill -9, standby takes over (external 3-member etcd)"
	if lease != "5s" {
		title += ", --lease " + lease
	}
	sc := newScenario(key, title,
		"Hosts etcd (3 etcd members on one address, ports 2379/12379/22379, --heartbeat-interval 25 --election-timeout 250), "+
			"c1 and c2 (bulsajo coordinator --etcd-endpoints of all three; c1 elected first), n1, n2 (agents with --coordinator c1,c2), "+
			"submit on n1; 2 fake workers per node, -step-time "+fakeStep+". At step 450 (9 s of training, for the control window) c1 is SIGKILLed; c2 wins the election once c1's "+
			"etcd session (TTL 2 s) expires and adopts the job.",
		map[string]string{"nodes": "n1, n2", "workers": "fake worker, 2 per node, step " + fakeStep,
			"coordinator": "2 coordinators, --lease " + lease + ", node timeout 1.5s, election TTL 2s (default)", "etcd": "3 members, /usr/bin/etcd", "trials": fmt.Sprint(n)})
	sc.Targets["extra_pause_ms"] = "0 (workers never stop)"
	sc.metric("extra_pause_ms", "ms", "longest step interval across the failover − normal step interval")
	sc.metric("longest_interval_ms", "ms", "longest interval between consecutive steps of one rank, kill−1s … kill+8s")
	sc.metric("normal_interval_ms", "ms", "median step interval in the 2 s before the kill")
	sc.metric("control_longest_ms", "ms", "control: longest interval in the 8 s before the kill (kill−9s … kill−1s), same trial, no fault")
	sc.metric("restarted", "generations", "generations started after the kill (1: the workers were stopped and the job restarted)")
	sc.metric("elected_ms", "ms", "kill → c2 says it was elected leader")
	sc.metric("resuming_ms", "ms", "kill → c2 has loaded the job (\"resuming job\")")
	sc.metric("agents_back_ms", "ms", "kill → both agents joined c2")
	defer sc.finish()
	sc.runTrials(t, n, func(t *testing.T, i int) {
		lab := netlab.New(t, "etcd", "c1", "c2", "n1", "n2")
		dir := t.TempDir()
		c := &cluster{t: t, lab: lab, dir: dir, agents: map[string]*proc{}, stepLog: filepath.Join(dir, "steps.log")}
		eip := lab.Host("etcd").IP
		var initial, eps []string
		for k := range 3 {
			initial = append(initial, fmt.Sprintf("e%d=http://%s:%d", k, eip, 2380+10000*k))
			eps = append(eps, fmt.Sprintf("http://%s:%d", eip, 2379+10000*k))
		}
		for k := range 3 {
			startIn(t, lab, "etcd", dir, nil, "/usr/bin/etcd", "--name", fmt.Sprintf("e%d", k),
				"--data-dir", filepath.Join(dir, fmt.Sprintf("etcd%d", k)),
				"--listen-client-urls", eps[k], "--advertise-client-urls", eps[k],
				"--listen-peer-urls", fmt.Sprintf("http://%s:%d", eip, 2380+10000*k),
				"--initial-advertise-peer-urls", fmt.Sprintf("http://%s:%d", eip, 2380+10000*k),
				"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
				"--initial-cluster-token", "bench", "--heartbeat-interval", "25", "--election-timeout", "250",
				"--logger", "zap", "--log-level", "error")
		}
		token := filepath.Join(dir, "join.token")
		writeFile(t, token, "bench-token-0123456789abcdef0123\n")
		addrs := lab.Host("c1").IP + ":7070," + lab.Host("c2").IP + ":7070"
		startCo := func(h string) *proc {
			ip := lab.Host(h).IP
			return startIn(t, lab, h, dir, nil, bulsajoBin, "coordinator", "--listen", ip+":7070", "--advertise", ip+":7070",
				"--token-file", token, "--data-dir", filepath.Join(dir, h), "--etcd-endpoints", strings.Join(eps, ","), "--lease", lease)
		}
		// c1 first; the members may still be electing: retry while it fails to start.
		var c1 *proc
		waitFor(t, 30*time.Second, "c1 to be elected", func() bool {
			if c1 == nil || c1.exited() {
				c1 = startCo("c1")
			}
			return strings.Contains(c1.out.String(), "elected leader")
		})
		c2 := startCo("c2")
		waitFor(t, 10*time.Second, "c2 to campaign", func() bool { return strings.Contains(c2.out.String(), "campaigning") })
		for _, nd := range []string{"n1", "n2"} {
			c.agents[nd] = startIn(t, lab, nd, dir, nil, bulsajoBin, "agent", "--coordinator", addrs, "--token-file", token,
				"--node-name", nd, "--nproc-per-node", "2", "--data-dir", filepath.Join(dir, "agent-"+nd))
		}
		c.waitJoined(c1, time.Time{}, "n1", "n2")
		startIn(t, lab, "n1", dir, nil, bulsajoBin, "submit", "--coordinator", addrs, "--token-file", token, "--nnodes", "2",
			"--nproc-per-node", "2", "--run-id", "job1", "--", fakeBin, "-step-log", c.stepLog, "-steps", "1000000", "-step-time", fakeStep)
		c.waitStep(1, controlSteps, 60*time.Second)
		killAt := time.Now()
		c1.kill9()
		back := c.waitJoined(c2, killAt, "n1", "n2")
		time.Sleep(time.Until(killAt.Add(8 * time.Second)))
		recs := readSteps(c.stepLog)
		maxGap, normal, rank, worstAt := gaps(recs, -1, killAt.Add(-time.Second), killAt.Add(8*time.Second), killAt)
		ctlGap, _, _, _ := gaps(recs, -1, killAt.Add(-9*time.Second), killAt.Add(-time.Second), killAt)
		gens := map[int]bool{}
		for _, r := range recs {
			gens[r.Gen] = true
		}
		fenced := strings.Contains(c.agents["n1"].out.String()+c.agents["n2"].out.String(), "fencing")
		if lease == "5s" && (len(gens) != 1 || !gens[1]) {
			t.Errorf("generations seen: %v; the failover restarted the workers", gens)
		}
		if lease == "5s" && fenced {
			t.Errorf("an agent fenced its workers")
		}
		vals := map[string]float64{
			"extra_pause_ms":      float64((maxGap - normal).Microseconds()) / 1000,
			"longest_interval_ms": float64(maxGap.Microseconds()) / 1000,
			"normal_interval_ms":  float64(normal.Microseconds()) / 1000,
			"control_longest_ms":  float64(ctlGap.Microseconds()) / 1000,
			"agents_back_ms":      msSince(killAt, back),
			"restarted":           float64(len(gens) - 1),
		}
		if at, ok := c2.out.find("elected leader", killAt); ok {
			vals["elected_ms"] = msSince(killAt, at)
		}
		if at, ok := c2.out.find("resuming job", killAt); ok {
			vals["resuming_ms"] = msSince(killAt, at)
		}
		sc.trial(vals, map[string]any{"worst_rank": rank, "worst_interval_starts_ms_after_kill": round(msSince(killAt, worstAt)),
			"only_generation_1": len(gens) == 1 && gens[1], "an_agent_fenced": fenced})
	})
}
