package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/bulsajo/bulsajo/internal/events"
)

// chromiumBin is Debian's chromium, driven over the DevTools protocol.
const chromiumBin = "/usr/bin/chromium"

// browser starts a headless chromium for the test (`make test` installs it).
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumBin); err != nil {
		t.Fatalf("%s is required (apt-get install -y chromium; `make test` does this): %v", chromiumBin, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumBin),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1200, 1000),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// screenshot keeps a picture of the page where BULSAJO_SCREENSHOTS says
// (the README's images are made this way); otherwise it does nothing.
func screenshot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("BULSAJO_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Error(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// evalInt evaluates a JS expression that yields a number.
func evalInt(ctx context.Context, expr string) int {
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
	if err != nil {
		return -1
	}
	return n
}

// TestDashboardLiveAndMetrics: a real torch job under `bulsajo run
// --metrics-addr`, watched in a real browser. A worker is SIGKILLed from
// outside: the page's timeline shows the fault within 2 s of its detection
// without a reload, and the scraped metrics agree with the event log.
func TestDashboardLiveAndMetrics(t *testing.T) {
	requireTorch(t)
	ctx := browser(t)
	addr := freeAddr(t)
	// --hang-timeout: this test is about the page; a step stalled by a busy
	// machine must not add a fault of its own.
	cmd, out, runDir := startBulsajo(t, "--nproc-per-node", "2", "--metrics-addr", addr, "--hang-timeout", "60s",
		"--", torchPython, filepath.Join(repoRoot, "examples", "ddp_train.py"), "--steps", "100000",
		"--ckpt-every", "20", "--ckpt-dir", filepath.Join(t.TempDir(), "ckpt"))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, 60*time.Second, "the dashboard to listen", func() bool {
		r, err := http.Get("http://" + addr + "/api/snapshot")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	tctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	if evalInt(tctx, `window.__noReload = 1`) != 1 {
		t.Fatal("could not mark the page")
	}
	waitFor(t, 90*time.Second, "the page to show training with steps", func() bool {
		return evalInt(tctx, `document.getElementById("state").textContent === "training" && +document.getElementById("step").textContent > 5 ? 1 : 0`) == 1
	})
	before := evalInt(tctx, `document.querySelectorAll("#timeline polygon.fault").length`)
	if n := countFaults(t, filepath.Join(runDir, "events.jsonl")); before != n {
		t.Fatalf("%d fault markers on the page, %d faults in the log", before, n)
	}

	killed := time.Now()
	killRank(t, runDir, 1)
	var shown time.Time
	waitFor(t, 30*time.Second, "the fault on the timeline", func() bool {
		if evalInt(tctx, `document.querySelectorAll("#timeline polygon.fault").length`) > before {
			shown = time.Now()
			return true
		}
		return false
	})
	if evalInt(tctx, `window.__noReload === 1 ? 1 : 0`) != 1 {
		t.Fatal("the page was reloaded to show the fault")
	}
	logPath := filepath.Join(runDir, "events.jsonl")
	var fault events.Event
	for _, e := range readEvents(t, logPath) {
		if e.Type == events.FaultDetected && !e.Time.Before(killed) && fault.Time.IsZero() {
			fault = e
		}
	}
	if fault.Time.IsZero() {
		t.Fatalf("no fault in the event log; output:\n%s", out.String())
	}
	if d := shown.Sub(fault.Time); d > 2*time.Second {
		t.Errorf("the timeline showed the fault %s after its detection (want within 2 s)", d)
	}
	title, _ := chromedp.Run(tctx, chromedp.Evaluate[string](`[...document.querySelectorAll("#timeline polygon.fault title")].pop().textContent`))
	if !strings.Contains(title, "rank 1") || !strings.Contains(title, "detected in") {
		t.Errorf("the fault marker's hover text %q should name the rank and the detection latency", title)
	}

	// After the recovery, the scraped metrics agree with the event log.
	waitFor(t, 90*time.Second, "the recovery", func() bool {
		for _, e := range readEvents(t, logPath) {
			if e.Type == events.Recovered {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the recovery on the page", func() bool {
		return evalInt(tctx, `document.querySelectorAll("#timeline polygon.recovered").length`) > 0
	})
	screenshot(t, tctx, "dashboard.png")
	// The lost time is the summary's, which changes its account when the
	// job passes the step it had reached before the fault (the stretch
	// before it closes: rolled-back steps and slower first steps are then
	// priced). Scraped before that, it would depend on the timing; so the
	// scrape waits for it, and no event is due after it until the end.
	waitFor(t, 90*time.Second, "the job past its step before the fault", func() bool {
		for _, e := range readEvents(t, logPath) {
			if e.Type == events.StretchEnd && e.Time.After(fault.Time) {
				return true
			}
		}
		return false
	})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	evs := readEvents(t, logPath)
	var sigkills, recoveries int
	var recoverS float64
	for _, e := range evs {
		switch e.Type {
		case events.FaultDetected:
			if e.Cause == "worker_exit" && e.Detail == "SIGKILL" {
				sigkills++
			}
		case events.Recovered:
			recoveries++
			recoverS += e.RecoverMS / 1000
		}
	}
	// What the log says, accounted as of its last event (as the metrics are).
	sum := events.Summarize(append(evs, events.Event{Time: evs[len(evs)-1].Time}), 0)
	lost := sum.LostByCause()
	if lost["restart"] <= 0 {
		t.Errorf("no restart time in the summary of a restart: %+v", sum)
	}
	got := scrape(string(text))
	job := evs[0].RunID
	for _, c := range []struct {
		series string
		want   float64
		tol    float64
	}{
		{fmt.Sprintf(`bulsajo_faults_total{cause="SIGKILL",job=%q,kind="worker_exit"}`, job), float64(sigkills), 0},
		{fmt.Sprintf(`bulsajo_recoveries_total{job=%q}`, job), float64(recoveries), 0},
		{fmt.Sprintf(`bulsajo_recovery_duration_seconds_count{job=%q}`, job), float64(recoveries), 0},
		{fmt.Sprintf(`bulsajo_recovery_duration_seconds_sum{job=%q}`, job), recoverS, 0.001},
		{fmt.Sprintf(`bulsajo_job_lost_seconds{cause="restart",job=%q}`, job), lost["restart"], 0.001},
		{fmt.Sprintf(`bulsajo_job_lost_seconds{cause="rollback",job=%q}`, job), lost["rollback"], 0.001},
		{fmt.Sprintf(`bulsajo_job_lost_seconds{cause="detect",job=%q}`, job), lost["detect"], 0.001},
	} {
		v, ok := got[c.series]
		if !ok || v < c.want-c.tol || v > c.want+c.tol {
			t.Errorf("%s = %v (present %v), want %v from the event log", c.series, v, ok, c.want)
			for _, e := range evs {
				b, _ := json.Marshal(e)
				t.Logf("event: %s", b)
			}
		}
	}
	problems, err := promlint.New(strings.NewReader(string(text))).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("bulsajo did not stop after SIGINT")
	}
}

// scrape parses the Prometheus text format into series -> value.
func scrape(text string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func countFaults(t *testing.T, path string) int {
	n := 0
	for _, e := range readEvents(t, path) {
		if e.Type == events.FaultDetected {
			n++
		}
	}
	return n
}

func readEvents(t *testing.T, path string) []events.Event {
	t.Helper()
	evs, err := events.ReadFile(path)
	if err != nil {
		t.Fatalf("event log: %v", err)
	}
	return evs
}

// TestReportOfATornLog: `bulsajo report` on a log whose last line a kill -9
// cut in half reports everything before it, and the page renders the
// timeline in a real browser from the file alone.
func TestReportOfATornLog(t *testing.T) {
	r := bulsajo(t, 60*time.Second, "--nproc-per-node", "2", "--max-restarts", "5", "--",
		fakeBin, "-steps", "30", "-step-time", "20ms", "-fail-rank", "1", "-fail-gens", "1,2", "-fail-at-step", "5")
	if r.code != 0 {
		t.Fatalf("run exit %d:\n%s", r.code, r.out)
	}
	logPath := filepath.Join(r.runDir, "events.jsonl")
	b, _ := os.ReadFile(logPath)
	lines := strings.SplitAfter(strings.TrimRight(string(b), "\n"), "\n")
	last := lines[len(lines)-1]
	torn := strings.Join(lines[:len(lines)-1], "") + last[:len(last)/2]
	if err := os.WriteFile(logPath, []byte(torn), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bulsajoBin, "report", r.runDir).CombinedOutput()
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "2 faults, 2 recoveries") || !strings.Contains(string(out), "cut short") {
		t.Errorf("report summary should count the 2 faults and say the log is cut short:\n%s", out)
	}
	page := filepath.Join(r.runDir, "report.html")
	ctx := browser(t)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate("file://"+page)); err != nil {
		t.Fatal(err)
	}
	faults := evalInt(tctx, `document.querySelectorAll("#timeline polygon.fault").length`)
	gens := evalInt(tctx, `document.querySelectorAll("#timeline rect.gen").length`)
	if faults != 2 || gens != 3 {
		t.Errorf("report page: %d fault markers and %d generations, want 2 and 3", faults, gens)
	}
	screenshot(t, tctx, "report.png")

	// Usage errors: exit 2 and one line.
	for _, args := range [][]string{{"report"}, {"report", filepath.Join(t.TempDir(), "nope")}, {"report", t.TempDir()}} {
		cmd := exec.Command(bulsajoBin, args...)
		out, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 2 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("bulsajo %v: exit %d, output %q; want exit 2 and one line", args, code, out)
		}
	}
}
