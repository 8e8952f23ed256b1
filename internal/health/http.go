package health

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Probe timeout: a readiness check that takes longer than this is a failed
// one (Kubernetes' own default probe timeout is 1 s).
const probeTimeout = time.Second

// Handler serves the liveness and readiness probes of a daemon:
//
//	GET /healthz  200 "ok" while the process serves HTTP at all (liveness: a
//	              hung or dead process fails it and is restarted)
//	GET /readyz   200 "ready" when ready() returns nil, else 503 with its
//	              reason (readiness: the process can do its job now)
//
// The answers are plain text, one line, so that a person with curl and a
// kubelet read the same thing.
func Handler(ready func(context.Context) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", ServeHealthz)
	mux.HandleFunc("GET /readyz", ServeReadyz(ready))
	return mux
}

// ServeHealthz answers the liveness probe.
func ServeHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// ServeReadyz answers the readiness probe with ready's verdict.
func ServeReadyz(ready func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	}
}
