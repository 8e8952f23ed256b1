// Package dashboard serves the live page of a job (for `bulsajo coordinator`
// and `bulsajo run --metrics-addr`) and writes the same page, with the data
// inside it, as the report of a finished run (`bulsajo report`). The page is
// embedded in the binary: nothing is fetched from outside at run time.
package dashboard

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// Sample is one point of the job's progress.
type Sample struct {
	T    time.Time `json:"t"`
	Step int       `json:"step"`
}

// Snapshot is everything the page shows, as JSON.
type Snapshot struct {
	Now     time.Time      `json:"now"`
	Live    bool           `json:"live"` // false in a report: no stream to open
	State   string         `json:"state"`
	Summary events.Summary `json:"summary"`
	Events  []events.Event `json:"events"`
	Steps   []Sample       `json:"steps"`
	Status  any            `json:"status,omitempty"` // the coordinator's node table and job
}

// Hub keeps one job's history and passes every change to the open pages.
// It is a supervisor.Observer.
type Hub struct {
	mu     sync.Mutex
	evs    []events.Event
	steps  []Sample
	state  string
	subs   map[chan []byte]struct{}
	status func() any
}

const (
	maxEvents  = 20000
	maxSamples = 20000
	// sampleEvery bounds the progress series: one point per interval is
	// plenty for a step-rate plot and keeps the page light for long runs.
	sampleEvery = 250 * time.Millisecond
)

// NewHub creates a hub. status, when set, is added to every snapshot (the
// coordinator's nodes and job).
func NewHub(status func() any) *Hub {
	return &Hub{subs: map[chan []byte]struct{}{}, status: status, state: "waiting"}
}

// Event implements supervisor.Observer.
func (h *Hub) Event(e events.Event) {
	h.mu.Lock()
	if e.Type == events.RunStarted {
		h.evs, h.steps = nil, nil
	}
	if len(h.evs) < maxEvents {
		h.evs = append(h.evs, e)
	}
	h.state = stateAfter(h.state, e)
	h.mu.Unlock()
	h.publish("event", e)
}

// Step implements supervisor.Observer.
func (h *Hub) Step(job string, step int, at time.Time) {
	h.mu.Lock()
	n := len(h.steps)
	if n > 0 && (step <= h.steps[n-1].Step || at.Sub(h.steps[n-1].T) < sampleEvery) {
		h.mu.Unlock()
		return
	}
	if n >= maxSamples {
		// Keep every other point: the series stays whole at half resolution.
		k := 0
		for i := 0; i < n; i += 2 {
			h.steps[k] = h.steps[i]
			k++
		}
		h.steps = h.steps[:k]
	}
	s := Sample{T: at, Step: step}
	h.steps = append(h.steps, s)
	h.mu.Unlock()
	h.publish("step", s)
}

// stateAfter is the job's state as the page names it.
func stateAfter(cur string, e events.Event) string {
	switch e.Type {
	case events.RunStarted, events.CoordinatorResumed:
		return "starting"
	case events.GenerationStart, events.Recovered:
		return "training"
	case events.FaultDetected:
		return "recovering"
	case events.RunFinished:
		return e.Outcome
	}
	return cur
}

// Snapshot returns the page's data now.
func (h *Hub) Snapshot() Snapshot {
	h.mu.Lock()
	s := Snapshot{Now: time.Now(), Live: true, State: h.state, Events: append([]events.Event(nil), h.evs...),
		Steps: append([]Sample(nil), h.steps...)}
	h.mu.Unlock()
	s.Summary = summarize(s.Events, s.Steps, s.Now)
	if h.status != nil {
		s.Status = h.status()
	}
	return s
}

// Live is the light part of a snapshot, sent to open pages every second.
type Live struct {
	Now     time.Time      `json:"now"`
	State   string         `json:"state"`
	Summary events.Summary `json:"summary"`
	Status  any            `json:"status,omitempty"`
}

// Live returns the state, the summary so far and the status.
func (h *Hub) Live() Live {
	h.mu.Lock()
	l := Live{Now: time.Now(), State: h.state}
	l.Summary = summarize(h.evs, h.steps, l.Now)
	h.mu.Unlock()
	if h.status != nil {
		l.Status = h.status()
	}
	return l
}

// summarize accounts the run so far as the end-of-run summary will.
func summarize(evs []events.Event, steps []Sample, now time.Time) events.Summary {
	if len(evs) > 0 && evs[len(evs)-1].Type != events.RunFinished {
		evs = append(evs[:len(evs):len(evs)], events.Event{Time: now})
	}
	return events.Summarize(evs, medianStep(steps))
}

// medianStep is the median time per step between consecutive samples.
func medianStep(steps []Sample) time.Duration {
	var d []time.Duration
	for i := 1; i < len(steps); i++ {
		if n := steps[i].Step - steps[i-1].Step; n > 0 {
			d = append(d, steps[i].T.Sub(steps[i-1].T)/time.Duration(n))
		}
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// subscribe registers a page; its channel gets SSE frames. A page that does
// not keep up loses frames rather than slowing the job (it reloads the
// snapshot when it reconnects).
func (h *Hub) subscribe() chan []byte {
	ch := make(chan []byte, 256)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch
}

func (h *Hub) unsubscribe(ch chan []byte) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

func (h *Hub) publish(kind string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	frame := append([]byte("event: "+kind+"\ndata: "), b...)
	frame = append(frame, '\n', '\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- frame:
		default:
		}
	}
}
