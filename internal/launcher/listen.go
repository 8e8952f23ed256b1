package launcher

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"
)

// Rank 0 hosts the rendezvous store (TCPStore) on MASTER_PORT. A rank that
// connects before the store listens is refused and torch waits a full second
// before it tries again, so workers started together lose about a second at
// every (re)start. The agent therefore starts rank 0 first and starts the
// other ranks once the port is listening (or after a cap, for scripts that
// rendezvous some other way). Reading /proc/net/tcp leaves the store alone:
// no probe connection.

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
