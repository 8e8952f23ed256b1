package agent_test

import (
	"context"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/agent"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/store"
)

const token = "agent-health-token-0123456789abcdef"

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %s waiting for %s", d, what)
}

// An agent is ready while its session with a real coordinator is up, and
// not ready before it has one or after the coordinator is gone.
func TestReadyFollowsTheSession(t *testing.T) {
	// A port with no coordinator behind it yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	a := agent.New(agent.Config{Coordinators: []string{addr}, Token: token, Name: "n1", NProc: 1,
		DataDir: t.TempDir(), Console: console.New(io.Discard)})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-ran
	}()

	time.Sleep(300 * time.Millisecond)
	if err := a.Ready(ctx); err == nil || !strings.Contains(err.Error(), "no session") {
		t.Fatalf("Ready with no coordinator = %v, want no session", err)
	}

	srv, err := coordinator.New(coordinator.Config{Token: token, Store: store.NewMemory(), DataDir: t.TempDir(),
		Heartbeat: 20 * time.Millisecond, NodeTimeout: 150 * time.Millisecond, Lease: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err) // not the agent's fault
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Listener = l
	hs.Start()
	waitFor(t, 5*time.Second, "the agent to be ready", func() bool { return a.Ready(ctx) == nil })

	srv.Close()
	hs.Close()
	waitFor(t, 5*time.Second, "the agent to be not ready once the coordinator is gone", func() bool { return a.Ready(ctx) != nil })
	t.Logf("after the coordinator left: %v", a.Ready(ctx))
}
