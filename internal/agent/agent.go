// Package agent is `bulsajo agent`: the daemon on each node. It keeps a
// session with the coordinator (join token, heartbeats), starts and stops
// this node's workers of each generation through internal/agent, and fences
// itself: when no heartbeat has been acknowledged for the lease, it kills its
// workers, because by then the coordinator may have given their ranks to
// another node.
package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/gpu"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/ports"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// Config is the agent's.
type Config struct {
	Coordinators []string // host:port, tried in order (a follower refuses)
	Token        string
	TLS          *tls.Config // nil: plain HTTP
	Name         string
	NProc        int
	Spare        bool
	Advertise    string // address other nodes reach this one at ("" = the one used to reach the coordinator)
	DataDir      string // runs/JOB/ (logs, errors, pids) go here
	SDKDir       string
	Console      *console.Console
	Version      string
	GPU          *gpu.Monitor // GPU health (nil: off); see gpu.go
}

// ErrAuth means the coordinator refused the token: retrying will not help.
var ErrAuth = errors.New("agent: the coordinator refused the join token")

// Agent is the node daemon.
type Agent struct {
	cfg      Config
	con      *console.Console
	instance string
	next     int // index of the coordinator address to try first

	mu      sync.Mutex
	sess    *session
	lease   time.Duration
	until   time.Time // lease end (zero: none held)
	job     string
	ag      *launcher.Launcher
	spec    *wire.Spec
	gen     int
	running map[int]bool
	exited  []wire.Msg
	stopped bool
	step    int
	fenced  bool
	env     map[string]string // added to workers' environment
	// gpuDrains: drain verdicts reported (repeated on every session)
	gpuDrains []wire.Msg
}

type session struct {
	conn    net.Conn
	mu      sync.Mutex
	sentAt  map[uint64]time.Time
	closeMu sync.Once
	// The heartbeat interval now (the coordinator may change it on an
	// ack); retimed wakes the heartbeat loop to follow.
	hb      atomic.Int64
	retimed chan struct{}
}

func (s *session) send(m wire.Msg) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = s.conn.Write(b)
	return err
}

func (s *session) close() { s.closeMu.Do(func() { s.conn.Close() }) }

// New returns an agent; Run connects it.
func New(cfg Config) *Agent {
	b := make([]byte, 8)
	rand.Read(b)
	if cfg.Console == nil {
		cfg.Console = console.New(os.Stdout)
	}
	return &Agent{cfg: cfg, con: cfg.Console, instance: hex.EncodeToString(b), running: map[int]bool{}}
}

// Run keeps the agent connected until ctx ends, then stops every worker.
func (a *Agent) Run(ctx context.Context) error {
	defer a.endJob()
	// On the way out the workers are stopped first and the session closed
	// after: a closed session tells the coordinator this node's workers are
	// gone, and it hands their ranks on at once.
	go func() {
		<-ctx.Done()
		a.stopGracefully()
		a.endJob()
		a.mu.Lock()
		s := a.sess
		a.mu.Unlock()
		if s != nil {
			s.close()
		}
	}()
	go a.fenceLoop(ctx)
	go a.procLoop(ctx)
	if a.cfg.GPU != nil {
		a.gpuPreflight() // the baseline; drains found are reported once connected
		a.con.Printf("  GPU health: watching %d GPU(s)", len(a.cfg.GPU.Devices()))
		go a.watchGPUs(ctx)
	}
	backoff := 100 * time.Millisecond
	said := false
	for ctx.Err() == nil {
		sess, br, err := a.dial(ctx)
		if err != nil {
			if errors.Is(err, ErrAuth) {
				return err
			}
			if !said {
				a.con.Printf("… cannot reach the coordinator (%v); retrying", err)
				said = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 500*time.Millisecond)
			continue
		}
		backoff, said = 100*time.Millisecond, false
		err = a.session(ctx, sess, br)
		if ctx.Err() == nil {
			// Closing on our own while alive (the coordinator went quiet, or
			// spoke nonsense): say so, or the close reads as this node's
			// death and its ranks would move while its workers still run.
			sess.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			sess.send(wire.Msg{Type: wire.TBye, Reason: trim(fmt.Sprint(err))})
		}
		sess.close()
		// With several coordinators, try the others first: the one we lost
		// may have lost its leadership.
		a.next++
		a.mu.Lock()
		a.sess = nil
		a.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
		var rej rejected
		if errors.As(err, &rej) {
			a.con.Printf("! coordinator refused this agent: %s", string(rej))
			if strings.Contains(string(rej), "in use") {
				time.Sleep(time.Second)
				continue
			}
			return fmt.Errorf("agent: refused: %s", string(rej))
		}
		a.con.Printf("! lost the coordinator: %v; reconnecting", err)
	}
	return nil
}

type rejected string

func (r rejected) Error() string { return string(r) }

// dial opens the agent session: an HTTP request upgraded to the wire protocol.
func (a *Agent) dial(ctx context.Context) (*session, *bufio.Reader, error) {
	var last error
	for k := range a.cfg.Coordinators {
		idx := (a.next + k) % len(a.cfg.Coordinators)
		addr := a.cfg.Coordinators[idx]
		d := net.Dialer{Timeout: time.Second, KeepAlive: -1}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			last = err
			continue
		}
		if a.cfg.TLS != nil {
			c := a.cfg.TLS.Clone()
			if c.ServerName == "" {
				c.ServerName, _, _ = net.SplitHostPort(addr)
			}
			tc := tls.Client(conn, c)
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				last = fmt.Errorf("tls: %w", err)
				continue
			}
			tc.SetDeadline(time.Time{})
			conn = tc
		}
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/agent", nil)
		req.Header.Set("Upgrade", wire.Protocol)
		req.Header.Set("Connection", "Upgrade")
		auth.SetBearer(req.Header, a.cfg.Token)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := req.Write(conn); err != nil {
			conn.Close()
			last = err
			continue
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			conn.Close()
			last = err
			continue
		}
		conn.SetDeadline(time.Time{})
		switch resp.StatusCode {
		case http.StatusSwitchingProtocols:
			a.next = idx
			return &session{conn: conn, sentAt: map[uint64]time.Time{}, retimed: make(chan struct{}, 1)}, br, nil
		case http.StatusUnauthorized:
			conn.Close()
			return nil, nil, ErrAuth
		default:
			conn.Close()
			last = fmt.Errorf("%s: %s", addr, resp.Status)
		}
	}
	if last == nil {
		last = errors.New("no coordinator address")
	}
	return nil, nil, last
}

func (a *Agent) hello(sess *session) wire.Msg {
	addr := a.cfg.Advertise
	if addr == "" {
		addr, _, _ = net.SplitHostPort(sess.conn.LocalAddr().String())
	}
	m := wire.Msg{Type: wire.THello, Name: a.cfg.Name, Version: a.cfg.Version, NProc: a.cfg.NProc, Spare: a.cfg.Spare,
		Addr: addr, Instance: a.instance, FreePort: freePort()}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.job != "" && a.gen > 0 {
		cur := &wire.NodeState{Job: a.job, Gen: a.gen, Stopped: a.stopped, Step: a.step, Exited: append([]wire.Msg(nil), a.exited...)}
		for r := range a.running {
			cur.Running = append(cur.Running, r)
		}
		slices.Sort(cur.Running)
		m.Current = cur
	}
	return m
}

func (a *Agent) session(ctx context.Context, sess *session, br *bufio.Reader) error {
	sentHello := time.Now()
	if err := sess.send(a.hello(sess)); err != nil {
		return err
	}
	rd := wire.NewReader(br)
	sess.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	w, err := rd.Read()
	if err != nil {
		return err
	}
	if w.Type == wire.TReject {
		return rejected(w.Reason)
	}
	if w.Type != wire.TWelcome {
		return fmt.Errorf("protocol error: want welcome, got %s", w.Type)
	}
	lease, hb := time.Duration(w.LeaseMS)*time.Millisecond, time.Duration(w.HeartbeatMS)*time.Millisecond
	env := a.workerEnvFor(sess)
	a.mu.Lock()
	a.sess, a.lease, a.env = sess, lease, env
	a.until = sentHello.Add(lease)
	a.mu.Unlock()
	a.con.Printf("+ connected to the coordinator at %s as %s (lease %s)", sess.conn.RemoteAddr(), a.cfg.Name, lease)
	a.resendGPU(sess)

	sess.hb.Store(int64(hb))
	hbCtx, stop := context.WithCancel(ctx)
	defer stop()
	go a.heartbeats(hbCtx, sess)
	for {
		// A coordinator that acknowledges nothing for a few heartbeats is
		// dead, cut off, or deposed: reconnect, maybe to another one (a new
		// leader), while the lease still holds.
		sess.conn.SetReadDeadline(time.Now().Add(readTimeout(hb, lease)))
		m, err := rd.Read()
		if err != nil {
			return err
		}
		switch m.Type {
		case wire.TAck:
			if m.HeartbeatMS > 0 {
				// The coordinator's timing changed (it scales with the
				// number of agents). The new lease applies to this ack
				// on; an end already reached under a longer one stays
				// (the coordinator waits it out, see coordinator/timing.go).
				hb, lease = time.Duration(m.HeartbeatMS)*time.Millisecond, time.Duration(m.LeaseMS)*time.Millisecond
				a.mu.Lock()
				a.lease = lease
				a.mu.Unlock()
				if time.Duration(sess.hb.Swap(int64(hb))) != hb {
					select {
					case sess.retimed <- struct{}{}:
					default:
					}
				}
			}
			sess.mu.Lock()
			at, ok := sess.sentAt[m.Seq]
			for k := range sess.sentAt {
				if k <= m.Seq {
					delete(sess.sentAt, k)
				}
			}
			sess.mu.Unlock()
			if ok {
				a.mu.Lock()
				// The lease runs from when the heartbeat was sent: the
				// coordinator counts it from when it received it, later.
				if u := at.Add(lease); u.After(a.until) {
					a.until = u
				}
				a.mu.Unlock()
			}
		case wire.TStart:
			a.start(m)
		case wire.TStop:
			a.stop(m.Job, m.Gen, time.Duration(m.Grace)*time.Millisecond)
		case wire.TRegroup:
			a.regroup(m)
		case wire.TSpawn:
			a.spawn(m)
		case wire.TPrepare:
			a.mu.Lock()
			ag, err := a.jobAgent(m.Job, m.Spec, a.cfg.NProc)
			a.mu.Unlock()
			if err == nil {
				a.con.Printf("… standing by for job %s: pre-starting %d standby worker(s)", m.Job, a.cfg.NProc)
				ag.Prewarm()
			}
		case wire.TSignal:
			a.signal(m)
		case wire.TProbe:
			a.probe(m)
		case wire.TEnd:
			a.mu.Lock()
			mine := a.job == m.Job
			a.mu.Unlock()
			if mine {
				a.endJob()
			}
		case wire.TReject:
			return rejected(m.Reason)
		default:
			return fmt.Errorf("protocol error: unexpected %s", m.Type)
		}
	}
}

// readTimeout: how long the agent waits for any word from the coordinator
// before it reconnects: 6 heartbeats or a third of the lease, longer than
// the coordinator's own node timeout (a busy coordinator is not taken for
// a dead one first), but at most 70% of the lease, so that there is time to
// reach another coordinator (a new leader) before the workers are fenced.
func readTimeout(hb, lease time.Duration) time.Duration {
	return min(max(6*hb, lease/3), lease*7/10)
}

func (a *Agent) heartbeats(ctx context.Context, sess *session) {
	every := time.Duration(sess.hb.Load())
	t := time.NewTicker(every)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.retimed:
			every = time.Duration(sess.hb.Load())
			t.Reset(every)
			continue
		case <-t.C:
		}
		seq++
		sess.mu.Lock()
		sess.sentAt[seq] = time.Now()
		sess.mu.Unlock()
		// It says the interval it is on: the coordinator judges its silence by it.
		if err := sess.send(wire.Msg{Type: wire.THeartbeat, Seq: seq, FreePort: freePort(), HeartbeatMS: int(every / time.Millisecond)}); err != nil {
			sess.close()
			return
		}
	}
}

// fenceLoop kills this node's workers once its lease has run out: by then
// the coordinator may have handed their ranks to another node. It acts a
// little before the coordinator would (SIGKILL, no grace).
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.mu.Lock()
			margin := max(a.lease/10, 100*time.Millisecond)
			if a.ag != nil && a.gen > 0 && !a.stopped && !a.fenced && !a.until.IsZero() && now.After(a.until.Add(-margin)) {
				a.fenced = true
				ag, gen := a.ag, a.gen
				a.mu.Unlock()
				a.con.Printf("! no word from the coordinator for a lease (%s): stopping generation %d's workers (fencing)", a.lease, gen)
				ag.StopGeneration(gen, 0)
				continue
			}
			a.mu.Unlock()
		}
	}
}

// procLoop tells the coordinator which of this node's ranks are stopped
// (SIGSTOP, a tracer) whenever that set changes: a stopped process is a hang
// the coordinator cannot see otherwise before the job's first step (see
// policy.ProcState). Read from /proc every 100 ms, sent only on a change.
func (a *Agent) procLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var (
		last     []int // the set last sent for lastGen
		lastGen  int
		lastSess *session
		dirty    bool // a non-empty set was sent for lastGen: the coordinator may hold one
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		ag, job, gen, stopped, sess := a.ag, a.job, a.gen, a.stopped, a.sess
		a.mu.Unlock()
		if sess == nil {
			continue // between sessions
		}
		if ag == nil || gen == 0 || stopped {
			last, lastGen, dirty = nil, 0, false
			continue
		}
		if gen != lastGen {
			// The coordinator starts a generation with none stopped.
			last, lastGen, dirty = nil, gen, false
		}
		if sess != lastSess {
			// A new session: the coordinator may keep a set this node
			// sent before (a send lost with the old session, or a node
			// that reconnected): say it again.
			if dirty {
				last = []int{-1}
			}
			lastSess = sess
		}
		if st := ag.Stopped(gen); !slices.Equal(st, last) {
			a.sendNow(wire.Msg{Type: wire.TProcStopped, Job: job, Gen: gen, StoppedRanks: st})
			last, dirty = st, dirty || len(st) > 0
		}
	}
}

func (a *Agent) sendNow(m wire.Msg) {
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if s != nil {
		if err := s.send(m); err != nil {
			s.close()
		}
	}
}

// jobAgent returns the local agent of job, creating it (a.mu held). A job
// that is not the current one replaces it.
func (a *Agent) jobAgent(job string, sp *wire.Spec, slots int) (*launcher.Launcher, error) {
	if a.job != "" && a.job != job {
		old := a.ag
		a.ag, a.job, a.gen, a.spec, a.exited, a.stopped = nil, "", 0, nil, nil, false
		a.running = map[int]bool{}
		if old != nil {
			a.mu.Unlock()
			old.Close()
			a.mu.Lock()
		}
	}
	if a.ag != nil {
		return a.ag, nil
	}
	var re *regexp.Regexp
	if sp.ProgressRegex != "" {
		re = regexp.MustCompile(sp.ProgressRegex) // validated by wire
	}
	dir := filepath.Join(a.cfg.DataDir, "runs", sp.RunID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	wd := sp.Dir
	if wd != "" {
		if st, err := os.Stat(wd); err != nil || !st.IsDir() {
			wd = "" // not on this node: run where the agent runs
		}
	}
	ag, err := launcher.New(launcher.Config{Command: sp.Command, RunID: sp.RunID, RunDir: dir, MaxRestarts: sp.MaxRestarts,
		SDKDir: a.cfg.SDKDir, ProgressRegex: re, Standby: sp.Standby, StandbyCount: max(slots, 1),
		StopGrace: time.Duration(sp.StopGraceMS) * time.Millisecond, Console: a.con, Dir: wd, Live: sp.Live,
		Env: a.env})
	if err != nil {
		return nil, err
	}
	a.ag, a.job = ag, job
	go a.pump(ag, job)
	return ag, nil
}

func (a *Agent) failStart(m wire.Msg, rank int, err error) {
	a.con.Printf("! generation %d: %v", m.Gen, err)
	a.sendNow(wire.Msg{Type: wire.TExited, Job: m.Job, Gen: m.Gen, Rank: rank, Code: 127, Err: trim(err.Error()), AtMS: time.Now().UnixMilli()})
}

func (a *Agent) start(m wire.Msg) {
	sp := m.Spec
	a.mu.Lock()
	ag, err := a.jobAgent(m.Job, sp, len(sp.Ranks))
	if err != nil {
		a.mu.Unlock()
		a.failStart(m, sp.Ranks[0], err)
		return
	}
	a.hold(m.Gen, sp)
	a.mu.Unlock()
	a.con.Printf("▶ generation %d: ranks %v of %d · rendezvous %s:%d", m.Gen, sp.Ranks, sp.WorldSize, sp.MasterAddr, sp.MasterPort)
	go func() {
		a.gpuPreflight()
		err := ag.StartGeneration(launcher.GenerationSpec{Gen: m.Gen, RestartCount: sp.RestartCount, WorldSize: sp.WorldSize,
			Ranks: sp.Ranks, GroupRank: sp.GroupRank, GroupWorldSize: sp.GroupWorldSize, MasterAddr: sp.MasterAddr, MasterPort: sp.MasterPort})
		if err != nil {
			a.failStart(m, sp.Ranks[0], err)
		}
	}()
}

// hold records that this node now runs sp's ranks of generation gen (a.mu held).
func (a *Agent) hold(gen int, sp *wire.Spec) {
	a.gen, a.spec, a.stopped, a.fenced, a.exited = gen, sp, false, false, nil
	a.running = map[int]bool{}
	for _, r := range sp.Ranks {
		a.running[r] = true
	}
}

// spawn starts replacement processes (live mode) that wait to be admitted.
func (a *Agent) spawn(m wire.Msg) {
	a.mu.Lock()
	ag, err := a.jobAgent(m.Job, m.Spec, a.cfg.NProc)
	a.mu.Unlock()
	if err == nil {
		a.con.Printf("+ starting %d replacement worker(s) for job %s", m.Count, m.Job)
		err = ag.SpawnJoiners(m.Count)
	}
	if err != nil {
		a.con.Printf("! starting replacements: %v", err)
		for i := 0; i < m.Count; i++ {
			a.sendNow(wire.Msg{Type: wire.TJoinerLost, Job: m.Job})
		}
	}
}

// workerEnv: gloo binds to the address its host name resolves to, often
// 127.0.1.1, which other nodes cannot reach; point it at the interface this
// node uses to reach the coordinator (unless the user chose one).
func (a *Agent) workerEnvFor(s *session) map[string]string {
	host := a.cfg.Advertise
	if host == "" && s != nil {
		host, _, _ = net.SplitHostPort(s.conn.LocalAddr().String())
	}
	ip := net.ParseIP(host)
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok && ip != nil && n.IP.Equal(ip) && ifc.Flags&net.FlagLoopback == 0 {
				return map[string]string{"GLOO_SOCKET_IFNAME": ifc.Name}
			}
		}
	}
	return nil
}

// pump forwards the local agent's events to the coordinator, keeping the
// state a reconnecting session reports.
func (a *Agent) pump(ag *launcher.Launcher, job string) {
	for ev := range ag.Events() {
		var m wire.Msg
		a.mu.Lock()
		if a.ag != ag {
			a.mu.Unlock()
			return
		}
		switch e := ev.(type) {
		case launcher.Launched:
			m = wire.Msg{Type: wire.TLaunched, Job: job, Gen: e.Gen}
		case launcher.Exited:
			m = wire.Msg{Type: wire.TExited, Job: job, Gen: e.Gen, Rank: e.Rank, Code: e.Code, Sig: e.Signal, Err: trim(e.LastError), AtMS: e.At.UnixMilli(),
				Out: e.Output, NewOut: e.NewOutput}
			if e.Gen == a.gen {
				delete(a.running, e.Rank)
				if len(a.exited) < 1024 {
					a.exited = append(a.exited, m)
				}
			}
		case launcher.Progress:
			m = wire.Msg{Type: wire.TProgress, Job: job, Gen: e.Gen, Rank: e.Rank, Step: max(e.Step, 0)}
			if e.Gen == a.gen && e.Step > a.step {
				a.step = e.Step
			}
		case launcher.RendezvousReady:
			m = wire.Msg{Type: wire.TListening, Job: job, Gen: e.Gen}
			if !e.Listening {
				m.Err = "timeout"
			}
		case launcher.JoinerReady:
			m = wire.Msg{Type: wire.TJoinerReady, Job: job}
		case launcher.JoinerLost:
			m = wire.Msg{Type: wire.TJoinerLost, Job: job}
		case launcher.CollectiveFailed:
			m = wire.Msg{Type: wire.TCollectiveFailed, Job: job, Gen: e.Gen, Rank: max(e.Rank, 0), Err: trim(e.Detail)}
		case launcher.Work:
			if a.spec == nil || !a.spec.WorkReports || e.Wall < time.Microsecond {
				a.mu.Unlock()
				continue // the coordinator did not ask for them (it may predate them)
			}
			m = wire.Msg{Type: wire.TWork, Job: job, Gen: e.Gen, Rank: max(e.Rank, 0), Steps: e.Steps,
				WorkUS: e.Work.Microseconds(), WallUS: e.Wall.Microseconds()}
		case launcher.Stopped:
			m = wire.Msg{Type: wire.TStopped, Job: job, Gen: e.Gen}
			if e.Gen == a.gen {
				a.stopped = true
			}
		default:
			a.mu.Unlock()
			continue
		}
		a.mu.Unlock()
		if (m.Gen > 0 || m.Type == wire.TJoinerReady || m.Type == wire.TJoinerLost) && (m.Sig == "" || validSig(m.Sig)) {
			a.sendNow(m)
		}
	}
}

var sigRE = regexp.MustCompile(`^SIG[A-Z0-9]{2,8}$`)

func validSig(s string) bool { return sigRE.MatchString(s) }

func trim(s string) string {
	if len(s) > 4096 {
		return s[:4096]
	}
	return s
}

// regroup moves this node's survivors into the new generation in place
// (live recovery): no process is restarted.
func (a *Agent) regroup(m wire.Msg) {
	sp := m.Spec
	a.mu.Lock()
	ag := a.ag
	if ag == nil || a.job != m.Job {
		a.mu.Unlock()
		return
	}
	a.hold(m.Gen, sp)
	a.mu.Unlock()
	a.con.Printf("↻ regroup: generation %d · ranks %v of %d · rendezvous %s:%d", m.Gen, sp.Ranks, sp.WorldSize, sp.MasterAddr, sp.MasterPort)
	err := ag.Regroup(launcher.RegroupSpec{From: m.From, Gen: m.Gen, WorldSize: sp.WorldSize, Survivors: m.Survivors,
		Admit: len(m.AdmitRanks), AdmitRanks: m.AdmitRanks, Grow: m.Grow, AtStep: m.AtStep,
		Kill: m.Kill, MasterAddr: sp.MasterAddr, MasterPort: sp.MasterPort})
	if err != nil {
		a.con.Printf("! regroup to generation %d: %v", m.Gen, err)
		a.sendNow(wire.Msg{Type: wire.TExited, Job: m.Job, Gen: m.Gen, Rank: sp.Ranks[0], Code: 127, Err: err.Error(), AtMS: time.Now().UnixMilli()})
	}
}

func (a *Agent) stop(job string, gen int, grace time.Duration) {
	a.mu.Lock()
	ag := a.ag
	ok := a.job == job
	a.mu.Unlock()
	if ok && ag != nil {
		ag.StopGeneration(gen, grace)
	}
}

func (a *Agent) signal(m wire.Msg) {
	a.mu.Lock()
	ag := a.ag
	ok := a.job == m.Job
	a.mu.Unlock()
	sig := map[string]syscall.Signal{"SIGKILL": syscall.SIGKILL, "SIGSTOP": syscall.SIGSTOP, "SIGTERM": syscall.SIGTERM,
		"SIGINT": syscall.SIGINT, "SIGCONT": syscall.SIGCONT}[m.Sig]
	if ok && ag != nil && sig != 0 {
		ag.Signal(m.Gen, m.Rank, sig)
	}
}

// probe answers the coordinator's busy probe: which of this node's ranks of
// the generation use CPU (a sample of about 200 ms, on its own goroutine:
// the session's reader must not wait for it). A stopped rank is named
// instead: it is the hang, whatever the others do. For a job or generation
// this node does not run, the answer names no rank.
func (a *Agent) probe(m wire.Msg) {
	a.mu.Lock()
	ag := a.ag
	if a.job != m.Job || a.gen != m.Gen || a.stopped {
		ag = nil
	}
	a.mu.Unlock()
	go func() {
		r := wire.Msg{Type: wire.TBusy, Job: m.Job, Gen: m.Gen}
		if ag != nil {
			if r.StoppedRanks = ag.Stopped(m.Gen); len(r.StoppedRanks) == 0 {
				r.BusyRanks = ag.Busy(m.Gen)
			}
		}
		a.sendNow(r)
	}()
}

// endJob stops every worker of the job and forgets it.
func (a *Agent) endJob() {
	a.mu.Lock()
	ag := a.ag
	a.ag, a.job, a.gen, a.spec, a.exited, a.stopped = nil, "", 0, nil, nil, false
	a.running = map[int]bool{}
	a.mu.Unlock()
	if ag != nil {
		ag.Close()
	}
}

// freePort is a port free on this node now, offered for the next rendezvous.
func freePort() int {
	p, err := ports.Free("")
	if err != nil {
		return 0
	}
	return p
}
