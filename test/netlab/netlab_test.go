package netlab_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/test/netlab"
)

const python = "/usr/bin/python3"

// pyServer accepts one connection on argv[1], answers "py:" + what it got.
const pyServer = `import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.sendall(b"py:" + c.recv(100))
c.close()
`

// pyClient sends "hello\n" to argv[1]:argv[2] and prints the answer.
const pyClient = `import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"hello\n")
print(c.recv(100).decode().strip())
`

func needPython(t *testing.T) {
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s", python)
	}
}

// echo serves an in-process echo server in h's namespace.
func echo(t *testing.T, h *netlab.Host) (port int) {
	t.Helper()
	ln, err := h.Listen("tcp", h.Addr(0))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func dial(t *testing.T, from *netlab.Host, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.Name, addr, err)
	}
	return c
}

// exchange writes msg on c and reads it back within d.
func exchange(t *testing.T, c net.Conn, msg string, d time.Duration) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	expect(t, c, msg, d)
}

func expect(t *testing.T, c net.Conn, msg string, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q back: got %q, %v", msg, buf, err)
	}
}

// dialTimesOut asserts that a connect from h to addr times out: the SYN is
// dropped, not answered by a reset or an ICMP error.
func dialTimesOut(t *testing.T, from *netlab.Host, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 400*time.Millisecond)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("%s -> %s connected across a cut", from.Name, addr)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("%s -> %s across a cut: %v; want a timeout", from.Name, addr, err)
	}
}

// tcpStats reads the TCP MIB counters of h's namespace.
func tcpStats(t *testing.T, h *netlab.Host) map[string]int64 {
	t.Helper()
	var keys []string
	m := map[string]int64{}
	for line := range strings.Lines(h.Run(t, "cat", "/proc/net/snmp")) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if keys == nil {
			keys = f[1:]
			continue
		}
		for i, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			m[keys[i]] = n
		}
	}
	if len(m) == 0 {
		t.Fatalf("no Tcp counters in %s's /proc/net/snmp", h.Name)
	}
	return m
}

func TestReach(t *testing.T) {
	lab := netlab.New(t, "a", "b", "c")
	a, b, c := lab.Host("a"), lab.Host("b"), lab.Host("c")
	for i, h := range lab.Hosts() {
		if want := strings.TrimSuffix(lab.Subnet(), "0/24") + strconv.Itoa(i+1); h.IP != want {
			t.Errorf("host %s: IP %s, want %s", h.Name, h.IP, want)
		}
		out := h.Run(t, "ip", "-o", "addr", "show")
		if !strings.Contains(out, "inet "+h.IP+"/24") || !strings.Contains(out, "inet 127.0.0.1/8") {
			t.Errorf("host %s addresses:\n%s", h.Name, out)
		}
		if out := h.Run(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 2 {
			t.Errorf("host %s: want just lo and eth0:\n%s", h.Name, out)
		}
	}

	// Every host reaches every other, in-process.
	ports := map[*netlab.Host]int{}
	for _, h := range lab.Hosts() {
		ports[h] = echo(t, h)
	}
	for _, from := range lab.Hosts() {
		for _, to := range lab.Hosts() {
			if from != to {
				exchange(t, dial(t, from, to.Addr(ports[to])), from.Name+">"+to.Name, 5*time.Second)
			}
		}
	}

	// And programs run in the namespaces: a python server on a, a python
	// client on c.
	needPython(t)
	srv := a.Command(t.Context(), python, "-c", pyServer, a.IP)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	port, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, b, net.JoinHostPort(a.IP, strings.TrimSpace(port)))
	conn.Write([]byte("x"))
	expect(t, conn, "py:x", 5*time.Second)
	if err := srv.Wait(); err != nil {
		t.Fatalf("python server: %v", err)
	}
	if out := c.Run(t, python, "-c", pyClient, b.IP, strconv.Itoa(ports[b])); strings.TrimSpace(out) != "hello" {
		t.Fatalf("python client on c: %q", out)
	}
}

// TestCutHeal checks the partition property: while a host is cut, connects
// to and from it time out and established connections stall; after Heal
// they carry on — no connection is reset.
func TestCutHeal(t *testing.T) {
	lab := netlab.New(t, "a", "b", "c")
	a, b, c := lab.Host("a"), lab.Host("b"), lab.Host("c")
	pa, pb := echo(t, a), echo(t, b)
	ba := dial(t, b, a.Addr(pa)) // to the host that gets cut
	ab := dial(t, a, b.Addr(pb)) // from it
	exchange(t, ba, "before", time.Second)
	exchange(t, ab, "before", time.Second)
	statsA, statsB := tcpStats(t, a), tcpStats(t, b)

	a.Cut()
	cutAt := time.Now()
	// In flight across the cut: lost, retransmitted after Heal.
	for _, conn := range []net.Conn{ba, ab} {
		if _, err := conn.Write([]byte("during")); err != nil {
			t.Fatalf("write during the cut: %v", err)
		}
	}
	for _, conn := range []net.Conn{ba, ab} {
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := conn.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read across the cut: %d bytes, %v; want a timeout", n, err)
		}
	}
	// The cut host sees nothing: eth0 keeps its carrier.
	if out := a.Run(t, "ip", "-o", "link", "show", "dev", "eth0"); !strings.Contains(out, "LOWER_UP") {
		t.Errorf("eth0 of the cut host lost its carrier:\n%s", out)
	}
	dialTimesOut(t, b, a.Addr(pa))
	dialTimesOut(t, a, b.Addr(pb))
	dialTimesOut(t, a, c.Addr(9)) // nothing listens: a reset would say "refused"
	// The others still talk.
	exchange(t, dial(t, c, b.Addr(pb)), "c>b", time.Second)
	cut := time.Since(cutAt)

	a.Heal()
	healAt := time.Now()
	expect(t, ba, "during", 10*time.Second)
	expect(t, ab, "during", 10*time.Second)
	t.Logf("cut %v; stalled data arrived %v after Heal", cut.Round(time.Millisecond), time.Since(healAt).Round(time.Millisecond))
	exchange(t, ba, "after", time.Second)
	exchange(t, ab, "after", time.Second)
	exchange(t, dial(t, b, a.Addr(pa)), "new", time.Second)

	for _, s := range []struct {
		h      *netlab.Host
		before map[string]int64
	}{{a, statsA}, {b, statsB}} {
		now := tcpStats(t, s.h)
		for _, k := range []string{"OutRsts", "EstabResets"} {
			if now[k] != s.before[k] {
				t.Errorf("host %s: Tcp %s %d -> %d across the cut", s.h.Name, k, s.before[k], now[k])
			}
		}
	}

	// Cut twice, heal twice: both idempotent.
	b.Cut()
	b.Cut()
	dialTimesOut(t, c, b.Addr(pb))
	b.Heal()
	b.Heal()
	exchange(t, dial(t, c, b.Addr(pb)), "again", time.Second)
}

func TestCleanup(t *testing.T) {
	netlab.Require(t)
	var (
		names  []string
		orphan int
		child  *exec.Cmd
	)
	t.Run("lab", func(t *testing.T) {
		lab := netlab.New(t, "a", "b")
		for _, h := range lab.Hosts() {
			names = append(names, h.NS)
		}
		a := lab.Host("a")
		// A daemon that is no child of ours, and a child we never stop.
		out := a.Run(t, "sh", "-c", "sleep 300 </dev/null >/dev/null 2>&1 & echo $!")
		var err error
		if orphan, err = strconv.Atoi(strings.TrimSpace(out)); err != nil {
			t.Fatalf("pid %q: %v", out, err)
		}
		child = lab.Host("b").Command(context.Background(), "sleep", "300")
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		// `ip netns exec` enters the namespace a moment after it starts; a
		// cleanup that lists the namespace's processes before that cannot
		// see it (the test once raced it on a loaded machine). Wait until
		// it is in.
		ns := lab.Host("b").NS
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			out, _ := exec.Command("ip", "netns", "pids", ns).Output()
			if slices.Contains(strings.Fields(string(out)), strconv.Itoa(child.Process.Pid)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the child never entered namespace %s", ns)
			}
		}
		echo(t, a) // a socket keeps its namespace alive until closed
	})
	if t.Failed() {
		return
	}

	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range strings.Fields(string(list)) {
		for _, n := range names {
			if ns == n || strings.HasPrefix(n, ns+"-") {
				t.Errorf("namespace %s left behind", ns)
			}
		}
	}

	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("child in the lab: %v; want killed", err)
		}
	case <-time.After(5 * time.Second):
		child.Process.Kill()
		t.Errorf("child in the lab still running after cleanup")
	}
	// The orphan was reparented; dead means gone or a zombie.
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat"); err == nil {
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] != "Z" {
			syscall.Kill(orphan, syscall.SIGKILL)
			t.Errorf("process %d in the lab survived cleanup: %s", orphan, stat)
		}
	}
}

// TestConcurrentLabs builds labs in parallel: distinct numbers, namespaces
// and subnets, each working.
func TestConcurrentLabs(t *testing.T) {
	netlab.Require(t)
	const n = 4
	subnets := make(chan string, n)
	t.Run("group", func(t *testing.T) {
		for i := range n {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				lab := netlab.New(t, "a", "b")
				subnets <- lab.Subnet()
				a, b := lab.Host("a"), lab.Host("b")
				exchange(t, dial(t, a, b.Addr(echo(t, b))), "hi", time.Second)
			})
		}
	})
	close(subnets)
	seen := map[string]bool{}
	for s := range subnets {
		if seen[s] {
			t.Errorf("two concurrent labs on %s", s)
		}
		seen[s] = true
	}
}
