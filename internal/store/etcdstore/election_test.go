package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/store/etcdstore"
)

// openEtcd opens one client (one coordinator process) confined to prefix.
func openEtcd(t *testing.T, endpoints []string, prefix string) *etcdstore.Etcd {
	t.Helper()
	e, err := etcdstore.OpenEtcd(context.Background(), endpoints,
		etcdstore.WithPrefix(prefix), etcdstore.WithDialTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type won struct {
	l   *etcdstore.Leadership
	err error
	at  time.Time
}

// campaign campaigns in the background until elected or the test ends.
func campaign(t *testing.T, e *etcdstore.Etcd, election, value string, opts ...etcdstore.CampaignOption) <-chan won {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan won, 1)
	go func() {
		l, err := e.Campaign(ctx, election, value, opts...)
		ch <- won{l, err, time.Now()}
	}()
	return ch
}

// elected waits up to d for a background campaign to win.
func elected(t *testing.T, ch <-chan won, d time.Duration) won {
	t.Helper()
	select {
	case w := <-ch:
		if w.err != nil {
			t.Fatalf("Campaign: %v", w.err)
		}
		return w
	case <-time.After(d):
		t.Fatalf("not elected within %v", d)
		return won{}
	}
}

func notElected(t *testing.T, ch <-chan won, d time.Duration) {
	t.Helper()
	select {
	case w := <-ch:
		t.Fatalf("Campaign returned %v, %v; want it blocked", w.l, w.err)
	case <-time.After(d):
	}
}

func isDone(l *etcdstore.Leadership) bool {
	select {
	case <-l.Done():
		return true
	default:
		return false
	}
}

func TestElection(t *testing.T) {
	m := startEmbedded(t, t.TempDir())
	eps := []string{m.ClientURL()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := openEtcd(t, eps, "/run1/")
	b := openEtcd(t, eps, "/run1/")

	if v, err := a.Leader(ctx, "coordinator"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Leader before any campaign = %q, %v; want ErrNotFound", v, err)
	}
	for _, tc := range []struct {
		name, election string
		opts           []etcdstore.CampaignOption
	}{
		{"empty name", "", nil},
		{"slash in name", "a/b", nil},
		{"zero TTL", "coordinator", []etcdstore.CampaignOption{etcdstore.WithTTL(0)}},
	} {
		if l, err := a.Campaign(ctx, tc.election, "x", tc.opts...); err == nil {
			l.Resign(ctx)
			t.Errorf("%s: Campaign succeeded", tc.name)
		}
	}

	start := time.Now()
	la, err := a.Campaign(ctx, "coordinator", "a:7000")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("A elected in %v", time.Since(start).Round(time.Millisecond))
	if la.Value() != "a:7000" || isDone(la) {
		t.Fatalf("A: Value %q, done %v", la.Value(), isDone(la))
	}
	if v, err := b.Leader(ctx, "coordinator"); err != nil || v != "a:7000" {
		t.Errorf("Leader = %q, %v; want a:7000", v, err)
	}

	// A candidate that gives up returns when its context ends, and withdraws
	// (onCandidateKey below finds only the next candidacy's key).
	tctx, tcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	l, err := b.Campaign(tctx, "coordinator", "b:7000")
	tcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("B's Campaign with a 300ms deadline = %v, %v; want DeadlineExceeded", l, err)
	}

	bch := campaign(t, b, "coordinator", "b:7000")
	notElected(t, bch, 300*time.Millisecond)
	// A standby whose session is lost while it waits stays a candidate,
	// with a new one.
	onCandidateKey(t, m.ClientURL(), "/run1/", "b:7000", revokeLease)
	notElected(t, bch, 300*time.Millisecond)
	onCandidateKey(t, m.ClientURL(), "/run1/", "b:7000", exists)

	// Another prefix is another election.
	other := openEtcd(t, eps, "/run2/")
	if lo, err := other.Campaign(ctx, "coordinator", "o:7000"); err != nil {
		t.Errorf("Campaign under another prefix: %v", err)
	} else {
		lo.Resign(ctx)
	}

	sa := la.Store()
	rev, err := sa.Put(ctx, "/gen", []byte("1"))
	if err != nil {
		t.Fatalf("leader's Put: %v", err)
	}
	if rev, err = sa.CompareAndPut(ctx, "/gen", []byte("2"), rev); err != nil {
		t.Fatalf("leader's CompareAndPut: %v", err)
	}
	if kv, err := sa.Get(ctx, "/gen"); err != nil || string(kv.Value) != "2" || kv.Revision != rev {
		t.Errorf("Get through the fenced store = %+v, %v", kv, err)
	}
	if kv, err := a.Get(ctx, "/gen"); err != nil || string(kv.Value) != "2" {
		t.Errorf("Get through the plain store = %+v, %v; the fenced one writes under the prefix", kv, err)
	}
	if _, err := sa.CompareAndPut(ctx, "/gen", []byte("x"), rev-1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("leader's stale CompareAndPut: %v, want ErrConflict", err)
	}

	start = time.Now()
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if !isDone(la) {
		t.Error("Done not closed when Resign returned")
	}
	w := elected(t, bch, time.Second)
	t.Logf("B elected %v after A resigned", w.at.Sub(start).Round(time.Millisecond))
	lb := w.l
	if v, err := a.Leader(ctx, "coordinator"); err != nil || v != "b:7000" {
		t.Errorf("Leader = %q, %v; want b:7000", v, err)
	}
	if err := la.Resign(ctx); err != nil {
		t.Errorf("second Resign: %v", err)
	}

	sb := lb.Store()
	for _, tc := range []struct {
		name  string
		write func() (int64, error)
		want  error
	}{
		{"deposed Put", func() (int64, error) { return sa.Put(ctx, "/gen", []byte("a")) }, etcdstore.ErrNotLeader},
		// The term is checked first: a deposed leader hears it is deposed,
		// whatever the key's revision.
		{"deposed CompareAndPut", func() (int64, error) { return sa.CompareAndPut(ctx, "/gen", []byte("a"), rev) }, etcdstore.ErrNotLeader},
		{"deposed create", func() (int64, error) { return sa.CompareAndPut(ctx, "/new", []byte("a"), 0) }, etcdstore.ErrNotLeader},
		{"leader's stale CompareAndPut", func() (int64, error) { return sb.CompareAndPut(ctx, "/gen", []byte("b"), rev-1) }, store.ErrConflict},
		{"leader's CompareAndPut", func() (int64, error) { return sb.CompareAndPut(ctx, "/gen", []byte("b"), rev) }, nil},
		{"leader's Put", func() (int64, error) { return sb.Put(ctx, "/gen", []byte("b2")) }, nil},
		{"leader's create", func() (int64, error) { return sb.CompareAndPut(ctx, "/new", []byte("b"), 0) }, nil},
	} {
		_, err := tc.write()
		if !errors.Is(err, tc.want) { // errors.Is(nil, nil) holds
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if kv, err := sa.Get(ctx, "/gen"); err != nil || string(kv.Value) != "b2" {
		t.Errorf("deposed leader's Get = %+v, %v; want b2 (reads pass through)", kv, err)
	}

	// Closing the fenced view leaves the client open.
	sb.Close()
	if _, err := sb.Put(ctx, "/gen", []byte("c")); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", err)
	}
	if _, err := lb.Store().Put(ctx, "/gen", []byte("c")); err != nil {
		t.Errorf("Put through a new view after closing another: %v", err)
	}
	if _, err := b.Get(ctx, "/gen"); err != nil {
		t.Errorf("client after closing a fenced view: %v", err)
	}

	if err := lb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Leader(ctx, "coordinator"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Leader after all resigned = %q, %v; want ErrNotFound", v, err)
	}
}

// TestElectionSessionLoss: the leader's session stops being renewed; a
// standby must take over within the TTL (plus etcd's expiry granularity)
// and the deposed leader's writes must be refused.
func TestElectionSessionLoss(t *testing.T) {
	m := startEmbedded(t, t.TempDir())
	const ttl = etcdstore.DefaultElectionTTL
	for i, tc := range []struct {
		name string
		// cut ends A's renewals: a is A's client, p the proxy it goes through.
		cut func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string)
		// heal, if set, reconnects A before its fenced write.
		heal       func(p *proxy)
		doneWithin time.Duration // for A's Done after the cut
		// stepsDown: A's Done must close before B is elected (A steps
		// down on its own when its renewals go unanswered).
		stepsDown bool
		wantWrite error // A's fenced write afterwards
	}{{
		// Another client revokes A's lease: A's process is untouched.
		name: "lease revoked",
		cut: func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string) {
			onCandidateKey(t, m.ClientURL(), prefix, "a", revokeLease)
		},
		doneWithin: time.Second,
		wantWrite:  etcdstore.ErrNotLeader,
	}, {
		// Someone deletes A's election key (its lease lives on).
		name: "key deleted",
		cut: func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string) {
			onCandidateKey(t, m.ClientURL(), prefix, "a", deleteKey)
		},
		doneWithin: time.Second,
		wantWrite:  etcdstore.ErrNotLeader,
	}, {
		// A's connection to etcd stalls (a partition: packets dropped, no
		// reset): it cannot renew, and learns of it only from its own
		// keep-alive deadline. Its writes after the partition heals must be
		// refused.
		name: "partitioned",
		cut: func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string) {
			p.stall(true)
		},
		heal:       func(p *proxy) { p.stall(false) },
		doneWithin: time.Duration(ttl) * time.Second,
		stepsDown:  true,
		wantWrite:  etcdstore.ErrNotLeader,
	}, {
		// A resigns while cut off: the revoke cannot go through, but A
		// stops renewing, so the lease expires. Calls give up with their
		// context.
		name: "resigned while partitioned",
		cut: func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string) {
			p.stall(true)
			for _, tc := range []struct {
				name string
				call func(context.Context) error
			}{
				{"Resign", la.Resign},
				{"Campaign", func(ctx context.Context) error {
					_, err := a.Campaign(ctx, "other", "a")
					return err
				}},
				{"Leader", func(ctx context.Context) error {
					_, err := a.Leader(ctx, "coordinator")
					return err
				}},
				{"Put", func(ctx context.Context) error {
					_, err := la.Store().Put(ctx, "/gen", []byte("x"))
					return err
				}},
			} {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				err := tc.call(ctx)
				cancel()
				if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > time.Second {
					t.Errorf("%s while cut off: %v after %v; want DeadlineExceeded after 200ms", tc.name, err, took)
				}
			}
		},
		heal:       func(p *proxy) { p.stall(false) },
		doneWithin: time.Second,
		stepsDown:  true,
		wantWrite:  etcdstore.ErrNotLeader,
	}, {
		// A's process dies: its client goes without revoking the lease,
		// which expires.
		name:       "client closed",
		cut:        func(t *testing.T, a *etcdstore.Etcd, la *etcdstore.Leadership, p *proxy, prefix string) { a.Close() },
		doneWithin: time.Second,
		wantWrite:  store.ErrClosed,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			prefix := fmt.Sprintf("/loss%d/", i)
			p := startProxy(t, m.ClientURL())
			a := openEtcd(t, []string{p.url()}, prefix)
			b := openEtcd(t, []string{m.ClientURL()}, prefix)
			la, err := a.Campaign(ctx, "coordinator", "a")
			if err != nil {
				t.Fatal(err)
			}
			sa := la.Store()
			if _, err := sa.Put(ctx, "/gen", []byte("a")); err != nil {
				t.Fatal(err)
			}
			bch := campaign(t, b, "coordinator", "b")
			notElected(t, bch, 200*time.Millisecond)

			cutAt := time.Now()
			tc.cut(t, a, la, p, prefix)
			var doneAfter time.Duration
			select {
			case <-la.Done():
				doneAfter = time.Since(cutAt)
			case <-time.After(tc.doneWithin):
				t.Fatalf("A's Done not closed within %v", tc.doneWithin)
			}
			w := elected(t, bch, time.Duration(ttl)*time.Second+time.Second-time.Since(cutAt))
			t.Logf("takeover: A's Done closed %v after the cut, B elected %v after it (TTL %ds)",
				doneAfter.Round(time.Millisecond), w.at.Sub(cutAt).Round(time.Millisecond), ttl)
			if tc.stepsDown && w.at.Sub(cutAt) < doneAfter {
				t.Errorf("B was elected before A's Done closed")
			}
			if v, err := b.Leader(ctx, "coordinator"); err != nil || v != "b" {
				t.Errorf("Leader = %q, %v; want b", v, err)
			}

			if tc.heal != nil {
				tc.heal(p)
			}
			if _, err := sa.Put(ctx, "/gen", []byte("a2")); !errors.Is(err, tc.wantWrite) {
				t.Errorf("deposed leader's Put: %v, want %v", err, tc.wantWrite)
			}
			if _, err := w.l.Store().Put(ctx, "/gen", []byte("b")); err != nil {
				t.Errorf("new leader's Put: %v", err)
			}
			if kv, err := b.Get(ctx, "/gen"); err != nil || string(kv.Value) != "b" {
				t.Errorf("Get = %+v, %v; want b", kv, err)
			}
		})
	}
}

// onCandidateKey runs f, with a client of its own, on the election key
// under prefix whose value is value (only election keys have a lease).
func onCandidateKey(t *testing.T, endpoint, prefix, value string, f func(context.Context, *clientv3.Client, *mvccpb.KeyValue) error) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		if kv.Lease != 0 && string(kv.Value) == value {
			if err := f(ctx, cli, kv); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d election keys of %q under %s, want 1", n, value, prefix)
	}
}

func revokeLease(ctx context.Context, cli *clientv3.Client, kv *mvccpb.KeyValue) error {
	_, err := cli.Revoke(ctx, clientv3.LeaseID(kv.Lease))
	return err
}

func exists(context.Context, *clientv3.Client, *mvccpb.KeyValue) error { return nil }

func deleteKey(ctx context.Context, cli *clientv3.Client, kv *mvccpb.KeyValue) error {
	_, err := cli.Delete(ctx, string(kv.Key))
	return err
}

// TestElectionExternalCluster: three coordinators' worth of election on a
// 3-member etcd cluster; losing the etcd leader must not cost the
// coordinator leadership more than a re-election, and fenced writes go on.
func TestElectionExternalCluster(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := openEtcd(t, c.endpoints(), "/job/")
	b := openEtcd(t, c.endpoints(), "/job/")

	la, err := a.Campaign(ctx, "coordinator", "a")
	if err != nil {
		t.Fatal(err)
	}
	bch := campaign(t, b, "coordinator", "b")
	notElected(t, bch, 200*time.Millisecond)
	if v, err := b.Leader(ctx, "coordinator"); err != nil || v != "a" {
		t.Fatalf("Leader = %q, %v; want a", v, err)
	}
	if _, err := la.Store().Put(ctx, "/gen", []byte("0")); err != nil {
		t.Fatal(err)
	}

	leader := c.leader(t)
	leader.kill()
	killedAt := time.Now()
	t.Logf("killed etcd leader %s", leader.name)

	// The first fenced write may wait for etcd's election; then the
	// coordinator leader (A, or B should A's session have lapsed) writes.
	cur, s := la, la.Store()
	var failures []error
	for {
		wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := s.Put(wctx, "/gen", []byte("1"))
		wcancel()
		if err == nil {
			break
		}
		failures = append(failures, err)
		if errors.Is(err, etcdstore.ErrNotLeader) && cur == la {
			w := elected(t, bch, 5*time.Second)
			t.Logf("A lost the coordinator leadership in the etcd failover; B took over after %v",
				w.at.Sub(killedAt).Round(time.Millisecond))
			cur, s = w.l, w.l.Store()
		}
		if time.Since(killedAt) > 10*time.Second {
			t.Fatalf("no fenced write within 10s of killing the etcd leader: %v", failures)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("first fenced write %v after the kill (%d failed tries %v); leader %s",
		time.Since(killedAt).Round(time.Millisecond), len(failures), failures, cur.Value())
	if cur == la {
		if isDone(la) {
			t.Error("A's write succeeded but its Done is closed")
		}
		notElected(t, bch, 0)
	}

	// From now on every fenced write works first time.
	for i := range 10 {
		if _, err := s.Put(ctx, fmt.Sprintf("/n/%d", i), []byte("x")); err != nil {
			t.Fatalf("fenced Put %d: %v", i, err)
		}
	}
	if v, err := a.Leader(ctx, "coordinator"); err != nil || v != cur.Value() {
		t.Errorf("Leader = %q, %v; want %s", v, err, cur.Value())
	}

	// And the election still hands over on the two remaining members.
	if cur == la {
		if err := la.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		w := elected(t, bch, time.Second)
		if _, err := la.Store().Put(ctx, "/gen", []byte("a")); !errors.Is(err, etcdstore.ErrNotLeader) {
			t.Errorf("deposed leader's Put: %v, want ErrNotLeader", err)
		}
		if _, err := w.l.Store().Put(ctx, "/gen", []byte("b")); err != nil {
			t.Errorf("new leader's Put: %v", err)
		}
	}
}

// --- a TCP proxy that can stall, to cut one client off from etcd ---

type proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cond    *sync.Cond
	stalled bool
	closed  bool
	conns   []net.Conn
}

func startProxy(t *testing.T, targetURL string) *proxy {
	t.Helper()
	u, err := url.Parse(targetURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: u.Host}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go p.pipe(out, in)
		go p.pipe(in, out)
	}
}

// pipe copies src to dst, holding each chunk while the proxy is stalled.
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.stalled && !p.closed {
				p.cond.Wait()
			}
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// stall stops (true) or resumes (false) the traffic, leaving the
// connections open.
func (p *proxy) stall(on bool) {
	p.mu.Lock()
	p.stalled = on
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}
