package launcher

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bulsajo/bulsajo/internal/health"
)

// Rank 0 hosts the rendezvous store (TCPStore) on MASTER_PORT. A rank that
// connects before the store listens is refused and torch waits a full second
// before it tries again, so workers started together lose about a second at
// every (re)start. The agent therefore starts rank 0 first and starts the
// other ranks once the port is listening (or after a cap, for scripts that
// rendezvous some other way). Reading /proc/net/tcp leaves the store alone:
// no probe connection.
//
// The cap counts from the end of rank 0's preload (the shim says "preloaded
// PID"), not from its activation: a shim started fresh with the generation
// (every launch) imports torch first, which takes over 2 s on a loaded 2-core
// machine; counted against the cap it turned staggering off for the whole
// run, and every restart after it paid the second.

// waitListening polls until a socket listens on port, or the cap passes.
func waitListening(port int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		if isListening(port) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// waitStore waits for rank 0's store (see above). decided is false when the
// wait says nothing about the script: rank 0 exited or is stopped (SIGSTOP,
// a tracer), its shim never said it had preloaded (within preloadWait), or
// the generation is being stopped.
// A stopped rank 0 ends the wait at once: the generation is then launched,
// and the hang is called once it has been stopped past the threshold
// (policy.ProcState), rather than after preloadWait.
func (a *Launcher) waitStore(g *generation, w *worker, port int) (listening, decided bool) {
	var deadline, looked time.Time
	giveUp := time.Now().Add(preloadWait)
	for {
		if isListening(port) {
			return true, true
		}
		if w.hasExited() || a.stoppingGen(g) {
			return false, false
		}
		now := time.Now()
		if now.Sub(looked) >= 50*time.Millisecond {
			looked = now
			if st, err := health.ReadProcStat(w.pid); err == nil && st.Stopped() {
				return false, false
			}
		}
		switch {
		case !deadline.IsZero():
			if now.After(deadline) {
				return false, true
			}
		case a.takePreloaded(w.pid):
			deadline = now.Add(rendezvousWait)
		case now.After(giveUp):
			return false, false
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// stoppingGen: g is being stopped, or the launcher closed (the wait is moot).
func (a *Launcher) stoppingGen(g *generation) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return g.stopping || a.closed
}

// preloadWait bounds the wait for a shim's preload: an import slower than
// this is a machine in trouble, not a reason to hold the other ranks.
const preloadWait = 30 * time.Second

// parsePreloaded reads the shim's datagram once its preload is done: "preloaded PID".
func parsePreloaded(b []byte) (pid int, ok bool) {
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] != "preloaded" {
		return 0, false
	}
	pid, err := strconv.Atoi(f[1])
	return pid, err == nil && pid > 0
}

// takePreloaded reports whether the process pid said it had preloaded, and
// forgets it (a pid is asked about once, as rank 0 of one generation).
func (a *Launcher) takePreloaded(pid int) bool {
	_, ok := a.preloaded.LoadAndDelete(pid)
	return ok
}

func isListening(port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if listensIn(f, want) {
			return true
		}
	}
	return false
}

// listensIn scans a /proc/net/tcp table for a LISTEN (state 0A) socket
// whose local address ends in want (":PORT" in hex).
func listensIn(path, want string) bool {
	fh, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], want) {
			return true
		}
	}
	return false
}
