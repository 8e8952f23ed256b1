package coordinator

import (
	"net"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/wire"
)

func TestLevelFor(t *testing.T) {
	const least = 250 * time.Millisecond
	for _, tt := range []struct {
		name         string
		n, k, budget int
		want         int
	}{
		{name: "one agent", n: 1, k: 1, budget: 10000, want: 1},
		{name: "2,500 agents fit 250 ms", n: 2500, k: 1, budget: 10000, want: 1},
		{name: "2,501 agents need 500 ms", n: 2501, k: 1, budget: 10000, want: 2},
		{name: "10,000 agents: 1 s", n: 10000, k: 1, budget: 10000, want: 4},
		{name: "10,001 agents: 1.25 s", n: 10001, k: 4, budget: 10000, want: 5},
		{name: "100,000 agents: 10 s", n: 100000, k: 1, budget: 10000, want: 40},
		{name: "no agent", n: 0, k: 3, budget: 10000, want: 1},
		{name: "down: a leave at the step keeps it", n: 7500, k: 4, budget: 10000, want: 4},
		{name: "down: 10% below the step", n: 6750, k: 4, budget: 10000, want: 3},
		{name: "down: far below", n: 100, k: 4, budget: 10000, want: 1},
		{name: "fixed", n: 100000, k: 1, budget: 0, want: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := levelFor(tt.n, tt.k, tt.budget, least)
			if got != tt.want {
				t.Fatalf("levelFor(%d, %d, %d) = %d, want %d", tt.n, tt.k, tt.budget, got, tt.want)
			}
			if tt.budget > 0 {
				if rate := float64(tt.n) / (float64(got) * least.Seconds()); rate > float64(tt.budget) {
					t.Fatalf("%d agents at %s: %.0f heartbeats/s over the budget %d", tt.n, time.Duration(got)*least, rate, tt.budget)
				}
			}
		})
	}
}

// However small the budget, the interval stays one the agents accept.
func TestRetimeStaysWithinTheProtocol(t *testing.T) {
	s, err := New(Config{Token: "t", Store: store.NewMemory(), DataDir: t.TempDir(), Heartbeat: 250 * time.Millisecond,
		NodeTimeout: 1500 * time.Millisecond, Lease: 5 * time.Second, MaxHeartbeatsPerSecond: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected = 100000
	s.retime()
	tm := s.timing.Load()
	ack := wire.Msg{Type: wire.TAck, Seq: 1, HeartbeatMS: int(tm.hb / time.Millisecond), LeaseMS: int(tm.lease / time.Millisecond)}
	if err := ack.Validate(); err != nil {
		t.Fatalf("timing %+v for 100,000 agents at 1 heartbeat/s: %v", tm, err)
	}
}

func TestTimingAt(t *testing.T) {
	s := &Server{cfg: Config{Heartbeat: 250 * time.Millisecond, NodeTimeout: 1500 * time.Millisecond, Lease: 5 * time.Second,
		MaxHeartbeatsPerSecond: 10000}}
	fixed := &Server{cfg: s.cfg}
	fixed.cfg.MaxHeartbeatsPerSecond = 0
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tt := range []struct {
		s    *Server
		hb   time.Duration
		want timing
	}{
		{s, ms(250), timing{ms(250), ms(1500), ms(5000)}},
		{s, ms(500), timing{ms(500), ms(1500), ms(5000)}},
		{s, ms(750), timing{ms(750), ms(2250), ms(5000)}},
		{s, ms(1000), timing{ms(1000), ms(3000), ms(5000)}},
		{s, ms(2000), timing{ms(2000), ms(6000), ms(10000)}},
		{s, ms(100), timing{ms(250), ms(1500), ms(5000)}}, // never below the least
		{fixed, ms(1000), timing{ms(250), ms(1500), ms(5000)}},
	} {
		got := tt.s.timingAt(tt.hb)
		if got != tt.want {
			t.Errorf("timingAt(%s) (budget %d) = %+v, want %+v", tt.hb, tt.s.cfg.MaxHeartbeatsPerSecond, got, tt.want)
		}
		if !(got.hb < got.nodeTimeout && got.nodeTimeout <= got.lease) {
			t.Errorf("timingAt(%s) = %+v: need heartbeat < node timeout <= lease", tt.hb, got)
		}
	}
}

// The end of a silent agent's lease, as the coordinator sees it, is never
// before the end the agent itself computes (agent.session: sent + the
// lease it knows at each ack, never moved back), whichever way the lease
// changes.
func TestSessionTimingFenceAt(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type beat struct {
		sent, heard time.Duration // after t0
		lease       time.Duration // the timing when the coordinator acks it (0: unchanged)
	}
	for _, tt := range []struct {
		name  string
		first time.Duration // the welcome's lease
		beats []beat
	}{
		{"unchanged", ms(5000), []beat{{0, 5, 0}, {250, 255, 0}}},
		{"grows", ms(5000), []beat{{0, 5, 0}, {250, 255, ms(6500)}, {1250, 1255, 0}}},
		{"shrinks right after a heartbeat", ms(6500), []beat{{0, 5, 0}, {20, 25, ms(5000)}}},
		{"shrinks, acked late", ms(6500), []beat{{0, 900, 0}, {1000, 1001, ms(5000)}}},
		{"shrinks twice", ms(10000), []beat{{0, 1, 0}, {10, 11, ms(6500)}, {20, 21, ms(5000)}}},
		{"shrinks then grows", ms(6500), []beat{{0, 1, 0}, {10, 11, ms(5000)}, {20, 21, ms(8000)}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var st sessionTiming
			st.welcome(timing{ms(250), ms(1500), tt.first})
			agentLease, agentUntil := tt.first, t0 // the agent's view (hello sent at t0)
			agentUntil = t0.Add(tt.first)
			var last time.Time
			for _, b := range tt.beats {
				last = t0.Add(b.heard)
				lease := st.toldLease.Load()
				if b.lease != 0 {
					lease = b.lease
				}
				if st.retell(&timing{ms(250), ms(1500), lease}, last) {
					agentLease = lease
				}
				if u := t0.Add(b.sent).Add(agentLease); u.After(agentUntil) {
					agentUntil = u
				}
			}
			if got := st.fenceAt(last); got.Before(agentUntil) {
				t.Fatalf("fenceAt = t0+%s, before the agent's lease ends at t0+%s", got.Sub(t0), agentUntil.Sub(t0))
			}
		})
	}
}

// A node whose bytes wait unread in its socket spoke: a coordinator that is
// behind on reading (a burst, a starved CPU) does not lose it for silence.
func TestUnreadIsNotSilence(t *testing.T) {
	s, err := New(Config{Token: "t", Store: store.NewMemory(), DataDir: t.TempDir(), Heartbeat: 20 * time.Millisecond,
		NodeTimeout: 150 * time.Millisecond, Lease: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ours, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()

	s.mu.Lock()
	defer s.mu.Unlock()
	ss := &session{conn: ours, out: make(chan []byte, 8), done: make(chan struct{})}
	ss.tm.welcome(*s.timing.Load())
	ss.current.Store(true)
	n := &node{nodeRecord: nodeRecord{Name: "n"}, sess: ss, tsess: ss}
	s.nodes["n"] = n
	s.connected++
	n.hear(time.Now().Add(-time.Second))

	if _, err := peer.Write([]byte(`{"type":"heartbeat","seq":1}` + "\n")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); unread(ours) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat never reached the socket")
		}
	}
	s.judge(time.Now())
	if n.sess == nil {
		t.Fatal("lost for silence with a heartbeat waiting to be read")
	}
	buf := make([]byte, 256)
	if _, err := ours.Read(buf); err != nil {
		t.Fatal(err)
	}
	if u := unread(ours); u != 0 {
		t.Fatalf("unread = %d after reading everything", u)
	}
	s.judge(time.Now())
	if n.sess != nil {
		t.Fatal("silent a second, nothing unread, and not lost")
	}
}
