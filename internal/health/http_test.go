package health

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestProbeHandler(t *testing.T) {
	notYet := errors.New("no session with a coordinator")
	slow := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	tests := []struct {
		name, method, path string
		ready              func(context.Context) error
		wantCode           int
		wantBody           string
	}{
		{"alive while not ready", "GET", "/healthz", func(context.Context) error { return notYet }, 200, "ok\n"},
		{"ready", "GET", "/readyz", func(context.Context) error { return nil }, 200, "ready\n"},
		{"not ready says why", "GET", "/readyz", func(context.Context) error { return notYet }, 503, "not ready: no session with a coordinator\n"},
		{"a check that hangs is a failed one", "GET", "/readyz", slow, 503, "not ready: context deadline exceeded\n"},
		{"probes are GETs", "POST", "/readyz", func(context.Context) error { return nil }, 405, ""},
		{"nothing else", "GET", "/", func(context.Context) error { return nil }, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			t0 := time.Now()
			Handler(tt.ready).ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if d := time.Since(t0); d > 3*probeTimeout {
				t.Errorf("answered in %s, want within about %s", d, probeTimeout)
			}
			if rec.Code != tt.wantCode {
				t.Errorf("%s %s = %d, want %d (%q)", tt.method, tt.path, rec.Code, tt.wantCode, rec.Body.String())
			}
			if tt.wantBody != "" && rec.Body.String() != tt.wantBody {
				t.Errorf("%s %s body = %q, want %q", tt.method, tt.path, rec.Body.String(), tt.wantBody)
			}
			if tt.wantCode == 200 && !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
				t.Errorf("Content-Type = %q", rec.Header().Get("Content-Type"))
			}
		})
	}
}
