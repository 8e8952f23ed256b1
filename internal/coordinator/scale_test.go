package coordinator_test

// Timing that scales with the cluster (coordinator/timing.go): the
// heartbeat interval, node timeout and lease follow the number of connected
// agents, agents learn a change on an ack, and fencing stays safe across it.

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// With a budget of 10 heartbeats a second at a least interval of 20 ms, one
// step of the interval carries 0.2 agents: 1 agent heartbeats every 100 ms
// (node timeout 300 ms, lease 500 ms), 2 every 200 ms (600 ms, 1 s), 3 every
// 300 ms (900 ms, 1.5 s); back down to 2 with 10% to spare: 240 ms (720 ms,
// 1.2 s). Every interval from 200 ms on is longer than the least node
// timeout (150 ms): a coordinator that judged by it would lose them all.
// scaled: 10 heartbeats a second in all, so the timing changes with each
// agent; the floors (node timeout 150 ms, lease 400 ms) are below every
// scaled value, so the expectations below are the scaling's alone.
func scaled(cfg *coordinator.Config) {
	cfg.MaxHeartbeatsPerSecond = 10
	cfg.NodeTimeout, cfg.Lease = 150*time.Millisecond, 400*time.Millisecond
}

type follower struct {
	*fakeAgent
	every time.Duration // > 0: heartbeat this often whatever it is told

	mu     sync.Mutex
	sent   map[uint64]time.Time
	hb     time.Duration // the interval it was told last
	lease  time.Duration // the lease it was told last
	until  time.Time     // its lease's end, as agent.session computes it
	leases []time.Duration
	stop   chan struct{}
	done   chan struct{}
}

// connectFollower connects an agent that does what a real one does with
// its timing: it heartbeats at the interval it was told last (or every
// f.every), says the interval in each heartbeat, and keeps its lease's end
// from the acks: the send time of each acknowledged heartbeat plus the lease
// it knows then, never moved back.
func connectFollower(t *testing.T, c *coord, name string, every time.Duration) *follower {
	t.Helper()
	hello := time.Now()
	fa := connect(t, c, name, agentOpts{silent: true})
	w := fa.waitFor("welcome", isType(wire.TWelcome)).m
	f := &follower{fakeAgent: fa, every: every, sent: map[uint64]time.Time{}, stop: make(chan struct{}), done: make(chan struct{}),
		hb: time.Duration(w.HeartbeatMS) * time.Millisecond, lease: time.Duration(w.LeaseMS) * time.Millisecond}
	f.until = hello.Add(f.lease)
	f.leases = append(f.leases, f.lease)
	go f.run()
	t.Cleanup(func() { f.silence() })
	return f
}

func (f *follower) interval() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.every > 0 {
		return f.every
	}
	return f.hb
}

func (f *follower) run() {
	defer close(f.done)
	seen := 0
	every := f.interval()
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		got, ended, _, changed := f.snapshot()
		for _, r := range got[seen:] {
			if r.m.Type != wire.TAck {
				continue
			}
			f.mu.Lock()
			if r.m.HeartbeatMS > 0 {
				f.hb, f.lease = time.Duration(r.m.HeartbeatMS)*time.Millisecond, time.Duration(r.m.LeaseMS)*time.Millisecond
				f.leases = append(f.leases, f.lease)
			}
			if at, ok := f.sent[r.m.Seq]; ok {
				if u := at.Add(f.lease); u.After(f.until) {
					f.until = u
				}
			}
			f.mu.Unlock()
		}
		seen = len(got)
		if ended {
			return
		}
		if e := f.interval(); e != every {
			every = e
			tk.Reset(every)
		}
		select {
		case <-f.stop:
			return
		case <-changed:
		case <-tk.C:
			seq := f.seq.Add(1)
			b, _ := wire.Encode(wire.Msg{Type: wire.THeartbeat, Seq: seq, HeartbeatMS: int(every / time.Millisecond)})
			f.wmu.Lock()
			now := time.Now()
			f.mu.Lock()
			f.sent[seq] = now
			f.mu.Unlock()
			f.lastSent.Store(now.UnixNano())
			f.conn.SetWriteDeadline(now.Add(wait))
			_, err := f.conn.Write(b)
			f.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// silence stops its heartbeats (the connection stays open) and returns
// when its own lease ends: acks still in flight may move it, so it waits
// for them first.
func (f *follower) silence() time.Time {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.until
}

// waitTold waits until the agent has been told lease (on its welcome or an ack).
func (f *follower) waitTold(lease time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		f.mu.Lock()
		ok := f.lease == lease
		all := fmt.Sprint(f.leases)
		f.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("agent %s: never told lease %s; told %s", f.name, lease, all)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitInterval waits until the agent has been told heartbeat interval hb.
func (f *follower) waitInterval(hb time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		f.mu.Lock()
		ok := f.hb == hb
		f.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("agent %s: never told heartbeat %s", f.name, hb)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func timingIs(hb, nodeTimeout, lease time.Duration) func(coordinator.Status) bool {
	return func(st coordinator.Status) bool {
		return st.HeartbeatMS == hb.Milliseconds() && st.NodeTimeoutMS == nodeTimeout.Milliseconds() && st.LeaseMS == lease.Milliseconds()
	}
}

const ms = time.Millisecond

// The interval grows as agents join and shrinks as they leave; connected
// agents learn it on an ack and are judged by it, old agents (who never say
// their interval) by the one they were welcomed with.
func TestTimingFollowsTheAgents(t *testing.T) {
	c := newCoord(t, scaled)
	a := connectFollower(t, c, "a", 0)
	if a.hb != 100*ms || a.lease != 500*ms {
		t.Fatalf("one agent welcomed with heartbeat %s, lease %s; want 100ms, 500ms", a.hb, a.lease)
	}
	c.waitStatus("timing for 1", timingIs(100*ms, 300*ms, 500*ms))

	b := connectFollower(t, c, "b", 0)
	if b.hb != 200*ms || b.lease != time.Second {
		t.Fatalf("second agent welcomed with heartbeat %s, lease %s; want 200ms, 1s", b.hb, b.lease)
	}
	c.waitStatus("timing for 2", timingIs(200*ms, 600*ms, time.Second))
	a.waitTold(time.Second)
	if got := a.interval(); got != 200*ms {
		t.Fatalf("a heartbeats every %s after the change, want 200ms", got)
	}

	// An agent from before timing changes: it keeps its welcome's interval
	// (here faster than it is told) and never says it.
	old := connect(t, c, "old", agentOpts{})
	c.waitStatus("timing for 3", timingIs(300*ms, 900*ms, 1500*ms))
	a.waitTold(1500 * ms)
	b.waitTold(1500 * ms)

	// Heartbeats 300 ms apart, twice the least node timeout: nobody is lost.
	time.Sleep(1500 * ms)
	st := c.srv.Status()
	for _, name := range []string{"a", "b", "old"} {
		if n, _ := nodeOf(st, name); n.State != "ready" {
			t.Fatalf("node %s %+v after a second and a half at 300 ms heartbeats", name, n)
		}
	}

	// One leaves: down only with 10% to spare, to 240 ms.
	old.close()
	c.waitStatus("timing for 2 again", timingIs(240*ms, 720*ms, 1200*ms))
	a.waitTold(1200 * ms)
	b.waitTold(1200 * ms)
	if strings.Contains(c.log.String(), "no heartbeat") {
		t.Fatalf("a node lost for silence:\n%s", c.log.String())
	}
}

// A silent node's ranks move only after its agent has fenced itself, when
// its lease changed just before it went silent: the agent's lease ends at
// the latest of (each acknowledged heartbeat's send + the lease it knew
// then), which the coordinator cannot see, only bound.
func TestFencingAcrossTimingChanges(t *testing.T) {
	for _, tt := range []struct {
		name string
		// before silencing a: connect "x" (the lease grows) or close it
		// (the lease shrinks)
		grow bool
	}{
		{"the lease grows", true},
		{"the lease shrinks", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t, scaled)
			// a heartbeats every 20 ms whatever it is told: its last
			// heartbeat under the old lease comes right before the change.
			a := connectFollower(t, c, "a", 20*ms)
			b := connectFollower(t, c, "b", 0)
			var x *follower
			if !tt.grow {
				x = connectFollower(t, c, "x", 0)
			}
			sp := spec("timing", 1, 2)
			c.submit(sp)
			for _, ag := range []*follower{a, b} {
				ag.waitFor("start of gen 1", isGen(wire.TStart, sp.ID, 1))
				ag.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
			}
			c.waitStatus("gen 1 training", jobIs(1, "training"))

			var want time.Duration
			if tt.grow {
				a.waitTold(time.Second)
				x = connectFollower(t, c, "x", 0)
				want = 1500 * ms
			} else {
				a.waitTold(1500 * ms)
				x.close()
				x.silence()
				want = 1200 * ms
			}
			a.waitTold(want)
			until := a.silence()
			t.Logf("a told %s, its lease ends %s after its last heartbeat", a.leases, until.Sub(time.Unix(0, a.lastSent.Load())))

			b.waitFor("stop of gen 1", isGen(wire.TStop, sp.ID, 1))
			b.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			if tt.grow {
				x.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			}
			s := b.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2))
			if s.at.Before(until) {
				t.Fatalf("b got the start of gen 2 %s before a's lease ran out", until.Sub(s.at))
			}
			if late := s.at.Sub(until); late > 2*time.Second {
				t.Errorf("gen 2 started %s after a's lease ran out", late)
			}
			t.Logf("gen 2 started %s after a's lease ran out", s.at.Sub(until))
			if n, _ := nodeOf(c.srv.Status(), "a"); n.State != "lost" {
				t.Fatalf("a %+v", n)
			}
		})
	}
}

// Every agent gets the first generation's start while the interval grows
// under the registrations (each agent is told a new one 4 times), and none
// is lost on the way.
func TestStartReachesEveryAgent(t *testing.T) {
	const n = 24
	// One step carries 4.8 agents: 24 heartbeat every 100 ms. The node
	// timeout is much longer than the other tests' (the agents connect at
	// once, perhaps under -race on a loaded machine): this test is about the
	// start, TestTimingFollowsTheAgents about silence.
	c := newCoord(t, func(cfg *coordinator.Config) {
		cfg.MaxHeartbeatsPerSecond, cfg.NodeTimeout, cfg.Lease = 240, 10*time.Second, 20*time.Second
	})
	agents := make([]*follower, n)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			agents[i] = connectFollower(t, c, fmt.Sprintf("n%02d", i), 0)
		}(i)
	}
	wg.Wait()
	c.waitStatus("timing for 24", timingIs(100*ms, 10*time.Second, 20*time.Second))
	sp := spec("all", n, n)
	c.submit(sp)
	for i, ag := range agents {
		s := ag.waitFor("start of gen 1", isGen(wire.TStart, sp.ID, 1)).m
		if s.Spec.GroupWorldSize != n || len(s.Spec.Ranks) != 1 {
			t.Fatalf("agent %d: %+v", i, s.Spec)
		}
		ag.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
	}
	st := c.waitStatus("gen 1 training", jobIs(1, "training"))
	if st.Job.World != n {
		t.Fatalf("job %+v", st.Job)
	}
	for _, ag := range agents {
		ag.waitInterval(100 * ms)
		if _, ended, _, _ := ag.snapshot(); ended {
			t.Fatalf("agent %s: its session ended", ag.name)
		}
	}
	if strings.Contains(c.log.String(), "lost") || strings.Contains(c.log.String(), "left") {
		t.Fatalf("a node was lost:\n%s", c.log.String())
	}
}

// The first generation waits a moment (twice the node timeout at most) for
// a node whose session dropped just before the job came, so that it is not
// left idle until the next fault; a node that does not come back in time is
// not waited for.
func TestFirstStartWaitsForAReconnectingNode(t *testing.T) {
	for _, tt := range []struct {
		name string
		back bool
	}{
		{"it comes back", true},
		{"it does not", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			a := connect(t, c, "a", agentOpts{addr: "10.0.0.1"})
			b := connect(t, c, "b", agentOpts{addr: "10.0.0.2"})
			b.close()
			c.waitStatus("b gone", nodeState("b", "disconnected"))
			sp := spec("lastcall", 1, 2)
			submitted := time.Now()
			c.submit(sp)
			want := []*fakeAgent{a}
			if tt.back {
				time.Sleep(tNodeTimeout / 2)
				b = connect(t, c, "b", agentOpts{addr: "10.0.0.2", instance: "b-instance-2"})
				want = append(want, b)
			}
			for _, ag := range want {
				s := ag.waitFor("start of gen 1", isGen(wire.TStart, sp.ID, 1))
				if s.m.Spec.GroupWorldSize != len(want) {
					t.Fatalf("agent %s: gen 1 on %d nodes, want %d", ag.name, s.m.Spec.GroupWorldSize, len(want))
				}
				if !tt.back && s.at.Sub(submitted) < tNodeTimeout {
					t.Errorf("gen 1 started %s after the submit, before b could have come back", s.at.Sub(submitted))
				}
			}
		})
	}
}
