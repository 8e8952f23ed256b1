package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// The admin API: submit, cancel, release (each needs the join token), and the
// read-only status and event log. The agents' endpoint is in server.go, the
// metrics and the dashboard in web.go.

func (s *Server) serveSubmit(w http.ResponseWriter, r *http.Request) {
	var sp JobSpec
	if err := readJSON(r, &sp); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := sp.Validate(); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.mu.Lock()
	if j := s.job; j != nil && !j.rec.Done {
		s.mu.Unlock()
		httpError(w, http.StatusConflict, "job %s is running; one job at a time", j.rec.Spec.ID)
		return
	}
	if j := s.job; j != nil && j.rec.Spec.ID == sp.ID {
		s.mu.Unlock()
		httpError(w, http.StatusConflict, "job id %s was used already", sp.ID)
		return
	}
	j, err := s.newJob(jobRecord{Spec: sp, Step: -1})
	if err != nil {
		s.mu.Unlock()
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.job = j
	j.save()
	s.mu.Unlock()
	s.con.Printf("job %s submitted: %d-%d nodes × %d workers: %v", sp.ID, sp.NNodesMin, sp.NNodesMax, sp.NProcPerNode, sp.Command)
	j.start(nil)
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]string{"id": sp.ID})
}

func (s *Server) currentJob(id string) *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.job; j != nil && (id == "current" || id == j.rec.Spec.ID) {
		return j
	}
	return nil
}

func (s *Server) serveCancel(w http.ResponseWriter, r *http.Request) {
	j := s.currentJob(r.PathValue("id"))
	if j == nil {
		httpError(w, http.StatusNotFound, "no such job")
		return
	}
	select {
	case <-j.done:
	default:
		select {
		case j.sig <- syscall.SIGINT:
		default:
		}
	}
	json.NewEncoder(w).Encode(map[string]string{"id": j.rec.Spec.ID})
}

// serveEvents streams the job's events as JSON lines from ?from=N (0-based),
// ending after run_finished. A client that loses the stream (a coordinator
// restart) asks again from where it was.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	j := s.currentJob(r.PathValue("id"))
	if j == nil {
		httpError(w, http.StatusNotFound, "no such job")
		return
	}
	from, _ := strconv.Atoi(r.URL.Query().Get("from"))
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Bulsajo-Job", j.rec.Spec.ID)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for {
		j.evMu.Lock()
		evs, ready := j.evs[min(max(from, 0), len(j.evs)):], j.evReady
		ended := len(j.evs) > 0 && j.evs[len(j.evs)-1].Type == events.RunFinished
		j.evMu.Unlock()
		if ended && len(evs) == 0 {
			rc.Flush()
			return // asked for more than a finished job has
		}
		for _, e := range evs {
			if enc.Encode(e) != nil {
				return
			}
			from++
			if e.Type == events.RunFinished {
				rc.Flush()
				return
			}
		}
		if rc.Flush() != nil {
			return
		}
		select {
		case <-ready:
		case <-r.Context().Done():
			return
		case <-s.quit:
			return
		case <-time.After(time.Second):
			// Keep-alive: a blank line the client ignores.
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		}
	}
}

func (s *Server) serveRelease(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	n := s.nodes[name]
	if n == nil {
		s.mu.Unlock()
		httpError(w, http.StatusNotFound, "no node named %q", name)
		return
	}
	was := n.Quarantined
	n.Quarantined, n.Reason, n.Faults = false, "", 0
	s.saveNode(n)
	if j := s.job; j != nil {
		if was {
			j.logAsync(events.Event{Type: events.NodeReleased, Node: name})
		}
		j.capacityChanged(n)
	}
	s.mu.Unlock()
	if was {
		s.con.Printf("+ node %s released from quarantine", name)
	}
	json.NewEncoder(w).Encode(map[string]any{"node": name, "released": was})
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.Status())
}

// readJSON decodes a bounded request body, refusing unknown fields.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("bad request body: data after the JSON object")
	}
	return nil
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}
