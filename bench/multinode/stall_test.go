package multinode

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/test/netlab"
)

// e) Coordinator stall: the coordinator process is SIGSTOPped for 1.2 s (a
// long GC pause, a starved VM, a stalled disk) and continued. That is less
// than the node timeout (1.5 s) but more than the agents' session read
// deadline (1 s): each agent gives up on the silent session and closes it,
// keeping its workers (it fences only when its lease runs out). The
// coordinator, once it runs again, reads the closed connection as "the agent
// process is gone, and its workers with it". In the _cut variant n2's link is
// also cut 100 ms before the stall ends (after its agent closed the session, before
// the coordinator runs again), so n2 cannot reconnect and be told to stop.
func TestCoordinatorStall(t *testing.T) {
	gate(t)
	netlab.Require(t)
	for _, cut := range []bool{false, true} {
		name := map[bool]string{false: "coordinator_stall", true: "coordinator_stall_cut"}[cut]
		t.Run(name, func(t *testing.T) { stall(t, name, cut) })
	}
}

// stallFor is the stall (BULSAJO_BENCH_STALL overrides it, e.g. 2s).
func stallFor() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BULSAJO_BENCH_STALL")); err == nil && d > 200*time.Millisecond {
		return d
	}
	return 1200 * time.Millisecond
}

func stall(t *testing.T, key string, cut bool) {
	n := trials(3)
	dur := stallFor()
	title := "coordinator stalled " + dur.String() + " (SIGSTOP, SIGCONT); nothing crashed"
	what := ""
	if cut {
		title = "coordinator stalled " + dur.String() + ", and n2 cut off 100 ms before the stall ends"
		what = " 100 ms before the stall ends n2's link is cut (Host.Cut), so n2 cannot reconnect: its workers go on until its lease runs out."
	}
	sc := newScenario(key, title,
		"Hosts coord, n1, n2, s1 (spare); 2 fake workers per node, --nnodes 2, -step-time "+fakeStep+
			". At step 50 the coordinator is SIGSTOPped for "+dur.String()+" (default 1.2 s: less than the 1.5 s node timeout, more than "+
			"the agents' session read deadline, 1 s at ef0f7ca), then SIGCONTed."+what+" No worker has crashed. Measured over the next 8 s: whether a new generation "+
			"was started (a restart rolls the job back to its checkpoint), and how long generation 1's workers still stepped after "+
			"generation 2's first step (> 0: two generations trained at once, which fencing is meant to prevent).",
		map[string]string{"nodes": "n1, n2 + spare s1", "workers": "fake worker, 2 per node, step " + fakeStep,
			"coordinator": "defaults (lease 5s, heartbeat 250ms, node timeout 1.5s), embedded etcd", "stall": dur.String(),
			"cut": fmt.Sprint(cut), "trials": fmt.Sprint(n)})
	sc.Targets["restarted"] = "0 (nothing failed)"
	sc.Targets["overlap_ms"] = "< 0 (never two generations at once)"
	sc.metric("restarted", "generations", "generations started after the stall (1: the job was restarted)")
	sc.metric("overlap_ms", "ms", "generation 1's last step − generation 2's first step (> 0: two generations trained at once)")
	defer sc.finish()
	sc.runTrials(t, n, func(t *testing.T, i int) {
		c := newCluster(t, []string{"n1", "n2", "s1"}, 2, nil)
		c.submitFake(c.coordAddr(), "coord", "2", 2, "-step-time", fakeStep)
		c.waitStep(1, 50, 30*time.Second)
		pid := c.coord.cmd.Process.Pid
		syscall.Kill(pid, syscall.SIGSTOP)
		time.Sleep(dur - 100*time.Millisecond)
		if cut {
			c.lab.Host("n2").Cut()
		}
		time.Sleep(100 * time.Millisecond)
		syscall.Kill(pid, syscall.SIGCONT)
		time.Sleep(8 * time.Second)
		recs := readSteps(c.stepLog)
		gens := 0
		for _, r := range recs {
			gens = max(gens, r.Gen)
		}
		vals := map[string]float64{"restarted": float64(gens - 1)}
		extra := map[string]any{}
		if gens >= 2 {
			vals["overlap_ms"] = overlapMS(recs, 1, 2)
			var lines []string
			for _, l := range strings.Split(c.coord.out.String(), "\n") {
				if strings.Contains(l, "node ") || strings.Contains(l, "generation 2") {
					lines = append(lines, strings.TrimSpace(l))
				}
			}
			extra["coordinator_said"] = lines
		}
		t.Logf("generations %d, overlap %.0f ms", gens, vals["overlap_ms"])
		sc.trial(vals, extra)
	})
}
