// Package events is the job's event log: one JSON object a line, fsynced as
// it is written so that a kill -9 of bulsajo loses nothing already reported,
// and read back tolerating a torn last line. It also turns the log into the
// end-of-run summary (goodput and where the lost time went).
package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Types of events.
const (
	RunStarted      = "run_started"
	GenerationStart = "generation_started"
	FaultDetected   = "fault"
	FaultInjected   = "fault_injected" // by --chaos, so detection latency is exact
	Recovered       = "recovered"
	GenerationStop  = "generation_stopped"
	RunFinished     = "run_finished"
	// StretchEnd closes a stretch of steps (Stretch): written when the
	// next generation's steps begin, and at the end of the run.
	StretchEnd = "steps"
	// Multi-node.
	CoordinatorResumed = "coordinator_resumed" // a restarted or new leader adopted the running job
	NodeJoined         = "node_joined"
	NodeLost           = "node_lost"
	NodeQuarantined    = "node_quarantined"
	NodeReleased       = "node_released"
	// GPU health (internal/gpu).
	GPUDrained = "gpu_drained" // a GPU taken out of the job (Cause: drain class reason)
	GPUFault   = "gpu_fault"   // an application-class GPU fault: its worker restarts
	GPUWarning = "gpu_warning"
	// Stragglers (internal/straggler): a rank persistently slower than the
	// others (Speed: its work rate relative to the median of the others;
	// Cause: the hardware evidence, or "none"), and back to speed; the
	// whole job slower than its own best (Speed: the ratio).
	StragglerDetected  = "straggler"
	StragglerRecovered = "straggler_recovered"
	JobSlowdown        = "job_slowdown"
	JobSpeedRecovered  = "job_speed_recovered"
)

// Event is one line of the log. Fields that do not apply stay empty.
type Event struct {
	Time  time.Time `json:"time"`
	Type  string    `json:"type"`
	RunID string    `json:"run_id,omitempty"`
	Gen   int       `json:"gen,omitempty"`
	// Rank is a pointer so that rank 0 and "no rank" differ.
	Rank   *int   `json:"rank,omitempty"`
	Cause  string `json:"cause,omitempty"`
	Detail string `json:"detail,omitempty"`
	Step   *int   `json:"step,omitempty"`

	// DetectMS: from the fault (when known: injection, last progress) to its detection.
	DetectMS float64 `json:"detect_ms,omitempty"`
	// RecoverMS: from detection to the next generation's first step.
	RecoverMS  float64 `json:"recover_ms,omitempty"`
	RolledBack int     `json:"rolled_back_steps,omitempty"`
	WorldSize  int     `json:"world_size,omitempty"`
	Outcome    string  `json:"outcome,omitempty"`
	// NoProgressGens (run_finished): the last generations ran without
	// progress (a crash loop): their whole time is lost.
	NoProgressGens int    `json:"no_progress_gens,omitempty"`
	Node           string `json:"node,omitempty"`
	// Stretch is set on steps events.
	Stretch *Stretch `json:"stretch,omitempty"`
	GPU     *int     `json:"gpu,omitempty"` // GPU index on Node (the worker's slot)
	// Speed is set on straggler events (relative speed, 1 = the median).
	Speed float64 `json:"speed,omitempty"`
	UUID  string  `json:"uuid,omitempty"`
	// Summary is set on run_finished.
	Summary *Summary `json:"summary,omitempty"`
}

// Int returns a pointer to n, for Rank and Step.
func Int(n int) *int { return &n }

// Log appends events to a file, one line each. A line is written before
// Append returns, so it survives a kill -9 of the writer (the kernel holds
// it); it reaches the disk in the background, within an fsync's time, so
// that a slow disk (an fsync can take hundreds of ms while etcd writes on
// the same disk) never delays the recovery that the event reports.
type Log struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	sink    func(Event)   // optional second destination (the store)
	dirty   chan struct{} // a write waits for the syncer (capacity 1)
	synced  chan struct{} // closed when the syncer has finished
	closed  bool
	syncErr error // the syncer's first error, reported by the next Append
}

// Create opens (appending) the log at path. A torn last line left by a
// killed writer is cut off first: that event was never fully reported, and
// appending after it would glue the next event onto the fragment.
func Create(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[len(b)-1] != '\n' {
		if err := f.Truncate(int64(bytes.LastIndexByte(b, '\n') + 1)); err != nil {
			f.Close()
			return nil, fmt.Errorf("events: cut torn line: %w", err)
		}
	}
	l := &Log{f: f, path: path, dirty: make(chan struct{}, 1), synced: make(chan struct{})}
	go l.syncer()
	return l, nil
}

// syncer fsyncs after writes; writes that come while it syncs share the
// next fsync.
func (l *Log) syncer() {
	defer close(l.synced)
	for range l.dirty {
		if err := l.f.Sync(); err != nil {
			l.mu.Lock()
			if l.syncErr == nil {
				l.syncErr = err
			}
			l.mu.Unlock()
		}
	}
}

// Path is the file the log writes.
func (l *Log) Path() string { return l.path }

// Tee sends every appended event to fn as well (after it is written).
func (l *Log) Tee(fn func(Event)) { l.sink = fn }

// Append writes e as one line; the fsync follows in the background.
func (l *Log) Append(e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("events: append to %s after close", l.path)
	}
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	select {
	case l.dirty <- struct{}{}:
	default: // a sync is already due
	}
	if l.sink != nil {
		l.sink(e)
	}
	if err := l.syncErr; err != nil {
		// An earlier line may not be on disk; this one is written.
		l.syncErr = nil
		return fmt.Errorf("events: sync: %w", err)
	}
	return nil
}

// Close syncs what was written and closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.dirty)
	l.mu.Unlock()
	<-l.synced
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = l.syncErr
	}
	return err
}

// ErrCorrupt reports a bad line that is not the last one.
var ErrCorrupt = errors.New("events: corrupt line")

// Read parses a log. A torn last line (bulsajo killed mid-write) is dropped;
// a bad line anywhere else is an error.
func Read(r io.Reader) ([]Event, error) {
	var out []Event
	br := bufio.NewReader(r)
	lineNo := 0
	var pendingErr error
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			lineNo++
			if pendingErr != nil {
				return out, pendingErr // the bad line was not the last
			}
			var e Event
			if jerr := json.Unmarshal(line, &e); jerr != nil {
				pendingErr = fmt.Errorf("%w %d: %v", ErrCorrupt, lineNo, jerr)
			} else {
				out = append(out, e)
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// ReadFile reads the log at path.
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f)
}
