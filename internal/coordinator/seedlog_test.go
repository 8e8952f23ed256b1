package coordinator

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// A new leader rebuilds a job's event log from the store: only when the file
// on disk holds fewer events (a log this node wrote further is kept), and
// through a rename (no temporary file left beside it).
func TestSeedLog(t *testing.T) {
	ev := func(typ string, gen int) events.Event {
		return events.Event{Time: time.Unix(1700000000, 0).UTC(), Type: typ, RunID: "j", Gen: gen}
	}
	store := []events.Event{ev("run_started", 0), ev("generation_started", 1), ev("fault", 1)}
	for _, tc := range []struct {
		name      string
		onDisk    []events.Event // nil: no file
		wantLen   int
		fromStore bool // the file now holds the store's events
	}{
		{"no file: written from the store", nil, 3, true},
		{"fewer on disk: replaced", store[:1], 3, true},
		{"as many on disk: kept", []events.Event{ev("a", 1), ev("b", 1), ev("c", 1)}, 3, false},
		{"more on disk: kept", append(append([]events.Event{}, store...), ev("recovered", 2)), 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "runs", "j")
			path := filepath.Join(dir, "events.jsonl")
			if tc.onDisk != nil {
				if err := seedLog(path, tc.onDisk); err != nil {
					t.Fatal(err)
				}
			}
			if err := seedLog(path, store); err != nil {
				t.Fatal(err)
			}
			got, err := events.ReadFile(path)
			if err != nil || len(got) != tc.wantLen {
				t.Fatalf("read %d events (%v), want %d", len(got), err, tc.wantLen)
			}
			want := tc.onDisk
			if tc.fromStore {
				want = store
			}
			for i := range want {
				if got[i].Type != want[i].Type {
					t.Errorf("event %d: %q, want %q", i, got[i].Type, want[i].Type)
				}
			}
			if names, _ := os.ReadDir(dir); len(names) != 1 {
				t.Errorf("files beside the log: %v", names)
			}
		})
	}
}
