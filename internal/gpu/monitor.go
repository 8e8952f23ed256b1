package gpu

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MonitorConfig tunes a Monitor.
type MonitorConfig struct {
	Rules    Rules
	Interval time.Duration // between samples (default 5 s, as NVRx)
	Timeout  time.Duration // per probe call (default 10 s); past it the GPU counts as lost
}

// Status is what bulsajo knows of one GPU now (for `bulsajo status`).
type Status struct {
	Index   int    `json:"gpu"`
	UUID    string `json:"uuid,omitempty"`
	State   string `json:"state"` // ok, warn, drained
	Reason  string `json:"reason,omitempty"`
	TempC   uint32 `json:"temp_c,omitempty"`
	PowerW  uint32 `json:"power_w,omitempty"`
	SMMHz   uint32 `json:"sm_mhz,omitempty"`
	Reasons string `json:"throttle,omitempty"`
}

// Monitor runs a probe: Preflight before a generation, Run while training.
// Every probe call is bounded by the timeout: a call that does not return
// marks its GPU lost (drain) and that GPU is not asked again (the blocked
// call's goroutine stays blocked; NVML gives no way to cancel it).
type Monitor struct {
	probe Probe
	cfg   MonitorConfig
	start time.Time
	out   chan Verdict

	mu       sync.Mutex
	watch    *Watch
	baseline []Device // devices at the first preflight
	hung     map[int]bool
	status   map[int]*Status
}

// NewMonitor wraps p.
func NewMonitor(p Probe, cfg MonitorConfig) *Monitor {
	if cfg.Rules.XID == nil {
		cfg.Rules = DefaultRules()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Monitor{probe: p, cfg: cfg, start: time.Now(), out: make(chan Verdict, 64),
		watch: NewWatch(cfg.Rules), hung: map[int]bool{}, status: map[int]*Status{}}
}

// Verdicts delivers what Run finds.
func (m *Monitor) Verdicts() <-chan Verdict { return m.out }

func (m *Monitor) now() time.Duration { return time.Since(m.start) }

// call runs f with the timeout; ok is false when it did not return in time.
func call[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error, bool) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	go func() {
		v, err := f(cctx)
		ch <- res{v, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.v, r.err, true
	case <-t.C:
		var zero T
		return zero, nil, false
	}
}

// Devices is the GPU list of the first preflight (nil before).
func (m *Monitor) Devices() []Device {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Device(nil), m.baseline...)
}

// Preflight checks the GPUs before a generation: every GPU seen at the
// first check is still there, none has a pending recovery action or a
// failed row remap, links that were up are still up, and every probe call
// answers in time. It returns a Drain verdict per bad GPU not drained
// before (and records them, so they are not reported twice).
func (m *Monitor) Preflight(ctx context.Context) []Verdict {
	devs, err, ok := call(ctx, m.cfg.Timeout, m.probe.Devices)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !ok || err != nil {
		why := fmt.Sprintf("GPU probe did not answer in %s", m.cfg.Timeout)
		if err != nil {
			why = "GPU probe: " + err.Error()
		}
		var out []Verdict
		for _, d := range m.baseline {
			out = append(out, m.recordLocked(Verdict{Index: d.Index, UUID: d.UUID, Class: Drain, Reason: why})...)
		}
		if m.baseline == nil {
			out = append(out, Verdict{Index: -1, Class: Drain, Reason: why})
		}
		return out
	}
	if m.baseline == nil {
		m.baseline = devs
		for _, d := range devs {
			m.status[d.Index] = &Status{Index: d.Index, UUID: d.UUID, State: "ok"}
		}
	}
	present := map[string]bool{}
	for _, d := range devs {
		present[d.UUID] = true
	}
	var out []Verdict
	for _, d := range m.baseline {
		if m.watch.Drained(d.Index) {
			continue
		}
		if d.UUID != "" && !present[d.UUID] {
			out = append(out, m.recordLocked(Verdict{Index: d.Index, UUID: d.UUID, Class: Drain,
				Reason: fmt.Sprintf("GPU missing: %d of %d GPUs listed", len(devs), len(m.baseline))})...)
			continue
		}
		s, bad := m.sampleLocked(ctx, d.Index)
		if bad != nil {
			out = append(out, m.recordLocked(*bad)...)
			continue
		}
		if v, isBad := DrainCondition(s); isBad {
			out = append(out, m.recordLocked(v)...)
		}
	}
	return out
}

// sampleLocked samples GPU i with the timeout; m.mu is released meanwhile.
func (m *Monitor) sampleLocked(ctx context.Context, i int) (Sample, *Verdict) {
	if m.hung[i] {
		return Sample{}, nil
	}
	m.mu.Unlock()
	s, err, ok := call(ctx, m.cfg.Timeout, func(c context.Context) (Sample, error) { return m.probe.Sample(c, i) })
	m.mu.Lock()
	if !ok {
		m.hung[i] = true
		return s, &Verdict{Index: i, UUID: m.uuid(i), Class: Drain,
			Reason: fmt.Sprintf("GPU lost: probe call did not return in %s", m.cfg.Timeout)}
	}
	if err != nil {
		return s, &Verdict{Index: i, UUID: m.uuid(i), Class: Drain, Reason: "GPU lost: " + err.Error()}
	}
	if st := m.status[i]; st != nil {
		st.TempC, st.PowerW, st.SMMHz = s.TempC, s.PowerMW/1000, s.SMClockMHz
		st.Reasons = ReasonNames(s.ClockEventReasons)
	}
	return s, nil
}

func (m *Monitor) uuid(i int) string {
	for _, d := range m.baseline {
		if d.Index == i {
			return d.UUID
		}
	}
	return ""
}

// recordLocked notes v in the watch (drained GPUs) and the status; it
// returns v unless the GPU was already drained.
func (m *Monitor) recordLocked(v Verdict) []Verdict {
	if v.Index >= 0 && m.watch.drained[v.Index] {
		return nil
	}
	if v.UUID == "" {
		v.UUID = m.uuid(v.Index)
	}
	if v.Class == Drain && v.Index >= 0 {
		m.watch.drained[v.Index] = true
	}
	m.noteLocked(v)
	return []Verdict{v}
}

func (m *Monitor) noteLocked(v Verdict) {
	for i, st := range m.status {
		if v.Index != -1 && i != v.Index {
			continue
		}
		switch {
		case v.Class == Drain:
			st.State, st.Reason = "drained", v.Reason
		case v.Class == Warn && st.State == "ok":
			st.State, st.Reason = "warn", v.Reason
		case v.Class == Restart && st.State == "ok":
			st.Reason = v.Reason
		}
	}
}

// Status is every GPU's state, in index order.
func (m *Monitor) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.status))
	for _, d := range m.baseline {
		if st := m.status[d.Index]; st != nil {
			out = append(out, *st)
		}
	}
	return out
}

// Run watches until ctx ends: events as they come, samples every
// Interval. Verdicts go to Verdicts().
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	evs := m.probe.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-evs:
			if !ok {
				evs = nil
				continue
			}
			m.mu.Lock()
			vs := m.eventLocked(e)
			m.mu.Unlock()
			m.send(ctx, vs)
		case <-t.C:
			m.send(ctx, m.sampleAll(ctx))
		}
	}
}

func (m *Monitor) eventLocked(e Event) []Verdict {
	if e.Index < 0 {
		// The event source broke, or an event could not be placed: every
		// GPU is suspect (as the k8s device plugin treats it).
		var out []Verdict
		for _, d := range m.baseline {
			for _, v := range m.watch.Event(m.now(), Event{Index: d.Index, Kind: e.Kind, XID: e.XID, Value: e.Value, Detail: e.Detail}) {
				v.UUID = d.UUID
				m.noteLocked(v)
				out = append(out, v)
			}
		}
		return out
	}
	var out []Verdict
	for _, v := range m.watch.Event(m.now(), e) {
		v.UUID = m.uuid(v.Index)
		m.noteLocked(v)
		out = append(out, v)
	}
	return out
}

func (m *Monitor) sampleAll(ctx context.Context) []Verdict {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Verdict
	for _, d := range m.baseline {
		if m.watch.Drained(d.Index) || m.hung[d.Index] {
			continue
		}
		s, bad := m.sampleLocked(ctx, d.Index)
		if bad != nil {
			out = append(out, m.recordLocked(*bad)...)
			continue
		}
		for _, v := range m.watch.Sample(m.now(), s) {
			v.UUID = d.UUID
			m.noteLocked(v)
			out = append(out, v)
		}
	}
	return out
}

func (m *Monitor) send(ctx context.Context, vs []Verdict) {
	for _, v := range vs {
		select {
		case m.out <- v:
		case <-ctx.Done():
			return
		}
	}
}
