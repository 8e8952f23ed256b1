// Package metrics exports a job's life as Prometheus metrics (client_golang).
// It is fed the same events as the event log and the job's progress, so the
// numbers a dashboard scrapes are the numbers in events.jsonl. Names follow
// Prometheus conventions (checked by promlint in the tests); label names for
// GPUs follow DCGM's exporter (gpu, UUID, Hostname) so dashboards can join.
package metrics

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bulsajo/bulsajo/internal/events"
)

// Job holds one process's metrics registry and the per-job series. Its
// methods are safe for concurrent use; Event and Step never block.
type Job struct {
	reg   *prometheus.Registry
	colls []prometheus.Collector

	mu       sync.Mutex
	evs      []events.Event // this run's events, for the derived lost time
	lastStep map[string]int // job -> highest step
	lastAt   map[string]time.Time
	stepTime map[string][]time.Duration // recent per-step durations (median prices rollback)

	step        *prometheus.GaugeVec
	steps       *prometheus.CounterVec
	stepSeconds *prometheus.HistogramVec
	faults      *prometheus.CounterVec
	recoveries  *prometheus.CounterVec
	recoverySec *prometheus.HistogramVec
	lost        *prometheus.GaugeVec
	goodput     *prometheus.GaugeVec
	generation  *prometheus.GaugeVec
	world       *prometheus.GaugeVec
	nodeEvents  *prometheus.CounterVec
	rankSpeed   *prometheus.GaugeVec
	stragglers  *prometheus.CounterVec
}

// New creates the registry with the job series and Go/process collectors.
// extra collectors (the coordinator's node table) are registered too.
func New(extra ...prometheus.Collector) *Job {
	m := &Job{reg: prometheus.NewRegistry(), lastStep: map[string]int{}, lastAt: map[string]time.Time{},
		stepTime: map[string][]time.Duration{}}
	job := []string{"job"}
	m.step = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_job_step",
		Help: "Highest training step reported by any rank."}, job)
	m.steps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulsajo_job_steps_total",
		Help: "Training steps the job advanced (steps repeated after a rollback are not counted again)."}, job)
	m.stepSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "bulsajo_job_step_duration_seconds",
		Help:    "Time per training step, job level (the furthest rank).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}, job)
	m.faults = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulsajo_faults_total",
		Help: "Faults detected, by kind (worker_exit, hang, node_lost, collective_failed) and cause."}, []string{"job", "kind", "cause"})
	m.recoveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulsajo_recoveries_total",
		Help: "Recoveries: a new generation back at training after a fault."}, job)
	m.recoverySec = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "bulsajo_recovery_duration_seconds",
		Help:    "From a fault's detection to the next generation's first step.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, job)
	m.lost = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_job_lost_seconds",
		Help: "Wall time lost to faults so far, by cause (as in the end-of-run summary)."}, []string{"job", "cause"})
	m.goodput = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_job_goodput_ratio",
		Help: "Share of wall time spent training forward (1 - lost/wall), as in the summary."}, job)
	m.generation = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_job_generation",
		Help: "Current generation of the job."}, job)
	m.world = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_job_world_size",
		Help: "Ranks in the current generation."}, job)
	m.nodeEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulsajo_node_events_total",
		Help: "Node membership events: joined, lost, quarantined, released."}, []string{"job", "event"})
	m.rankSpeed = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bulsajo_rank_relative_speed",
		Help: "Each rank's work rate relative to the median of the other ranks over the last straggler window (1 = as fast; below 0.8 in 3 of 5 windows is a straggler). Live mode."}, []string{"job", "rank"})
	m.stragglers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulsajo_stragglers_total",
		Help: "Ranks found persistently slower than the others, by hardware evidence (none, or the GPU's throttle reasons)."}, []string{"job", "evidence"})
	m.colls = append([]prometheus.Collector{m.step, m.steps, m.stepSeconds, m.faults, m.recoveries, m.recoverySec,
		m.lost, m.goodput, m.generation, m.world, m.nodeEvents, m.rankSpeed, m.stragglers}, extra...)
	m.reg.MustRegister(m.colls...)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the metrics live (tests gather from it).
func (m *Job) Registry() *prometheus.Registry { return m.reg }

// histograms are exported as NAME_bucket, NAME_sum and NAME_count.
var histograms = []string{"bulsajo_job_step_duration_seconds", "bulsajo_recovery_duration_seconds"}

// Names lists the bulsajo_ series names this process can export, histogram
// suffixes included (what a dashboard's queries may name).
func (m *Job) Names() []string {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range m.colls {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		// Desc has no accessor for its name; its String() starts with it.
		_, rest, _ := strings.Cut(d.String(), `fqName: "`)
		name, _, _ := strings.Cut(rest, `"`)
		out = append(out, name)
		if slices.Contains(histograms, name) {
			out = append(out, name+"_bucket", name+"_sum", name+"_count")
		}
	}
	slices.Sort(out)
	return out
}

// Handler serves the metrics in the Prometheus text format.
func (m *Job) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Event takes one event of the job's log.
func (m *Job) Event(e events.Event) {
	job := e.RunID
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Type {
	case events.RunStarted:
		m.evs = m.evs[:0]
		m.world.WithLabelValues(job).Set(float64(e.WorldSize))
	case events.GenerationStart:
		m.lastAt[job] = time.Time{} // the first step's duration would span the restart
		m.generation.WithLabelValues(job).Set(float64(e.Gen))
		m.world.WithLabelValues(job).Set(float64(e.WorldSize))
	case events.FaultDetected:
		m.faults.WithLabelValues(job, e.Cause, Cause(e)).Inc()
	case events.Recovered:
		m.recoveries.WithLabelValues(job).Inc()
		m.recoverySec.WithLabelValues(job).Observe(e.RecoverMS / 1000)
	case events.StragglerDetected:
		m.stragglers.WithLabelValues(job, e.Cause).Inc()
	case events.NodeJoined, events.NodeLost, events.NodeQuarantined, events.NodeReleased:
		m.nodeEvents.WithLabelValues(job, strings.TrimPrefix(e.Type, "node_")).Inc()
	}
	m.evs = append(m.evs, e)
	m.updateLost(job, e.Time)
}

// RankSpeeds sets every rank's relative speed (one straggler window); the
// ranks of an earlier window that are not in this one are dropped (a
// regroup renumbers ranks).
func (m *Job) RankSpeeds(job string, speeds map[int]float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rankSpeed.DeletePartialMatch(prometheus.Labels{"job": job})
	for r, v := range speeds {
		m.rankSpeed.WithLabelValues(job, strconv.Itoa(r)).Set(v)
	}
}

// updateLost recomputes the derived lost time and goodput (m.mu held). The
// log of one job is short (events are faults and generations, not steps).
func (m *Job) updateLost(job string, now time.Time) {
	if now.IsZero() {
		now = time.Now()
	}
	evs := append(m.evs[:len(m.evs):len(m.evs)], events.Event{Time: now})
	s := events.Summarize(evs, median(m.stepTime[job]))
	for cause, v := range s.LostByCause() {
		m.lost.WithLabelValues(job, cause).Set(v)
	}
	if s.WallS > 0 {
		m.goodput.WithLabelValues(job).Set(s.Goodput)
	}
}

// Step takes the job's progress: the highest step seen, at time at.
func (m *Job) Step(job string, step int, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	last, seen := m.lastStep[job]
	if seen && step <= last {
		return
	}
	m.step.WithLabelValues(job).Set(float64(step))
	if seen {
		m.steps.WithLabelValues(job).Add(float64(step - last))
		if prev := m.lastAt[job]; !prev.IsZero() && step-last < 1000 {
			d := at.Sub(prev) / time.Duration(step-last)
			m.stepSeconds.WithLabelValues(job).Observe(d.Seconds())
			st := append(m.stepTime[job], d)
			if len(st) > 1000 {
				st = st[len(st)-1000:]
			}
			m.stepTime[job] = st
		}
	} else {
		m.steps.WithLabelValues(job).Add(0)
	}
	m.lastStep[job], m.lastAt[job] = step, at
}

// Cause is the short cause of a fault for a metric label: the signal or exit
// code of a worker exit ("SIGKILL", "exit code 1"), not its message.
func Cause(e events.Event) string {
	switch e.Cause {
	case "worker_exit":
		c, _, _ := strings.Cut(e.Detail, ":")
		c = strings.TrimSpace(c)
		if strings.HasPrefix(c, "SIG") || strings.HasPrefix(c, "exit code") {
			return c
		}
		return "exit"
	case "":
		return "unknown"
	}
	return e.Cause
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
