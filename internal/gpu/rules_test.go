package gpu

import (
	"strings"
	"testing"
	"time"
)

func TestXIDClasses(t *testing.T) {
	cases := []struct {
		xid  int
		want Class
	}{
		{13, Restart}, {31, Restart}, {43, Restart}, {68, Restart}, {94, Restart}, {109, Restart},
		{45, None},
		{46, Drain}, {48, Drain}, {62, Drain}, {64, Drain}, {74, Drain}, {79, Drain}, {95, Drain},
		{119, Drain}, {120, Drain}, {136, Drain}, {140, Drain}, {144, Drain}, {150, Drain}, {155, Drain},
		{63, Warn}, {92, Warn}, {999, Warn}, // unknown: warn
	}
	for _, c := range cases {
		w := NewWatch(DefaultRules())
		vs := w.Event(0, Event{Index: 1, Kind: EventXID, XID: c.xid})
		got := None
		if len(vs) == 1 {
			got = vs[0].Class
			if vs[0].Index != 1 || vs[0].XID != c.xid || !strings.Contains(vs[0].Reason, "XID") {
				t.Errorf("XID %d: verdict %+v", c.xid, vs[0])
			}
		} else if len(vs) > 1 {
			t.Fatalf("XID %d: %d verdicts", c.xid, len(vs))
		}
		if got != c.want {
			t.Errorf("XID %d: class %s, want %s", c.xid, got, c.want)
		}
	}
}

func TestEventsAndSampleConditions(t *testing.T) {
	ok := Sample{Index: 0, TempC: 50, PCIeWidth: 16, MaxPCIeWidth: 16}
	with := func(f func(*Sample)) Sample { s := ok; f(&s); return s }
	cases := []struct {
		name   string
		events []Event
		// samples at 10 s intervals
		samples []Sample
		want    Class
		reason  string
	}{
		{"healthy", nil, []Sample{ok, ok, ok}, None, ""},
		{"lost event", []Event{{Kind: EventLost, Detail: "GPU unavailable"}}, nil, Drain, "GPU lost"},
		{"recovery action reboot", []Event{{Kind: EventRecovery, Value: RecoveryNodeReboot}}, nil, Drain, "NODE_REBOOT"},
		{"recovery action none", []Event{{Kind: EventRecovery, Value: RecoveryNone}}, nil, None, ""},
		{"lost sample", nil, []Sample{with(func(s *Sample) { s.Lost, s.Err = true, "GPU is lost" })}, Drain, "GPU lost"},
		{"recovery pending in sample", nil, []Sample{with(func(s *Sample) { s.RecoveryAction = RecoveryGPUReset })}, Drain, "GPU_RESET"},
		{"recovery unsupported", nil, []Sample{with(func(s *Sample) { s.RecoveryAction = -1 })}, None, ""},
		{"remap failed", nil, []Sample{with(func(s *Sample) { s.RemapFailed = true })}, Drain, "row remap failed"},
		{"nvlink down", nil, []Sample{with(func(s *Sample) { s.NVLinkDown = []int{3} })}, Drain, "NVLink down"},
		{"uncorrectable ECC increase", nil, []Sample{with(func(s *Sample) { s.ECCVolUncorr = 2 }), with(func(s *Sample) { s.ECCVolUncorr = 3 })}, Drain, "uncorrectable ECC"},
		{"uncorrectable ECC steady", nil, []Sample{with(func(s *Sample) { s.ECCVolUncorr = 2 }), with(func(s *Sample) { s.ECCVolUncorr = 2 })}, None, ""},
		{"correctable ECC rising", nil, []Sample{ok, with(func(s *Sample) { s.ECCVolCorr = 5 })}, Warn, "correctable ECC"},
		{"remap pending", nil, []Sample{with(func(s *Sample) { s.RemapPending = true })}, Warn, "remap pending"},
		{"pcie degraded", nil, []Sample{with(func(s *Sample) { s.PCIeWidth = 8 })}, Warn, "x8 of x16"},
		{"throttle held 60s", nil, repeat(with(func(s *Sample) { s.ClockEventReasons = ReasonHwThermal }), 7), Warn, "HW_THERMAL"},
		{"throttle short", nil, repeat(with(func(s *Sample) { s.ClockEventReasons = ReasonHwSlowdown }), 6), None, ""},
		{"sw power cap is not hardware", nil, repeat(with(func(s *Sample) { s.ClockEventReasons = 0x4 }), 8), None, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := NewWatch(DefaultRules())
			var vs []Verdict
			for _, e := range c.events {
				vs = append(vs, w.Event(0, e)...)
			}
			for i, s := range c.samples {
				vs = append(vs, w.Sample(time.Duration(i)*10*time.Second, s)...)
			}
			got, reason := None, ""
			for _, v := range vs {
				if v.Class > got {
					got, reason = v.Class, v.Reason
				}
			}
			if got != c.want || !strings.Contains(reason, c.reason) {
				t.Errorf("got %s %q, want %s %q (all: %v)", got, reason, c.want, c.reason, vs)
			}
		})
	}
}

func repeat(s Sample, n int) []Sample {
	out := make([]Sample, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestRestartEscalatesOnSameGPU(t *testing.T) {
	w := NewWatch(DefaultRules())
	min := time.Minute
	steps := []struct {
		at   time.Duration
		gpu  int
		want Class
	}{
		{0, 0, Restart},
		{1 * min, 1, Restart}, // another GPU: its own count
		{2 * min, 0, Restart},
		{3 * min, 0, Drain}, // third on GPU 0 within 1 h
		{4 * min, 0, None},  // drained: nothing more about it
		{5 * min, 1, Restart},
		{70 * min, 1, Restart}, // the first on GPU 1 (at 1 min) left the window
	}
	for i, s := range steps {
		vs := w.Event(s.at, Event{Index: s.gpu, Kind: EventXID, XID: 13})
		got := None
		if len(vs) > 0 {
			got = vs[0].Class
		}
		if got != s.want {
			t.Errorf("step %d (GPU %d at %s): %s, want %s", i, s.gpu, s.at, got, s.want)
		}
	}
}

func TestWarningsAreNotRepeated(t *testing.T) {
	w := NewWatch(DefaultRules())
	s := Sample{Index: 0, PCIeWidth: 8, MaxPCIeWidth: 16}
	n := 0
	for i := 0; i < 10; i++ {
		n += len(w.Sample(time.Duration(i)*time.Second, s))
	}
	if n != 1 {
		t.Fatalf("%d PCIe warnings for one degraded link, want 1", n)
	}
	w.Sample(11*time.Second, Sample{Index: 0, PCIeWidth: 16, MaxPCIeWidth: 16})
	if vs := w.Sample(12*time.Second, s); len(vs) != 1 {
		t.Fatalf("degraded again after recovering: %v, want a warning", vs)
	}
}

func TestParseXIDClasses(t *testing.T) {
	r := DefaultRules()
	if err := r.ParseXIDClasses("drain=13, 31;ignore=63"); err != nil {
		t.Fatal(err)
	}
	if r.ClassOf(13) != Drain || r.ClassOf(31) != Drain || r.ClassOf(63) != None || r.ClassOf(79) != Drain {
		t.Fatalf("overrides not applied: 13=%s 31=%s 63=%s 79=%s", r.ClassOf(13), r.ClassOf(31), r.ClassOf(63), r.ClassOf(79))
	}
	for _, bad := range []string{"drain", "evict=13", "drain=x", "warn=0", "drain=13;"} {
		if err := r.ParseXIDClasses(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}
