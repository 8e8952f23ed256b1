package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/bulsajo/bulsajo/internal/events"
)

// feed plays a run: start, 10 steps, a SIGKILL detected in 50 ms, recovery
// after 1.5 s rolling back 2 steps, 10 more steps, a hang, done.
func feed(m *Job, t0 time.Time) {
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	m.Event(events.Event{Time: at(0), Type: events.RunStarted, RunID: "j", WorldSize: 4})
	m.Event(events.Event{Time: at(0.1), Type: events.GenerationStart, RunID: "j", Gen: 1, WorldSize: 4})
	for s := 0; s < 10; s++ {
		m.Step("j", s, at(1+0.1*float64(s)))
	}
	m.Event(events.Event{Time: at(2.5), Type: events.FaultDetected, RunID: "j", Gen: 1, Cause: "worker_exit",
		Detail: "SIGKILL", Rank: events.Int(2), DetectMS: 50})
	m.Event(events.Event{Time: at(2.6), Type: events.GenerationStart, RunID: "j", Gen: 2, WorldSize: 4})
	m.Event(events.Event{Time: at(4), Type: events.Recovered, RunID: "j", Gen: 2, RecoverMS: 1500, RolledBack: 2})
	for s := 7; s < 20; s++ {
		m.Step("j", s, at(4+0.1*float64(s-7)))
	}
	m.Event(events.Event{Time: at(6), Type: events.FaultDetected, RunID: "j", Gen: 2, Cause: "hang",
		Detail: "no progress for 2.1s", DetectMS: 2100})
	m.Event(events.Event{Time: at(7), Type: events.NodeQuarantined, RunID: "j", Node: "b"})
	m.Event(events.Event{Time: at(8), Type: events.RunFinished, RunID: "j", Outcome: "succeeded"})
}

func TestMetricsFollowTheEvents(t *testing.T) {
	m := New()
	feed(m, time.Now().Add(-time.Minute))
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"SIGKILL faults", testutil.ToFloat64(m.faults.WithLabelValues("j", "worker_exit", "SIGKILL")), 1},
		{"hang faults", testutil.ToFloat64(m.faults.WithLabelValues("j", "hang", "hang")), 1},
		{"recoveries", testutil.ToFloat64(m.recoveries.WithLabelValues("j")), 1},
		{"generation", testutil.ToFloat64(m.generation.WithLabelValues("j")), 2},
		{"highest step", testutil.ToFloat64(m.step.WithLabelValues("j")), 19},
		// Steps 7-9 were repeated after the rollback: counted once.
		{"steps advanced", testutil.ToFloat64(m.steps.WithLabelValues("j")), 19},
		{"detect lost", testutil.ToFloat64(m.lost.WithLabelValues("j", "detect")), 2.15},
		{"restart lost", testutil.ToFloat64(m.lost.WithLabelValues("j", "restart")), 1.5},
		{"quarantines", testutil.ToFloat64(m.nodeEvents.WithLabelValues("j", "quarantined")), 1},
	} {
		if d := tc.got - tc.want; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	// Rollback is priced at the median step (0.1 s here) × 2 steps.
	if got := testutil.ToFloat64(m.lost.WithLabelValues("j", "rollback")); got < 0.19 || got > 0.21 {
		t.Errorf("rollback lost = %v, want 0.2", got)
	}
	// The first step after a restart is not timed across the restart.
	if n := testutil.CollectAndCount(m.stepSeconds); n != 1 {
		t.Errorf("step histogram series = %d, want 1", n)
	}
}

func TestMetricsPassPromlint(t *testing.T) {
	m := New()
	feed(m, time.Now().Add(-time.Minute))
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func mustGather(t *testing.T, m *Job) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestCause(t *testing.T) {
	for _, tc := range []struct {
		e    events.Event
		want string
	}{
		{events.Event{Cause: "worker_exit", Detail: "SIGKILL"}, "SIGKILL"},
		{events.Event{Cause: "worker_exit", Detail: "exit code 1: RuntimeError: boom"}, "exit code 1"},
		{events.Event{Cause: "worker_exit", Detail: "something: else"}, "exit"},
		{events.Event{Cause: "hang", Detail: "no progress"}, "hang"},
		{events.Event{Cause: "node_lost", Detail: "node b lost"}, "node_lost"},
		{events.Event{}, "unknown"},
	} {
		if got := Cause(tc.e); got != tc.want {
			t.Errorf("Cause(%+v) = %q, want %q", tc.e, got, tc.want)
		}
	}
}
