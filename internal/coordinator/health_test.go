package coordinator_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/store"
)

// The probes: /healthz while the process serves; /readyz only while it
// leads and its store answers, with the reason when not.
func TestHealthAndReadiness(t *testing.T) {
	var leading atomic.Bool
	leading.Store(true)
	st := store.NewMemory()
	c := startCoord(t, st, t.TempDir(), func(cfg *coordinator.Config) { cfg.Leading = leading.Load })

	steps := []struct {
		name     string
		do       func()
		path     string
		wantCode int
		wantBody string
	}{
		{"alive", func() {}, "/healthz", 200, "ok"},
		{"ready: leads, store answers", func() {}, "/readyz", 200, "ready"},
		{"no token needed", func() {}, "/readyz", 200, "ready"},
		{"deposed", func() { leading.Store(false) }, "/readyz", 503, "not ready: not the leader"},
		{"still alive when deposed", func() {}, "/healthz", 200, "ok"},
		{"leads again", func() { leading.Store(true) }, "/readyz", 200, "ready"},
		{"store gone", func() { st.Close() }, "/readyz", 503, "not ready: store does not answer: store: closed"},
		{"alive without a store", func() {}, "/healthz", 200, "ok"},
	}
	for _, s := range steps {
		s.do()
		code, _, body := c.request("GET", s.path, "", nil)
		if code != s.wantCode || strings.TrimSpace(string(body)) != s.wantBody {
			t.Errorf("%s: GET %s = %d %q, want %d %q", s.name, s.path, code, body, s.wantCode, s.wantBody)
		}
	}
	c.srv.Close()
	if err := c.srv.Ready(context.Background()); err == nil || err.Error() != "shutting down" {
		t.Errorf("Ready after Close = %v, want shutting down", err)
	}
}
