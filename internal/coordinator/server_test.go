package coordinator_test

// Unit tests of the coordinator's protocol logic: a real coordinator.Server on
// an in-memory store, served on loopback, driven by scripted agents that
// speak internal/wire over a real TCP connection (see fakeAgent). Timings
// are short (heartbeat 20 ms, node timeout 150 ms, lease 400 ms) so that
// fencing and failure detection can be measured in well under a second.
//
// Tests whose failure would crash the coordinator run it in a child process
// (inChild), so that the crash fails one test, not the run.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/wire"
)

const (
	testToken = "test-join-token-0123456789abcdef"
	wrongTok  = "wrong-join-token-0123456789abcdef"

	// Silence is judged against tNodeTimeout, so it must exceed the worst
	// scheduling delay of a heartbeat goroutine under -race on a busy
	// 2-core machine (150 ms did not: nodes were dropped as silent).
	tHeartbeat   = 20 * time.Millisecond
	tNodeTimeout = 600 * time.Millisecond
	tLease       = 1200 * time.Millisecond

	// wait is how long a test waits for something that should happen
	// promptly (generous: -race on a loaded 2-core machine).
	wait = 5 * time.Second
)

// ---- the coordinator ----

// syncBuf is the coordinator's console, read by tests.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// coord is a coordinator.Server served on loopback.
type coord struct {
	t       testing.TB
	st      store.Store
	dataDir string
	srv     *coordinator.Server
	hs      *httptest.Server
	addr    string // host:port
	log     *syncBuf
	httpLog *syncBuf // net/http's error log
	once    sync.Once
}

type cfgFunc func(*coordinator.Config)

func newCoord(t testing.TB, mods ...cfgFunc) *coord {
	t.Helper()
	return startCoord(t, store.NewMemory(), t.TempDir(), mods...)
}

// startCoord starts a coordinator on st (a restart when st holds state).
func startCoord(t testing.TB, st store.Store, dataDir string, mods ...cfgFunc) *coord {
	t.Helper()
	log := &syncBuf{}
	cfg := coordinator.Config{Token: testToken, Store: st, DataDir: dataDir, Heartbeat: tHeartbeat,
		NodeTimeout: tNodeTimeout, Lease: tLease, Console: console.New(log), Version: "test"}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := coordinator.New(cfg)
	if err != nil {
		t.Fatalf("coordinator.New: %v", err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	// net/http recovers a panic in a handler (an agent session): it must
	// still fail the test.
	httpLog := &syncBuf{}
	hs.Config.ErrorLog = stdlog.New(httpLog, "", 0)
	hs.Start()
	c := &coord{t: t, st: st, dataDir: dataDir, srv: srv, hs: hs, addr: hs.Listener.Addr().String(), log: log, httpLog: httpLog}
	t.Cleanup(func() {
		c.close()
		if strings.Contains(httpLog.String(), "panic") {
			t.Errorf("the coordinator panicked serving a request:\n%s", firstLines(httpLog.String(), 20))
		}
		if t.Failed() {
			t.Logf("coordinator %s console:\n%s", c.addr, log.String())
		}
	})
	return c
}

// close ends the coordinator's job, if it still runs, then stops the
// coordinator: Server.Close never returns while a job runs (see
// TestCloseWithRunningJob), so the test's cleanup cancels it first.
func (c *coord) close() {
	c.once.Do(func() {
		if st := c.srv.Status(); st.Job != nil && st.Job.State != "done" {
			req, _ := http.NewRequest("POST", c.hs.URL+"/v1/jobs/current/cancel", nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			if resp, err := (&http.Client{Timeout: wait}).Do(req); err == nil {
				resp.Body.Close()
			}
			for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if st := c.srv.Status(); st.Job.State == "done" {
					break
				}
			}
		}
		c.closeServer(wait)
		c.hs.Close()
	})
}

// closeServer calls Server.Close and reports whether it returned in time.
func (c *coord) closeServer(within time.Duration) bool {
	done := make(chan struct{})
	go func() { c.srv.Close(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(within):
		c.t.Errorf("Server.Close did not return within %s", within)
		return false
	}
}

// request sends one HTTP request; token "" sends no Authorization.
func (c *coord) request(method, path, token string, body io.Reader) (int, http.Header, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.hs.URL+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	cl := &http.Client{Timeout: wait}
	resp, err := cl.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// status is GET /v1/status over HTTP.
func (c *coord) status() coordinator.Status {
	c.t.Helper()
	code, _, b := c.request("GET", "/v1/status", "", nil)
	if code != 200 {
		c.t.Fatalf("GET /v1/status: %d %s", code, b)
	}
	var st coordinator.Status
	if err := json.Unmarshal(b, &st); err != nil {
		c.t.Fatalf("GET /v1/status: %v in %s", err, b)
	}
	return st
}

func (c *coord) submit(sp coordinator.JobSpec) {
	c.t.Helper()
	b, _ := json.Marshal(sp)
	code, _, body := c.request("POST", "/v1/jobs", testToken, bytes.NewReader(b))
	if code != http.StatusCreated {
		c.t.Fatalf("submit %s: %d %s", sp.ID, code, body)
	}
}

// waitStatus polls Status until ok, or fails the test.
func (c *coord) waitStatus(what string, ok func(coordinator.Status) bool) coordinator.Status {
	c.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		st := c.srv.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(st)
			c.t.Fatalf("waiting for %s: status %s", what, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nodeOf(st coordinator.Status, name string) (coordinator.NodeStatus, bool) {
	for _, n := range st.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return coordinator.NodeStatus{}, false
}

func nodeState(name, state string) func(coordinator.Status) bool {
	return func(st coordinator.Status) bool {
		n, ok := nodeOf(st, name)
		return ok && n.State == state
	}
}

func jobIs(gen int, state string) func(coordinator.Status) bool {
	return func(st coordinator.Status) bool { return st.Job != nil && st.Job.Gen == gen && st.Job.State == state }
}

func spec(id string, nmin, nmax int) coordinator.JobSpec {
	return coordinator.JobSpec{ID: id, Command: []string{"python", "train.py", "--lr", "0.1"}, NNodesMin: nmin, NNodesMax: nmax,
		NProcPerNode: 1, MaxRestarts: 5, HangTimeoutMS: 60000}
}

// ---- scripted agents ----

type recv struct {
	m  wire.Msg
	at time.Time
}

// fakeAgent is an agent session scripted by the test: a real connection
// upgraded on POST /v1/agent, JSON lines both ways. Everything the
// coordinator sends is kept with its arrival time.
type fakeAgent struct {
	t    testing.TB
	name string
	conn net.Conn

	wmu sync.Mutex // one writer at a time

	mu      sync.Mutex
	got     []recv
	ended   bool // the coordinator closed the connection (or it failed)
	readErr error
	changed chan struct{} // closed and replaced on every change

	seq      atomic.Uint64
	port     atomic.Int64 // free_port in heartbeats
	lastSent atomic.Int64 // unix ns of the last message written
	mute     atomic.Bool  // do not report rank 0's store listening
	closing  atomic.Bool  // the test closed the connection: replies may fail
	hbStop   chan struct{}
	hbDone   chan struct{}
}

// upgrade opens a connection and asks for an agent session. It returns the
// response of a refused upgrade (conn is then closed).
func upgrade(t testing.TB, addr, token string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/agent", nil)
	req.Header.Set("Upgrade", wire.Protocol)
	req.Header.Set("Connection", "Upgrade")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	conn.SetDeadline(time.Now().Add(wait))
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		b, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return nil, nil, resp
	}
	if got := resp.Header.Get("Upgrade"); got != wire.Protocol {
		t.Fatalf("101 with Upgrade %q", got)
	}
	return conn, br, resp
}

// openSession upgrades a connection and starts reading from it; nothing is
// sent yet.
func openSession(t testing.TB, c *coord, name string) *fakeAgent {
	t.Helper()
	conn, br, resp := upgrade(t, c.addr, testToken)
	if conn == nil {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade refused: %s %s", resp.Status, b)
	}
	a := &fakeAgent{t: t, name: name, conn: conn, changed: make(chan struct{})}
	go a.reader(br)
	t.Cleanup(a.close)
	return a
}

func (a *fakeAgent) reader(br *bufio.Reader) {
	rd := wire.NewReader(br)
	for {
		m, err := rd.Read()
		a.mu.Lock()
		if err != nil {
			a.ended, a.readErr = true, err
		} else {
			a.got = append(a.got, recv{m: m, at: time.Now()})
		}
		close(a.changed)
		a.changed = make(chan struct{})
		a.mu.Unlock()
		if err != nil {
			return
		}
		// As a real agent does: the node holding rank 0 says when its store
		// listens, which releases the other nodes' starts.
		// The reply races with the test's end: a start read just before
		// the test closes the connection may find it closed, which is no
		// failure of the coordinator.
		if m.Type == wire.TStart && m.Spec.GroupWorldSize > 1 && slices.Contains(m.Spec.Ranks, 0) && !a.mute.Load() {
			b, _ := wire.Encode(wire.Msg{Type: wire.TListening, Job: m.Job, Gen: m.Gen})
			if err := a.sendRaw(b); err != nil && !a.closing.Load() {
				a.t.Errorf("agent %s: sending listening: %v", a.name, err)
			}
		}
	}
}

func (a *fakeAgent) close() {
	a.closing.Store(true)
	a.stopHeartbeats()
	a.conn.Close()
}

func (a *fakeAgent) sendRaw(b []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.lastSent.Store(time.Now().UnixNano())
	a.conn.SetWriteDeadline(time.Now().Add(wait))
	_, err := a.conn.Write(b)
	return err
}

func (a *fakeAgent) send(m wire.Msg) {
	a.t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		a.t.Fatalf("agent %s: encoding %+v: %v", a.name, m, err)
	}
	if err := a.sendRaw(b); err != nil {
		a.t.Fatalf("agent %s: sending %s: %v", a.name, m.Type, err)
	}
}

// sendHeartbeat sends one heartbeat and returns its seq.
func (a *fakeAgent) sendHeartbeat() (uint64, error) {
	seq := a.seq.Add(1)
	b, _ := wire.Encode(wire.Msg{Type: wire.THeartbeat, Seq: seq, FreePort: int(a.port.Load())})
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.lastSent.Store(time.Now().UnixNano())
	a.conn.SetWriteDeadline(time.Now().Add(wait))
	_, err := a.conn.Write(b)
	return seq, err
}

func (a *fakeAgent) startHeartbeats(every time.Duration) {
	a.hbStop, a.hbDone = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if _, err := a.sendHeartbeat(); err != nil {
					return
				}
			}
		}
	}(a.hbStop, a.hbDone)
}

// stopHeartbeats silences the agent (its connection stays open) and
// returns when it last wrote a message (the coordinator's lastHeard is at
// or after it, and the agent's own lease, renewed by acknowledged
// heartbeats, ends no later than it + the lease).
func (a *fakeAgent) stopHeartbeats() time.Time {
	if a.hbStop != nil {
		close(a.hbStop)
		<-a.hbDone
		a.hbStop = nil
	}
	return time.Unix(0, a.lastSent.Load())
}

// waitAcked waits until the coordinator has acknowledged n heartbeats.
func (a *fakeAgent) waitAcked(n uint64) {
	a.t.Helper()
	a.waitFor(fmt.Sprintf("ack %d", n), func(m wire.Msg) bool { return m.Type == wire.TAck && m.Seq >= n })
}

func (a *fakeAgent) snapshot() ([]recv, bool, error, chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got), a.ended, a.readErr, a.changed
}

func (a *fakeAgent) dump() string {
	got, ended, err, _ := a.snapshot()
	var sb strings.Builder
	for _, r := range got {
		if r.m.Type == wire.TAck {
			continue
		}
		b, _ := json.Marshal(r.m)
		fmt.Fprintf(&sb, "\n  %s %s", r.at.Format("15:04:05.000"), b)
	}
	if ended {
		fmt.Fprintf(&sb, "\n  (ended: %v)", err)
	}
	return sb.String()
}

// waitFor returns the first message received that matches, waiting for it.
func (a *fakeAgent) waitFor(what string, match func(wire.Msg) bool) recv {
	a.t.Helper()
	deadline := time.After(wait)
	for {
		got, ended, _, changed := a.snapshot()
		for _, r := range got {
			if match(r.m) {
				return r
			}
		}
		if ended {
			a.t.Fatalf("agent %s: connection ended waiting for %s; received:%s", a.name, what, a.dump())
		}
		select {
		case <-changed:
		case <-deadline:
			a.t.Fatalf("agent %s: no %s within %s; received:%s", a.name, what, wait, a.dump())
		}
	}
}

// find returns the messages received that match.
func (a *fakeAgent) find(match func(wire.Msg) bool) []recv {
	got, _, _, _ := a.snapshot()
	var out []recv
	for _, r := range got {
		if match(r.m) {
			out = append(out, r)
		}
	}
	return out
}

// waitEnded waits for the coordinator to close the connection.
func (a *fakeAgent) waitEnded(within time.Duration) bool {
	deadline := time.After(within)
	for {
		_, ended, _, changed := a.snapshot()
		if ended {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

func isType(t string) func(wire.Msg) bool { return func(m wire.Msg) bool { return m.Type == t } }

func isGen(t string, job string, gen int) func(wire.Msg) bool {
	return func(m wire.Msg) bool { return m.Type == t && m.Job == job && m.Gen == gen }
}

type agentOpts struct {
	instance string
	addr     string
	nproc    int
	spare    bool
	port     int // free_port in hello and heartbeats
	current  *wire.NodeState
	silent   bool // no heartbeats
}

// connect opens a session, says hello and waits for the welcome.
func connect(t testing.TB, c *coord, name string, o agentOpts) *fakeAgent {
	t.Helper()
	if o.instance == "" {
		o.instance = name + "-instance-1"
	}
	if o.addr == "" {
		o.addr = "192.0.2.10"
	}
	if o.nproc == 0 {
		o.nproc = 1
	}
	a := openSession(t, c, name)
	a.port.Store(int64(o.port))
	a.send(wire.Msg{Type: wire.THello, Name: name, Version: "test", NProc: o.nproc, Spare: o.spare, Addr: o.addr,
		Instance: o.instance, FreePort: o.port, Current: o.current})
	w := a.waitFor("welcome", func(m wire.Msg) bool { return m.Type == wire.TWelcome || m.Type == wire.TReject })
	if w.m.Type != wire.TWelcome {
		t.Fatalf("agent %s: hello answered with %+v", name, w.m)
	}
	if !o.silent {
		a.startHeartbeats(tHeartbeat)
	}
	return a
}

// ---- 1. auth ----

func TestAuth(t *testing.T) {
	c := newCoord(t)
	a := connect(t, c, "a", agentOpts{port: 31001})
	c.submit(spec("job1", 1, 1))
	a.waitFor("start", isType(wire.TStart))

	submit, _ := json.Marshal(spec("job2", 1, 1))
	const unauthorized = `{"error":"missing or wrong join token"}` + "\n"
	for _, tt := range []struct {
		method, path, token string
		body                []byte
	}{
		{"POST", "/v1/agent", "", nil},
		{"POST", "/v1/agent", wrongTok, nil},
		{"POST", "/v1/agent", testToken[:len(testToken)-1], nil},
		{"POST", "/v1/jobs", "", submit},
		{"POST", "/v1/jobs", wrongTok, submit},
		{"POST", "/v1/jobs/job1/cancel", "", nil},
		{"POST", "/v1/jobs/job1/cancel", wrongTok, nil},
		{"POST", "/v1/jobs/current/cancel", wrongTok, nil},
		{"POST", "/v1/nodes/a/release", "", nil},
		{"POST", "/v1/nodes/a/release", wrongTok, nil},
	} {
		name := tt.method + " " + tt.path + " token=" + map[string]string{"": "none", wrongTok: "wrong"}[tt.token]
		if strings.HasPrefix(testToken, tt.token) && tt.token != "" {
			name += "truncated"
		}
		t.Run(name, func(t *testing.T) {
			code, h, body := c.request(tt.method, tt.path, tt.token, bytes.NewReader(tt.body))
			if code != http.StatusUnauthorized || string(body) != unauthorized {
				t.Fatalf("got %d %q, want 401 %q", code, body, unauthorized)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
	t.Run("agent upgrade with a wrong token", func(t *testing.T) {
		for _, tok := range []string{"", wrongTok} {
			conn, _, resp := upgrade(t, c.addr, tok)
			if conn != nil {
				conn.Close()
				t.Fatalf("token %q: upgraded", tok)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 401 || string(b) != unauthorized {
				t.Fatalf("token %q: %s %q", tok, resp.Status, b)
			}
		}
	})
	t.Run("agent without Upgrade", func(t *testing.T) {
		code, _, body := c.request("POST", "/v1/agent", testToken, nil)
		if code != 400 || !strings.Contains(string(body), "want Upgrade: "+wire.Protocol) {
			t.Fatalf("got %d %s", code, body)
		}
	})

	// Nothing was done by the refused calls.
	st := c.status()
	if st.Job == nil || st.Job.ID != "job1" || st.Job.State == "done" {
		t.Fatalf("job after refused calls: %+v", st.Job)
	}
	if a.find(isType(wire.TStop)) != nil || a.find(isType(wire.TEnd)) != nil {
		t.Fatalf("a refused cancel reached the agent:%s", a.dump())
	}

	// Read-only endpoints work without a token and never show it.
	for _, tt := range []struct{ path, ctype, want string }{
		{"/v1/status", "application/json", `"name":"a"`},
		{"/metrics", "text/plain; version=0.0.4", `bulsajo_agent_sessions 1`},
		{"/", "text/html; charset=utf-8", `<script src="/static/app.js">`},
		{"/api/snapshot", "application/json", `"run_id":"job1"`},
		{"/static/app.js", "text/javascript; charset=utf-8", "EventSource"},
	} {
		t.Run("GET "+tt.path, func(t *testing.T) {
			code, h, body := c.request("GET", tt.path, "", nil)
			if code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, tt.ctype) {
				t.Errorf("Content-Type %q, want %q", ct, tt.ctype)
			}
			if !strings.Contains(string(body), tt.want) {
				t.Errorf("body lacks %q:\n%s", tt.want, body)
			}
			for _, secret := range []string{testToken, testToken[:12]} {
				if strings.Contains(string(body), secret) {
					t.Fatalf("body shows the token:\n%s", body)
				}
			}
		})
	}
}

// ---- 2. bad input ----

// rejected checks the coordinator answered with a reject naming want and
// closed the connection.
func rejected(t *testing.T, a *fakeAgent, want string) {
	t.Helper()
	r := a.waitFor("reject", func(m wire.Msg) bool { return true })
	if r.m.Type != wire.TReject || !strings.Contains(r.m.Reason, want) {
		t.Fatalf("first message %+v, want a reject naming %q", r.m, want)
	}
	if strings.Contains(r.m.Reason, "\n") {
		t.Errorf("reason is not one line: %q", r.m.Reason)
	}
	if !a.waitEnded(wait) {
		t.Fatalf("the coordinator kept the connection open after the reject")
	}
	if got := a.find(func(m wire.Msg) bool { return m.Type != wire.TReject }); len(got) > 0 {
		t.Fatalf("more than a reject:%s", a.dump())
	}
}

func TestAgentBadFirstMessage(t *testing.T) {
	c := newCoord(t)
	hello := `{"type":"hello","name":"n1","nproc":1,"addr":"10.0.0.1","instance":"i"}`
	for _, tt := range []struct {
		name, send, want string
	}{
		{"heartbeat before hello", `{"type":"heartbeat","seq":1}` + "\n", "first message must be hello"},
		{"progress before hello", `{"type":"progress","job":"j","gen":1,"rank":0,"step":3}` + "\n", "first message must be hello"},
		{"launched before hello", `{"type":"launched","job":"j","gen":1}` + "\n", "first message must be hello"},
		{"invalid json", `{"type":"hello",` + "\n", "invalid message"},
		{"not json", "GET / HTTP/1.1\r\n\r\n", "invalid message"},
		{"empty line", "\n", "invalid message"},
		{"null", "null\n", "type missing"},
		{"array", `[1,2]` + "\n", "invalid message"},
		{"unknown type", `{"type":"bogus"}` + "\n", "unknown type"},
		{"no type", `{"name":"n1"}` + "\n", "type missing"},
		{"unknown field", strings.TrimSuffix(hello, "}") + `,"shoe_size":44}` + "\n", "unknown field"},
		{"wrong field type", `{"type":"hello","name":"n1","nproc":"one","addr":"h"}` + "\n", "invalid message"},
		{"trailing data", hello + "}\n", "trailing data"},
		{"two messages on a line", hello + hello + "\n", "trailing data"},
		{"bad name", `{"type":"hello","name":"../etc","nproc":1,"addr":"h"}` + "\n", "node name"},
		{"long name", `{"type":"hello","name":"` + strings.Repeat("n", 64) + `","nproc":1,"addr":"h"}` + "\n", "node name"},
		{"nproc 0", `{"type":"hello","name":"n1","nproc":0,"addr":"h"}` + "\n", "nproc"},
		{"nproc huge", `{"type":"hello","name":"n1","nproc":100000,"addr":"h"}` + "\n", "nproc"},
		{"no addr", `{"type":"hello","name":"n1","nproc":1}` + "\n", "addr"},
		{"bad current", `{"type":"hello","name":"n1","nproc":1,"addr":"h","current":{"job":"j","gen":0,"running":[]}}` + "\n", "current state"},
		{"duplicate running", `{"type":"hello","name":"n1","nproc":1,"addr":"h","current":{"job":"j","gen":1,"running":[0,0]}}` + "\n", "distinct"},
		{"nested exited", `{"type":"hello","name":"n1","nproc":1,"addr":"h","current":{"job":"j","gen":1,"running":[],"exited":[{"type":"hello","name":"x","nproc":1,"addr":"h"}]}}` + "\n", "exited entry"},
		{"oversized line", strings.Repeat("x", wire.MaxMessage+10) + "\n", "too large"},
		{"oversized hello", `{"type":"hello","name":"n1","nproc":1,"addr":"` + strings.Repeat("h", wire.MaxMessage) + `"}` + "\n", "too large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := openSession(t, c, "n1")
			// Write in the background: the coordinator may stop reading
			// (and close) before a huge line is through.
			go a.sendRaw([]byte(tt.send))
			rejected(t, a, tt.want)
		})
	}
	t.Run("closed before hello", func(t *testing.T) {
		a := openSession(t, c, "n1")
		a.conn.Close()
	})
	t.Run("half a hello then close", func(t *testing.T) {
		a := openSession(t, c, "n1")
		a.sendRaw([]byte(hello[:20]))
		a.conn.(*net.TCPConn).CloseWrite()
		rejected(t, a, "invalid message")
	})

	// None of them became a node, and the coordinator still answers.
	st := c.status()
	if len(st.Nodes) != 0 {
		t.Fatalf("rejected sessions became nodes: %+v", st.Nodes)
	}
	if !strings.Contains(c.log.String(), "rejected") {
		t.Errorf("console says nothing of the rejects:\n%s", c.log.String())
	}
	connect(t, c, "n1", agentOpts{})
	c.waitStatus("n1 ready", nodeState("n1", "ready"))
}

func TestAgentGarbageAfterHello(t *testing.T) {
	c := newCoord(t)
	for _, tt := range []struct{ name, send string }{
		{"invalid json", `{"type":"heartbeat",` + "\n"},
		{"not json", "\x00\x01\x02garbage\n"},
		{"unknown type", `{"type":"bogus"}` + "\n"},
		{"unknown field", `{"type":"heartbeat","seq":1,"color":"red"}` + "\n"},
		{"invalid heartbeat", `{"type":"heartbeat","seq":1,"free_port":70000}` + "\n"},
		{"second hello", `{"type":"hello","name":"g","nproc":1,"addr":"h","instance":"g-1"}` + "\n"},
		{"coordinator's message", `{"type":"welcome","lease_ms":400,"heartbeat_ms":20}` + "\n"},
		{"ack", `{"type":"ack","seq":1}` + "\n"},
		{"start", `{"type":"start","job":"j","gen":1,"spec":{"run_id":"j","command":["x"],"restart_count":0,"max_restarts":0,"world_size":1,"ranks":[0],"group_rank":0,"group_world_size":1,"master_addr":"h","master_port":1}}` + "\n"},
		{"exited without job", `{"type":"exited","gen":1,"rank":0}` + "\n"},
		{"launched gen 0", `{"type":"launched","job":"j","gen":0}` + "\n"},
		{"trailing data", `{"type":"heartbeat","seq":1}]` + "\n"},
		{"oversized line", strings.Repeat(" ", wire.MaxMessage+1) + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := connect(t, c, "g", agentOpts{})
			c.waitStatus("g ready", nodeState("g", "ready"))
			go a.sendRaw([]byte(tt.send))
			if !a.waitEnded(wait) {
				t.Fatalf("the session survived %q", tt.send)
			}
			a.stopHeartbeats()
			// Not in a job: the node left (no lease to wait for).
			c.waitStatus("g disconnected", nodeState("g", "disconnected"))
			if n, _ := nodeOf(c.srv.Status(), "g"); n.Faults != 0 || n.Quarantined {
				t.Fatalf("a node in no job was blamed: %+v", n)
			}
		})
	}
	if log := c.log.String(); !strings.Contains(log, "- node g left") {
		t.Errorf("console does not say the node left:\n%s", log)
	}
	c.status()
}

func TestAgentNameInUse(t *testing.T) {
	c := newCoord(t)
	a := connect(t, c, "dup", agentOpts{instance: "first", addr: "10.0.0.50", port: 1234})
	impostor := func(t *testing.T) *fakeAgent {
		b := openSession(t, c, "dup")
		b.send(wire.Msg{Type: wire.THello, Name: "dup", NProc: 1, Addr: "10.9.9.9", Instance: "second"})
		return b
	}

	// Another agent (another instance) with the same name is refused, and
	// the first keeps its session.
	b := impostor(t)
	if !b.waitEnded(wait) {
		t.Fatalf("the impostor's session was kept")
	}
	if got := b.find(func(m wire.Msg) bool { return m.Type != wire.TReject }); got != nil {
		t.Fatalf("the impostor was answered:%s", b.dump())
	}
	seq, err := a.sendHeartbeat()
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor("ack after the impostor", func(m wire.Msg) bool { return m.Type == wire.TAck && m.Seq == seq })
	if n, _ := nodeOf(c.status(), "dup"); n.Addr != "10.0.0.50" || n.State != "ready" {
		t.Fatalf("the impostor changed the node: %+v", n)
	}

	t.Run("the reject says why", func(t *testing.T) {
		rejected(t, impostor(t), `node name "dup" is in use by a connected agent`)
	})

	// The same instance reconnecting replaces its old session.
	a2 := connect(t, c, "dup", agentOpts{instance: "first", addr: "10.0.0.77"})
	if !a.waitEnded(wait) {
		t.Fatalf("the old session of a reconnecting agent was kept open")
	}
	a.stopHeartbeats()
	st := c.waitStatus("dup ready at its new addr", func(st coordinator.Status) bool {
		n, _ := nodeOf(st, "dup")
		return n.State == "ready" && n.Addr == "10.0.0.77"
	})
	if len(st.Nodes) != 1 {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	seq, _ = a2.sendHeartbeat()
	a2.waitFor("ack", func(m wire.Msg) bool { return m.Type == wire.TAck && m.Seq == seq })
}

func TestSubmitBadInput(t *testing.T) {
	c := newCoord(t)
	good := func(f func(*coordinator.JobSpec)) string {
		sp := spec("good", 1, 2)
		f(&sp)
		b, _ := json.Marshal(sp)
		return string(b)
	}
	huge := `{"id":"big","command":["` + strings.Repeat("x", 2<<20) + `"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1}`
	for _, tt := range []struct{ name, body, want string }{
		{"empty", "", "bad request body"},
		{"not json", "hello", "bad request body"},
		{"truncated", `{"id":"j","command":["x"]`, "bad request body"},
		{"null", "null", "job id"},
		{"array", `[1]`, "bad request body"},
		{"no id", good(func(s *coordinator.JobSpec) { s.ID = "" }), "job id"},
		{"bad id", good(func(s *coordinator.JobSpec) { s.ID = "../x" }), "job id"},
		{"id with slash", good(func(s *coordinator.JobSpec) { s.ID = "a/b" }), "job id"},
		{"id too long", good(func(s *coordinator.JobSpec) { s.ID = strings.Repeat("a", 64) }), "job id"},
		{"no command", good(func(s *coordinator.JobSpec) { s.Command = nil }), "command"},
		{"empty command", good(func(s *coordinator.JobSpec) { s.Command = []string{""} }), "command"},
		{"nnodes 0", good(func(s *coordinator.JobSpec) { s.NNodesMin, s.NNodesMax = 0, 0 }), "nnodes"},
		{"min > max", good(func(s *coordinator.JobSpec) { s.NNodesMin, s.NNodesMax = 3, 2 }), "nnodes"},
		{"max huge", good(func(s *coordinator.JobSpec) { s.NNodesMax = 1 << 30 }), "nnodes"},
		{"nproc 0", good(func(s *coordinator.JobSpec) { s.NProcPerNode = 0 }), "nproc_per_node"},
		{"nproc huge", good(func(s *coordinator.JobSpec) { s.NProcPerNode = 4096 }), "nproc_per_node"},
		{"recovery bogus", good(func(s *coordinator.JobSpec) { s.Recovery = "bogus" }), "recovery"},
		{"negative restarts", good(func(s *coordinator.JobSpec) { s.MaxRestarts = -1 }), "negative"},
		{"negative grace", good(func(s *coordinator.JobSpec) { s.StopGraceMS = -1 }), "negative"},
		{"bad regex", good(func(s *coordinator.JobSpec) { s.ProgressRegex = "step ([0-9]+" }), "progress regex"},
		{"unknown field", `{"id":"j","command":["x"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1,"gpus":8}`, "unknown field"},
		{"wrong type", `{"id":"j","command":"x","nnodes_min":1,"nnodes_max":1,"nproc_per_node":1}`, "bad request body"},
		{"huge body", huge, "bad request body"},
		{"trailing data", good(func(*coordinator.JobSpec) {}) + ` {"id":"other"}`, "bad request body"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := c.request("POST", "/v1/jobs", testToken, strings.NewReader(tt.body))
			if code != 400 {
				t.Fatalf("got %d %s", code, body)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if bytes.IndexByte(body, '\n') != len(body)-1 {
				t.Errorf("error is not one line: %q", body)
			}
			var e struct{ Error string }
			if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, tt.want) {
				t.Fatalf("error %q (%v), want one naming %q", body, err, tt.want)
			}
		})
	}
	if st := c.status(); st.Job != nil {
		t.Fatalf("a refused submit made a job: %+v", st.Job)
	}

	// One job at a time; a conflict is 409 and one line too.
	c.submit(spec("first", 1, 1))
	b, _ := json.Marshal(spec("second", 1, 1))
	code, _, body := c.request("POST", "/v1/jobs", testToken, bytes.NewReader(b))
	if code != http.StatusConflict || !strings.Contains(string(body), "job first is running") {
		t.Fatalf("second job: %d %s", code, body)
	}
	c.waitStatus("first waits", func(st coordinator.Status) bool {
		return st.Job != nil && st.Job.ID == "first" && st.Job.State == "waiting for nodes"
	})
	// Cancel, then the same id again is a conflict; a new id is fine.
	if code, _, body := c.request("POST", "/v1/jobs/nosuch/cancel", testToken, nil); code != 404 {
		t.Fatalf("cancel of no such job: %d %s", code, body)
	}
	if code, _, body := c.request("POST", "/v1/jobs/first/cancel", testToken, nil); code != 200 {
		t.Fatalf("cancel: %d %s", code, body)
	}
	c.waitStatus("first done", func(st coordinator.Status) bool { return st.Job != nil && st.Job.State == "done" })
	b, _ = json.Marshal(spec("first", 1, 1))
	if code, _, body := c.request("POST", "/v1/jobs", testToken, bytes.NewReader(b)); code != http.StatusConflict {
		t.Fatalf("reused id: %d %s", code, body)
	}
	c.submit(spec("second", 1, 1))
}

// ---- 3. membership ----

func TestMembership(t *testing.T) {
	c := newCoord(t)
	a := openSession(t, c, "m1")
	a.send(wire.Msg{Type: wire.THello, Name: "m1", Version: "test", NProc: 8, Spare: true, Addr: "192.0.2.1",
		Instance: "m1-i", FreePort: 40000})
	w := a.waitFor("welcome", func(wire.Msg) bool { return true })
	want := wire.Msg{Type: wire.TWelcome, Name: "m1", LeaseMS: int(tLease / time.Millisecond), HeartbeatMS: int(tHeartbeat / time.Millisecond)}
	if w.m.Type != want.Type || w.m.Name != want.Name || w.m.LeaseMS != want.LeaseMS || w.m.HeartbeatMS != want.HeartbeatMS {
		t.Fatalf("welcome %+v, want %+v", w.m, want)
	}
	n, ok := nodeOf(c.status(), "m1")
	if !ok || n.State != "ready" || n.Addr != "192.0.2.1" || n.NProc != 8 || !n.Spare || n.Faults != 0 {
		t.Fatalf("node %+v", n)
	}

	// Every heartbeat is acknowledged with its own seq, in order.
	for _, seq := range []uint64{1, 2, 3, 1 << 40, 7} {
		a.send(wire.Msg{Type: wire.THeartbeat, Seq: seq, FreePort: 40001})
	}
	deadline := time.Now().Add(wait)
	for len(a.find(isType(wire.TAck))) < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	var seqs []uint64
	for _, r := range a.find(isType(wire.TAck)) {
		seqs = append(seqs, r.m.Seq)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 1 << 40, 7}) {
		t.Fatalf("acks %v", seqs)
	}
	code, _, metrics := c.request("GET", "/metrics", "", nil)
	for _, line := range []string{`bulsajo_nodes{state="ready"} 1`, "bulsajo_agent_sessions 1", "bulsajo_heartbeats_total 5"} {
		if code != 200 || !strings.Contains(string(metrics), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, metrics)
		}
	}
	a.seq.Store(1 << 41)
	a.startHeartbeats(tHeartbeat)

	t.Run("silence", func(t *testing.T) {
		a := connect(t, c, "quiet", agentOpts{})
		c.waitStatus("quiet ready", nodeState("quiet", "ready"))
		a.waitAcked(3)
		last := a.stopHeartbeats()
		c.waitStatus("quiet gone", nodeState("quiet", "disconnected"))
		if silent := time.Since(last); silent <= tNodeTimeout {
			t.Fatalf("node dropped %s after its last heartbeat, before the node timeout %s", silent, tNodeTimeout)
		}
		if !a.waitEnded(wait) {
			t.Fatalf("the coordinator kept the silent node's connection open")
		}
		if !strings.Contains(c.log.String(), "- node quiet left (no heartbeat for") {
			t.Errorf("console:\n%s", c.log.String())
		}
		// Another node's heartbeats are unaffected.
		if n, _ := nodeOf(c.srv.Status(), "m1"); n.State != "ready" {
			t.Errorf("m1 %+v", n)
		}
	})

	t.Run("heartbeats keep it", func(t *testing.T) {
		connect(t, c, "steady", agentOpts{})
		time.Sleep(3 * tNodeTimeout)
		if n, _ := nodeOf(c.srv.Status(), "steady"); n.State != "ready" || n.SilentS > tNodeTimeout.Seconds() {
			t.Fatalf("a heartbeating node: %+v", n)
		}
	})

	t.Run("connection close", func(t *testing.T) {
		a := connect(t, c, "closer", agentOpts{})
		c.waitStatus("closer ready", nodeState("closer", "ready"))
		a.stopHeartbeats()
		closed := time.Now()
		a.conn.Close()
		c.waitStatus("closer gone", nodeState("closer", "disconnected"))
		// At once, not after the node timeout.
		if took := time.Since(closed); took >= tNodeTimeout {
			t.Fatalf("a closed connection took %s to notice (node timeout %s)", took, tNodeTimeout)
		}
	})

	t.Run("the node comes back", func(t *testing.T) {
		connect(t, c, "closer", agentOpts{instance: "closer-2"})
		c.waitStatus("closer ready again", nodeState("closer", "ready"))
	})
}

// ---- 4. a job across two agents ----

// launchTwo connects a and b (plus extra agents), submits sp and checks
// generation 1: a holds rank 0, b rank 1, rendezvous at a's addr and port.
func launchTwo(t *testing.T, c *coord, sp coordinator.JobSpec, extra func()) (a, b *fakeAgent) {
	t.Helper()
	a = connect(t, c, "a", agentOpts{addr: "10.0.0.1", port: 31001})
	b = connect(t, c, "b", agentOpts{addr: "10.0.0.2", port: 32001})
	if extra != nil {
		extra()
	}
	c.submit(sp)
	for i, ag := range []*fakeAgent{a, b} {
		s := ag.waitFor("start of gen 1", isGen(wire.TStart, sp.ID, 1)).m
		want := wire.Spec{RunID: sp.ID, Command: sp.Command, MaxRestarts: sp.MaxRestarts, WorldSize: 2, Ranks: []int{i},
			GroupRank: i, GroupWorldSize: 2, MasterAddr: "10.0.0.1", MasterPort: 31001}
		if got := *s.Spec; !specEqual(got, want) {
			t.Fatalf("agent %s start %+v, want %+v", ag.name, got, want)
		}
	}
	// a's port was used: it reports a fresh one from now on.
	a.port.Store(31002)
	st := c.waitStatus("gen 1 starting", jobIs(1, "starting"))
	if st.Job.Rendezvous != "10.0.0.1:31001" || st.Job.World != 2 {
		t.Fatalf("job %+v", st.Job)
	}
	a.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
	b.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
	c.waitStatus("gen 1 training", jobIs(1, "training"))
	for step := 1; step <= 3; step++ {
		a.send(wire.Msg{Type: wire.TProgress, Job: sp.ID, Gen: 1, Rank: 0, Step: step})
		b.send(wire.Msg{Type: wire.TProgress, Job: sp.ID, Gen: 1, Rank: 1, Step: step})
	}
	st = c.waitStatus("step 3", func(st coordinator.Status) bool { return st.Job != nil && st.Job.Step == 3 })
	for i, name := range []string{"a", "b"} {
		if n, _ := nodeOf(st, name); n.State != "training" || !slices.Equal(n.Ranks, []int{i}) {
			t.Fatalf("node %+v", n)
		}
	}
	return a, b
}

func specEqual(a, b wire.Spec) bool {
	return a.RunID == b.RunID && slices.Equal(a.Command, b.Command) && a.MaxRestarts == b.MaxRestarts &&
		a.RestartCount == b.RestartCount && a.WorldSize == b.WorldSize && slices.Equal(a.Ranks, b.Ranks) &&
		a.GroupRank == b.GroupRank && a.GroupWorldSize == b.GroupWorldSize && a.MasterAddr == b.MasterAddr &&
		a.MasterPort == b.MasterPort
}

func TestJobNodeLostIsFenced(t *testing.T) {
	for _, tt := range []struct {
		name       string
		nmin, nmax int
		spare      bool   // gen 2: on a and the spare, else on a alone
		garbage    string // b's session ends on this line instead of going silent
		hangUp     bool   // b closes its connection after the garbage
	}{
		{name: "nnodes 1:2 shrinks to a", nmin: 1, nmax: 2},
		{name: "nnodes 2 spare takes b's place", nmin: 2, nmax: 2, spare: true},
		{name: "session ended on garbage", nmin: 1, nmax: 2, garbage: "{\"type\":\"heartbeat\",\n"},
		{name: "session ended on an unexpected message", nmin: 1, nmax: 2, garbage: `{"type":"ack","seq":1}` + "\n"},
		// An agent that closes its session itself but lives on says bye
		// first: its close is not its death, and its lease is waited out.
		{name: "bye, then the connection closed", nmin: 1, nmax: 2, garbage: `{"type":"bye","reason":"no acks"}` + "\n", hangUp: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			sp := spec("fence", tt.nmin, tt.nmax)
			var spare *fakeAgent
			a, b := launchTwo(t, c, sp, func() {
				if tt.spare {
					spare = connect(t, c, "s", agentOpts{spare: true, addr: "10.0.0.3", port: 33001})
				}
			})
			if spare != nil && spare.find(isType(wire.TStart)) != nil {
				t.Fatalf("the spare got work in generation 1:%s", spare.dump())
			}

			// b goes silent: its connection stays open, its heartbeats stop
			// (or it breaks the protocol and the coordinator ends its session).
			b.waitAcked(3)
			lastB := b.stopHeartbeats()
			if tt.garbage != "" {
				b.sendRaw([]byte(tt.garbage))
				lastB = time.Unix(0, b.lastSent.Load())
				if tt.hangUp {
					time.Sleep(20 * time.Millisecond)
					b.close()
				}
			}
			fence := lastB.Add(tLease)
			stop := a.waitFor("stop of gen 1", isGen(wire.TStop, sp.ID, 1))
			if d := stop.at.Sub(lastB); d < tNodeTimeout && tt.garbage == "" {
				t.Errorf("stop %s after b's last heartbeat, before the node timeout", d)
			}
			st := c.waitStatus("b lost", nodeState("b", "lost"))
			if st.Job.State != "stopping" && st.Job.Gen == 1 {
				t.Errorf("job %+v", st.Job)
			}
			a.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})

			var gen2 []*fakeAgent
			if tt.spare {
				gen2 = []*fakeAgent{a, spare}
			} else {
				gen2 = []*fakeAgent{a}
			}
			for i, ag := range gen2 {
				s := ag.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2))
				// Fencing: b's workers may run until its lease ends.
				if s.at.Before(fence) {
					t.Fatalf("agent %s got the start of gen 2 %s before b's lease ran out (last heartbeat %s, lease %s)",
						ag.name, fence.Sub(s.at), lastB.Format("15:04:05.000"), tLease)
				}
				if late := s.at.Sub(fence); late > time.Second {
					t.Errorf("gen 2 started %s after b's lease ran out", late)
				}
				t.Logf("agent %s: gen 2 start %s after b's lease ran out", ag.name, s.at.Sub(fence))
				want := wire.Spec{RunID: sp.ID, Command: sp.Command, MaxRestarts: sp.MaxRestarts, RestartCount: 1,
					WorldSize: len(gen2), Ranks: []int{i}, GroupRank: i, GroupWorldSize: len(gen2),
					MasterAddr: "10.0.0.1", MasterPort: 31002}
				if !specEqual(*s.m.Spec, want) {
					t.Fatalf("agent %s gen 2 %+v, want %+v", ag.name, *s.m.Spec, want)
				}
			}
			if got := b.find(isGen(wire.TStart, sp.ID, 2)); got != nil {
				t.Fatalf("the lost node got gen 2")
			}
			if !b.waitEnded(wait) {
				t.Errorf("the coordinator kept the lost node's connection")
			}
			for _, ag := range gen2 {
				ag.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
			}
			st = c.waitStatus("gen 2 training", jobIs(2, "training"))
			if st.Job.World != len(gen2) || st.Job.Restarts != 1 {
				t.Fatalf("job %+v", st.Job)
			}
			if n, _ := nodeOf(st, "b"); n.State != "lost" || n.Faults != 1 || len(n.Ranks) != 0 {
				t.Fatalf("b %+v", n)
			}
			if tt.spare {
				if n, _ := nodeOf(st, "s"); !slices.Equal(n.Ranks, []int{1}) || n.State != "training" {
					t.Fatalf("spare %+v", n)
				}
			}
		})
	}
}

// The other nodes' starts wait until rank 0's node says its store listens
// (torch's client would otherwise lose a second to a refused connect), and
// go out after a cap when it never does.
func TestStartsWaitForRankZerosStore(t *testing.T) {
	c := newCoord(t)
	a := connect(t, c, "a", agentOpts{addr: "10.0.0.1", port: 31001})
	a.mute.Store(true)
	b := connect(t, c, "b", agentOpts{addr: "10.0.0.2", port: 32001})
	c.submit(spec("held", 2, 2))
	sa := a.waitFor("a's start", isGen(wire.TStart, "held", 1))
	time.Sleep(200 * time.Millisecond)
	if b.find(isType(wire.TStart)) != nil {
		t.Fatal("b started before rank 0's store listened")
	}
	a.send(wire.Msg{Type: wire.TListening, Job: "held", Gen: 1})
	sb := b.waitFor("b's start", isGen(wire.TStart, "held", 1))
	if d := sb.at.Sub(sa.at); d > time.Second {
		t.Errorf("b's start came %s after a's", d)
	}
}

// When rank 0's node never says its store listens, the others start after
// the 1 s cap anyway.
func TestHeldStartsGoOutAfterTheCap(t *testing.T) {
	c := newCoord(t)
	a := connect(t, c, "a", agentOpts{addr: "10.0.0.1", port: 31001})
	a.mute.Store(true)
	b := connect(t, c, "b", agentOpts{addr: "10.0.0.2", port: 32001})
	c.submit(spec("cap", 2, 2))
	sa := a.waitFor("a's start", isGen(wire.TStart, "cap", 1))
	sb := b.waitFor("b's start", isGen(wire.TStart, "cap", 1))
	if d := sb.at.Sub(sa.at); d < 900*time.Millisecond || d > 2*time.Second {
		t.Errorf("b's start came %s after a's, want about the 1 s cap", d)
	}
}

// An agent that said bye and comes back within the node timeout, still
// running its part, was never lost: no fault, no new generation.
func TestByeAndBackIsNoFault(t *testing.T) {
	c := newCoord(t)
	sp := spec("bye", 2, 2)
	a, b := launchTwo(t, c, sp, nil)
	b.waitAcked(2)
	b.stopHeartbeats()
	b.sendRaw([]byte(`{"type":"bye","reason":"no word from the coordinator"}` + "\n"))
	time.Sleep(20 * time.Millisecond)
	b.close()
	c.waitStatus("b disconnected", nodeState("b", "disconnected"))
	connect(t, c, "b", agentOpts{addr: "10.0.0.2", port: 32002,
		current: &wire.NodeState{Job: sp.ID, Gen: 1, Running: []int{1}, Step: 3}})
	time.Sleep(2 * tNodeTimeout)
	st := c.status()
	if st.Job.Gen != 1 || st.Job.State != "training" {
		t.Fatalf("job %+v: the reconnect restarted it", st.Job)
	}
	if n, _ := nodeOf(st, "b"); n.Faults != 0 || n.State != "training" {
		t.Fatalf("b %+v", n)
	}
	if got := a.find(isType(wire.TStop)); got != nil {
		t.Fatalf("a was told to stop:%s", a.dump())
	}
}

// nnodes 2 without a spare: when b is gone (its connection closed, or its
// session ended by the coordinator on a protocol error) it is lost at once,
// generation 2 waits for a node, and runs as soon as one joins.
func TestJobWaitsForNodes(t *testing.T) {
	for _, tt := range []struct{ name, garbage string }{
		{name: "connection closed"},
		{name: "garbage", garbage: "\x00garbage\n"},
		{name: "unexpected message", garbage: `{"type":"welcome","lease_ms":400,"heartbeat_ms":20}` + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			sp := spec("wait", 2, 2)
			a, b := launchTwo(t, c, sp, nil)
			b.stopHeartbeats()
			gone := time.Now()
			if tt.garbage == "" {
				b.conn.Close() // a crash: its workers die with it
			} else {
				b.sendRaw([]byte(tt.garbage))
				if !b.waitEnded(wait) {
					t.Fatalf("the session survived %q", tt.garbage)
				}
			}
			c.waitStatus("b lost", nodeState("b", "lost"))
			if took := time.Since(gone); took >= tNodeTimeout {
				t.Errorf("b was lost %s after it went, not at once", took)
			}
			a.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
			a.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			c.waitStatus("waiting", func(st coordinator.Status) bool { return st.Job != nil && st.Job.State == "waiting for nodes" })
			time.Sleep(tLease)
			if a.find(isGen(wire.TStart, sp.ID, 2)) != nil {
				t.Fatalf("gen 2 started on one node of at least 2")
			}
			d := connect(t, c, "d", agentOpts{addr: "10.0.0.4", port: 34001})
			for i, ag := range []*fakeAgent{a, d} {
				s := ag.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2)).m.Spec
				if s.WorldSize != 2 || !slices.Equal(s.Ranks, []int{i}) || s.GroupRank != i || s.MasterPort != 31002 {
					t.Fatalf("agent %s gen 2 %+v", ag.name, s)
				}
			}
			if n, _ := nodeOf(c.srv.Status(), "b"); n.State != "lost" || n.Faults != 1 || len(n.Ranks) != 0 {
				t.Fatalf("b %+v", n)
			}
		})
	}
}

// An agent speaks for its own node only: reports about a generation from
// a node outside it, or about another node's ranks, must not move the job.
func TestAgentSpeaksForItselfOnly(t *testing.T) {
	for _, tt := range []struct {
		name   string
		script func(t *testing.T, c *coord, sp coordinator.JobSpec, a, b, x *fakeAgent)
	}{
		{"stopped from a node outside the generation", func(t *testing.T, c *coord, sp coordinator.JobSpec, a, b, x *fakeAgent) {
			b.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 1})
			a.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
			b.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
			a.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			x.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			time.Sleep(2 * tLease) // b's workers are still being reaped
			if r := a.find(isGen(wire.TStart, sp.ID, 2)); r != nil {
				t.Fatalf("gen 2 started before b stopped gen 1")
			}
			b.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			a.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2))
		}},
		{"launched from a node outside the generation", func(t *testing.T, c *coord, sp coordinator.JobSpec, a, b, x *fakeAgent) {
			// launchTwo had both launch; make gen 2 and launch only a and x.
			b.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 1})
			for _, ag := range []*fakeAgent{a, b} {
				ag.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
				ag.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			}
			a.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2))
			a.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
			x.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
			time.Sleep(100 * time.Millisecond)
			if st := c.srv.Status(); st.Job.State != "starting" {
				t.Fatalf("gen 2 is %q with b not launched", st.Job.State)
			}
		}},
		{"exited 0 for another node's rank", func(t *testing.T, c *coord, sp coordinator.JobSpec, a, b, x *fakeAgent) {
			a.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 0, Code: 0})
			a.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 0})
			time.Sleep(100 * time.Millisecond)
			if st := c.srv.Status(); st.Job.State == "done" {
				t.Fatalf("a's word finished the job with b's rank 1 running: %+v", st.Job)
			}
		}},
		{"exited 1 for another node's rank", func(t *testing.T, c *coord, sp coordinator.JobSpec, a, b, x *fakeAgent) {
			x.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 1})
			time.Sleep(100 * time.Millisecond)
			if n, _ := nodeOf(c.srv.Status(), "b"); n.Faults != 0 {
				t.Fatalf("b blamed for x's report: %+v", n)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			sp := spec("self", 1, 2)
			var x *fakeAgent
			a, b := launchTwo(t, c, sp, func() { x = connect(t, c, "x", agentOpts{addr: "10.0.0.9", port: 39001}) })
			tt.script(t, c, sp, a, b, x)
		})
	}
}

// A rank whose process is stopped before the job's first step: no progress
// has armed the watchdog, so only the node's word (proc_stopped) tells of
// the hang, once past the threshold (the 2 s floor). A word about a rank the
// sender does not hold, or one taken back, is no hang.
func TestStoppedRankBeforeTheFirstStep(t *testing.T) {
	for _, tt := range []struct {
		name string
		hang bool
		say  func(sp coordinator.JobSpec, a, b, x *fakeAgent)
	}{
		{"stopped", true, func(sp coordinator.JobSpec, a, b, x *fakeAgent) {
			a.send(wire.Msg{Type: wire.TProcStopped, Job: sp.ID, Gen: 1, StoppedRanks: []int{0}})
		}},
		{"another node's rank, or continued", false, func(sp coordinator.JobSpec, a, b, x *fakeAgent) {
			x.send(wire.Msg{Type: wire.TProcStopped, Job: sp.ID, Gen: 1, StoppedRanks: []int{1}})
			a.send(wire.Msg{Type: wire.TProcStopped, Job: sp.ID, Gen: 1, StoppedRanks: []int{1}})
			b.send(wire.Msg{Type: wire.TProcStopped, Job: sp.ID, Gen: 1, StoppedRanks: []int{1}})
			time.Sleep(time.Second)
			b.send(wire.Msg{Type: wire.TProcStopped, Job: sp.ID, Gen: 1})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			sp := spec("frozen", 1, 2)
			sp.HangTimeoutMS = 0 // the adaptive threshold: 2 s before any step
			a := connect(t, c, "a", agentOpts{addr: "10.0.0.1", port: 31001})
			b := connect(t, c, "b", agentOpts{addr: "10.0.0.2", port: 32001})
			x := connect(t, c, "x", agentOpts{addr: "10.0.0.9", port: 39001})
			c.submit(sp)
			for _, ag := range []*fakeAgent{a, b} {
				ag.waitFor("start of gen 1", isGen(wire.TStart, sp.ID, 1))
				ag.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
			}
			c.waitStatus("gen 1 running", jobIs(1, "training"))
			tt.say(sp, a, b, x)
			if tt.hang {
				a.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
				b.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
				return
			}
			time.Sleep(3 * time.Second) // past the threshold
			if r := a.find(isGen(wire.TStop, sp.ID, 1)); r != nil {
				t.Fatalf("gen 1 stopped on a word about a rank the sender does not hold, or no longer stopped")
			}
		})
	}
}

// A stall past the hang threshold is first put to the nodes (probe): while
// they answer that their ranks use CPU (a long save, an evaluation), it is
// no hang. An answer about a rank the node does not hold, a stopped rank, or
// no answer at all vouches for nothing: the stall is a hang.
func TestStallIsPutToTheNodes(t *testing.T) {
	busy := func(ranks ...int) func(sp coordinator.JobSpec) wire.Msg {
		return func(sp coordinator.JobSpec) wire.Msg {
			return wire.Msg{Type: wire.TBusy, Job: sp.ID, Gen: 1, BusyRanks: ranks}
		}
	}
	stopped := func(sp coordinator.JobSpec) wire.Msg {
		return wire.Msg{Type: wire.TBusy, Job: sp.ID, Gen: 1, StoppedRanks: []int{0}}
	}
	for _, tt := range []struct {
		name   string
		a, b   func(sp coordinator.JobSpec) wire.Msg // nil: no answer
		limit  int                                   // BusyLimitMS
		hang   bool
		probed bool // the nodes were asked
	}{
		{"both busy", busy(0), busy(1), 0, false, true},
		{"one busy", busy(0), busy(), 0, false, true},
		{"none busy", busy(), busy(), 0, true, true},
		{"busy for another node's rank", busy(1), busy(), 0, true, true},
		{"a rank stopped", stopped, busy(1), 0, true, true},
		{"no answer", nil, nil, 0, true, true},
		{"busy, probes off", busy(0), busy(1), -1, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoord(t)
			sp := spec("probe", 2, 2)
			sp.HangTimeoutMS, sp.HangFloorMS, sp.BusyLimitMS = 0, 500, tt.limit
			a, b := launchTwo(t, c, sp, nil)
			done := make(chan struct{})
			var wg sync.WaitGroup
			for _, x := range []struct {
				ag     *fakeAgent
				answer func(coordinator.JobSpec) wire.Msg
			}{{a, tt.a}, {b, tt.b}} {
				if x.answer == nil {
					continue
				}
				wg.Add(1)
				go func() { // answer every probe as it comes
					defer wg.Done()
					answered := 0
					for {
						for ; answered < len(x.ag.find(isGen(wire.TProbe, sp.ID, 1))); answered++ {
							x.ag.send(x.answer(sp))
						}
						select {
						case <-done:
							return
						case <-time.After(10 * time.Millisecond):
						}
					}
				}()
			}
			defer func() { close(done); wg.Wait() }()
			// No step since launchTwo's: the 500 ms floor passes at once.
			if tt.hang {
				a.waitFor("stop", isGen(wire.TStop, sp.ID, 1))
			} else {
				time.Sleep(3 * time.Second) // six thresholds
				if r := a.find(isGen(wire.TStop, sp.ID, 1)); r != nil {
					t.Fatalf("gen 1 stopped while its nodes said its ranks work")
				}
				if !strings.Contains(c.log.String(), "using CPU") {
					t.Errorf("the console does not say why the stall is no hang:\n%s", c.log.String())
				}
			}
			if probed := len(a.find(isGen(wire.TProbe, sp.ID, 1))) > 0; probed != tt.probed {
				t.Errorf("node a asked: %v, want %v", probed, tt.probed)
			}
		})
	}
}

// ---- 5. quarantine ----

func TestQuarantine(t *testing.T) {
	// A store that takes its time, as etcd under load does: what the test
	// reads back from it must not depend on the writes having landed yet.
	slow := &slowStore{Store: store.NewMemory(), delay: 20 * time.Millisecond}
	c := startCoord(t, slow, t.TempDir(), func(cfg *coordinator.Config) { cfg.QuarantineAfter = 1 })
	sp := spec("quar", 2, 2)
	var third *fakeAgent // an idle worker node
	a, b := launchTwo(t, c, sp, func() { third = connect(t, c, "c", agentOpts{addr: "10.0.0.3", port: 33001}) })

	b.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 3, Err: "CUDA error: an illegal memory access"})
	st := c.waitStatus("b quarantined", func(st coordinator.Status) bool { n, _ := nodeOf(st, "b"); return n.Quarantined })
	n, _ := nodeOf(st, "b")
	if !strings.Contains(n.Reason, "rank 1") || !strings.Contains(n.Reason, "exit code 3") || n.Faults != 1 {
		t.Fatalf("b %+v: the reason should name rank 1 and its exit", n)
	}
	if n, _ := nodeOf(st, "a"); n.Quarantined || n.Faults != 0 {
		t.Fatalf("a was blamed: %+v", n)
	}
	for _, ag := range []*fakeAgent{a, b} {
		ag.waitFor("stop of gen 1", isGen(wire.TStop, sp.ID, 1))
		ag.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
	}
	for i, ag := range []*fakeAgent{a, third} {
		s := ag.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2)).m.Spec
		if !slices.Equal(s.Ranks, []int{i}) || s.WorldSize != 2 || s.GroupRank != i {
			t.Fatalf("agent %s gen 2 %+v", ag.name, s)
		}
	}
	if b.find(isGen(wire.TStart, sp.ID, 2)) != nil {
		t.Fatalf("the quarantined node got gen 2")
	}
	st = c.status()
	if n, _ := nodeOf(st, "b"); n.State != "ready" || !n.Quarantined || len(n.Ranks) != 0 {
		t.Fatalf("b %+v", n)
	}
	if !strings.Contains(c.log.String(), "node b quarantined") {
		t.Errorf("console:\n%s", c.log.String())
	}

	// Release: only with the token, only known nodes.
	if code, _, _ := c.request("POST", "/v1/nodes/b/release", wrongTok, nil); code != 401 {
		t.Fatalf("release with a wrong token: %d", code)
	}
	if code, _, body := c.request("POST", "/v1/nodes/nosuch/release", testToken, nil); code != 404 || !strings.Contains(string(body), `no node named \"nosuch\"`) {
		t.Fatalf("release of no such node: %d %s", code, body)
	}
	code, _, body := c.request("POST", "/v1/nodes/b/release", testToken, nil)
	if code != 200 || strings.TrimSpace(string(body)) != `{"node":"b","released":true}` {
		t.Fatalf("release: %d %s", code, body)
	}
	if n, _ := nodeOf(c.status(), "b"); n.Quarantined || n.Reason != "" || n.Faults != 0 {
		t.Fatalf("released b %+v", n)
	}
	code, _, body = c.request("POST", "/v1/nodes/b/release", testToken, nil)
	if code != 200 || strings.TrimSpace(string(body)) != `{"node":"b","released":false}` {
		t.Fatalf("second release: %d %s", code, body)
	}
	// The release is durable. Store writes are queued (no decision waits on
	// the store), so the record may still be missing or quarantined for a
	// moment. Read once (and once more after 100 ms only if quarantined) it
	// failed 1 run in 20 under -race ("key not found": not even the
	// quarantine had landed), and every run with the slow store above.
	for deadline := time.Now().Add(wait); ; time.Sleep(5 * time.Millisecond) {
		kv, err := c.st.Get(t.Context(), "/bulsajo/nodes/b")
		if err == nil && !strings.Contains(string(kv.Value), "quarantined") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored node b: %s %v", kv.Value, err)
		}
	}
	// A released node can be placed again: c's fault (c is quarantined in
	// turn) brings gen 3 on a and the released b.
	third.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
	a.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
	c.waitStatus("gen 2 training", jobIs(2, "training"))
	third.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 2, Rank: 1, Code: 1})
	c.waitStatus("c quarantined", func(st coordinator.Status) bool { n, _ := nodeOf(st, "c"); return n.Quarantined })
	for _, ag := range []*fakeAgent{a, third} {
		ag.waitFor("stop of gen 2", isGen(wire.TStop, sp.ID, 2))
		ag.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 2})
	}
	for i, ag := range []*fakeAgent{a, b} {
		s := ag.waitFor("start of gen 3", isGen(wire.TStart, sp.ID, 3)).m.Spec
		if !slices.Equal(s.Ranks, []int{i}) {
			t.Fatalf("agent %s gen 3 %+v", ag.name, s)
		}
	}
}

// ---- 6. coordinator restart: adoption ----

// slowStore delays every write.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s *slowStore) Put(ctx context.Context, key string, value []byte) (int64, error) {
	time.Sleep(s.delay)
	return s.Store.Put(ctx, key, value)
}

// cutStore is the store of a coordinator that is about to "crash": once
// cut, every call fails, as if its process had died (a kill -9 writes
// nothing more).
type cutStore struct {
	store.Store
	cut atomic.Bool
}

func (s *cutStore) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if s.cut.Load() {
		return 0, store.ErrUnavailable
	}
	return s.Store.Put(ctx, key, value)
}

func (s *cutStore) Get(ctx context.Context, key string) (store.KV, error) {
	if s.cut.Load() {
		return store.KV{}, store.ErrUnavailable
	}
	return s.Store.Get(ctx, key)
}

func (s *cutStore) List(ctx context.Context, prefix string) ([]store.KV, error) {
	if s.cut.Load() {
		return nil, store.ErrUnavailable
	}
	return s.Store.List(ctx, prefix)
}

func (s *cutStore) CompareAndPut(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	if s.cut.Load() {
		return 0, store.ErrUnavailable
	}
	return s.Store.CompareAndPut(ctx, key, value, rev)
}

// waitStored waits until the store holds the job at generation gen and
// every event the coordinator has published.
func waitStored(t *testing.T, c *coord, mem store.Store, id string, gen int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var rec struct {
			Gen int `json:"gen"`
		}
		kv, err := mem.Get(t.Context(), "/bulsajo/job")
		if err == nil {
			json.Unmarshal(kv.Value, &rec)
		}
		evs, _ := mem.List(t.Context(), "/bulsajo/runs/"+id+"/events/")
		if st := c.srv.Status(); rec.Gen == gen && st.Job != nil && len(evs) == st.Job.Events {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store: job record %s (%v), %d events", kv.Value, err, len(evs))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRestartAdoptsRunningJob(t *testing.T) {
	for _, how := range []string{"crash", "close"} {
		t.Run(how, func(t *testing.T) {
			if how == "close" {
			}
			mem := store.NewMemory()
			dir := t.TempDir()
			cs := &cutStore{Store: mem}
			c1 := startCoord(t, cs, dir)
			sp := spec("adopt", 2, 2)
			a, b := launchTwo(t, c1, sp, nil)
			waitStored(t, c1, mem, sp.ID, 1)

			// The coordinator goes away; its agents' workers are left alone.
			// A crash is simulated with c1 still running: it sees a's
			// connection close before b's and may stop b's workers, which a
			// dead coordinator could not. Only what reached the agents
			// before the crash counts.
			crashAt := time.Now().Add(time.Hour)
			switch how {
			case "crash":
				crashAt = time.Now()
				cs.cut.Store(true)
				for _, ag := range []*fakeAgent{a, b} {
					ag.stopHeartbeats()
					ag.conn.Close()
				}
			case "close":
				if !c1.closeServer(3 * time.Second) {
					t.FailNow()
				}
				for _, ag := range []*fakeAgent{a, b} {
					if !ag.waitEnded(wait) {
						t.Fatalf("agent %s: the closed coordinator kept its session", ag.name)
					}
					ag.stopHeartbeats()
				}
			}
			for _, ag := range []*fakeAgent{a, b} {
				for _, r := range ag.find(func(m wire.Msg) bool { return m.Type != wire.TWelcome && m.Type != wire.TAck && m.Type != wire.TStart }) {
					if r.at.Before(crashAt) {
						t.Fatalf("agent %s: the coordinator touched the workers as it went:%s", ag.name, ag.dump())
					}
				}
			}

			c2 := startCoord(t, mem, dir)
			if log := c2.log.String(); !strings.Contains(log, "resuming job adopt at generation 1 (2 nodes)") {
				t.Fatalf("no resume in the console:\n%s", log)
			}
			if s := c2.status(); s.Job == nil || s.Job.Gen != 1 || s.Job.State != "starting" || s.Job.World != 2 {
				t.Fatalf("resumed job %+v", s.Job)
			}
			var agents []*fakeAgent
			for i, name := range []string{"a", "b"} {
				ag := connect(t, c2, name, agentOpts{addr: fmt.Sprintf("10.0.0.%d", i+1), port: 35001 + i,
					current: &wire.NodeState{Job: sp.ID, Gen: 1, Running: []int{i}, Step: 3}})
				agents = append(agents, ag)
			}
			c2.waitStatus("gen 1 adopted", jobIs(1, "training"))
			// Past the adoption deadline: still nothing sent, nobody blamed.
			time.Sleep(max(2*tNodeTimeout, tLease/2) + 100*time.Millisecond)
			s := c2.status()
			if s.Job.Gen != 1 || s.Job.State != "training" || s.Job.Restarts != 0 {
				t.Fatalf("job after adoption %+v", s.Job)
			}
			for i, ag := range agents {
				if got := ag.find(func(m wire.Msg) bool { return m.Type != wire.TWelcome && m.Type != wire.TAck }); got != nil {
					t.Fatalf("agent %s: the new coordinator sent%s", ag.name, ag.dump())
				}
				if n, _ := nodeOf(s, ag.name); n.State != "training" || !slices.Equal(n.Ranks, []int{i}) || n.Faults != 0 {
					t.Fatalf("node %+v", n)
				}
			}

			// The adopted generation goes on: progress counts, and a later
			// fault restarts the job as usual.
			a, b = agents[0], agents[1]
			a.send(wire.Msg{Type: wire.TProgress, Job: sp.ID, Gen: 1, Rank: 0, Step: 8})
			c2.waitStatus("step 8", func(st coordinator.Status) bool { return st.Job.Step == 8 })
			b.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 1, Code: 137, Err: "killed"})
			for _, ag := range agents {
				ag.waitFor("stop of gen 1", isGen(wire.TStop, sp.ID, 1))
				ag.send(wire.Msg{Type: wire.TStopped, Job: sp.ID, Gen: 1})
			}
			for i, ag := range agents {
				s := ag.waitFor("start of gen 2", isGen(wire.TStart, sp.ID, 2)).m.Spec
				want := wire.Spec{RunID: sp.ID, Command: sp.Command, MaxRestarts: sp.MaxRestarts, RestartCount: 1, WorldSize: 2,
					Ranks: []int{i}, GroupRank: i, GroupWorldSize: 2, MasterAddr: "10.0.0.1", MasterPort: 35001}
				if !specEqual(*s, want) {
					t.Fatalf("agent %s gen 2 %+v, want %+v", ag.name, *s, want)
				}
			}
			for _, ag := range agents {
				ag.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 2})
			}
			s = c2.waitStatus("gen 2 training", jobIs(2, "training"))
			if s.Job.Restarts != 1 {
				t.Fatalf("job %+v", s.Job)
			}

			// The event log tells the story: resumed once, then one fault.
			var types []string
			for _, e := range readEvents(t, c2, 0, false) {
				types = append(types, e.Type)
			}
			i := slices.Index(types, events.CoordinatorResumed)
			if i < 0 || types[0] != events.RunStarted || slices.Contains(types[i+1:], events.CoordinatorResumed) ||
				slices.Contains(types[:i], events.FaultDetected) {
				t.Fatalf("events %v: want the run, one coordinator_resumed, then the fault", types)
			}
		})
	}
}

// A coordinator going away is not its nodes' fault: Close must not count
// faults against the nodes it was connected to, nor quarantine them, nor
// log their loss as a fault of the job.
func TestCloseBlamesNoNode(t *testing.T) {
	q := func(cfg *coordinator.Config) { cfg.QuarantineAfter = 1 }
	c := newCoord(t, q)
	sp := spec("blame", 2, 2)
	launchTwo(t, c, sp, nil)
	c.closeServer(3 * time.Second)
	time.Sleep(100 * time.Millisecond) // the sessions' teardown, even if Close hangs
	for _, n := range c.srv.Status().Nodes {
		if n.Faults != 0 || n.Quarantined {
			t.Errorf("after Close, node %+v", n)
		}
	}
	kvs, _ := c.st.List(t.Context(), "/bulsajo/nodes/")
	for _, kv := range kvs {
		if !strings.Contains(string(kv.Value), `"faults":0`) {
			t.Errorf("after Close, stored %s = %s", kv.Key, kv.Value)
		}
	}
}

// Close with a job running returns, and leaves the workers alone.
func TestCloseWithRunningJob(t *testing.T) {
	c := newCoord(t)
	a, b := launchTwo(t, c, spec("close", 2, 2), nil)
	if !c.closeServer(3 * time.Second) {
		t.FailNow()
	}
	for _, ag := range []*fakeAgent{a, b} {
		if !ag.waitEnded(wait) {
			t.Fatalf("agent %s: session kept", ag.name)
		}
		if got := ag.find(func(m wire.Msg) bool { return m.Type == wire.TStop || m.Type == wire.TEnd }); got != nil {
			t.Fatalf("agent %s: Close touched the workers:%s", ag.name, ag.dump())
		}
	}
}

// ---- 7. events ----

// readEvents reads GET /v1/jobs/ID/events?from=N; with toEnd it reads until
// the stream ends (run_finished), otherwise it takes what is there now.
func readEvents(t *testing.T, c *coord, from int, toEnd bool) []events.Event {
	t.Helper()
	st := c.srv.Status()
	if st.Job == nil {
		t.Fatal("no job")
	}
	evs, ended := streamEvents(t, c, st.Job.ID, from, func(got []events.Event) bool { return !toEnd && len(got) >= st.Job.Events-from })
	if toEnd && !ended {
		t.Fatalf("stream did not end; got %d events", len(evs))
	}
	return evs
}

// streamEvents reads the event stream until it ends or enough returns true.
func streamEvents(t *testing.T, c *coord, id string, from int, enough func([]events.Event) bool) ([]events.Event, bool) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", fmt.Sprintf("%s/v1/jobs/%s/events?from=%d", c.hs.URL, id, from), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" || resp.Header.Get("X-Bulsajo-Job") != id {
		t.Fatalf("events: %s %v", resp.Status, resp.Header)
	}
	timer := time.AfterFunc(wait, func() { resp.Body.Close() })
	defer timer.Stop()
	var out []events.Event
	if enough(out) {
		return out, false
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue // keep-alive
		}
		var e events.Event
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		out = append(out, e)
		if enough(out) {
			return out, false
		}
	}
	return out, sc.Err() == nil && timer.Stop()
}

func TestEventsStream(t *testing.T) {
	c := newCoord(t)
	a := connect(t, c, "a", agentOpts{port: 31001})
	sp := spec("ev", 1, 1)
	if code, _, _ := c.request("GET", "/v1/jobs/ev/events?from=0", "", nil); code != 404 {
		t.Fatalf("events of no job: %d", code)
	}
	c.submit(sp)
	a.waitFor("start", isGen(wire.TStart, sp.ID, 1))

	// A watcher from the start sees the whole run and its stream ends with
	// run_finished.
	type result struct {
		evs   []events.Event
		ended bool
	}
	watcher := make(chan result, 1)
	go func() {
		evs, ended := streamEvents(t, c, sp.ID, 0, func([]events.Event) bool { return false })
		watcher <- result{evs, ended}
	}()
	a.send(wire.Msg{Type: wire.TLaunched, Job: sp.ID, Gen: 1})
	a.send(wire.Msg{Type: wire.TProgress, Job: sp.ID, Gen: 1, Rank: 0, Step: 1})
	a.send(wire.Msg{Type: wire.TExited, Job: sp.ID, Gen: 1, Rank: 0, Code: 0})
	a.waitFor("end", isType(wire.TEnd))
	var all []events.Event
	select {
	case r := <-watcher:
		if !r.ended {
			t.Fatalf("the stream did not end after run_finished: %d events", len(r.evs))
		}
		all = r.evs
	case <-time.After(2 * wait):
		t.Fatal("the event stream never ended")
	}
	if len(all) < 3 || all[0].Type != events.RunStarted || all[1].Type != events.GenerationStart {
		t.Fatalf("events %+v", all)
	}
	last := all[len(all)-1]
	if last.Type != events.RunFinished || last.Outcome != "succeeded" || last.RunID != sp.ID {
		t.Fatalf("last event %+v", last)
	}
	if st := c.status(); st.Job.State != "done" || st.Job.Outcome != "succeeded" || st.Job.Events != len(all) {
		t.Fatalf("job %+v, %d events streamed", st.Job, len(all))
	}

	// from=N skips N events; the stream of a finished job still ends.
	for _, from := range []int{0, 1, 2, len(all) - 1} {
		evs := readEvents(t, c, from, true)
		if len(evs) != len(all)-from {
			t.Fatalf("from=%d: %d events, want %d", from, len(evs), len(all)-from)
		}
		for i := range evs {
			if evs[i].Type != all[from+i].Type || !evs[i].Time.Equal(all[from+i].Time) {
				t.Fatalf("from=%d: event %d is %+v, want %+v", from, i, evs[i], all[from+i])
			}
		}
	}
	for _, from := range []string{"-3", "x", ""} {
		code, _, body := c.request("GET", "/v1/jobs/current/events?from="+from, "", nil)
		if code != 200 || bytes.Count(body, []byte("\n")) != len(all) {
			t.Fatalf("from=%q: %d, %d lines", from, code, bytes.Count(body, []byte("\n")))
		}
	}
}

// A client asking for events after the end of a finished job (it had them
// all already) gets an empty stream that ends, not keep-alives forever.
func TestEventsFromPastTheEndOfAFinishedJob(t *testing.T) {
	c := newCoord(t)
	c.submit(spec("cancelled", 1, 1))
	c.request("POST", "/v1/jobs/cancelled/cancel", testToken, nil)
	st := c.waitStatus("done", func(st coordinator.Status) bool { return st.Job != nil && st.Job.State == "done" })
	for _, from := range []int{st.Job.Events, st.Job.Events + 5} {
		cl := &http.Client{Timeout: 3 * time.Second}
		resp, err := cl.Get(fmt.Sprintf("%s/v1/jobs/cancelled/events?from=%d", c.hs.URL, from))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(bytes.TrimSpace(b)) != 0 {
			t.Fatalf("from=%d of %d events: read %q, %v; want an empty stream that ends", from, st.Job.Events, b, err)
		}
	}
}

// ---- input that once crashed the coordinator (run in a child process) ----

// inChild runs test name in a child process with BULSAJO_CLUSTER_CHILD set
// and reports whether it passed: a panic in a coordinator goroutine kills
// the whole test binary, which must not take the other tests with it.
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv("BULSAJO_CLUSTER_CHILD") != "" {
		return false
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "BULSAJO_CLUSTER_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the coordinator crashed (%v):\n%s", err, firstLines(string(out), 30))
	}
	return true
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// A hello whose free_port is out of range is refused (once it became the
// rendezvous port of a start message wire.Encode refused, and the
// coordinator panicked), whether a job waits for nodes or not.
func TestHelloFreePortOutOfRange(t *testing.T) {
	c := newCoord(t)
	c.submit(spec("port", 1, 1))
	c.waitStatus("waiting", func(st coordinator.Status) bool { return st.Job != nil && st.Job.State == "waiting for nodes" })
	a := openSession(t, c, "bad-port")
	if err := a.sendRaw([]byte(`{"type":"hello","name":"bad-port","nproc":1,"addr":"192.0.2.10","instance":"i","free_port":70000}` + "\n")); err != nil {
		t.Fatal(err)
	}
	r := a.waitFor("reject", isType(wire.TReject))
	if !strings.Contains(r.m.Reason, "port out of range") {
		t.Fatalf("reject reason %q", r.m.Reason)
	}
	if st := c.status(); len(st.Nodes) != 0 {
		t.Fatalf("the refused agent became a node: %+v", st.Nodes)
	}
}

// A start message can be longer than the submit body it came from (JSON
// escaping: '<' is sent as \u003c), and longer than wire.MaxMessage; the
// coordinator must refuse such a job at submit, or fail it, never panic.
func TestStartMessageTooLarge(t *testing.T) {
	if inChild(t) {
		return
	}
	c := newCoord(t)
	a := connect(t, c, "a", agentOpts{port: 31001})
	body := `{"id":"big","command":["python","` + strings.Repeat("<", 400000) + `"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1}`
	code, _, b := c.request("POST", "/v1/jobs", testToken, strings.NewReader(body))
	switch code {
	case 400:
		return
	case 201:
	default:
		t.Fatalf("submit: %d %s", code, b)
	}
	time.Sleep(300 * time.Millisecond)
	c.status()
	if a.find(isType(wire.TStart)) == nil {
		if st := c.srv.Status(); st.Job.State != "done" {
			t.Fatalf("job neither started nor failed: %+v", st.Job)
		}
	}
}
