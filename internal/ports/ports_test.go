package ports

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestParseRange(t *testing.T) {
	for _, c := range []struct {
		in     string
		lo, hi int
		ok     bool
	}{
		{"32768\t60999\n", 32768, 60999, true},
		{"1024 65535", 1024, 65535, true},
		{"", 0, 0, false},
		{"40000", 0, 0, false},
		{"60999 32768", 0, 0, false},
		{"0 100", 0, 0, false},
		{"a b", 0, 0, false},
	} {
		lo, hi, err := parseRange(c.in)
		if (err == nil) != c.ok || lo != c.lo || hi != c.hi {
			t.Errorf("parseRange(%q) = %d, %d, %v; want %d, %d, ok=%v", c.in, lo, hi, err, c.lo, c.hi, c.ok)
		}
	}
}

// The port comes from below the ephemeral range (where no outgoing
// connection can take it) and can be bound.
func TestFreeIsBelowTheEphemeralRange(t *testing.T) {
	lo, hi := candidates()
	for range 50 {
		p, err := Free("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if p < lo || p >= hi {
			t.Fatalf("Free = %d, want within [%d, %d)", p, lo, hi)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("Free = %d, but binding it: %v", p, err)
		}
		l.Close()
	}
}

// A taken port is never returned: with four candidates and three held,
// the fourth comes back every time.
func TestFreeSkipsTakenPorts(t *testing.T) {
	oldFile, oldSpan := rangeFile, span
	defer func() { rangeFile, span = oldFile, oldSpan }()
	const low = 23456 // the candidates are 23452..23455
	span = 4
	rangeFile = filepath.Join(t.TempDir(), "range")
	if err := os.WriteFile(rangeFile, []byte(strconv.Itoa(low)+"\t60999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !bindable("", low-4) {
		t.Skipf("port %d is taken on this machine", low-4)
	}
	for p := low - 3; p < low; p++ {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			t.Skipf("port %d is taken on this machine: %v", p, err)
		}
		defer l.Close()
	}
	for range 20 {
		p, err := Free("")
		if err != nil {
			t.Fatal(err)
		}
		if p != low-4 {
			t.Fatalf("Free = %d, want %d (the only candidate not held)", p, low-4)
		}
	}
}
