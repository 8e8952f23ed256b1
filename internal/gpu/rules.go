package gpu

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Class is what bulsajo does about a GPU condition.
type Class int

const (
	None    Class = iota
	Warn          // an event and a metric
	Restart       // a worker fault: the worker on that GPU is restarted
	Drain         // the GPU (multi-node: the node) is taken out of the job
)

func (c Class) String() string {
	switch c {
	case Warn:
		return "warn"
	case Restart:
		return "restart"
	case Drain:
		return "drain"
	}
	return "none"
}

// Rules say which XIDs belong to which class, and the thresholds of the
// sampled conditions. Defaults (DefaultRules) follow NVIDIA's XID catalog
// "immediate action" and the k8s device plugin's application-error list;
// see the research notes (gpu-health.md §3).
type Rules struct {
	XID map[int]Class // XIDs not listed: Warn
	// EscalateAfter restart-class faults on the same GPU within
	// EscalateWindow drain it.
	EscalateAfter  int
	EscalateWindow time.Duration
	// ThrottleHold: hardware throttling held this long warns.
	ThrottleHold time.Duration
	// WarnEvery: a repeating warning (correctable errors rising) at most
	// this often per GPU.
	WarnEvery time.Duration
}

// Default XID classes.
var (
	DefaultDrainXIDs   = []int{46, 48, 62, 64, 74, 79, 95, 119, 120, 136, 140, 143, 144, 145, 146, 147, 148, 149, 150, 155, 156, 158}
	DefaultRestartXIDs = []int{13, 31, 43, 68, 94, 109}
	DefaultWarnXIDs    = []int{63, 92}
	DefaultIgnoreXIDs  = []int{45} // preemptive cleanup: its companion XID says what happened
)

// DefaultRules returns the defaults.
func DefaultRules() Rules {
	r := Rules{XID: map[int]Class{}, EscalateAfter: 3, EscalateWindow: time.Hour,
		ThrottleHold: 60 * time.Second, WarnEvery: 5 * time.Minute}
	for _, l := range []struct {
		xids []int
		c    Class
	}{{DefaultDrainXIDs, Drain}, {DefaultRestartXIDs, Restart}, {DefaultWarnXIDs, Warn}, {DefaultIgnoreXIDs, None}} {
		for _, x := range l.xids {
			r.XID[x] = l.c
		}
	}
	return r
}

// ClassOf is the class of an XID.
func (r Rules) ClassOf(xid int) Class {
	if c, ok := r.XID[xid]; ok {
		return c
	}
	return Warn // unknown: tell, do nothing
}

// ParseXIDClasses applies overrides to r.XID: "drain=13,31;ignore=43"
// (classes drain, restart, warn, ignore; lists of XIDs).
func (r *Rules) ParseXIDClasses(spec string) error {
	if strings.TrimSpace(spec) == "" {
		return nil
	}
	for _, part := range strings.Split(spec, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		var c Class
		switch k {
		case "drain":
			c = Drain
		case "restart":
			c = Restart
		case "warn":
			c = Warn
		case "ignore":
			c = None
		default:
			ok = false
		}
		if !ok {
			return fmt.Errorf("%q: want CLASS=XID,XID... with CLASS drain, restart, warn or ignore", part)
		}
		for _, x := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(x))
			if err != nil || n <= 0 || n > 1000 {
				return fmt.Errorf("%q: %q is not an XID", part, x)
			}
			r.XID[n] = c
		}
	}
	return nil
}

// Verdict is one decision about one GPU.
type Verdict struct {
	Index  int // -1: every GPU
	UUID   string
	Class  Class
	Reason string
	XID    int // 0 when not an XID
}

func (v Verdict) String() string {
	who := fmt.Sprintf("GPU %d", v.Index)
	if v.Index < 0 {
		who = "all GPUs"
	}
	return fmt.Sprintf("%s %s: %s", v.Class, who, v.Reason)
}

// xidNames are short meanings of the commonest XIDs, for the event log.
var xidNames = map[int]string{
	13: "graphics engine exception", 31: "GPU memory page fault", 43: "GPU stopped processing",
	45: "preemptive cleanup", 46: "GPU stopped processing (timeout)", 48: "double-bit ECC error",
	62: "internal micro-controller halt", 63: "row remap recorded", 64: "row remap failure",
	68: "NVDEC exception", 74: "NVLink error", 79: "GPU fell off the bus", 92: "high single-bit ECC rate",
	94: "contained ECC error", 95: "uncontained ECC error", 109: "context switch timeout",
	119: "GSP RPC timeout", 120: "GSP error", 136: "NVLink training failed", 140: "ECC unrecovered error",
}

// XIDName is "XID 79 (GPU fell off the bus)".
func XIDName(x int) string {
	if n, ok := xidNames[x]; ok {
		return fmt.Sprintf("XID %d (%s)", x, n)
	}
	return fmt.Sprintf("XID %d", x)
}

// Watch classes a stream of events and samples. It is pure (time is an
// argument): the Monitor feeds it.
type Watch struct {
	rules    Rules
	prev     map[int]Sample
	restarts map[int][]time.Duration // restart-class faults per GPU
	throttle map[int]time.Duration   // since when HW throttling is held
	warned   map[string]time.Duration
	drained  map[int]bool
}

// NewWatch starts a watch with rules.
func NewWatch(r Rules) *Watch {
	return &Watch{rules: r, prev: map[int]Sample{}, restarts: map[int][]time.Duration{},
		throttle: map[int]time.Duration{}, warned: map[string]time.Duration{}, drained: map[int]bool{}}
}

// Drained reports whether GPU i has been drained.
func (w *Watch) Drained(i int) bool { return w.drained[i] }

func (w *Watch) verdict(v Verdict) []Verdict {
	if v.Class == Drain {
		if v.Index >= 0 {
			w.drained[v.Index] = true
		}
	}
	return []Verdict{v}
}

// warnOnce warns about key at most every WarnEvery (once ever when every=0).
func (w *Watch) warnOnce(now time.Duration, key string, every time.Duration, v Verdict) []Verdict {
	if at, ok := w.warned[key]; ok && (every == 0 || now-at < every) {
		return nil
	}
	w.warned[key] = now
	return []Verdict{v}
}

// Event classes an asynchronous event.
func (w *Watch) Event(now time.Duration, e Event) []Verdict {
	if e.Index >= 0 && w.drained[e.Index] {
		return nil // already out
	}
	switch e.Kind {
	case EventLost:
		return w.verdict(Verdict{Index: e.Index, Class: Drain, Reason: "GPU lost: " + e.Detail})
	case EventRecovery:
		if c, why := recoveryClass(e.Value); c != None {
			return w.verdict(Verdict{Index: e.Index, Class: c, Reason: why})
		}
		return nil
	case EventXID:
		c := w.rules.ClassOf(e.XID)
		v := Verdict{Index: e.Index, Class: c, XID: e.XID, Reason: XIDName(e.XID)}
		if e.Detail != "" {
			v.Reason += ": " + e.Detail
		}
		switch c {
		case None:
			return nil
		case Restart:
			// Repeats on the same GPU escalate: the GPU, not the program.
			keep := w.restarts[e.Index][:0]
			for _, t := range w.restarts[e.Index] {
				if now-t < w.rules.EscalateWindow {
					keep = append(keep, t)
				}
			}
			keep = append(keep, now)
			w.restarts[e.Index] = keep
			if w.rules.EscalateAfter > 0 && len(keep) >= w.rules.EscalateAfter {
				v.Class = Drain
				v.Reason = fmt.Sprintf("%s, %d application-class faults on this GPU within %s", v.Reason, len(keep), w.rules.EscalateWindow)
			}
		case Warn:
			if _, known := w.rules.XID[e.XID]; !known {
				v.Reason += " (unknown XID)"
			}
		}
		return w.verdict(v)
	}
	return nil
}

func recoveryClass(a int) (Class, string) {
	switch a {
	case -1, RecoveryNone:
		return None, ""
	}
	return Drain, "recovery action " + RecoveryName(a)
}

// Sample classes one sample of GPU s.Index against the previous one.
func (w *Watch) Sample(now time.Duration, s Sample) []Verdict {
	i := s.Index
	if w.drained[i] {
		return nil
	}
	prev, seen := w.prev[i]
	w.prev[i] = s
	if v, bad := DrainCondition(s); bad {
		return w.verdict(v)
	}
	if seen && s.ECCVolUncorr > prev.ECCVolUncorr {
		return w.verdict(Verdict{Index: i, UUID: s.UUID, Class: Drain,
			Reason: fmt.Sprintf("uncorrectable ECC errors rose from %d to %d", prev.ECCVolUncorr, s.ECCVolUncorr)})
	}
	var out []Verdict
	key := func(k string) string { return strconv.Itoa(i) + "/" + k }
	if s.ClockEventReasons&ReasonsHardware != 0 {
		since, ok := w.throttle[i]
		if !ok {
			w.throttle[i] = now
			since = now
		}
		if now-since >= w.rules.ThrottleHold {
			out = append(out, w.warnOnce(now, key("throttle"), 0, Verdict{Index: i, UUID: s.UUID, Class: Warn,
				Reason: fmt.Sprintf("hardware throttling (%s) held %s, %d °C, SM clock %d MHz",
					ReasonNames(s.ClockEventReasons), (now - since).Round(time.Second), s.TempC, s.SMClockMHz)})...)
		}
	} else {
		delete(w.throttle, i)
		delete(w.warned, key("throttle")) // warn again if it comes back
	}
	if s.MaxPCIeWidth > 0 && s.PCIeWidth > 0 && s.PCIeWidth < s.MaxPCIeWidth {
		out = append(out, w.warnOnce(now, key("pcie"), 0, Verdict{Index: i, UUID: s.UUID, Class: Warn,
			Reason: fmt.Sprintf("PCIe link width x%d of x%d", s.PCIeWidth, s.MaxPCIeWidth)})...)
	} else {
		delete(w.warned, key("pcie"))
	}
	if seen && s.ECCVolCorr > prev.ECCVolCorr {
		out = append(out, w.warnOnce(now, key("ecc"), w.rules.WarnEvery, Verdict{Index: i, UUID: s.UUID, Class: Warn,
			Reason: fmt.Sprintf("correctable ECC errors rising (%d, +%d)", s.ECCVolCorr, s.ECCVolCorr-prev.ECCVolCorr)})...)
	}
	if s.RemapPending {
		out = append(out, w.warnOnce(now, key("remap"), 0, Verdict{Index: i, UUID: s.UUID, Class: Warn,
			Reason: "row remap pending (applied at the next GPU reset)"})...)
	}
	return out
}

// DrainCondition is a sample's own reason to drain its GPU, if any: lost,
// a recovery action pending, a failed row remap, an NVLink down. Preflight
// and the watch share it.
func DrainCondition(s Sample) (Verdict, bool) {
	v := Verdict{Index: s.Index, UUID: s.UUID, Class: Drain}
	switch {
	case s.Lost:
		v.Reason = "GPU lost: " + s.Err
	case s.RecoveryAction != -1 && s.RecoveryAction != RecoveryNone:
		_, v.Reason = recoveryClass(s.RecoveryAction)
	case s.RemapFailed:
		v.Reason = "row remap failed"
	case len(s.NVLinkDown) > 0:
		d := append([]int(nil), s.NVLinkDown...)
		sort.Ints(d)
		v.Reason = fmt.Sprintf("NVLink down (links %v were up)", d)
	default:
		return v, false
	}
	return v, true
}
