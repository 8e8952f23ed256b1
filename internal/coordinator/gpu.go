package coordinator

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// GPUState is a GPU an agent reported a problem with (`bulsajo status`).
type GPUState struct {
	GPU    int    `json:"gpu"`
	UUID   string `json:"uuid,omitempty"`
	State  string `json:"state"` // drained, restart, warn
	Reason string `json:"reason"`
}

func (n *node) gpuList() []GPUState {
	var out []GPUState
	for _, g := range n.gpus {
		out = append(out, g)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].GPU < out[k].GPU })
	return out
}

// gpuHealth handles an agent's GPU verdict (s.mu held). A drain-class fault
// quarantines the node at once, with the reason: a GPU that fell off the
// bus does not come back by restarting the job there. Its ranks move as if
// the node were lost (a spare, fewer nodes, or a live regroup) and its
// workers are stopped.
func (s *Server) gpuHealth(n *node, m wire.Msg) {
	if n.gpus == nil {
		n.gpus = map[int]GPUState{}
	}
	state := m.Class
	if state == "drain" {
		state = "drained"
	}
	if old, ok := n.gpus[m.GPU]; !ok || old.State != "drained" {
		n.gpus[m.GPU] = GPUState{GPU: m.GPU, UUID: m.UUID, State: state, Reason: m.Reason}
	}
	gpu := m.GPU
	ev := events.Event{Node: n.Name, GPU: &gpu, UUID: m.UUID, Detail: m.Reason}
	switch m.Class {
	case "warn":
		s.con.Printf("⚠ node %s GPU %d: %s", n.Name, m.GPU, m.Reason)
		ev.Type = events.GPUWarning
	case "restart":
		// The agent restarts the worker on that GPU: its exit is the fault.
		s.con.Printf("! node %s GPU %d: %s; its worker is restarted", n.Name, m.GPU, m.Reason)
		ev.Type = events.GPUFault
	case "drain":
		s.con.Printf("✗ node %s GPU %d: %s", n.Name, m.GPU, m.Reason)
		ev.Type = events.GPUDrained
	}
	if s.job != nil {
		s.job.logAsync(ev)
	}
	if m.Class != "drain" {
		return
	}
	why := fmt.Sprintf("GPU %d: %s", m.GPU, m.Reason)
	if m.GPU < 0 {
		why = m.Reason
	}
	if !n.Quarantined {
		n.Quarantined = true
		n.Faults++
		n.Reason = why
		s.con.Printf("! node %s quarantined (%s); `bulsajo node release %s` brings it back", n.Name, why, n.Name)
		if s.job != nil {
			s.job.logAsync(events.Event{Type: events.NodeQuarantined, Node: n.Name, Detail: why})
		}
		s.saveNode(n)
	}
	if s.job != nil {
		s.job.drainNode(n, why)
	}
}

// drainNode moves the job off n (s.mu held): its ranks fail as a lost
// node's do, and its workers are stopped.
func (j *job) drainNode(n *node, why string) {
	ranks := j.ranksOf(n.Name)
	if len(ranks) == 0 || j.stopped[n.Name] || j.rec.Done {
		return
	}
	j.emit(launcher.Exited{Gen: j.rec.Gen, Rank: ranks[0], Also: ranks[1:], Code: -1, Signal: policy.SignalNodeLost,
		LastError: fmt.Sprintf("node %s drained: %s", n.Name, why), At: time.Now()})
	if n.sess != nil {
		n.sess.send(wire.Msg{Type: wire.TStop, Job: j.rec.Spec.ID, Gen: j.rec.Gen, Grace: j.rec.Spec.StopGraceMS})
	}
}

var (
	descGPUProblem = prometheus.NewDesc("bulsajo_gpu_problem",
		"GPUs an agent reported (state drained, restart or warn; the last verdict).",
		[]string{"Hostname", "gpu", "UUID", "state"}, nil)
	descGPUsDrained = prometheus.NewDesc("bulsajo_gpus_drained", "GPUs drained (their nodes quarantined).", nil, nil)
)

// gpuMetrics: one gauge per GPU a node reported a problem with, with
// dcgm-exporter's label names (Hostname, gpu, UUID) so dashboards can join
// it with DCGM's metrics on UUID.
func gpuMetrics(ch chan<- prometheus.Metric, st Status) {
	drained := 0
	for _, n := range st.Nodes {
		for _, g := range n.GPUs {
			ch <- prometheus.MustNewConstMetric(descGPUProblem, prometheus.GaugeValue, 1, n.Name, strconv.Itoa(g.GPU), g.UUID, g.State)
			if g.State == "drained" {
				drained++
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descGPUsDrained, prometheus.GaugeValue, float64(drained))
}
