package coordinator

import (
	"crypto/tls"
	"math"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/wire"
)

// Timing: how often agents heartbeat, how long a node may be silent before
// it is lost, and the lease after which a silent agent fences itself.
//
// With MaxHeartbeatsPerSecond set (the default), the interval grows with
// the number of connected agents so that their heartbeats together stay
// within that budget (Nomad's max_heartbeats_per_second): in steps of the
// configured interval, the least; the node timeout and the lease follow it.
// A closed connection is still the fast path for a dead agent (it needs no
// timeout); silence is for hosts that vanish without a close.
//
// Agents learn a new timing on the ack of their next heartbeat (wire: an
// ack with HeartbeatMS and LeaseMS); each heartbeat says the interval its
// agent is on. A node is judged by the longer of the interval it was told
// and the one it says it is on, so a change never makes a live node look
// silent, and an agent too old to follow changes keeps its welcome's.
//
// Fencing stays safe across changes: an agent's lease runs from the sending
// of its last acknowledged heartbeat for the lease it last learned, and
// never moves back. The coordinator hands a silent node's ranks on only
// after max(last heard + the lease it last told that session, the end of
// any longer lease told before: the moment it told the shorter one + the
// longer one).

// timing is the cluster's timing at one interval.
type timing struct {
	hb, nodeTimeout, lease time.Duration
}

// timingAt is the timing for heartbeat interval hb.
func (s *Server) timingAt(hb time.Duration) timing {
	c := s.cfg
	if c.MaxHeartbeatsPerSecond <= 0 || hb <= c.Heartbeat {
		return timing{c.Heartbeat, c.NodeTimeout, c.Lease}
	}
	// Three heartbeats missed: the coordinator's heartbeat load is
	// bounded, so it reads them in time (and a backlog of unread ones is
	// not silence, see silentFor). The lease outlasts the node timeout by
	// two intervals, and never falls below the configured one (a
	// coordinator failover must fit in it).
	nt := max(c.NodeTimeout, 3*hb)
	return timing{hb, nt, max(c.Lease, nt+2*hb)}
}

// levelFor is the heartbeat interval, in multiples of the least one, for n
// connected agents when it is now at level k: up as soon as the budget
// would be exceeded, down only with 10% to spare (no flapping at a step).
func levelFor(n, k, budget int, least time.Duration) int {
	if budget <= 0 {
		return 1
	}
	perLevel := float64(budget) * least.Seconds() // agents one step carries
	need := max(1, int(math.Ceil(float64(n)/perLevel)))
	if need >= k {
		return need
	}
	if down := max(1, int(math.Ceil(float64(n)/(0.9*perLevel)))); down < k {
		return down
	}
	return k
}

// retime recomputes the timing after the number of connected agents
// changed (s.mu held).
func (s *Server) retime() {
	k := levelFor(s.connected, s.level, s.cfg.MaxHeartbeatsPerSecond, s.cfg.Heartbeat)
	// The protocol's longest interval (a tiny budget must not make an ack
	// the agent refuses).
	k = max(1, min(k, int(wire.MaxHeartbeatMS*time.Millisecond/s.cfg.Heartbeat)))
	if k == s.level {
		return
	}
	s.level = k
	t := s.timingAt(time.Duration(k) * s.cfg.Heartbeat)
	old := s.timing.Swap(&t)
	if t.lease > s.leaseHigh {
		// A coordinator that takes over must wait out the longest lease an
		// agent may hold before it hands a silent node's ranks on.
		s.leaseHigh = t.lease
		s.persist(keyLease, []byte(t.lease.String()))
	}
	if old == nil || old.hb != t.hb {
		s.con.Printf("… %d agents: heartbeat every %s, node timeout %s, lease %s", s.connected, t.hb, t.nodeTimeout, t.lease)
	}
}

// sessionTiming is what one session's agent was told and says it does.
// Written by the session's reader (and at the welcome); read by the ticker.
type sessionTiming struct {
	toldHB    atomicDur // the interval the agent was last told
	maxToldHB atomicDur // the longest it was told (bounds what it may say it is on)
	usedHB    atomicDur // the interval it says it is on (its welcome's if it never says)
	toldLease atomicDur // the lease it was last told
	// leaseFloor: unix ns before which the agent may still hold a longer
	// lease it was told earlier.
	leaseFloor atomic.Int64
}

func (st *sessionTiming) welcome(t timing) {
	st.toldHB.Store(t.hb)
	st.maxToldHB.Store(t.hb)
	st.usedHB.Store(t.hb)
	st.toldLease.Store(t.lease)
}

// retell reports whether the agent must be told t on this ack (the
// session's reader, at now, after it heard the heartbeat being acked).
func (st *sessionTiming) retell(t *timing, now time.Time) bool {
	if t == nil || (st.toldHB.Load() == t.hb && st.toldLease.Load() == t.lease) {
		return false
	}
	if old := st.toldLease.Load(); t.lease < old {
		// Every heartbeat acknowledged under the old lease was sent before
		// now: the agent's lease ends by now + old at the latest.
		st.leaseFloor.Store(max(st.leaseFloor.Load(), now.Add(old).UnixNano()))
	}
	st.toldLease.Store(t.lease)
	st.toldHB.Store(t.hb)
	st.maxToldHB.Store(max(st.maxToldHB.Load(), t.hb))
	return true
}

// heardOn records the interval a heartbeat says its agent is on.
func (st *sessionTiming) heardOn(ms int) {
	if ms > 0 {
		st.usedHB.Store(min(time.Duration(ms)*time.Millisecond, st.maxToldHB.Load()))
	}
}

// interval is the longer of the interval told and the one in use.
func (st *sessionTiming) interval() time.Duration { return max(st.toldHB.Load(), st.usedHB.Load()) }

// fenceAt is when an agent last heard at last has certainly fenced itself.
func (st *sessionTiming) fenceAt(last time.Time) time.Time {
	at := last.Add(st.toldLease.Load())
	if f := time.Unix(0, st.leaseFloor.Load()); f.After(at) {
		return f
	}
	return at
}

// unread is how many bytes the peer sent that this process has not read
// yet (0 if unknown): a coordinator behind on reading (CPU starved, a
// burst) must not take its own backlog for a silent node.
func unread(c net.Conn) int {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) { n = socketInQueue(fd) })
	return n
}

// atomicDur is a time.Duration read and written atomically.
type atomicDur struct{ v atomic.Int64 }

func (a *atomicDur) Load() time.Duration   { return time.Duration(a.v.Load()) }
func (a *atomicDur) Store(d time.Duration) { a.v.Store(int64(d)) }
