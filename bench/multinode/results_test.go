package multinode

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Results is bench/results-multinode.json.
type Results struct {
	Generated string               `json:"generated"`
	Machine   map[string]string    `json:"machine"`
	Command   string               `json:"command"`
	Method    []string             `json:"method"`
	Scenarios map[string]*Scenario `json:"scenarios"`
	Order     []string             `json:"order"`
}

// Scenario is one measured situation.
type Scenario struct {
	Title    string            `json:"title"`
	Method   string            `json:"method"`
	Config   map[string]string `json:"config"`
	Targets  map[string]string `json:"targets,omitempty"`
	Metrics  []*Metric         `json:"metrics"`
	Trials   []map[string]any  `json:"trials"`
	Failures []string          `json:"failures,omitempty"`
	Notes    []string          `json:"notes,omitempty"`
	Ran      string            `json:"ran"`
	Commit   string            `json:"commit"` // the binaries' source
	Seconds  float64           `json:"seconds"`

	mu      sync.Mutex
	started time.Time
	byName  map[string]*Metric
}

// Metric is one measured quantity over the trials. P99 is the nearest-rank
// 99th percentile: with fewer than 100 trials it is the maximum.
type Metric struct {
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Desc   string    `json:"desc"`
	N      int       `json:"n"`
	Median float64   `json:"median"`
	P99    float64   `json:"p99"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Mean   float64   `json:"mean"`
	Raw    []float64 `json:"raw"`
}

var (
	resMu   sync.Mutex
	results = map[string]*Scenario{}
	order   = []string{"node_loss", "partition_lease5s", "partition_lease2s", "coordinator_restart_embedded",
		"coordinator_failover_ha", "coordinator_failover_ha_lease2s", "coordinator_stall", "coordinator_stall_cut", "torch_node_crash_torchrun_spare", "torch_node_crash_torchrun_1to2",
		"torch_node_crash_bulsajo_spare", "torch_node_crash_bulsajo_1to2"}
)

// runTrials runs n trials of sc as subtests trial01.., each recording its
// failure (with the reason) in the scenario.
func (sc *Scenario) runTrials(t *testing.T, n int, trial func(t *testing.T, i int)) {
	for i := range n {
		t.Run(fmt.Sprintf("trial%02d", i+1), func(t *testing.T) {
			defer func() {
				if t.Failed() {
					sc.fail("trial %d: %s", i+1, failReason(t))
				}
			}()
			trial(t, i)
		})
	}
}

func newScenario(key, title, method string, config map[string]string) *Scenario {
	s := &Scenario{Title: title, Method: method, Config: config, started: time.Now(), byName: map[string]*Metric{}, Commit: buildCommit,
		Targets: map[string]string{}}
	resMu.Lock()
	results[key] = s
	resMu.Unlock()
	return s
}

// metric declares a metric (in display order).
func (s *Scenario) metric(name, unit, desc string) {
	m := &Metric{Name: name, Unit: unit, Desc: desc}
	s.Metrics = append(s.Metrics, m)
	s.byName[name] = m
}

// trial records one trial: values for metrics (by name) and other fields.
func (s *Scenario) trial(vals map[string]float64, extra map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tr := map[string]any{"trial": len(s.Trials) + 1}
	for k, v := range extra {
		tr[k] = v
	}
	for k, v := range vals {
		tr[k] = round(v)
		if m := s.byName[k]; m != nil {
			m.Raw = append(m.Raw, round(v))
		}
	}
	s.Trials = append(s.Trials, tr)
}

func (s *Scenario) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Failures = append(s.Failures, fmt.Sprintf(format, args...))
}

func (s *Scenario) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

func round(v float64) float64 { return math.Round(v*10) / 10 }

func (s *Scenario) finish() {
	s.Ran = time.Now().UTC().Format(time.RFC3339)
	s.Seconds = math.Round(time.Since(s.started).Seconds())
	for _, m := range s.Metrics {
		m.N = len(m.Raw)
		if m.N == 0 {
			continue
		}
		v := append([]float64(nil), m.Raw...)
		sort.Float64s(v)
		m.Min, m.Max = v[0], v[len(v)-1]
		if m.N%2 == 1 {
			m.Median = v[m.N/2]
		} else {
			m.Median = round((v[m.N/2-1] + v[m.N/2]) / 2)
		}
		m.P99 = v[int(math.Ceil(0.99*float64(m.N)))-1]
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		m.Mean = round(sum / float64(m.N))
	}
}

func outDir() string {
	if d := os.Getenv("BULSAJO_BENCH_OUT"); d != "" {
		return d
	}
	return filepath.Join(repoRoot, "bench")
}

// writeResults merges the scenarios that ran into the JSON file and
// rewrites the Markdown summary from it.
func writeResults() error {
	resMu.Lock()
	defer resMu.Unlock()
	if len(results) == 0 {
		return nil
	}
	jsonPath := filepath.Join(outDir(), "results-multinode.json")
	all := Results{Scenarios: map[string]*Scenario{}}
	if b, err := os.ReadFile(jsonPath); err == nil {
		json.Unmarshal(b, &all)
		if all.Scenarios == nil {
			all.Scenarios = map[string]*Scenario{}
		}
	}
	for k, s := range results {
		all.Scenarios[k] = s
	}
	all.Generated = time.Now().UTC().Format(time.RFC3339)
	all.Machine = machine()
	all.Command = "BULSAJO_BENCH=1 go test ./bench/multinode -v -timeout 30m"
	all.Method = methodText
	all.Order = nil
	for _, k := range order {
		if all.Scenarios[k] != nil {
			all.Order = append(all.Order, k)
		}
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir(), "results-multinode.md"), []byte(markdown(all)), 0o644)
}

func machine() map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := exec.Command(torchPython, "-c", "import torch; print(torch.__version__)").Output(); err == nil {
		m["torch"] = strings.TrimSpace(string(b))
	}
	if b, err := exec.Command("/usr/bin/etcd", "--version").Output(); err == nil {
		m["etcd"] = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	m["commit_of_last_run"] = buildCommit + " (each scenario names the build it ran)"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return m
}

var methodText = []string{
	"Every trial builds a fresh set of network namespaces (test/netlab: one per host, on one bridge) and starts fresh processes: " +
		"`bulsajo coordinator` on host coord (embedded etcd unless said otherwise), `bulsajo agent` on each node, `bulsajo submit` on coord. " +
		"All hosts share this machine's clock, so times measured in the benchmark process, written by the coordinator (event log) and by the " +
		"workers (step logs) are comparable.",
	"Fault time: taken by the benchmark immediately before the kill(2) or the bridge-port change (Host.Cut). " +
		"Detection: the `time` of the coordinator's first `fault` event after it (events.jsonl). " +
		"Training again: the first step of the next generation in the workers' step log (fake worker: `GEN RANK STEP UNIXNANO` " +
		"written after each step, so it includes one step time; ddp_train.py: one `--sample-log` line per rank and step, " +
		"timestamped by the benchmark polling the file every 5 ms).",
	"Coordinator failover: the pause is the longest interval between two consecutive steps of one rank from 1 s before the kill " +
		"to 8 s after it (past the 5 s lease), against the median interval in the 2 s before the kill; extra pause = longest − median.",
	"Defaults unless a scenario says otherwise: lease 5 s, heartbeat 250 ms, node timeout 1.5 s, stop grace 3 s, standby on.",
	"Statistics: median; p99 = nearest-rank 99th percentile, which with fewer than 100 trials is the maximum; raw values per trial are listed. " +
		"A trial that failed (timeout, wrong placement) is listed under failures and contributes no values.",
	"Machine: 2 CPU cores shared by every process of every host, so CPU-bound start-up (import torch) is slower than on a real node.",
}

func fmtVal(v float64, unit string) string {
	if unit == "ms" && math.Abs(v) >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	if unit == "ms" {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

func markdown(r Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Multi-node benchmark results\n\n")
	fmt.Fprintf(&b, "Generated %s by `%s` (bench/multinode). Raw data: [results-multinode.json](results-multinode.json).\n\n", r.Generated, r.Command)
	keys := make([]string, 0, len(r.Machine))
	for k := range r.Machine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(&b, "Machine:")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s %s;", k, r.Machine[k])
	}
	fmt.Fprintf(&b, "\n\n## Summary\n\n| scenario | metric | median | p99 | min | max | n | target |\n|---|---|---|---|---|---|---|---|\n")
	for _, k := range r.Order {
		s := r.Scenarios[k]
		for _, m := range s.Metrics {
			if m.N == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %d | %s |\n", k, m.Name, fmtVal(m.Median, m.Unit), fmtVal(m.P99, m.Unit),
				fmtVal(m.Min, m.Unit), fmtVal(m.Max, m.Unit), m.N, s.Targets[m.Name])
		}
	}
	if f := findings(r); len(f) > 0 {
		fmt.Fprintf(&b, "\n## Reading the numbers\n\n")
		for _, l := range f {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	if t := sideBySide(r); t != "" {
		fmt.Fprintf(&b, "\n## torchrun and bulsajo side by side (real PyTorch job, node crash)\n\n%s", t)
	}
	fmt.Fprintf(&b, "\n## Method\n\n")
	for _, l := range r.Method {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	for _, k := range r.Order {
		s := r.Scenarios[k]
		fmt.Fprintf(&b, "\n## %s — %s\n\n%s\n\n", k, s.Title, s.Method)
		ck := make([]string, 0, len(s.Config))
		for c := range s.Config {
			ck = append(ck, c)
		}
		sort.Strings(ck)
		for _, c := range ck {
			fmt.Fprintf(&b, "- %s: %s\n", c, s.Config[c])
		}
		fmt.Fprintf(&b, "- ran %s, %.0f s, %d trials, %d failed; binaries built from %s\n\n", s.Ran, s.Seconds, len(s.Trials), len(s.Failures), s.Commit)
		fmt.Fprintf(&b, "| metric | median | p99 | min | max | mean | n | meaning |\n|---|---|---|---|---|---|---|---|\n")
		for _, m := range s.Metrics {
			if m.N == 0 {
				fmt.Fprintf(&b, "| %s | – | – | – | – | – | 0 | %s |\n", m.Name, m.Desc)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %d | %s |\n", m.Name, fmtVal(m.Median, m.Unit), fmtVal(m.P99, m.Unit),
				fmtVal(m.Min, m.Unit), fmtVal(m.Max, m.Unit), fmtVal(m.Mean, m.Unit), m.N, m.Desc)
		}
		fmt.Fprintf(&b, "\nRaw, trial by trial:\n\n")
		for _, m := range s.Metrics {
			if m.N > 0 {
				fmt.Fprintf(&b, "- %s (%s): %s\n", m.Name, m.Unit, joinFloats(m.Raw))
			}
		}
		for _, f := range s.Failures {
			fmt.Fprintf(&b, "- failure: %s\n", f)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "- note: %s\n", n)
		}
	}
	return b.String()
}

func joinFloats(v []float64) string {
	p := make([]string, len(v))
	for i, x := range v {
		p[i] = fmt.Sprintf("%g", x)
	}
	return strings.Join(p, ", ")
}

func metricOf(s *Scenario, name string) *Metric {
	if s == nil {
		return nil
	}
	for _, m := range s.Metrics {
		if m.Name == name && m.N > 0 {
			return m
		}
	}
	return nil
}

// thresholds: targets with a number, checked on the p99 (= the worst trial here).
var thresholds = []struct {
	scenario, metric string
	max              float64
}{
	{"node_loss", "detect_ms", 2000},
	{"node_loss", "training_again_ms", 3000},
	{"partition_lease5s", "detect_ms", 2000},
	{"partition_lease2s", "detect_ms", 2000},
}

// findings are computed from the numbers, so they stay true when it reruns.
func findings(r Results) []string {
	var out []string
	for _, th := range thresholds {
		if m := metricOf(r.Scenarios[th.scenario], th.metric); m != nil {
			verdict := "met"
			if m.P99 > th.max {
				verdict = "NOT met"
			}
			out = append(out, fmt.Sprintf("%s %s: target <= %s %s (median %s, p99 %s, %d trials).", th.scenario, th.metric,
				fmtVal(th.max, "ms"), verdict, fmtVal(m.Median, m.Unit), fmtVal(m.P99, m.Unit), m.N))
		}
	}
	for _, k := range []string{"partition_lease5s", "partition_lease2s"} {
		s := r.Scenarios[k]
		if ta, mg := metricOf(s, "training_again_ms"), metricOf(s, "margin_ms"); ta != nil && mg != nil {
			out = append(out, fmt.Sprintf("%s: training again %s after the cut (median; p99 %s): the coordinator waits for the cut node's lease "+
				"before reusing its ranks, and the cut node's workers had stopped %s (min %s) before the next generation's first step.",
				k, fmtVal(ta.Median, "ms"), fmtVal(ta.P99, "ms"), fmtVal(mg.Median, "ms"), fmtVal(mg.Min, "ms")))
		}
	}
	for _, k := range []string{"coordinator_restart_embedded", "coordinator_failover_ha", "coordinator_failover_ha_lease2s"} {
		s := r.Scenarios[k]
		lg, ctl := metricOf(s, "longest_interval_ms"), metricOf(s, "control_longest_ms")
		if lg == nil || ctl == nil {
			continue
		}
		l := fmt.Sprintf("%s: longest step interval across the kill median %s, max %s; in the fault-free 8 s before the kill (same trials) "+
			"median %s, max %s; normal step %s.", k, fmtVal(lg.Median, "ms"), fmtVal(lg.Max, "ms"), fmtVal(ctl.Median, "ms"),
			fmtVal(ctl.Max, "ms"), fmtVal(metricOf(s, "normal_interval_ms").Median, "ms"))
		if rs := metricOf(s, "restarted"); rs != nil && rs.Max > 0 {
			l += fmt.Sprintf(" The job was RESTARTED (workers stopped) in %d of %d trials.", countPos(rs.Raw), rs.N)
		} else {
			l += " No trial restarted the workers."
		}
		out = append(out, l)
	}
	for _, k := range []string{"coordinator_stall", "coordinator_stall_cut"} {
		s := r.Scenarios[k]
		rs := metricOf(s, "restarted")
		if rs == nil {
			continue
		}
		l := fmt.Sprintf("%s: the job was restarted in %d of %d trials although nothing had failed", k, countPos(rs.Raw), rs.N)
		if ov := metricOf(s, "overlap_ms"); ov != nil && ov.Max > 0 {
			l += fmt.Sprintf("; in %d of them generation 1's workers were still stepping %s (max %s) after generation 2 started: "+
				"two generations trained at once", countPos(ov.Raw), fmtVal(ov.Median, "ms"), fmtVal(ov.Max, "ms"))
		}
		out = append(out, l+".")
	}
	return out
}

func countPos(v []float64) int {
	n := 0
	for _, x := range v {
		if x > 0 {
			n++
		}
	}
	return n
}

func sideBySide(r Results) string {
	rows := []struct{ key, launcher, config string }{
		{"torch_node_crash_torchrun_spare", "torchrun", "2 nodes + a waiting spare node, --nnodes=2"},
		{"torch_node_crash_bulsajo_spare", "bulsajo", "2 nodes + a spare node, --nnodes 2"},
		{"torch_node_crash_torchrun_1to2", "torchrun", "2 nodes, --nnodes=1:2 (goes on with 1)"},
		{"torch_node_crash_bulsajo_1to2", "bulsajo", "2 nodes, --nnodes 1:2 (goes on with 1)"},
	}
	var b strings.Builder
	for _, row := range rows {
		s := r.Scenarios[row.key]
		ta := metricOf(s, "training_again_ms")
		if ta == nil {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "| launcher | setup | training again after the crash: median | p99 | detected: median | world after | trials (timeouts) |\n|---|---|---|---|---|---|---|\n")
		}
		det, world := "–", "–"
		if m := metricOf(s, "detect_ms"); m != nil {
			det = fmtVal(m.Median, "ms")
		}
		if m := metricOf(s, "world_after"); m != nil {
			world = fmt.Sprintf("%g", m.Median)
		}
		timeouts := 0
		for _, tr := range s.Trials {
			if v, ok := tr["timeout"].(bool); ok && v {
				timeouts++
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %d (%d) |\n", row.launcher, row.config, fmtVal(ta.Median, "ms"), fmtVal(ta.P99, "ms"),
			det, world, len(s.Trials), timeouts)
	}
	if b.Len() > 0 {
		b.WriteString("\nSame job, same fault (every process on one node SIGKILLed), same machine, trials interleaved. " +
			"torchrun's time is its monitor interval (5 s) plus its next rendezvous; bulsajo's with a spare includes starting a fresh " +
			"Python (import torch) on the spare, which keeps no standby worker.\n")
	}
	return b.String()
}
