package coordinator

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulsajo/bulsajo/internal/dashboard"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/metrics"
)

// What the coordinator shows: /metrics (Prometheus) and the dashboard at /,
// both read-only and open, like GET /v1/status. The job's series are fed by
// the supervisor (Config.Observers); the node table is read at each scrape.

func (s *Server) initWeb() {
	s.metrics = metrics.New(nodeCollector{s})
	s.hub = dashboard.NewHub(func() any { return s.Status() })
}

func (s *Server) webRoutes(mux *http.ServeMux) {
	mux.Handle("GET /metrics", s.metrics.Handler())
	d := dashboard.Handler(s.hub)
	mux.Handle("GET /{$}", d)
	mux.Handle("GET /static/", d)
	mux.Handle("GET /api/", d)
}

// progressOnly passes the job's progress to the metrics and the dashboard;
// its events reach them from the log (job.published), node events included.
type progressOnly struct{ s *Server }

func (progressOnly) Event(events.Event) {}
func (p progressOnly) Step(job string, step int, at time.Time) {
	p.s.metrics.Step(job, step, at)
	p.s.hub.Step(job, step, at)
}

// RankSpeeds passes the straggler detector's per-rank speeds to the metrics.
func (p progressOnly) RankSpeeds(job string, speeds map[int]float64) {
	p.s.metrics.RankSpeeds(job, speeds)
}

var (
	descNodes = prometheus.NewDesc("bulsajo_nodes", "Nodes by state (ready, training, lost, disconnected).",
		[]string{"state"}, nil)
	descQuarantined = prometheus.NewDesc("bulsajo_nodes_quarantined", "Nodes excluded after faults.", nil, nil)
	descNodeQuar    = prometheus.NewDesc("bulsajo_node_quarantined",
		"1 for each quarantined node, with the reason.", []string{"Hostname", "reason"}, nil)
	descNodeFaults = prometheus.NewDesc("bulsajo_node_faults",
		"Faults counted against a node (the quarantine's evidence).", []string{"Hostname"}, nil)
	descSessions   = prometheus.NewDesc("bulsajo_agent_sessions", "Connected agent sessions.", nil, nil)
	descHeartbeats = prometheus.NewDesc("bulsajo_heartbeats_total", "Heartbeats received.", nil, nil)
)

// nodeCollector reads the node table at each scrape.
type nodeCollector struct{ s *Server }

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descQuarantined, descNodeQuar, descNodeFaults, descSessions, descHeartbeats,
		descGPUProblem, descGPUsDrained} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	counts := map[string]int{"ready": 0, "training": 0, "lost": 0, "disconnected": 0}
	quarantined := 0
	for _, n := range st.Nodes {
		counts[n.State]++
		if n.Quarantined {
			quarantined++
			ch <- prometheus.MustNewConstMetric(descNodeQuar, prometheus.GaugeValue, 1, n.Name, n.Reason)
		}
		ch <- prometheus.MustNewConstMetric(descNodeFaults, prometheus.GaugeValue, float64(n.Faults), n.Name)
	}
	for state, k := range counts {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(k), state)
	}
	ch <- prometheus.MustNewConstMetric(descQuarantined, prometheus.GaugeValue, float64(quarantined))
	gpuMetrics(ch, st)
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(c.s.sessions.Load()))
	ch <- prometheus.MustNewConstMetric(descHeartbeats, prometheus.CounterValue, float64(c.s.heartbeats.Load()))
}
