package policy

// Scenario transcripts: testdata/*.txt script inputs with logical times and
// the decisions each must produce. Run with -rewrite to regenerate expected
// lines after a deliberate change (then read the diff).
//
// Format:
//
//	# comment
//	config world=4 max-restarts=3 progress-expected=false hang-timeout=0s
//	at 1.5s exited gen=1 rank=2 signal=SIGKILL output=12 new=3
//	  fault gen=1 kind=worker_exit ...      <- expected decisions, indented
//	ticks 2s..6s every 500ms               <- one Tick per interval; decisions
//	  [5.5s] fault ...                        prefixed by the tick's time

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var rewrite = flag.Bool("rewrite", false, "rewrite expected output in testdata")

func TestScenarios(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no scenarios in testdata/")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { runScenario(t, f) })
	}
}

func runScenario(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		m        *Machine
		out      strings.Builder // the transcript as it should read
		got      []string
		want     []string
		cmdLine  string
		lineNo   int
		failures int
	)
	flush := func() {
		if cmdLine == "" {
			return
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			failures++
			t.Errorf("%s:%d: %s\n got:\n  %s\nwant:\n  %s", path, lineNo, cmdLine,
				strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		for _, g := range got {
			out.WriteString("  " + g + "\n")
		}
		cmdLine, got, want = "", nil, nil
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "  ") {
			want = append(want, strings.TrimSpace(line))
			continue
		}
		flush()
		out.WriteString(line + "\n")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		cmdLine, lineNo = trimmed, n
		fields := splitFields(trimmed)
		switch fields[0] {
		case "config":
			m = New(parseConfig(t, kv(t, fields[1:])))
		case "at":
			if m == nil {
				t.Fatalf("%s:%d: 'at' before 'config'", path, n)
			}
			now := dur(t, fields[1])
			for _, d := range m.Step(now, parseInput(t, fields[2], kv(t, fields[3:]))) {
				got = append(got, fmt.Sprint(d))
			}
		case "ticks":
			// ticks FROM..TO every STEP
			span := strings.SplitN(fields[1], "..", 2)
			from, to, every := dur(t, span[0]), dur(t, span[1]), dur(t, fields[3])
			for now := from; now <= to; now += every {
				for _, d := range m.Step(now, Tick{}) {
					got = append(got, fmt.Sprintf("[%s] %s", now, d))
				}
			}
		default:
			t.Fatalf("%s:%d: unknown command %q", path, n, fields[0])
		}
	}
	flush()
	if *rewrite && failures > 0 {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func parseConfig(t *testing.T, a map[string]string) Config {
	c := Config{}
	for k, v := range a {
		switch k {
		case "world":
			c.WorldSize = atoi(t, v)
		case "max-restarts":
			c.MaxRestarts = atoi(t, v)
		case "progress-expected":
			c.ProgressExpected = v == "true"
		case "hang-timeout":
			c.Watchdog.Timeout = dur(t, v)
		case "startup-timeout":
			c.StartupTimeout = dur(t, v)
		case "crash-loop-limit":
			c.CrashLoopLimit = atoi(t, v)
		case "exit-grace":
			c.ExitGrace = dur(t, v)
		case "live":
			c.Live = v == "true"
		case "replace":
			c.Replace = v == "true"
		case "min-world":
			c.MinWorld = atoi(t, v)
		case "probe-busy":
			c.ProbeBusy = v == "true"
		case "busy-limit":
			c.BusyLimit = dur(t, v)
		default:
			t.Fatalf("unknown config key %q", k)
		}
	}
	return c
}

func parseInput(t *testing.T, name string, a map[string]string) Input {
	get := func(k string) int {
		if v, ok := a[k]; ok {
			return atoi(t, v)
		}
		return 0
	}
	switch name {
	case "start":
		return Start{}
	case "launched":
		return Launched{Gen: get("gen"), WorldSize: get("world")}
	case "resume":
		step := -1
		if _, ok := a["step"]; ok {
			step = get("step")
		}
		return Resume{Gen: get("gen"), WorldSize: get("world"), Restarts: get("restarts"), JobStep: step}
	case "progress":
		r := -1
		if _, ok := a["rank"]; ok {
			r = get("rank")
		}
		return Progress{Gen: get("gen"), Rank: r, Step: get("step")}
	case "exited":
		var also []int
		if v := a["also"]; v != "" {
			for _, f := range strings.Split(v, ",") {
				also = append(also, atoi(t, f))
			}
		}
		return Exited{Gen: get("gen"), Rank: get("rank"), Code: get("code"), Signal: a["signal"], LastError: a["error"], Also: also,
			Injected: a["injected"] == "true", Output: get("output"), NewOutput: get("new")}
	case "stopped":
		return Stopped{Gen: get("gen")}
	case "interrupt":
		return Interrupt{Signal: a["signal"]}
	case "tick":
		return Tick{}
	case "diagnosed":
		return Diagnosed{Gen: get("gen"), Rank: get("rank")}
	case "probed":
		var busy []int
		if v := a["busy"]; v != "" {
			for _, f := range strings.Split(v, ",") {
				busy = append(busy, atoi(t, f))
			}
		}
		return Probed{Gen: get("gen"), Busy: busy}
	case "proc_state":
		var stopped []int
		if v := a["stopped"]; v != "" {
			for _, f := range strings.Split(v, ",") {
				stopped = append(stopped, atoi(t, f))
			}
		}
		return ProcState{Gen: get("gen"), Stopped: stopped}
	case "joiner_ready":
		return JoinerReady{}
	case "joiner_lost":
		return JoinerLost{}
	case "finishing":
		return Finishing{Gen: get("gen"), Rank: get("rank")}
	case "collective_failed":
		return CollectiveFailed{Gen: get("gen"), Rank: get("rank"), Detail: a["detail"]}
	case "capacity":
		return Capacity{Slots: get("slots")}
	case "straggler":
		return Straggler{Gen: get("gen"), Rank: get("rank"), Detail: a["detail"]}
	case "gpu_fault":
		return GPUFault{Gen: get("gen"), Rank: get("rank"), Detail: a["detail"]}
	}
	t.Fatalf("unknown input %q", name)
	return nil
}

// splitFields splits a line at spaces outside double quotes (so that
// error="No module named x" is one field).
func splitFields(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && quoted:
			escaped = true
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteRune(r)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func kv(t *testing.T, fields []string) map[string]string {
	m := map[string]string{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("want key=value, got %q", f)
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		m[k] = v
	}
	return m
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func dur(t *testing.T, s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
