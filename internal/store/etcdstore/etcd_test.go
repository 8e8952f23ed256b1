package etcdstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/store/etcdstore"
	"github.com/bulsajo/bulsajo/internal/store/storetest"
)

// etcdBin is Debian's etcd-server (3.4), the external cluster of the tests.
const etcdBin = "/usr/bin/etcd"

var prefixSeq atomic.Int64

// openPrefixed opens a client confined to a prefix no other subtest uses:
// storetest's fresh, empty store on a shared cluster.
func openPrefixed(t *testing.T, endpoints []string) store.Store {
	t.Helper()
	s, err := etcdstore.OpenEtcd(context.Background(), endpoints,
		etcdstore.WithPrefix(fmt.Sprintf("/storetest/%d/", prefixSeq.Add(1))),
		etcdstore.WithDialTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startEmbedded(t *testing.T, dir string, opts ...etcdstore.EmbeddedOption) *etcdstore.Embedded {
	t.Helper()
	e, err := etcdstore.StartEmbedded(context.Background(), dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestEmbeddedConformance(t *testing.T) {
	e := startEmbedded(t, t.TempDir())
	storetest.Run(t, func(t *testing.T) store.Store {
		return openPrefixed(t, []string{e.ClientURL()})
	})
}

func TestEmbeddedRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := startEmbedded(t, dir)
	rev, err := e.Store().Put(ctx, "/job/generation", []byte("7"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store().Get(ctx, "/job/generation"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}

	// Again, on given ports this time.
	ports := freePorts(t, 2)
	e = startEmbedded(t, dir, etcdstore.WithPorts(ports[0], ports[1]))
	if want := fmt.Sprintf("http://127.0.0.1:%d", ports[0]); e.ClientURL() != want {
		t.Errorf("ClientURL = %s, want %s", e.ClientURL(), want)
	}
	// The ports changed: the membership must follow.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL()}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ml, err := cli.MemberList(ctx)
	if want := fmt.Sprintf("http://127.0.0.1:%d", ports[1]); err != nil || len(ml.Members) != 1 ||
		fmt.Sprint(ml.Members[0].PeerURLs) != "["+want+"]" {
		t.Errorf("MemberList = %v, %v; want one member with peer URL %s", ml, err, want)
	}
	kv, err := e.Store().Get(ctx, "/job/generation")
	if err != nil || string(kv.Value) != "7" || kv.Revision != rev {
		t.Fatalf("after restart: Get = %+v, %v; want 7 at revision %d", kv, err, rev)
	}
	if r, err := e.Store().CompareAndPut(ctx, "/job/generation", []byte("8"), rev); err != nil || r <= rev {
		t.Errorf("CompareAndPut after restart = %d, %v", r, err)
	}
}

func TestEmbeddedStoreOptions(t *testing.T) {
	ctx := context.Background()
	e := startEmbedded(t, t.TempDir(), etcdstore.WithStoreOptions(etcdstore.WithPrefix("/bulsajo/run1/")))
	if _, err := e.Store().Put(ctx, "/gen", []byte("1")); err != nil {
		t.Fatal(err)
	}
	raw, err := etcdstore.OpenEtcd(ctx, []string{e.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if kv, err := raw.Get(ctx, "/bulsajo/run1//gen"); err != nil || string(kv.Value) != "1" {
		t.Errorf("unprefixed Get = %+v, %v", kv, err)
	}
}

func TestOpenEtcdNoEndpoint(t *testing.T) {
	ports := freePorts(t, 2) // nothing listens there
	eps := []string{
		fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
	}
	start := time.Now()
	s, err := etcdstore.OpenEtcd(context.Background(), eps, etcdstore.WithDialTimeout(300*time.Millisecond))
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatal("OpenEtcd succeeded with no server")
	}
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), eps[0]) {
		t.Errorf("err = %v; want ErrUnavailable naming the endpoints", err)
	}
	if took > 3*time.Second {
		t.Errorf("OpenEtcd took %v with a 300ms dial timeout", took)
	}
	t.Logf("%v after %v", err, took.Round(time.Millisecond))

	if _, err := etcdstore.OpenEtcd(context.Background(), nil); err == nil {
		t.Error("OpenEtcd with no endpoints succeeded")
	}
}

func TestExternalClusterConformance(t *testing.T) {
	c := startCluster(t, 3)
	storetest.Run(t, func(t *testing.T) store.Store {
		return openPrefixed(t, c.endpoints())
	})
}

func TestExternalClusterSurvivesMemberLoss(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, 3)
	s, err := etcdstore.OpenEtcd(ctx, c.endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before, err := s.Put(ctx, "/before", []byte("b"))
	if err != nil {
		t.Fatal(err)
	}

	// Kill the leader: the hardest single loss (an election follows).
	leader := c.leader(t)
	leader.kill()
	t.Logf("killed leader %s (%s)", leader.name, leader.clientURL)

	// The first write may race the election; it must succeed within a few
	// election timeouts.
	start := time.Now()
	var failures []error
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = s.Put(cctx, "/after", []byte("a"))
		cancel()
		if err == nil {
			break
		}
		failures = append(failures, err)
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no write succeeded within 10s of losing the leader: %v", failures)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("first write after the kill succeeded after %v, %d failed tries %v",
		time.Since(start).Round(time.Millisecond), len(failures), failures)

	// From now on every call must work, first time.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if kv, err := s.Get(cctx, "/before"); err != nil || string(kv.Value) != "b" || kv.Revision != before {
		t.Errorf("Get /before = %+v, %v", kv, err)
	}
	for i := range 20 {
		k, v := fmt.Sprintf("/n/%02d", i), []byte(fmt.Sprint(i))
		r, err := s.Put(cctx, k, v)
		if err != nil {
			t.Fatalf("Put %s: %v", k, err)
		}
		kv, err := s.Get(cctx, k)
		if err != nil || !bytes.Equal(kv.Value, v) || kv.Revision != r {
			t.Fatalf("Get %s = %+v, %v; want %s at %d", k, kv, err, v, r)
		}
		if _, err := s.CompareAndPut(cctx, k, []byte("cas"), r); err != nil {
			t.Fatalf("CompareAndPut %s: %v", k, err)
		}
	}
	if kvs, err := s.List(cctx, "/n/"); err != nil || len(kvs) != 20 {
		t.Errorf("List = %d keys, %v; want 20", len(kvs), err)
	}
}

// --- an external etcd cluster, from Debian's etcd-server ---

type member struct {
	name, clientURL, peerURL, dir, logPath string
	cmd                                    *exec.Cmd
	done                                   chan struct{} // closed when the process has exited
}

func (m *member) kill() {
	m.cmd.Process.Kill()
	<-m.done
}

func (m *member) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

type cluster struct{ members []*member }

func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

func (c *cluster) leader(t *testing.T) *member {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, m := range c.members {
		st, err := cli.Status(ctx, m.clientURL)
		if err != nil {
			t.Fatalf("status of %s: %v", m.name, err)
		}
		if st.Header.MemberId == st.Leader {
			return m
		}
	}
	t.Fatal("no member is the leader")
	return nil
}

// requireEtcd fails (not skips: the multi-node mode depends on these tests)
// when etcd-server is not installed.
func requireEtcd(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(etcdBin); err != nil {
		t.Fatalf("%s not found (%v): the external-cluster tests need Debian's etcd-server; "+
			"install it with `sudo apt-get install -y etcd-server` or `make deps` (make test runs it)", etcdBin, err)
	}
}

// startCluster starts an n-member etcd cluster on free loopback ports, with
// its data in temporary directories; every member is killed when the test
// ends (and by the kernel should the test binary die first).
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	requireEtcd(t)
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var c *cluster
		if c, err = tryStartCluster(t, n); err == nil {
			return c
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break // only a port taken between choosing and binding is retried
		}
		t.Logf("attempt %d: %v", attempt, err)
	}
	t.Fatal(err)
	return nil
}

func tryStartCluster(t *testing.T, n int) (*cluster, error) {
	ports := freePorts(t, 2*n)
	root := t.TempDir()
	c := &cluster{}
	var initial []string
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dir:       filepath.Join(root, fmt.Sprintf("m%d", i)),
			logPath:   filepath.Join(root, fmt.Sprintf("m%d.log", i)),
			done:      make(chan struct{}),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}
	token := fmt.Sprintf("bulsajo-test-%d-%d", os.Getpid(), prefixSeq.Add(1))
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD") {
			env = append(env, kv) // no stray ETCD_* settings
		}
	}
	stop := func() {
		for _, m := range c.members {
			if m.cmd != nil && m.cmd.Process != nil {
				m.kill()
			}
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			for _, m := range c.members {
				b, _ := os.ReadFile(m.logPath)
				t.Logf("%s log:\n%s", m.name, tail(b, 3000))
			}
		}
	})
	for _, m := range c.members {
		logf, err := os.Create(m.logPath)
		if err != nil {
			return nil, err
		}
		m.cmd = exec.Command(etcdBin,
			"--name", m.name,
			"--data-dir", m.dir,
			"--listen-client-urls", m.clientURL,
			"--advertise-client-urls", m.clientURL,
			"--listen-peer-urls", m.peerURL,
			"--initial-advertise-peer-urls", m.peerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			// Loopback: elect fast (defaults 100/1000 ms are for networks).
			"--heartbeat-interval", "25",
			"--election-timeout", "250",
			"--logger", "zap", "--log-level", "error",
		)
		m.cmd.Env = env
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := m.cmd.Start(); err != nil {
			logf.Close()
			stop()
			return nil, err
		}
		logf.Close()
		go func(m *member) { m.cmd.Wait(); close(m.done) }(m)
	}

	// Ready: a linearizable read needs an elected leader.
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, m := range c.members {
			if m.exited() {
				b, _ := os.ReadFile(m.logPath)
				stop()
				return nil, fmt.Errorf("etcd member %s exited at start: %s", m.name, tail(b, 2000))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		s, err := etcdstore.OpenEtcd(ctx, c.endpoints(), etcdstore.WithDialTimeout(500*time.Millisecond))
		if err == nil {
			_, err = s.Get(ctx, "/ready")
			s.Close()
		}
		cancel()
		if errors.Is(err, store.ErrNotFound) {
			return c, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("etcd cluster not ready within 20s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
