package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// A simulated agent: one real TCP connection speaking the wire protocol.
// Its reads run in one goroutine per connection; its heartbeats are sent by
// a few shard goroutines (one ticker per shard, phases spread over the
// interval), so 10,000 agents cost 10,000 goroutines plus a hundred.
type simAgent struct {
	id   int
	name string
	src  string // loopback source address

	wmu  sync.Mutex
	conn net.Conn      // current session (wmu)
	done chan struct{} // closed when the current session's reader returns

	alive    atomic.Bool // a session is up (welcome received, no EOF yet)
	silent   atomic.Bool // a hung host: no heartbeat, no answer
	closing  atomic.Bool // we are closing it on purpose
	seq      atomic.Uint64
	sentSeq  atomic.Uint64
	lastHB   atomic.Int64 // unix ns the last heartbeat was written
	lastRecv atomic.Int64 // unix ns the last message arrived
	// unix ns the first start (of any generation) arrived
	firstStart atomic.Int64
	instance   int
}

type arrival struct {
	id int32
	at int64 // unix ns
}

// recorder keeps the arrival time of every start and stop, by generation.
// It is sharded by agent: 10,000 readers recording through one lock would
// queue on it, and the simulator's own queue would be measured as the
// coordinator's latency.
type recorder struct{ shards [64]recShard }

type recShard struct {
	mu     sync.Mutex
	starts map[int][]arrival
	stops  map[int][]arrival
}

func (r *recorder) add(start bool, gen, id int, at int64) {
	sh := &r.shards[id%len(r.shards)]
	sh.mu.Lock()
	if sh.starts == nil {
		sh.starts, sh.stops = map[int][]arrival{}, map[int][]arrival{}
	}
	if start {
		sh.starts[gen] = append(sh.starts[gen], arrival{int32(id), at})
	} else {
		sh.stops[gen] = append(sh.stops[gen], arrival{int32(id), at})
	}
	sh.mu.Unlock()
}

// each calls fn with every shard's map of starts (or stops), shard locked.
func (r *recorder) each(start bool, fn func(map[int][]arrival)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		m := sh.stops
		if start {
			m = sh.starts
		}
		fn(m)
		sh.mu.Unlock()
	}
}

func (r *recorder) get(start bool, gen int) []arrival {
	var out []arrival
	r.each(start, func(m map[int][]arrival) { out = append(out, m[gen]...) })
	return out
}

func (r *recorder) count(start bool, gen int) int {
	n := 0
	r.each(start, func(m map[int][]arrival) { n += len(m[gen]) })
	return n
}

func (r *recorder) maxStartGen() int {
	g := 0
	r.each(true, func(m map[int][]arrival) {
		for k := range m {
			g = max(g, k)
		}
	})
	return g
}

type sim struct {
	addr   string
	token  string
	shards int

	agents []*simAgent
	rec    recorder

	hbOnce     sync.Once
	hbInterval atomic.Int64 // ns: the interval the coordinator gave last (welcome or ack)
	leaseMS    atomic.Int64
	retimes    atomic.Int64 // acks that changed the timing
	reconnects atomic.Int64 // sessions the coordinator ended, reconnected as a real agent does

	hbSent       atomic.Uint64
	acks         atomic.Uint64
	unexpected   atomic.Int64 // sessions that ended without us asking
	rejects      atomic.Int64
	dialRetries  atomic.Int64
	firstErrOnce sync.Once
	firstErr     atomic.Value

	// ack round trips and gaps between messages, recorded while measuring
	recording atomic.Bool
	rttMu     sync.Mutex
	rtts      []int32 // µs
	maxGapNS  atomic.Int64
	longGaps  atomic.Int64 // gaps over the real agent's read deadline
	gapLimit  atomic.Int64 // ns: the real agent's read deadline

	// the simulator's own health: how late heartbeat ticks fire, how long a
	// shard takes to write its heartbeats, how late a 10 ms sleep wakes
	maxTickLate atomic.Int64
	maxPass     atomic.Int64
	maxOversl   atomic.Int64
	maxSendGap  atomic.Int64 // between two heartbeats of one agent
}

func casMax(v *atomic.Int64, x int64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}

func (s *sim) noteLate(d time.Duration) { casMax(&s.maxTickLate, int64(d)) }
func (s *sim) notePass(d time.Duration) { casMax(&s.maxPass, int64(d)) }

// probe measures this process's scheduling delay.
func (s *sim) probe() {
	for {
		t := time.Now()
		time.Sleep(10 * time.Millisecond)
		casMax(&s.maxOversl, int64(time.Since(t)-10*time.Millisecond))
	}
}

func newSim(addr, token string, n, nsrc, shards int) *sim {
	s := &sim{addr: addr, token: token, shards: shards}
	for i := range n {
		src := fmt.Sprintf("127.0.0.%d", 2+i%max(nsrc, 1))
		if nsrc <= 0 {
			src = "127.0.0.1"
		}
		s.agents = append(s.agents, &simAgent{id: i, name: fmt.Sprintf("sim-%05d", i), src: src})
	}
	return s
}

func (s *sim) noteErr(err error) {
	s.firstErrOnce.Do(func() { s.firstErr.Store(err.Error()) })
}

func (a *simAgent) send(m wire.Msg) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	t0 := time.Now()
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if a.conn == nil {
		return net.ErrClosed
	}
	t1 := time.Now()
	_, err = a.conn.Write(b)
	if d := time.Since(t1); d > slowSend {
		slowLog("%s: writing %s took %s (waited %s for the write lock)", a.name, m.Type, d.Round(time.Millisecond), t1.Sub(t0).Round(time.Millisecond))
	} else if w := t1.Sub(t0); w > slowSend {
		slowLog("%s: waited %s for the write lock (%s)", a.name, w.Round(time.Millisecond), m.Type)
	}
	return err
}

const slowSend = 300 * time.Millisecond

var slowN atomic.Int64

// slowLog reports the first few slow writes (debugging the simulator).
func slowLog(format string, args ...any) {
	if slowN.Add(1) <= 20 {
		fmt.Fprintf(os.Stderr, "%s slow: "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}

// connect opens a session: POST /v1/agent upgraded, hello, welcome. It
// returns once the welcome is in; the reader then runs on its own.
func (s *sim) connect(a *simAgent) error {
	var err error
	for try := range 8 {
		if try > 0 {
			s.dialRetries.Add(1)
			time.Sleep(time.Duration(50<<min(try, 5)) * time.Millisecond)
		}
		if err = s.connectOnce(a); err == nil {
			return nil
		}
		var rej rejectErr
		if errors.As(err, &rej) {
			return err
		}
	}
	return err
}

type rejectErr string

func (r rejectErr) Error() string { return "rejected: " + string(r) }

func (s *sim) connectOnce(a *simAgent) error {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	if a.src != "127.0.0.1" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(a.src)}
	}
	conn, err := d.Dial("tcp", s.addr)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	req, _ := http.NewRequest("POST", "http://"+s.addr+"/v1/agent", nil)
	req.Header.Set("Upgrade", wire.Protocol)
	req.Header.Set("Connection", "Upgrade")
	auth.SetBearer(req.Header, s.token)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return fmt.Errorf("upgrade: %s", resp.Status)
	}
	a.instance++
	hello := wire.Msg{Type: wire.THello, Name: a.name, Version: "scale-sim", NProc: 1, Addr: a.src,
		Instance: fmt.Sprintf("sim%d-%d", a.id, a.instance), FreePort: 20000 + a.id%20000}
	b, err := wire.Encode(hello)
	if err != nil {
		conn.Close()
		return err
	}
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return err
	}
	rd := wire.NewReader(br)
	w, err := rd.Read()
	if err != nil {
		conn.Close()
		return fmt.Errorf("waiting for welcome: %w", err)
	}
	if w.Type == wire.TReject {
		conn.Close()
		s.rejects.Add(1)
		return rejectErr(w.Reason)
	}
	if w.Type != wire.TWelcome {
		conn.Close()
		return fmt.Errorf("want welcome, got %s", w.Type)
	}
	conn.SetDeadline(time.Time{})
	s.setTiming(w.HeartbeatMS, w.LeaseMS)
	s.hbOnce.Do(s.startHeartbeats)
	done := make(chan struct{})
	a.wmu.Lock()
	a.conn, a.done = conn, done
	a.wmu.Unlock()
	a.closing.Store(false)
	a.silent.Store(false)
	a.lastHB.Store(0) // a new session: no gap to count from the old one
	a.lastRecv.Store(time.Now().UnixNano())
	a.alive.Store(true)
	go s.readLoop(a, conn, rd, done)
	return nil
}

// setTiming follows the coordinator's timing (welcome, or an ack that
// changes it): every simulated agent heartbeats at the newest interval.
func (s *sim) setTiming(hbMS, leaseMS int) {
	hb := time.Duration(hbMS) * time.Millisecond
	lease := time.Duration(leaseMS) * time.Millisecond
	if s.hbInterval.Swap(int64(hb)) != int64(hb) || s.leaseMS.Swap(int64(leaseMS)) != int64(leaseMS) {
		// The real agent's read deadline (agent.readTimeout).
		s.gapLimit.Store(int64(min(max(6*hb, lease/3), lease*7/10)))
	}
}

func (s *sim) readLoop(a *simAgent, conn net.Conn, rd *wire.Reader, done chan struct{}) {
	defer close(done)
	for {
		m, err := rd.Read()
		now := time.Now().UnixNano()
		if err != nil {
			a.alive.Store(false)
			conn.Close()
			if !a.closing.Load() && !a.silent.Load() {
				// The coordinator ended it: a real agent reconnects.
				s.unexpected.Add(1)
				s.noteErr(fmt.Errorf("%s: session ended: %v", a.name, err))
				go func() {
					time.Sleep(100 * time.Millisecond)
					if a.closing.Load() || a.silent.Load() {
						return
					}
					if err := s.connect(a); err == nil {
						s.reconnects.Add(1)
					}
				}()
			}
			return
		}
		if s.recording.Load() {
			gap := now - a.lastRecv.Load()
			casMax(&s.maxGapNS, gap)
			if gap > s.gapLimit.Load() {
				s.longGaps.Add(1)
			}
		}
		a.lastRecv.Store(now)
		switch m.Type {
		case wire.TAck:
			s.acks.Add(1)
			if m.HeartbeatMS > 0 {
				s.retimes.Add(1)
				s.setTiming(m.HeartbeatMS, m.LeaseMS)
			}
			if s.recording.Load() && m.Seq == a.sentSeq.Load() {
				rtt := (now - a.lastHB.Load()) / 1000
				s.rttMu.Lock()
				s.rtts = append(s.rtts, int32(min(rtt, 1<<31-1)))
				s.rttMu.Unlock()
			}
		case wire.TStart:
			a.firstStart.CompareAndSwap(0, now)
			if !a.silent.Load() {
				// Workers "started" at once: the agents are simulated.
				if err := a.send(wire.Msg{Type: wire.TLaunched, Job: m.Job, Gen: m.Gen}); err != nil {
					s.noteErr(err)
				}
				// As a real agent does when its rank 0's store listens: the
				// coordinator holds the other nodes' starts (up to 1 s) until then.
				if m.Spec != nil && m.Spec.GroupWorldSize > 1 && slices.Contains(m.Spec.Ranks, 0) {
					if err := a.send(wire.Msg{Type: wire.TListening, Job: m.Job, Gen: m.Gen}); err != nil {
						s.noteErr(err)
					}
				}
			}
			// Recorded after the answer, as a real agent answers first.
			s.rec.add(true, m.Gen, a.id, now)
		case wire.TStop:
			if !a.silent.Load() {
				if err := a.send(wire.Msg{Type: wire.TStopped, Job: m.Job, Gen: m.Gen}); err != nil {
					s.noteErr(err)
				}
			}
			s.rec.add(false, m.Gen, a.id, now)
		case wire.TReject:
			s.rejects.Add(1)
			s.noteErr(fmt.Errorf("%s: rejected: %s", a.name, m.Reason))
		case wire.TEnd, wire.TSignal:
		}
	}
}

// startHeartbeats runs the shard goroutines: shard k heartbeats its agents
// in turn every interval (the newest the coordinator gave), its phase
// k/shards of the interval.
func (s *sim) startHeartbeats() {
	for k := range s.shards {
		go func(k int) {
			hb := time.Duration(s.hbInterval.Load())
			tick := time.Now().Add(hb * time.Duration(k) / time.Duration(s.shards))
			for {
				time.Sleep(time.Until(tick))
				start := time.Now()
				s.noteLate(start.Sub(tick))
				hb := time.Duration(s.hbInterval.Load())
				tick = tick.Add(hb)
				if tick.Before(start) {
					tick = start.Add(hb) // fell behind: no burst to catch up
				}
				for i := k; i < len(s.agents); i += s.shards {
					a := s.agents[i]
					if !a.alive.Load() || a.silent.Load() {
						continue
					}
					seq := a.seq.Add(1)
					now := time.Now().UnixNano()
					if prev := a.lastHB.Load(); prev > 0 && s.recording.Load() {
						casMax(&s.maxSendGap, now-prev)
					}
					a.lastHB.Store(now)
					a.sentSeq.Store(seq)
					if err := a.send(wire.Msg{Type: wire.THeartbeat, Seq: seq, FreePort: 20000 + (a.id+int(seq))%20000, HeartbeatMS: int(hb / time.Millisecond)}); err == nil {
						s.hbSent.Add(1)
					}
				}
				s.notePass(time.Since(start))
			}
		}(k)
	}
}

// kill closes a's connection now (the agent process died).
func (a *simAgent) kill() {
	a.closing.Store(true)
	a.wmu.Lock()
	c := a.conn
	a.wmu.Unlock()
	c.Close()
}

// waitGone waits for a's reader to return.
func (a *simAgent) waitGone(d time.Duration) bool {
	a.wmu.Lock()
	done := a.done
	a.wmu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (s *sim) aliveCount() int {
	n := 0
	for _, a := range s.agents {
		if a.alive.Load() {
			n++
		}
	}
	return n
}

// startRecording resets the ack and gap statistics.
func (s *sim) startRecording() {
	s.rttMu.Lock()
	s.rtts = s.rtts[:0]
	s.rttMu.Unlock()
	s.maxGapNS.Store(0)
	s.longGaps.Store(0)
	s.maxTickLate.Store(0)
	s.maxPass.Store(0)
	s.maxOversl.Store(0)
	s.maxSendGap.Store(0)
	now := time.Now().UnixNano()
	for _, a := range s.agents {
		a.lastRecv.Store(now)
	}
	s.recording.Store(true)
}

type ackStats struct {
	Count      int     `json:"count"`
	P50MS      float64 `json:"p50_ms"`
	P99MS      float64 `json:"p99_ms"`
	P999MS     float64 `json:"p999_ms"`
	MaxMS      float64 `json:"max_ms"`
	MaxGapMS   float64 `json:"max_gap_between_messages_ms"`
	GapLimitMS float64 `json:"real_agent_read_deadline_ms"`
	LongGaps   int64   `json:"gaps_over_read_deadline"`
	// The simulator's own delays (if these are large, so are the above).
	SimMaxTickLateMS float64 `json:"sim_max_heartbeat_tick_late_ms"`
	SimMaxPassMS     float64 `json:"sim_max_heartbeat_shard_pass_ms"`
	SimMaxOversleep  float64 `json:"sim_max_10ms_sleep_oversleep_ms"`
	SimMaxSendGapMS  float64 `json:"sim_max_gap_between_heartbeats_sent_ms"`
}

func (s *sim) stopRecording() ackStats {
	s.recording.Store(false)
	s.rttMu.Lock()
	r := append([]int32(nil), s.rtts...)
	s.rttMu.Unlock()
	sort.Slice(r, func(i, j int) bool { return r[i] < r[j] })
	st := ackStats{Count: len(r), MaxGapMS: float64(s.maxGapNS.Load()) / 1e6, GapLimitMS: float64(s.gapLimit.Load()) / 1e6, LongGaps: s.longGaps.Load(),
		SimMaxTickLateMS: float64(s.maxTickLate.Load()) / 1e6, SimMaxPassMS: float64(s.maxPass.Load()) / 1e6, SimMaxOversleep: float64(s.maxOversl.Load()) / 1e6,
		SimMaxSendGapMS: float64(s.maxSendGap.Load()) / 1e6}
	if len(r) > 0 {
		q := func(p float64) float64 { return float64(r[rankIndex(len(r), p)]) / 1000 }
		st.P50MS, st.P99MS, st.P999MS, st.MaxMS = q(0.5), q(0.99), q(0.999), float64(r[len(r)-1])/1000
	}
	return st
}

// rankIndex is the nearest-rank percentile's index.
func rankIndex(n int, p float64) int {
	i := int(float64(n)*p+0.999999) - 1
	return min(max(i, 0), n-1)
}
