// Package netlab builds throwaway multi-host networks out of Linux network
// namespaces, for integration tests that need the coordinator and its agents
// on separate "hosts" and need to partition them.
//
// A Lab is one namespace per host plus a "hub" namespace holding a bridge:
//
//	hub ns (bsjN):   br0 ── p1 ── p2 ── ... (one bridge port per host)
//	                        │     │
//	host ns (bsjN-a): eth0 10.N.0.1/24
//	host ns (bsjN-b):       eth0 10.N.0.2/24
//
// Nothing is created in, or changed in, the root namespace's networking.
//
// Partitions: Host.Cut puts the host's bridge port in the "disabled" STP
// state, so the bridge silently drops every frame to and from that host —
// a switch that stops forwarding. Neither end of the veth pair changes state:
// the host keeps its carrier, its addresses and routes, and no packet (RST,
// ICMP) reaches any socket, so established TCP connections simply stop
// making progress and resume on Heal, exactly as across a real partition.
// Every host also gets permanent neighbour (ARP) entries for all the others,
// so a cut never turns into "no route to host" when ARP would fail: a
// connect across a cut times out, like one across a real partition does.
// Why not the alternatives: this kernel has no netem qdisc and neither nft
// nor iptables is installed; setting the hub-side veth down takes the cut
// host's carrier away and flushes its neighbour table, so the cut host's own
// connects failed with EHOSTUNREACH after 3 s instead of timing out.
//
// Programs run in a host with Host.Command or Host.Run; the test process
// itself can listen and dial from a host with Host.Listen and Host.Dial.
//
// Tests call Require (or New, which calls it): it skips the test when
// namespaces cannot be used, unless BULSAJO_REQUIRE_NETNS=1, in which case it
// fails it, so CI cannot silently skip.
package netlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// EnvRequire names the environment variable that turns Require's skip into
// a failure when set to "1".
const EnvRequire = "BULSAJO_REQUIRE_NETNS"

const (
	prefix   = "bsj"                 // namespace name prefix: bsjN (hub), bsjN-host
	lockDir  = "/run/bulsajo-netlab" // one flock file per lab number N
	netnsDir = "/run/netns"          // where `ip netns` keeps named namespaces
	bridge   = "br0"
	maxHosts = 253
	// killWait bounds how long cleanup waits for a namespace's processes
	// to die after SIGKILL.
	killWait = 10 * time.Second
)

var (
	availOnce sync.Once
	availErr  error
	ipPath    string
	brPath    string // the iproute2 `bridge` tool

	labSeq atomic.Uint32
)

// Available reports whether labs can be built here: running as root on
// Linux with iproute2's ip and bridge tools, able to create a network
// namespace with a bridge and a veth pair in it. The probe runs once (it
// creates and deletes a throwaway namespace); the result is cached.
func Available() error {
	availOnce.Do(func() { availErr = probe() })
	return availErr
}

// Require skips t when Available fails — or fails t when the environment
// variable BULSAJO_REQUIRE_NETNS is "1".
func Require(t testing.TB) {
	t.Helper()
	require(t, Available())
}

func require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v (%s=1: network namespace tests must not be skipped)", err, EnvRequire)
		return
	}
	t.Skipf("skipping: %v", err)
}

func probe() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("netlab: network namespaces need Linux (this is %s)", runtime.GOOS)
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("netlab: network namespaces need root (euid %d)", uid)
	}
	var err error
	if ipPath, err = findTool("ip"); err != nil {
		return err
	}
	if brPath, err = findTool("bridge"); err != nil {
		return err
	}
	ns := fmt.Sprintf("%sprobe%d", prefix, os.Getpid())
	_ = run("", ipPath, "netns", "del", ns) // a leftover of an earlier process with our pid
	if err := run("", ipPath, "netns", "add", ns); err != nil {
		return fmt.Errorf("netlab: cannot create a network namespace: %w", err)
	}
	defer func() { _ = run("", ipPath, "netns", "del", ns) }()
	if err := run("link add b0 type bridge\nlink add v0 type veth peer name v1\nlink set v0 master b0\nlink set b0 up\nlink set v1 up\nlink set v0 up\n",
		ipPath, "-n", ns, "-batch", "-"); err != nil {
		return fmt.Errorf("netlab: cannot create a bridge and a veth pair: %w", err)
	}
	if err := run("", brPath, "-n", ns, "link", "set", "dev", "v0", "state", "0"); err != nil {
		return fmt.Errorf("netlab: cannot set a bridge port's state: %w", err)
	}
	return nil
}

func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("netlab: %s (iproute2) not found", name)
}

// run runs a setup command, feeding it stdin, and returns its output with
// the error.
func run(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Lab is a set of hosts, each in its own network namespace, on one bridge.
// Build it with New; it is torn down by the test's cleanup.
type Lab struct {
	t     testing.TB
	id    int // N: hosts are 10.N.0.K
	hub   string
	hosts []*Host
	lock  *os.File

	mu      sync.Mutex
	created []string    // namespaces created so far, hub first
	closers []io.Closer // sockets opened by Host.Listen/Dial
}

// Host is one namespace of a Lab.
type Host struct {
	Name string // as given to New
	IP   string // 10.N.0.K, K = position in New's list + 1
	NS   string // network namespace name, for `ip netns exec` and /run/netns

	lab  *Lab
	port string // the hub-side veth end: a port of the hub's bridge
	mac  string // eth0's address
}

var hostName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// New builds a lab with one host per name (1 to 253 distinct names of
// letters, digits, '.', '_' and '-'), all on one /24, each reachable from
// every other. It calls Require first. t.Cleanup kills every process left in
// the lab's namespaces, closes the sockets opened by Listen and Dial, and
// deletes the namespaces (and with the hub, the bridge and veth pairs).
func New(t testing.TB, hosts ...string) *Lab {
	t.Helper()
	Require(t)
	if err := checkHosts(hosts); err != nil {
		t.Fatal(err)
	}
	id, lock, err := allocate()
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{t: t, id: id, hub: prefix + strconv.Itoa(id), lock: lock}
	for i, name := range hosts {
		k := i + 1
		l.hosts = append(l.hosts, &Host{
			Name: name,
			IP:   fmt.Sprintf("10.%d.0.%d", id, k),
			NS:   fmt.Sprintf("%s-%s", l.hub, name),
			lab:  l,
			port: "p" + strconv.Itoa(k),
			// Locally administered, unique within the lab.
			mac: fmt.Sprintf("02:62:73:%02x:%02x:%02x", id, k>>8, k&0xff),
		})
	}
	t.Cleanup(l.destroy) // before building: a half-built lab is torn down too
	if err := l.build(); err != nil {
		t.Fatal(err)
	}
	return l
}

func checkHosts(hosts []string) error {
	if len(hosts) == 0 || len(hosts) > maxHosts {
		return fmt.Errorf("netlab: New needs 1 to %d hosts, got %d", maxHosts, len(hosts))
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if !hostName.MatchString(h) {
			return fmt.Errorf("netlab: bad host name %q (want 1-32 of [A-Za-z0-9_.-])", h)
		}
		if seen[h] {
			return fmt.Errorf("netlab: host %q given twice", h)
		}
		seen[h] = true
	}
	return nil
}

// allocate picks the lab number N (1..254): the first, from a start derived
// from the pid and a per-process counter, whose lock file this process can
// flock. The lock (released by the kernel if the process dies) makes N ours
// across concurrently running test processes; namespaces still named after N
// are leftovers of a process that died holding it and are removed.
func allocate() (int, *os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return 0, nil, fmt.Errorf("netlab: %w", err)
	}
	start := os.Getpid() + int(labSeq.Add(1))*97
	for i := range 254 {
		n := (start+i)%254 + 1
		f, err := os.OpenFile(filepath.Join(lockDir, strconv.Itoa(n)), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return 0, nil, fmt.Errorf("netlab: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue
			}
			return 0, nil, fmt.Errorf("netlab: flock %s: %w", f.Name(), err)
		}
		if err := removeStale(n); err != nil {
			f.Close()
			return 0, nil, err
		}
		return n, f, nil
	}
	return 0, nil, errors.New("netlab: all 254 lab numbers are in use")
}

// removeStale deletes the namespaces of a dead process's lab number n.
func removeStale(n int) error {
	hub := prefix + strconv.Itoa(n)
	names, err := listNetns()
	if err != nil {
		return err
	}
	for _, ns := range names {
		if ns != hub && !strings.HasPrefix(ns, hub+"-") {
			continue
		}
		if err := killAll(ns); err != nil {
			return err
		}
		if err := run("", ipPath, "netns", "del", ns); err != nil {
			return fmt.Errorf("netlab: removing stale namespace: %w", err)
		}
	}
	return nil
}

func listNetns() ([]string, error) {
	out, err := exec.Command(ipPath, "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("netlab: ip netns list: %w", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			names = append(names, f[0]) // "name (id: 3)"
		}
	}
	return names, nil
}

func (l *Lab) addNetns(ns string) error {
	if err := run("", ipPath, "netns", "add", ns); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	l.mu.Lock()
	l.created = append(l.created, ns)
	l.mu.Unlock()
	return nil
}

func (l *Lab) build() error {
	if err := l.addNetns(l.hub); err != nil {
		return err
	}
	for _, h := range l.hosts {
		if err := l.addNetns(h.NS); err != nil {
			return err
		}
	}
	// The hub: the bridge (STP off: ports forward at once) and one veth
	// pair per host, whose other end goes straight into the host's
	// namespace as eth0.
	var b strings.Builder
	fmt.Fprintf(&b, "link set lo up\nlink add %s type bridge\nlink set %s up\n", bridge, bridge)
	for _, h := range l.hosts {
		fmt.Fprintf(&b, "link add %s type veth peer name eth0 netns %s address %s\n", h.port, h.NS, h.mac)
		fmt.Fprintf(&b, "link set %s master %s\nlink set %s up\n", h.port, bridge, h.port)
	}
	if err := run(b.String(), ipPath, "-n", l.hub, "-batch", "-"); err != nil {
		return fmt.Errorf("netlab: building the hub: %w", err)
	}
	for _, h := range l.hosts {
		b.Reset()
		fmt.Fprintf(&b, "link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\n", h.IP)
		for _, p := range l.hosts {
			if p != h {
				fmt.Fprintf(&b, "neigh replace %s lladdr %s dev eth0 nud permanent\n", p.IP, p.mac)
			}
		}
		if err := run(b.String(), ipPath, "-n", h.NS, "-batch", "-"); err != nil {
			return fmt.Errorf("netlab: setting up host %s: %w", h.Name, err)
		}
	}
	return nil
}

// destroy is the lab's cleanup.
func (l *Lab) destroy() {
	l.mu.Lock()
	closers, created := l.closers, l.created
	l.closers, l.created = nil, nil
	l.mu.Unlock()
	for _, c := range closers {
		_ = c.Close()
	}
	// Hosts first, hub last.
	for i := len(created) - 1; i >= 0; i-- {
		ns := created[i]
		if err := killAll(ns); err != nil {
			l.t.Errorf("netlab: cleanup: %v", err)
		}
		if err := run("", ipPath, "netns", "del", ns); err != nil {
			l.t.Errorf("netlab: cleanup: %v", err)
		}
	}
	if l.lock != nil {
		_ = l.lock.Close() // releases the flock
		l.lock = nil
	}
}

// killAll SIGKILLs every process in namespace ns until none is left.
func killAll(ns string) error {
	deadline := time.Now().Add(killWait)
	for {
		out, err := exec.Command(ipPath, "netns", "pids", ns).Output()
		if err != nil {
			return fmt.Errorf("ip netns pids %s: %w", ns, err)
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in namespace %s survive SIGKILL", pids, ns)
		}
		for _, p := range pids {
			pid, err := strconv.Atoi(p)
			if err == nil && pid == os.Getpid() {
				return fmt.Errorf("this process is in namespace %s", ns)
			}
			if err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Hosts returns the lab's hosts in the order given to New.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.hosts...) }

// Host returns the host called name; it fails the test if there is none.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.hosts {
		if h.Name == name {
			return h
		}
	}
	l.t.Fatalf("netlab: no host %q in this lab", name)
	return nil
}

// Subnet is the lab's network, 10.N.0.0/24.
func (l *Lab) Subnet() string { return fmt.Sprintf("10.%d.0.0/24", l.id) }

// Addr returns "IP:port".
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// Command returns a command that runs the program name inside the host's
// namespace (`ip netns exec NS name args...`; ip execs the program, so
// cmd.Process is the program itself). cmd.Env is os.Environ().
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, ipPath, append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.Env = os.Environ()
	return cmd
}

// Run runs a short command in the host's namespace and returns its combined
// output; it fails the test if the command fails. The command is killed
// when the test's context ends.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("netlab: on %s: %s %s: %v\n%s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Cut partitions the host from all the others: the hub's bridge drops every
// frame to or from it. Its processes keep running and its sockets stay open;
// packets sent meanwhile are lost (TCP retransmits them after Heal). Cut and
// Heal fail the test on error, so call them from the test's goroutine.
func (h *Host) Cut() { h.setPort(0, "cut") } // BR_STATE_DISABLED

// Heal undoes Cut.
func (h *Host) Heal() { h.setPort(3, "heal") } // BR_STATE_FORWARDING

func (h *Host) setPort(state int, what string) {
	h.lab.t.Helper()
	if err := run("", brPath, "-n", h.lab.hub, "link", "set", "dev", h.port, "state", strconv.Itoa(state)); err != nil {
		h.lab.t.Fatalf("netlab: %s %s: %v", what, h.Name, err)
	}
}

// Listen is net.Listen inside the host's namespace: the listener and the
// connections it accepts live there, whatever goroutine uses them. The lab's
// cleanup closes them.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.inNetns(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, err
	}
	ln = &listener{Listener: ln, lab: h.lab}
	h.lab.track(ln)
	return ln, nil
}

// Dial is net.Dialer.DialContext from inside the host's namespace. Use an
// IP address: a host name would be resolved from the test's namespace. The
// lab's cleanup closes the connection.
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.inNetns(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, err
	}
	h.lab.track(c)
	return c, nil
}

// inNetns runs fn on an OS thread switched into the host's namespace.
// Sockets are tied to the namespace they are created in, so whatever fn
// opens stays there. The thread is never unlocked: Go discards it when the
// goroutine exits, so no other goroutine ever runs in the lab's namespace.
// Only the main thread cannot be discarded (Go parks it for good, and
// /proc/PID/ns/net would show the whole process in the lab), so fn never
// runs there.
func (h *Host) inNetns(fn func() error) error {
	errc := make(chan error, 1)
	go h.onNetnsThread(fn, errc)
	return <-errc
}

func (h *Host) onNetnsThread(fn func() error, errc chan<- error) {
	runtime.LockOSThread()
	if onMainThread() {
		// The main thread: while we hold it, a new goroutine gets another.
		inner := make(chan error, 1)
		go h.onNetnsThread(fn, inner)
		err := <-inner
		runtime.UnlockOSThread()
		errc <- err
		return
	}
	if err := enterNetns(filepath.Join(netnsDir, h.NS)); err != nil {
		errc <- fmt.Errorf("netlab: entering %s: %w", h.NS, err)
		return
	}
	errc <- fn()
}

func (l *Lab) track(c io.Closer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, c)
}

// listener tracks accepted connections for the lab's cleanup.
type listener struct {
	net.Listener
	lab *Lab
}

func (ln *listener) Accept() (net.Conn, error) {
	c, err := ln.Listener.Accept()
	if err == nil {
		ln.lab.track(c)
	}
	return c, err
}
