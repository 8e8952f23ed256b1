package gpu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func script(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gpus.txt")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func appendLine(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString(line + "\n")
}

func next(t *testing.T, m *Monitor, within time.Duration) Verdict {
	t.Helper()
	select {
	case v := <-m.Verdicts():
		return v
	case <-time.After(within):
		t.Fatalf("no verdict within %s", within)
	}
	return Verdict{}
}

func TestFakeScriptErrors(t *testing.T) {
	for _, bad := range []string{"", "gpus x", "gpus 2\nxid 79 gpu\n", "gpus 2\nset gpu 0 temp=hot\n", "gpus 2\nat soon xid 79 gpu 1\n", "gpus 2\nfly gpu 1\n"} {
		if _, err := OpenFake(script(t, bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	if _, err := OpenFake(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestMonitorPreflightAndWatch(t *testing.T) {
	path := script(t, "gpus 4\nset gpu 3 remap_failed=1\n")
	p, err := OpenFake(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	time.Sleep(300 * time.Millisecond) // the set line plays
	m := NewMonitor(p, MonitorConfig{Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond})
	vs := m.Preflight(context.Background())
	if len(vs) != 1 || vs[0].Index != 3 || vs[0].Class != Drain || !strings.Contains(vs[0].Reason, "row remap failed") {
		t.Fatalf("preflight: %v, want GPU 3 drained for a failed row remap", vs)
	}
	if vs := m.Preflight(context.Background()); len(vs) != 0 {
		t.Fatalf("second preflight repeats: %v", vs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)

	appendLine(t, path, "xid 79 gpu 2")
	v := next(t, m, 2*time.Second)
	if v.Index != 2 || v.Class != Drain || !strings.Contains(v.Reason, "XID 79 (GPU fell off the bus)") || v.UUID != fakeUUID(2) {
		t.Fatalf("got %+v, want GPU 2 drained for XID 79", v)
	}
	// A probe call that never returns: the GPU is lost, and Run goes on.
	appendLine(t, path, "hang gpu 1")
	v = next(t, m, 3*time.Second)
	if v.Index != 1 || v.Class != Drain || !strings.Contains(v.Reason, "did not return") {
		t.Fatalf("got %+v, want GPU 1 drained for a hung probe", v)
	}
	appendLine(t, path, "xid 13 gpu 0")
	v = next(t, m, 2*time.Second)
	if v.Index != 0 || v.Class != Restart {
		t.Fatalf("got %+v, want a restart of GPU 0", v)
	}
	st := m.Status()
	if len(st) != 4 || st[0].State != "ok" || st[1].State != "drained" || st[2].State != "drained" || st[3].State != "drained" {
		t.Fatalf("status %+v", st)
	}
}

func TestPreflightMissingGPUAndHungDevices(t *testing.T) {
	p, err := OpenFake(script(t, "gpus 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	h := &hangDevices{Fake: p}
	m := NewMonitor(h, MonitorConfig{Timeout: 200 * time.Millisecond})
	if vs := m.Preflight(context.Background()); len(vs) != 0 {
		t.Fatalf("healthy preflight: %v", vs)
	}
	h.n = 1 // GPU 1 no longer listed
	vs := m.Preflight(context.Background())
	if len(vs) != 1 || vs[0].Index != 1 || !strings.Contains(vs[0].Reason, "GPU missing") {
		t.Fatalf("got %v, want GPU 1 missing", vs)
	}
	h.block = true
	vs = m.Preflight(context.Background())
	if len(vs) != 1 || vs[0].Index != 0 || !strings.Contains(vs[0].Reason, "did not answer") {
		t.Fatalf("got %v, want GPU 0 drained: the probe hangs", vs)
	}
}

// hangDevices lists only the first n GPUs, or blocks.
type hangDevices struct {
	*Fake
	n     int
	block bool
}

func (h *hangDevices) Devices(ctx context.Context) ([]Device, error) {
	if h.block {
		select {}
	}
	d, err := h.Fake.Devices(ctx)
	if h.n > 0 {
		d = d[:h.n]
	}
	return d, err
}

func TestSlotMap(t *testing.T) {
	devs := []Device{{Index: 0, UUID: "GPU-aaa"}, {Index: 1, UUID: "GPU-bbb"}, {Index: 2, UUID: "GPU-ccc"}}
	cases := []struct {
		cvd  string
		want map[int]int
	}{
		{"", map[int]int{0: 0, 1: 1, 2: 2}},
		{"2,0", map[int]int{2: 0, 0: 1}},
		{"GPU-ccc,GPU-a", map[int]int{2: 0, 0: 1}},
		{"7", map[int]int{}},
	}
	for _, c := range cases {
		got := SlotMap(devs, c.cvd)
		if len(got) != len(c.want) {
			t.Errorf("%q: %v, want %v", c.cvd, got, c.want)
			continue
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%q: %v, want %v", c.cvd, got, c.want)
			}
		}
	}
}
