package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

func TestHubSamplesProgress(t *testing.T) {
	h := NewHub(nil)
	t0 := time.Now()
	h.Event(events.Event{Type: events.RunStarted, Time: t0})
	for i := 0; i < 100; i++ { // a step every 10 ms: one sample per 250 ms
		h.Step("j", i, t0.Add(time.Duration(i)*10*time.Millisecond))
	}
	h.Step("j", 50, t0.Add(2*time.Second)) // a rollback: not a new high
	s := h.Snapshot()
	if len(s.Steps) != 4 {
		t.Fatalf("samples %v, want 4 (0, 25, 50, 75)", s.Steps)
	}
	for i := 1; i < len(s.Steps); i++ {
		if s.Steps[i].Step <= s.Steps[i-1].Step {
			t.Fatalf("samples not increasing: %v", s.Steps)
		}
	}
	h.Event(events.Event{Type: events.RunStarted, Time: t0.Add(time.Minute)})
	if s := h.Snapshot(); len(s.Steps) != 0 || len(s.Events) != 1 {
		t.Fatalf("a new run should start a new history: %d samples, %d events", len(s.Steps), len(s.Events))
	}
}

func TestStateAfter(t *testing.T) {
	for _, tc := range []struct {
		typ, outcome, want string
	}{
		{events.RunStarted, "", "starting"},
		{events.GenerationStart, "", "training"},
		{events.FaultDetected, "", "recovering"},
		{events.Recovered, "", "training"},
		{events.NodeJoined, "", "cur"},
		{events.RunFinished, "succeeded", "succeeded"},
	} {
		if got := stateAfter("cur", events.Event{Type: tc.typ, Outcome: tc.outcome}); got != tc.want {
			t.Errorf("after %s: %q, want %q", tc.typ, got, tc.want)
		}
	}
}

// TestStreamSendsEventsAndCounts: an open page gets the event as it is
// recorded and, with it, the updated counts.
func TestStreamSendsEventsAndCounts(t *testing.T) {
	h := NewHub(func() any { return map[string]int{"nodes": 3} })
	srv := httptest.NewServer(Handler(h))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	next := func() (string, string) {
		var kind, data string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				data = line[6:]
			case line == "" && kind != "":
				return kind, data
			}
		}
	}
	if k, _ := next(); k != "live" {
		t.Fatalf("first frame %q, want live", k)
	}
	h.Event(events.Event{Type: events.FaultDetected, Time: time.Now(), Cause: "hang", RunID: "j"})
	k, d := next()
	if k != "event" || !strings.Contains(d, `"hang"`) {
		t.Fatalf("frame %s %s, want the fault event", k, d)
	}
	k, d = next()
	var l Live
	if k != "live" || json.Unmarshal([]byte(d), &l) != nil || l.Summary.Faults != 1 || l.State != "recovering" {
		t.Fatalf("frame after the event: %s %s; want the counts with 1 fault", k, d)
	}
}

// TestReportIsSelfContained: no reference to the server's assets, and event
// text cannot end the script element that carries the data.
func TestReportIsSelfContained(t *testing.T) {
	var b bytes.Buffer
	sum := WriteReport(&b, []events.Event{
		{Type: events.RunStarted, Time: time.Unix(100, 0), RunID: "r"},
		{Type: events.FaultDetected, Time: time.Unix(110, 0), Cause: "worker_exit", Detail: "</script><script>alert(1)</script>"},
	})
	page := b.String()
	for _, bad := range []string{`src="/static`, `href="/static`, "</script><script>alert"} {
		if strings.Contains(page, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	if sum.Faults != 1 || !strings.Contains(page, "BULSAJO_SNAPSHOT") {
		t.Errorf("report: faults %d, snapshot inlined %v", sum.Faults, strings.Contains(page, "BULSAJO_SNAPSHOT"))
	}
}
