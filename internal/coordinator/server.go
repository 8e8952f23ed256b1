// Package coordinator is the multi-node coordinator: it keeps the membership of
// agents on other hosts (registration with the join token, heartbeats,
// leases), places each generation of the job on nodes (hot spares first when
// one is lost), quarantines repeat offenders, and drives the same policy and
// supervisor loop as `bulsajo run` through a supervisor.Node made of
// remote agents. Its state lives in a store.Store (etcd) so that a restarted
// coordinator, or a new leader, adopts the running job without stopping it.
package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/dashboard"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/metrics"
	"github.com/bulsajo/bulsajo/internal/slurm"
	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// Config is the coordinator's.
type Config struct {
	Token   string
	Store   store.Store
	DataDir string // event logs of jobs
	// Lease: an agent that has had no heartbeat acknowledged for this long
	// kills its workers; the coordinator gives a silent node's ranks to
	// others only after its lease has run out.
	Lease time.Duration
	// Heartbeat is the agents' heartbeat interval: the least one when
	// MaxHeartbeatsPerSecond scales it.
	Heartbeat time.Duration
	// NodeTimeout: this long without a heartbeat and a node is lost (at
	// the least interval; see timing.go for how it scales).
	NodeTimeout time.Duration
	// MaxHeartbeatsPerSecond: when > 0, the heartbeat interval grows with
	// the number of connected agents so that together they send at most
	// this many a second; the node timeout and the lease grow with it.
	// 0: the interval, node timeout and lease are fixed.
	MaxHeartbeatsPerSecond int
	// QuarantineAfter faults attributed to a node exclude it from new
	// generations until released.
	QuarantineAfter int
	Console         *console.Console
	Version         string
	// Leading reports whether this coordinator still holds the leadership
	// (external etcd); nil: it always does (embedded etcd). For /readyz.
	Leading func() bool
	// Slurm is the Slurm job this coordinator runs in (nil: none), shown
	// by status. OnQuarantine, when set, is called (in its own goroutine)
	// when a node is quarantined: in a Slurm job, to drain it (slurm.go).
	Slurm        *slurm.Info
	OnQuarantine func(node, reason string)
}

// Defaults.
const (
	DefaultLease       = 5 * time.Second
	DefaultHeartbeat   = 250 * time.Millisecond
	DefaultNodeTimeout = 1500 * time.Millisecond
	// DefaultMaxHeartbeatsPerSecond: 250 ms up to 2,500 agents, 1 s at
	// 10,000 (about 0.3 of a core of this project's 2-core test machine).
	DefaultMaxHeartbeatsPerSecond = 10000
	DefaultQuarantineAfter        = 3
	maxRequestBody                = 1 << 20
)

// Store keys.
const (
	keyJob   = "/bulsajo/job"
	keyNodes = "/bulsajo/nodes/"
	keyLease = "/bulsajo/lease" // the longest lease agents were told (a duration)
)

// Server is the coordinator.
type Server struct {
	cfg     Config
	con     *console.Console
	started time.Time

	mu       sync.Mutex
	nodes    map[string]*node
	job      *job // the current or last job
	sessions atomic.Int64

	// Timing (timing.go): connected agents, the interval's level (a
	// multiple of cfg.Heartbeat), the longest lease ever told (s.mu); the
	// timing now, read by sessions without s.mu.
	connected int
	level     int
	leaseHigh time.Duration
	timing    atomic.Pointer[timing]

	// heartbeats counts heartbeats received (metrics).
	heartbeats atomic.Uint64
	metrics    *metrics.Job
	hub        *dashboard.Hub

	writes   chan write // to the store, in order (writer)
	closing  bool       // Close has begun (s.mu)
	quit     chan struct{}
	quitOnce sync.Once
	bg       sync.WaitGroup
}

// nodeRecord is what is persisted about a node: what must survive a
// coordinator restart (the rest an agent says again when it reconnects).
type nodeRecord struct {
	Name        string `json:"name"`
	Quarantined bool   `json:"quarantined,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Faults      int    `json:"faults"`
}

type node struct {
	nodeRecord
	NProc    int
	Spare    bool
	Addr     string
	instance string

	sess  *session     // nil when not connected
	tsess *session     // the session whose timing it is judged by (its last)
	away  bool         // disconnected by its own word (bye): lost only if silent too long
	heard atomic.Int64 // unix ns of the last message: written without s.mu (heartbeats)
	pmu   sync.Mutex
	ports []int // ports the node reported free, newest last (rendezvous; pmu)
	// lost: the node held ranks when it went away; fenceAt is when its
	// lease has certainly run out, so its ranks may be handed to others.
	lost    bool
	fenceAt time.Time
	gpus    map[int]GPUState // GPU verdicts the agent reported (gpu.go; s.mu)
	drain   string           // what Slurm said to draining it (SetDrain)
}

// offerPort keeps a port the node reported free (each heartbeat brings
// one), so that regroups in quick succession each get a fresh port.
func (n *node) offerPort(p int) {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	if p <= 0 || slices.Contains(n.ports, p) {
		return
	}
	n.ports = append(n.ports, p)
	if len(n.ports) > 8 {
		n.ports = n.ports[1:]
	}
}

func (n *node) lastHeard() time.Time { return time.Unix(0, n.heard.Load()) }
func (n *node) hear(t time.Time)     { n.heard.Store(t.UnixNano()) }

// takePort returns the newest port the node reported free; fallback is
// used when it has reported none (it reports one per heartbeat).
func (n *node) takePort(fallback int) int {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	if len(n.ports) == 0 {
		return fallback
	}
	p := n.ports[len(n.ports)-1]
	n.ports = n.ports[:len(n.ports)-1]
	return p
}

// New returns a coordinator with its state loaded from the store.
func New(cfg Config) (*Server, error) {
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = DefaultNodeTimeout
	}
	if cfg.QuarantineAfter == 0 {
		cfg.QuarantineAfter = DefaultQuarantineAfter
	}
	if cfg.Console == nil {
		cfg.Console = console.New(io.Discard)
	}
	switch {
	case cfg.Token == "":
		return nil, errors.New("coordinator: a join token is required")
	case cfg.Heartbeat >= cfg.NodeTimeout || cfg.NodeTimeout > cfg.Lease:
		return nil, fmt.Errorf("coordinator: need heartbeat (%s) < node timeout (%s) <= lease (%s)", cfg.Heartbeat, cfg.NodeTimeout, cfg.Lease)
	}
	s := &Server{cfg: cfg, con: cfg.Console, started: time.Now(), nodes: map[string]*node{}, quit: make(chan struct{}),
		writes: make(chan write, 1<<16), level: 1, leaseHigh: cfg.Lease}
	t := s.timingAt(cfg.Heartbeat)
	s.timing.Store(&t)
	s.initWeb()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if kv, err := cfg.Store.Get(ctx, keyLease); err == nil {
		// Agents of the previous coordinator may hold a lease this long.
		if d, err := time.ParseDuration(string(kv.Value)); err == nil && d > s.leaseHigh && d < time.Hour {
			s.leaseHigh = d
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("coordinator: loading the lease: %w", err)
	}
	kvs, err := cfg.Store.List(ctx, keyNodes)
	if err != nil {
		return nil, fmt.Errorf("coordinator: loading nodes: %w", err)
	}
	for _, kv := range kvs {
		var r nodeRecord
		if json.Unmarshal(kv.Value, &r) == nil && wire.ValidName(r.Name) {
			s.nodes[r.Name] = &node{nodeRecord: r}
		}
	}
	if err := s.loadJob(ctx); err != nil {
		return nil, err
	}
	s.bg.Add(2)
	go s.ticker()
	go s.writer()
	return s, nil
}

// Close stops the coordinator's background work and drops every agent
// session. Workers keep running: agents wait for a coordinator to return
// (their lease) before they stop them.
func (s *Server) Close() {
	s.quitOnce.Do(func() { close(s.quit) })
	s.mu.Lock()
	s.closing = true
	for _, n := range s.nodes {
		if n.sess != nil {
			n.sess.close()
		}
	}
	j := s.job
	s.mu.Unlock()
	if j != nil {
		j.detach()
	}
	s.bg.Wait()
}

// Handler is the coordinator's one HTTP port: agent sessions and admin calls
// need the join token; GET endpoints are read-only and open.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	tok := func(h http.HandlerFunc) http.Handler { return auth.Require(s.cfg.Token, h) }
	mux.Handle("POST /v1/agent", tok(s.serveAgent))
	mux.Handle("POST /v1/jobs", tok(s.serveSubmit))
	mux.Handle("POST /v1/jobs/{id}/cancel", tok(s.serveCancel))
	mux.Handle("POST /v1/nodes/{name}/release", tok(s.serveRelease))
	mux.HandleFunc("GET /v1/status", s.serveStatus)
	mux.HandleFunc("GET /v1/jobs/{id}/events", s.serveEvents)
	mux.HandleFunc("GET /healthz", health.ServeHealthz)
	mux.HandleFunc("GET /readyz", health.ServeReadyz(s.Ready))
	s.webRoutes(mux)
	return mux
}

// Serve serves the handler on l until Close.
func (s *Server) Serve(l net.Listener, tlsCfg *tls.Config) error {
	if tlsCfg != nil {
		l = tls.NewListener(l, tlsCfg)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go func() { <-s.quit; srv.Close() }()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ---- agent sessions ----

type session struct {
	tm        sessionTiming
	conn      net.Conn
	out       chan []byte
	done      chan struct{}
	closeOnce sync.Once
	byUs      atomic.Bool           // the coordinator ended it (the agent may well be alive)
	current   atomic.Bool           // the node's session now (not replaced, not lost)
	bye       atomic.Bool           // the agent said it closes the session itself and lives on
	err       atomic.Pointer[error] // why, when we ended it
}

func (ss *session) close() {
	ss.closeOnce.Do(func() { ss.byUs.Store(true); close(ss.done); ss.conn.Close() })
}

// closeAfterFlush closes once what is queued is written (a reject must
// reach the agent, or it would take the closed connection for a lost
// coordinator and retry blindly).
func (ss *session) closeAfterFlush() {
	deadline := time.Now().Add(time.Second)
	for len(ss.out) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the writer's last Write
	ss.close()
}

// send queues m; a peer that does not keep up loses its session (it will
// reconnect) rather than block the coordinator.
func (ss *session) send(m wire.Msg) {
	b, err := wire.Encode(m)
	if err != nil {
		// Input validation should make this impossible; if not, the peer
		// loses its session (and reconnects) rather than the coordinator
		// its life.
		e := fmt.Errorf("cannot send %s: %v", m.Type, err)
		ss.err.Store(&e)
		ss.close()
		return
	}
	ss.sendBytes(b)
}

// sendBytes queues an encoded message (b is only read: one encoding may go
// to many sessions).
func (ss *session) sendBytes(b []byte) {
	select {
	case ss.out <- b:
	case <-ss.done:
	default:
		ss.close()
	}
}

// writer writes what is queued, in order.
func (ss *session) writer() {
	var deadline time.Time
	for {
		select {
		case b := <-ss.out:
			// A write may block at most 5 s; moving the deadline costs a
			// timer update, so it moves only when under 4 s are left.
			if now := time.Now(); deadline.Sub(now) < 4*time.Second {
				deadline = now.Add(5 * time.Second)
				ss.conn.SetWriteDeadline(deadline)
			}
			if _, err := ss.conn.Write(b); err != nil {
				ss.close()
				return
			}
		case <-ss.done:
			return
		}
	}
}

func (s *Server) serveAgent(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), wire.Protocol) {
		httpError(w, http.StatusBadRequest, "want Upgrade: %s", wire.Protocol)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "hijack: %v", err)
		return
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", wire.Protocol)
	if err := brw.Flush(); err != nil {
		conn.Close()
		return
	}
	ss := &session{conn: conn, out: make(chan []byte, 64), done: make(chan struct{})}
	s.sessions.Add(1)
	defer s.sessions.Add(-1)
	go ss.writer()
	defer ss.close()
	s.agentSession(ss, wire.NewReader(brw.Reader), conn.RemoteAddr())
}

func (s *Server) agentSession(ss *session, rd *wire.Reader, remote net.Addr) {
	// The first message must be a hello, soon.
	ss.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello, err := rd.Read()
	if err != nil || hello.Type != wire.THello {
		why := "first message must be hello"
		if err != nil {
			why = err.Error()
		}
		ss.send(wire.Msg{Type: wire.TReject, Reason: why})
		s.con.Printf("! agent %s rejected: %s", remote, why)
		ss.closeAfterFlush()
		return
	}
	ss.conn.SetReadDeadline(time.Time{})
	n := s.register(ss, hello)
	if n == nil {
		ss.closeAfterFlush()
		return
	}
	for {
		m, err := rd.Read()
		if err != nil {
			if errors.Is(err, wire.ErrInvalid) || errors.Is(err, wire.ErrTooLarge) {
				s.con.Printf("! agent %s: %v; closing its session", n.Name, err)
				ss.err.Store(&err)
				ss.close()
			}
			s.sessionEnded(n, ss, err)
			return
		}
		switch m.Type {
		case wire.THeartbeat:
			// The hot path at 10,000 nodes: no server lock.
			s.heartbeats.Add(1)
			if ss.current.Load() {
				now := time.Now()
				n.hear(now)
				n.offerPort(m.FreePort)
				ss.tm.heardOn(m.HeartbeatMS)
				if t := s.timing.Load(); ss.tm.retell(t, now) {
					ss.send(wire.Msg{Type: wire.TAck, Seq: m.Seq, HeartbeatMS: int(t.hb / time.Millisecond), LeaseMS: int(t.lease / time.Millisecond)})
					continue
				}
			}
			ss.sendBytes(wire.AppendAck(nil, m.Seq))
		case wire.TBye:
			ss.bye.Store(true)
		case wire.TGPU:
			s.mu.Lock()
			if n.sess == ss {
				s.gpuHealth(n, m)
			}
			s.mu.Unlock()
		case wire.TLaunched, wire.TExited, wire.TProgress, wire.TStopped, wire.TFenced, wire.TCollectiveFailed,
			wire.TJoinerReady, wire.TJoinerLost, wire.TListening, wire.TWork, wire.TProcStopped, wire.TBusy:
			if ss.current.Load() {
				n.hear(time.Now()) // alive, even if s.mu keeps us waiting
			}
			s.mu.Lock()
			if n.sess == ss {
				n.hear(time.Now())
				if j := s.job; j != nil {
					j.fromAgent(n, m)
				}
			}
			s.mu.Unlock()
		default:
			s.con.Printf("! agent %s: unexpected %q message; closing its session", n.Name, m.Type)
			e := fmt.Errorf("protocol error: unexpected %s", m.Type)
			ss.err.Store(&e)
			ss.close()
			s.sessionEnded(n, ss, e)
			return
		}
	}
}

// register admits an agent (a new one, or one coming back) and reconciles
// what it says it is running with the job.
func (s *Server) register(ss *session, h wire.Msg) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		// Close has already ended every session; one welcomed now would
		// outlive it (an http.Server does not track hijacked connections)
		// and keep the agent ready against a coordinator that is gone.
		// No reject either: the agent should reconnect elsewhere, not quit.
		return nil
	}
	n := s.nodes[h.Name]
	if n == nil {
		n = &node{nodeRecord: nodeRecord{Name: h.Name}}
		s.nodes[h.Name] = n
	}
	if old := n.sess; old != nil {
		// The same agent reconnecting, or a second one with its name.
		if n.instance != h.Instance {
			ss.send(wire.Msg{Type: wire.TReject, Reason: fmt.Sprintf("node name %q is in use by a connected agent", h.Name)})
			return nil
		}
		old.current.Store(false)
		old.close()
	} else {
		s.connected++
		s.retime()
	}
	restarted := n.instance != "" && n.instance != h.Instance
	n.away = false
	n.sess, n.tsess, n.instance = ss, ss, h.Instance
	n.NProc, n.Spare, n.Addr = h.NProc, h.Spare, h.Addr
	n.offerPort(h.FreePort)
	n.hear(time.Now())
	ss.current.Store(true)
	t := s.timing.Load()
	ss.tm.welcome(*t)
	ss.send(wire.Msg{Type: wire.TWelcome, LeaseMS: int(t.lease / time.Millisecond), HeartbeatMS: int(t.hb / time.Millisecond), Name: h.Name})
	role := "worker node"
	if n.Spare {
		role = "spare"
	}
	state := ""
	if n.Quarantined {
		state = " · quarantined: " + n.Reason
	}
	s.con.Printf("+ node %s joined (%s, %d slots, %s)%s", n.Name, role, n.NProc, n.Addr, state)
	wasLost := n.lost
	n.lost = false
	if j := s.job; j != nil {
		j.nodeBack(n, h.Current, restarted, wasLost)
	} else if h.Current != nil && !h.Current.Stopped {
		// Workers of a job this coordinator does not know: fence them.
		ss.send(wire.Msg{Type: wire.TEnd, Job: h.Current.Job})
	}
	return n
}

func (s *Server) sessionEnded(n *node, ss *session, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.sess != ss {
		return // replaced by a newer session
	}
	if s.closing {
		return // this coordinator is going away; the node did nothing wrong
	}
	// The agent closing its end (EOF, reset) means its process is gone, and
	// its workers with it (parent-death signal): no lease to wait for. A
	// session we ended ourselves (a protocol error, a slow reader) or a
	// broken stream leaves a live agent: its lease must run out first.
	now := time.Now()
	if ss.bye.Load() {
		// Alive, reconnecting: judged by silence like any other node.
		ss.current.Store(false)
		n.sess, n.away = nil, true
		s.disconnected()
		s.con.Printf("… node %s disconnected; it may come back within %s", n.Name, s.timingAt(ss.tm.interval()).nodeTimeout)
		return
	}
	gone := !ss.byUs.Load() && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET))
	if gone {
		s.lose(n, "its connection closed", now, now)
		return
	}
	why := "connection error"
	if e := ss.err.Load(); e != nil {
		why += ": " + (*e).Error()
	} else if err != nil {
		why += ": " + err.Error()
	}
	s.lose(n, why, n.lastHeard(), ss.tm.fenceAt(n.lastHeard()))
}

// disconnected: a node's session is gone (s.mu held).
func (s *Server) disconnected() {
	s.connected--
	s.retime()
}

// lose marks n gone. at is when it was last known alive; fenceAt when its
// workers are certainly stopped.
func (s *Server) lose(n *node, why string, at, fenceAt time.Time) {
	if n.sess != nil {
		n.sess.current.Store(false)
		n.sess.close()
		n.sess = nil
		s.disconnected()
	}
	held := s.job != nil && s.job.holds(n)
	if !held {
		s.con.Printf("- node %s left (%s)", n.Name, why)
		return
	}
	n.lost, n.fenceAt = true, fenceAt
	s.con.Printf("! node %s lost: %s", n.Name, why)
	s.job.nodeLost(n, why, at)
	s.fault(n, "node lost: "+why)
}

// fault counts a fault against n and quarantines it at the threshold.
func (s *Server) fault(n *node, why string) {
	n.Faults++
	if !n.Quarantined && n.Faults >= s.cfg.QuarantineAfter {
		n.Quarantined = true
		n.Reason = fmt.Sprintf("%d faults, the last: %s", n.Faults, why)
		s.con.Printf("! node %s quarantined (%s); `bulsajo node release %s` brings it back", n.Name, n.Reason, n.Name)
		if s.cfg.OnQuarantine != nil {
			go s.cfg.OnQuarantine(n.Name, n.Reason)
		}
		if s.job != nil {
			s.job.logAsync(events.Event{Type: events.NodeQuarantined, Node: n.Name, Detail: n.Reason})
		}
	}
	s.saveNode(n)
}

func (s *Server) saveNode(n *node) {
	b, _ := json.Marshal(n.nodeRecord)
	s.persist(keyNodes+n.Name, b)
}

type write struct {
	key string
	val []byte
}

// persist queues a write to the store. Writes go out in order from one
// goroutine, so no lock is held and no decision waits on etcd (a store that
// is slow or gone must not stall failure handling).
func (s *Server) persist(key string, val []byte) {
	select {
	case s.writes <- write{key, val}:
	default:
		s.con.Printf("! store write queue full: dropping %s", key)
	}
}

func (s *Server) writer() {
	defer s.bg.Done()
	for {
		select {
		case w := <-s.writes:
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := s.cfg.Store.Put(ctx, w.key, w.val)
			cancel()
			if err != nil {
				s.con.Printf("! store: writing %s: %v", w.key, err)
			}
		case <-s.quit:
			// Flush what is queued (a clean shutdown), briefly.
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				select {
				case w := <-s.writes:
					ctx, cancel := context.WithDeadline(context.Background(), deadline)
					s.cfg.Store.Put(ctx, w.key, w.val)
					cancel()
				default:
					return
				}
			}
			return
		}
	}
}

// ticker finds silent nodes and lets stops complete once leases run out.
func (s *Server) ticker() {
	defer s.bg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	prev, judged := time.Now(), time.Time{}
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.mu.Lock()
			now := time.Now()
			// A pass that comes late (this process stalled: GC, swap, a
			// lock) cannot tell silent nodes from its own delay: it judges
			// no one, and the next pass looks again.
			late := now.Sub(prev) > s.cfg.NodeTimeout/2
			prev = now
			// Judging walks every node under s.mu: at a tenth of the
			// heartbeat interval (50 ms up to 2,500 agents, 100 ms at
			// 10,000) it adds that much to a node timeout of seconds.
			if !late && now.Sub(judged) >= s.timing.Load().hb/10 {
				s.judge(now)
				judged = now
			}
			if j := s.job; j != nil {
				j.tick(now)
			}
			s.mu.Unlock()
		}
	}
}

// judge loses the nodes silent for longer than their node timeout (s.mu held).
func (s *Server) judge(now time.Time) {
	for _, n := range s.nodes {
		if (n.sess == nil && !n.away) || n.tsess == nil {
			continue
		}
		last := n.lastHeard()
		tm := &n.tsess.tm
		if silent := now.Sub(last); silent > s.timingAt(tm.interval()).nodeTimeout {
			if n.sess != nil && unread(n.sess.conn) > 0 {
				// It spoke; we have not read it yet (a backlog here is
				// not silence there).
				continue
			}
			// Its last acknowledged heartbeat was sent before we heard it,
			// so its lease ends by lastHeard + lease (or a longer lease it
			// was told before, see timing.go).
			n.away = false
			s.lose(n, fmt.Sprintf("no heartbeat for %.1f s", silent.Seconds()), last, tm.fenceAt(last))
		}
	}
}

// ---- admin ----

// NodeStatus is one node in `bulsajo status`.
type NodeStatus struct {
	Name        string     `json:"name"`
	Addr        string     `json:"addr,omitempty"`
	NProc       int        `json:"nproc,omitempty"`
	Spare       bool       `json:"spare,omitempty"`
	State       string     `json:"state"` // ready, training, lost, disconnected
	Quarantined bool       `json:"quarantined,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	Faults      int        `json:"faults"`
	SilentS     float64    `json:"silent_s"`
	Ranks       []int      `json:"ranks,omitempty"`
	GPUs        []GPUState `json:"gpus,omitempty"`  // GPUs with a reported problem
	Slurm       string     `json:"slurm,omitempty"` // drained, or why Slurm refused
}

// Status is the answer of GET /v1/status.
type Status struct {
	UptimeS float64 `json:"uptime_s"`
	// The timing agents are told now (it scales with their number).
	HeartbeatMS   int64        `json:"heartbeat_ms"`
	NodeTimeoutMS int64        `json:"node_timeout_ms"`
	LeaseMS       int64        `json:"lease_ms"`
	Nodes         []NodeStatus `json:"nodes"`
	Job           *JobStatus   `json:"job,omitempty"`
	Slurm         *slurm.Info  `json:"slurm,omitempty"`
}

// Status reports the cluster.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	t := s.timing.Load()
	st := Status{UptimeS: now.Sub(s.started).Seconds(), HeartbeatMS: t.hb.Milliseconds(), NodeTimeoutMS: t.nodeTimeout.Milliseconds(),
		LeaseMS: t.lease.Milliseconds(), Slurm: s.cfg.Slurm}
	for _, n := range s.nodes {
		ns := NodeStatus{Name: n.Name, Addr: n.Addr, NProc: n.NProc, Spare: n.Spare, Quarantined: n.Quarantined,
			Reason: n.Reason, Faults: n.Faults, GPUs: n.gpuList(), Slurm: n.drain}
		switch {
		case n.lost:
			ns.State = "lost"
		case n.sess == nil:
			ns.State = "disconnected"
		default:
			ns.State = "ready"
			ns.SilentS = now.Sub(n.lastHeard()).Seconds()
		}
		if s.job != nil {
			if ranks := s.job.ranksOf(n.Name); len(ranks) > 0 {
				ns.Ranks = ranks
				if ns.State == "ready" {
					ns.State = "training"
				}
			}
		}
		st.Nodes = append(st.Nodes, ns)
	}
	sort.Slice(st.Nodes, func(i, k int) bool { return st.Nodes[i].Name < st.Nodes[k].Name })
	if s.job != nil {
		js := s.job.status()
		st.Job = &js
	}
	return st
}
