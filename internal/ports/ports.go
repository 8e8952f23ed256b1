// Package ports picks TCP ports for rendezvous stores that are free now and
// stay free until the process they are meant for binds them.
//
// A port from bind(":0") lies in the kernel's ephemeral range, from which
// the kernel also takes the source port of every outgoing connection: in
// the moment between choosing a port and rank 0 binding it, one of gloo's
// own connections can take it ("Address already in use", seen in live mode
// as a crash loop of regroups). The kernel never hands out a port below
// that range by itself, so one chosen there can only be taken by a process
// that asks for it by number.
package ports

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// span is how many ports below the ephemeral range are candidates.
var span = 12000

// rangeFile holds the ephemeral range, "LOW\tHIGH".
var rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Free returns a port on which host (an address of this machine; "" for
// all of them) accepts a listener now, chosen below the ephemeral range.
func Free(host string) (int, error) {
	lo, hi := candidates()
	if hi > lo {
		for range 64 {
			p := lo + rand.IntN(hi-lo)
			if bindable(host, p) {
				return p, nil
			}
		}
	}
	// No room below the range (an unusual sysctl): what the kernel gives.
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// candidates is [lo, hi): up to span ports just below the ephemeral range,
// never below 1024.
func candidates() (lo, hi int) {
	low := 32768 // Linux's default when the file cannot be read
	if b, err := os.ReadFile(rangeFile); err == nil {
		if l, _, err := parseRange(string(b)); err == nil {
			low = l
		}
	}
	return max(1024, low-span), low
}

func parseRange(s string) (lo, hi int, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("ports: range %q: want two numbers", s)
	}
	if lo, err = strconv.Atoi(f[0]); err != nil {
		return 0, 0, err
	}
	if hi, err = strconv.Atoi(f[1]); err != nil {
		return 0, 0, err
	}
	if lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("ports: range %q out of order", s)
	}
	return lo, hi, nil
}

func bindable(host string, p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
