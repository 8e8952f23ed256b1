package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/store"
)

// Ready says whether this coordinator can serve agents and jobs now: it is
// not shutting down, it leads (Config.Leading; an embedded store always
// does), and its store answers a read. GET /readyz reports it; GET /healthz
// only says the process serves HTTP.
func (s *Server) Ready(ctx context.Context) error {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	select {
	case <-s.quit:
		closing = true
	default:
	}
	if closing {
		return errors.New("shutting down")
	}
	if s.cfg.Leading != nil && !s.cfg.Leading() {
		return errors.New("not the leader")
	}
	if _, err := s.cfg.Store.Get(ctx, keyJob); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("store does not answer: %v", err)
	}
	return nil
}

// SetDrain records what the cluster's scheduler said when the quarantined
// node was handed to it (Config.OnQuarantine): "drained", or the refusal.
// status shows it next to the node.
func (s *Server) SetDrain(node, note string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[node]; n != nil {
		n.drain = note
	}
	s.con.Printf("! node %s: slurm: %s", node, note)
	if s.job != nil {
		s.job.logAsync(events.Event{Type: events.NodeQuarantined, Node: node, Detail: "slurm: " + note})
	}
}
