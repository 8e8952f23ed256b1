package events

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }

func sampleEvents() []Event {
	return []Event{
		{Time: at(0), Type: RunStarted, RunID: "r1", WorldSize: 4},
		{Time: at(1), Type: GenerationStart, RunID: "r1", Gen: 1, WorldSize: 4},
		{Time: at(10), Type: FaultDetected, RunID: "r1", Gen: 1, Rank: Int(0), Cause: "exit", Detail: "code 1", Step: Int(0), DetectMS: 12.5},
		{Time: at(12), Type: Recovered, RunID: "r1", Gen: 2, RecoverMS: 1500, RolledBack: 3},
		{Time: at(20), Type: RunFinished, RunID: "r1", Outcome: "succeeded", Step: Int(100),
			Summary: &Summary{Outcome: "succeeded", WallS: 20, Steps: 100, Faults: 1, Goodput: 0.9}},
	}
}

func newLog(t *testing.T) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "events.jsonl")
	l, err := Create(path)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestAppendReadRoundTrip(t *testing.T) {
	l, path := newLog(t)
	if l.Path() != path {
		t.Errorf("Path() = %q, want %q", l.Path(), path)
	}
	want := sampleEvents()
	for _, e := range want {
		if err := l.Append(e); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d events, want %d", len(got), len(want))
	}
	for i := range want {
		if !got[i].Time.Equal(want[i].Time) {
			t.Errorf("event %d: time %v, want %v", i, got[i].Time, want[i].Time)
		}
		got[i].Time, want[i].Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	// Rank 0 survives (it is not "no rank").
	if got[2].Rank == nil || *got[2].Rank != 0 {
		t.Errorf("rank 0 lost in round trip: %v", got[2].Rank)
	}
	if got[0].Rank != nil {
		t.Errorf("absent rank read back as %v", *got[0].Rank)
	}
}

func TestAppendFillsTimeAndIsOnDisk(t *testing.T) {
	l, path := newLog(t)
	before := time.Now()
	for i, typ := range []string{RunStarted, GenerationStart, FaultDetected} {
		if err := l.Append(Event{Type: typ, Gen: i}); err != nil {
			t.Fatalf("Append: %v", err)
		}
		// A fresh reader sees every event as soon as Append returns.
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Read(f)
		f.Close()
		if err != nil {
			t.Fatalf("Read after Append %d: %v", i, err)
		}
		if len(got) != i+1 {
			t.Fatalf("after Append %d, fresh reader sees %d events", i, len(got))
		}
		if got[i].Type != typ {
			t.Errorf("event %d type %q, want %q", i, got[i].Type, typ)
		}
		if got[i].Time.Before(before.Add(-time.Second)) || got[i].Time.After(time.Now().Add(time.Second)) {
			t.Errorf("zero Time not filled with now: %v", got[i].Time)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(b), "\n"); lines != 3 {
		t.Errorf("file has %d lines, want 3: %q", lines, b)
	}
}

func TestCloseSyncsAndRefusesLaterAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	l, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range sampleEvents()[:3] {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := l.Append(Event{Type: RunFinished}); err == nil {
		t.Error("Append after Close succeeded")
	}
	evs, err := ReadFile(path)
	if err != nil || len(evs) != 3 {
		t.Fatalf("after Close: %d events, %v", len(evs), err)
	}
}

// A failed fsync (here: a pipe, where fsync is EINVAL) is reported by the
// next Append, once, and that Append's line is still written.
func TestSyncErrorReportedByNextAppendAfterItsLine(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// What Create makes, on a file whose fsync fails.
	l := &Log{f: w, path: "pipe", dirty: make(chan struct{}, 1), synced: make(chan struct{})}
	go l.syncer()
	evs := sampleEvents()
	if err := l.Append(evs[0]); err != nil {
		t.Fatalf("first Append: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		failed := l.syncErr != nil
		l.mu.Unlock()
		if failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the syncer never reported the failed fsync")
		}
		time.Sleep(time.Millisecond)
	}
	err = l.Append(evs[1])
	if err == nil || !strings.Contains(err.Error(), "sync") {
		t.Fatalf("Append after a failed fsync: %v, want the sync error", err)
	}
	buf := make([]byte, 1<<16)
	n, _ := r.Read(buf)
	if lines := strings.Count(string(buf[:n]), "\n"); lines != 2 {
		t.Fatalf("%d lines in the pipe, want both events written:\n%s", lines, buf[:n])
	}
	l.Close()
}

func TestCreateAppendsToExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	for i := range 2 {
		l, err := Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Append(Event{Time: at(float64(i)), Type: RunStarted}); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	got, err := ReadFile(path)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadFile = %d events, %v; want 2, nil", len(got), err)
	}
}

func TestCreateError(t *testing.T) {
	if _, err := Create(filepath.Join(t.TempDir(), "missing", "events.jsonl")); err == nil {
		t.Error("Create in a missing directory succeeded")
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "none.jsonl")); err == nil {
		t.Error("ReadFile of a missing file succeeded")
	}
}

func TestTeeAfterWrite(t *testing.T) {
	l, path := newLog(t)
	var seen []Event
	l.Tee(func(e Event) {
		evs, err := ReadFile(path)
		if err != nil || len(evs) != len(seen)+1 {
			t.Errorf("tee called before the event was written (%d events, %v)", len(evs), err)
		}
		seen = append(seen, e)
	})
	for _, e := range sampleEvents()[:3] {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 3 || seen[2].Type != FaultDetected {
		t.Errorf("tee saw %+v", seen)
	}
}

func TestReadTolerance(t *testing.T) {
	good1 := `{"time":"2025-03-01T12:00:00Z","type":"run_started","run_id":"r"}`
	good2 := `{"time":"2025-03-01T12:00:01Z","type":"generation_started","gen":1}`
	torn := `{"time":"2025-03-01T12:00:02Z","type":"fau`
	tests := []struct {
		name      string
		in        string
		wantTypes []string
		wantErr   error
	}{
		{"empty", "", nil, nil},
		{"only blank lines", "\n\n  \n", nil, nil},
		{"two good", good1 + "\n" + good2 + "\n", []string{RunStarted, GenerationStart}, nil},
		{"no final newline", good1 + "\n" + good2, []string{RunStarted, GenerationStart}, nil},
		{"blank lines between", good1 + "\n\n\n" + good2 + "\n", []string{RunStarted, GenerationStart}, nil},
		{"torn last line", good1 + "\n" + good2 + "\n" + torn, []string{RunStarted, GenerationStart}, nil},
		{"torn only line", torn, nil, nil},
		{"garbage last line with newline", good1 + "\n" + "}{\n", []string{RunStarted}, nil},
		{"corrupt middle", good1 + "\n" + torn + "\n" + good2 + "\n", nil, ErrCorrupt},
		{"corrupt first", "not json\n" + good1 + "\n", nil, ErrCorrupt},
		{"corrupt middle then torn", good1 + "\nxx\n" + torn, nil, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read(strings.NewReader(tt.in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Read error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read error = %v", err)
			}
			var types []string
			for _, e := range got {
				types = append(types, e.Type)
			}
			if !reflect.DeepEqual(types, tt.wantTypes) {
				t.Errorf("types = %q, want %q", types, tt.wantTypes)
			}
		})
	}
}

// A bulsajo killed mid-write leaves a partial line at the end of the file.
func TestReadFileTornTail(t *testing.T) {
	l, path := newLog(t)
	evs := sampleEvents()
	for _, e := range evs[:3] {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"time":"2025-03-01T12:00:12Z","type":"recov`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile with torn tail: %v", err)
	}
	if len(got) != 3 || got[2].Type != FaultDetected {
		t.Errorf("got %d events (%+v), want the 3 whole ones", len(got), got)
	}

	// A damaged line that is followed by a whole one is corruption, not a tear.
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n" + `{"time":"2025-03-01T12:00:20Z","type":"run_finished"}` + "\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err = ReadFile(path)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadFile with corrupt middle line: %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), "line 4") {
		t.Errorf("error %q does not name line 4", err)
	}
	if len(got) != 3 {
		t.Errorf("ReadFile returned %d events before the corrupt line, want 3", len(got))
	}
}

// BUG: Create opens an existing log for appending, and a log whose writer was
// killed mid-line ends in a torn line. Appending to such a log glues the next
// event onto the torn fragment: the new event is lost (the merged line is a
// "torn last line" and is dropped), and once one more event follows, the
// merged line sits in the middle and the whole log reads as ErrCorrupt.
func TestCreateAfterTornTailKeepsNewEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	l, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	evs := sampleEvents()
	for _, e := range evs[:2] {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	// The first bulsajo is SIGKILLed halfway through writing an event.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"time":"2025-03-01T12:00:10Z","type":"fau`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// The run is started again with the same run dir.
	l, err = Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, e := range evs[2:4] {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile after appending to a torn log: %v", err)
	}
	if len(got) != 4 {
		t.Fatalf("ReadFile = %d events, want the 2 before the tear and the 2 appended after", len(got))
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarize(t *testing.T) {
	tests := []struct {
		name     string
		evs      []Event
		stepTime time.Duration
		want     Summary
	}{
		{"empty", nil, time.Second, Summary{}},
		{"clean run", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(0.5), Type: GenerationStart, Gen: 1},
			{Time: at(100), Type: RunFinished, Outcome: "succeeded", Step: Int(1000)},
		}, 0, Summary{Outcome: "succeeded", WallS: 100, Steps: 1000, Generations: 1, Goodput: 1}},
		{"one fault with rollback priced", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(1), Type: GenerationStart, Gen: 1},
			{Time: at(30), Type: FaultDetected, Gen: 1, Rank: Int(2), Step: Int(300), DetectMS: 2000},
			{Time: at(31), Type: GenerationStop, Gen: 1},
			{Time: at(31), Type: GenerationStart, Gen: 2},
			{Time: at(33), Type: Recovered, Gen: 2, RecoverMS: 3000, RolledBack: 50},
			{Time: at(100), Type: RunFinished, Outcome: "succeeded", Step: Int(1000)},
		}, 100 * time.Millisecond, Summary{
			Outcome: "succeeded", WallS: 100, Steps: 1000, Generations: 2, Faults: 1, Recoveries: 1,
			DetectS: 2, RestartS: 3, RollbackS: 5, LostS: 10, Goodput: 0.9,
		}},
		{"rollback unpriced without step time", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(5), Type: FaultDetected, DetectMS: 1000},
			{Time: at(6), Type: Recovered, RecoverMS: 1000, RolledBack: 50},
			{Time: at(10), Type: RunFinished, Outcome: "succeeded"},
		}, 0, Summary{Outcome: "succeeded", WallS: 10, Faults: 1, Recoveries: 1, DetectS: 1, RestartS: 1, LostS: 2, Goodput: 0.8}},
		{"restarts exhausted, steps from last fault", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(1), Type: GenerationStart, Gen: 1},
			{Time: at(5), Type: FaultDetected, Step: Int(40), DetectMS: 500},
			{Time: at(6), Type: GenerationStart, Gen: 2},
			{Time: at(7), Type: Recovered, RecoverMS: 1500},
			{Time: at(9), Type: FaultDetected, Step: Int(20), DetectMS: 500},
			{Time: at(10), Type: RunFinished, Outcome: "failed"},
		}, time.Second, Summary{
			Outcome: "failed", WallS: 10, Steps: 40, Generations: 2, Faults: 2, Recoveries: 1,
			DetectS: 1, RestartS: 1.5, LostS: 2.5, Goodput: 0.75,
		}},
		{"goodput floored at zero", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(1), Type: FaultDetected, DetectMS: 5000},
			{Time: at(2), Type: RunFinished, Outcome: "failed"},
		}, 0, Summary{Outcome: "failed", WallS: 2, Faults: 1, DetectS: 5, LostS: 5, Goodput: 0}},
		{"no run_started: no wall time", []Event{
			{Time: at(3), Type: FaultDetected, DetectMS: 1000},
			{Time: at(4), Type: RunFinished, Outcome: "failed", Step: Int(7)},
		}, 0, Summary{Outcome: "failed", Steps: 7, Faults: 1, DetectS: 1, LostS: 1}},
		{"wall ends at the last event", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(4), Type: GenerationStart, Gen: 1},
			{Time: at(8), Type: GenerationStop, Gen: 1},
		}, 0, Summary{WallS: 8, Generations: 1, Goodput: 1}},
		{"crash loop at start: the loop's generations are lost whole", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(0.1), Type: GenerationStart, Gen: 1},
			{Time: at(0.7), Type: FaultDetected, Gen: 1, DetectMS: 3},
			{Time: at(0.7), Type: GenerationStart, Gen: 2},
			{Time: at(1.3), Type: FaultDetected, Gen: 2, DetectMS: 4},
			{Time: at(1.3), Type: GenerationStart, Gen: 3},
			{Time: at(1.9), Type: FaultDetected, Gen: 3, DetectMS: 3},
			{Time: at(2), Type: RunFinished, Outcome: "crash_loop", NoProgressGens: 3},
		}, 0, Summary{Outcome: "crash_loop", WallS: 2, Generations: 3, Faults: 3,
			DetectS: 0.01, RestartS: 1.89, LostS: 1.9, Goodput: 0.05}},
		{"crash loop after an unmodified job ran: only the loop is lost", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(1), Type: GenerationStart, Gen: 1},
			{Time: at(50), Type: FaultDetected, Gen: 1, DetectMS: 1000},
			{Time: at(51), Type: GenerationStart, Gen: 2},
			{Time: at(52), Type: Recovered, Gen: 2, RecoverMS: 2000},
			{Time: at(60), Type: FaultDetected, Gen: 2, DetectMS: 500},
			{Time: at(60), Type: GenerationStart, Gen: 3},
			{Time: at(70), Type: FaultDetected, Gen: 3, DetectMS: 500},
			{Time: at(70), Type: RunFinished, Outcome: "crash_loop", NoProgressGens: 2},
		}, 0, Summary{Outcome: "crash_loop", WallS: 70, Generations: 3, Faults: 3, Recoveries: 1,
			// gen 1's fault and gen 2's restart as timed; gens 2 and 3 (51..70 s) lost
			// whole, less the 2 s restart and 1 s of detection already counted in them
			DetectS: 2, RestartS: 2 + 16, LostS: 20, Goodput: 50.0 / 70}},
		{"injected faults and standbys do not count", []Event{
			{Time: at(0), Type: RunStarted},
			{Time: at(2), Type: FaultInjected, Rank: Int(1)},
			{Time: at(2), Type: "other"},
			{Time: at(4), Type: RunFinished, Outcome: "succeeded"},
		}, 0, Summary{Outcome: "succeeded", WallS: 4, Goodput: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.evs, tt.stepTime)
			w := tt.want
			if got.Outcome != w.Outcome || got.Steps != w.Steps || got.Generations != w.Generations ||
				got.Faults != w.Faults || got.Recoveries != w.Recoveries {
				t.Errorf("counts = %+v, want %+v", got, w)
			}
			for _, f := range []struct {
				name      string
				got, want float64
			}{
				{"WallS", got.WallS, w.WallS}, {"DetectS", got.DetectS, w.DetectS},
				{"RestartS", got.RestartS, w.RestartS}, {"RollbackS", got.RollbackS, w.RollbackS},
				{"LostS", got.LostS, w.LostS}, {"Goodput", got.Goodput, w.Goodput},
			} {
				if !near(f.got, f.want) {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			if got.WallS > 0 && !near(got.Goodput, max(0, 1-got.LostS/got.WallS)) {
				t.Errorf("Goodput %v is not 1 - lost/wall = 1 - %v/%v", got.Goodput, got.LostS, got.WallS)
			}
		})
	}
}

func TestSummaryLine(t *testing.T) {
	tests := []struct {
		name      string
		s         Summary
		want      string
		wantNotIn []string
	}{
		{"no faults", Summary{WallS: 100, Steps: 1000, Goodput: 1},
			"in 100.0 s · last step 1000 · 0 faults, 0 recoveries · 0.0 s lost · goodput 1.00",
			[]string{"detect"}},
		{"no steps", Summary{WallS: 2.25, Goodput: 1},
			"in 2.2 s · 0 faults, 0 recoveries · 0.0 s lost · goodput 1.00",
			[]string{"steps"}},
		{"one fault", Summary{WallS: 100, Steps: 1000, Faults: 1, Recoveries: 1, DetectS: 2, RestartS: 3, RollbackS: 5, LostS: 10, Goodput: 0.9},
			"in 100.0 s · last step 1000 · 1 fault, 1 recovery · 10.0 s lost (detect 2.0, restart 3.0, rollback 5.0) · goodput 0.90",
			[]string{"faults", "recoveries"}},
		{"many faults", Summary{WallS: 60.04, Steps: 12, Faults: 3, Recoveries: 2, DetectS: 0.5, RestartS: 1.25, LostS: 1.75, Goodput: 0.9708},
			"in 60.0 s · last step 12 · 3 faults, 2 recoveries · 1.8 s lost (detect 0.5, restart 1.2, rollback 0.0) · goodput 0.97",
			nil},
		{"rounding below zero prints as zero", Summary{WallS: 10, LostS: -1e-9, Goodput: 1},
			"in 10.0 s · 0 faults, 0 recoveries · 0.0 s lost · goodput 1.00", []string{"-0.0"}},
		{"one fault no recovery", Summary{WallS: 10, Faults: 1, DetectS: 1, LostS: 1, Goodput: 0.9},
			"in 10.0 s · 1 fault, 0 recoveries · 1.0 s lost (detect 1.0, restart 0.0, rollback 0.0) · goodput 0.90",
			nil},
		{"faults and no steady step: the goodput is marked", Summary{WallS: 10, Steps: 40, Faults: 2, Recoveries: 2,
			RestartS: 1, LostS: 1, Goodput: 0.9, HealthyFrom: HealthyMedian},
			"in 10.0 s · last step 40 · 2 faults, 2 recoveries · 1.0 s lost (detect 0.0, restart 1.0, rollback 0.0) · goodput 0.90 (likely high: no step ran clear of a regroup or the first imports to measure the healthy pace by)",
			nil},
		{"no faults and no steady step: nothing to mark", Summary{WallS: 10, Steps: 40, Goodput: 1, HealthyFrom: HealthyMedian},
			"in 10.0 s · last step 40 · 0 faults, 0 recoveries · 0.0 s lost · goodput 1.00", []string{"likely"}},
		{"steady steps measured: not marked", Summary{WallS: 10, Steps: 40, Faults: 1, Recoveries: 1,
			RestartS: 1, LostS: 1, Goodput: 0.9, HealthyFrom: HealthyFull},
			"in 10.0 s · last step 40 · 1 fault, 1 recovery · 1.0 s lost (detect 0.0, restart 1.0, rollback 0.0) · goodput 0.90", []string{"likely"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.s.Line()
			if got != tt.want {
				t.Errorf("Line() =\n %q\nwant\n %q", got, tt.want)
			}
			for _, s := range tt.wantNotIn {
				if strings.Contains(got, s) {
					t.Errorf("Line() = %q contains %q", got, s)
				}
			}
		})
	}
}
