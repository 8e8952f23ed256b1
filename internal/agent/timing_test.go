package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/wire"
)

func TestReadTimeout(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tt := range []struct{ hb, lease, want time.Duration }{
		{ms(250), ms(5000), ms(1666)},  // a third of the lease
		{ms(20), ms(400), ms(133)},     // the same, in tests' timing
		{ms(500), ms(5000), ms(3000)},  // 6 heartbeats
		{ms(1000), ms(5000), ms(3500)}, // 70% of the lease: room to reach another coordinator
		{ms(2000), ms(10000), ms(7000)},
	} {
		if got := readTimeout(tt.hb, tt.lease).Truncate(time.Millisecond); got != tt.want {
			t.Errorf("readTimeout(%s, %s) = %s, want %s", tt.hb, tt.lease, got, tt.want)
		}
	}
}

// A fake coordinator changes the timing on an ack: the agent heartbeats at
// the new interval, says so in each heartbeat, and holds the new lease.
func TestAgentFollowsTimingChange(t *testing.T) {
	type beat struct {
		at time.Time
		hb int
	}
	var mu sync.Mutex
	var beats []beat
	changed := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", wire.Protocol)
		brw.Flush()
		rd := wire.NewReader(brw.Reader)
		send := func(m wire.Msg) {
			b, _ := wire.Encode(m)
			conn.Write(b)
		}
		if m, err := rd.Read(); err != nil || m.Type != wire.THello {
			return
		}
		send(wire.Msg{Type: wire.TWelcome, HeartbeatMS: 30, LeaseMS: 1000})
		for n := 0; ; n++ {
			m, err := rd.Read()
			if err != nil {
				return
			}
			if m.Type != wire.THeartbeat {
				continue
			}
			mu.Lock()
			beats = append(beats, beat{time.Now(), m.HeartbeatMS})
			mu.Unlock()
			ack := wire.Msg{Type: wire.TAck, Seq: m.Seq}
			if n == 3 {
				ack.HeartbeatMS, ack.LeaseMS = 150, 2000
				close(changed)
			}
			send(ack)
		}
	}))
	defer srv.Close()

	a := New(Config{Coordinators: []string{strings.TrimPrefix(srv.URL, "http://")}, Token: "t", Name: "n1", NProc: 1,
		DataDir: t.TempDir(), Console: console.New(io.Discard)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no fourth heartbeat")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		var after []beat
		for _, b := range beats {
			if b.hb == 150 {
				after = append(after, b)
			}
		}
		mu.Unlock()
		if len(after) >= 4 {
			// At most one heartbeat already on its way at the old interval;
			// then 150 ms apart (give or take a loaded machine's jitter).
			if gap := after[len(after)-1].at.Sub(after[0].at) / time.Duration(len(after)-1); gap < 120*time.Millisecond {
				t.Fatalf("heartbeats %s apart after the change to 150 ms", gap)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d heartbeats saying 150 ms after the change; all: %v", len(after), beats)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	for i, b := range beats[:4] {
		if b.hb != 30 {
			t.Errorf("heartbeat %d before the change says %d ms, want 30", i+1, b.hb)
		}
	}
	mu.Unlock()
	a.mu.Lock()
	lease := a.lease
	a.mu.Unlock()
	if lease != 2*time.Second {
		t.Fatalf("lease %s after the change, want 2s", lease)
	}
}
