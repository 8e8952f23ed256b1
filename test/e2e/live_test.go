package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

// Live recovery with real PyTorch: survivors keep their processes, a
// replacement joins and receives the state. The invariants of the issue are
// checked on what the workers themselves record.

var liveDone = regexp.MustCompile(`done steps=(\d+) loss=([0-9.]+) params_sha256=([0-9a-f]+) regroups=(\d+)`)

type rankResult struct {
	Rank    int    `json:"rank"`
	Pid     int    `json:"pid"`
	Hash    string `json:"params_sha256"`
	Step    int    `json:"step"`
	History []struct {
		Gen         int     `json:"gen"`
		Seconds     float64 `json:"seconds"`
		LostSteps   int     `json:"lost_steps"`
		Verified    bool    `json:"verified"`
		Replacement bool    `json:"replacement"`
		FormedAhead bool    `json:"formed_ahead"`
		Healed      bool    `json:"healed"`
	} `json:"history"`
}

type liveResults struct {
	ranks       []rankResult
	replacement bool // a replacement took part in some regroup
}

// checkLiveResults reads the result file each rank of live_ddp.py wrote:
// want of them, bit-identical parameters, every regroup verified and losing
// at most one step.
func checkLiveResults(t *testing.T, dir string, want int) liveResults {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != want {
		t.Fatalf("%d result files, want %d", len(ents), want)
	}
	var out liveResults
	for _, e := range ents {
		var rr rankResult
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if err := json.Unmarshal(b, &rr); err != nil {
			t.Fatal(err)
		}
		if len(out.ranks) > 0 && rr.Hash != out.ranks[0].Hash {
			t.Errorf("rank %d parameters %s differ from %s", rr.Rank, rr.Hash, out.ranks[0].Hash)
		}
		for _, h := range rr.History {
			if !h.Verified || h.LostSteps > 1 {
				t.Errorf("rank %d regroup into gen %d: verified %v, lost %d steps", rr.Rank, h.Gen, h.Verified, h.LostSteps)
			}
			out.replacement = out.replacement || h.Replacement
		}
		out.ranks = append(out.ranks, rr)
	}
	return out
}

func liveRun(t *testing.T, steps int, chaos string) (result, string, string) {
	t.Helper()
	dir := t.TempDir()
	samples, results := filepath.Join(dir, "samples.log"), filepath.Join(dir, "results")
	args := []string{"--recovery", "live", "--nproc-per-node", "4"}
	if chaos != "" {
		args = append(args, "--chaos", chaos)
	}
	args = append(args, "--", torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"),
		"--steps", strconv.Itoa(steps), "--sample-log", samples, "--result-dir", results)
	r := bulsajo(t, 4*time.Minute, args...)
	if r.code != 0 {
		t.Fatalf("live run (chaos %q): exit %d:\n%s", chaos, r.code, r.out)
	}
	return r, samples, results
}

func TestLiveRecoveryInvariants(t *testing.T) {
	requireTorch(t)
	const steps, globalBatch = 400, 128
	// A grow heals where that pays (by the machine's timings): forced here,
	// so that the sample check below covers a healing step.
	t.Setenv("BULSAJO_HEAL", "1")
	clean, _, _ := liveRun(t, steps, "")
	// At steps, not seconds: on a faster machine the 400 steps ended
	// before a stop at 8 s.
	r, samples, results := liveRun(t, steps, "kill-at-step=80,stop-at-step=200")

	// The faults were handled by regrouping in place, not by restarting.
	evs := r.events(t)
	var faults, regroups, grows int
	for _, e := range evs {
		switch {
		case e.Type == events.FaultDetected:
			faults++
		case e.Type == events.GenerationStart && e.Cause == "regroup":
			regroups++
		case e.Type == events.GenerationStart && e.Cause == "grow":
			grows++
		case e.Type == events.GenerationStart && e.Gen > 1:
			t.Errorf("a full restart happened (generation %d): %+v", e.Gen, e)
		}
	}
	if faults != 2 || regroups != 2 || grows < 1 {
		t.Fatalf("faults %d, regroups %d, grows %d; want 2 faults, each regrouped, replacements admitted:\n%s", faults, regroups, grows, r.out)
	}
	for _, e := range evs {
		if e.Type == events.Recovered && e.RolledBack > 1 {
			t.Errorf("recovery rolled back %d steps, want at most 1", e.RolledBack)
		}
	}

	// Every rank ends bit-identical, each regroup was verified, at most one
	// step was lost per regroup, and a replacement took part.
	rs := checkLiveResults(t, results, 4)
	if !rs.replacement {
		t.Error("no replacement joined")
	}
	// A member's side of a grow used the group its thread formed while it
	// trained on (gloo), not one formed at the switch.
	growGen := map[int]bool{}
	for _, e := range evs {
		if e.Type == events.GenerationStart && e.Cause == "grow" {
			growGen[e.Gen] = true
		}
	}
	var ahead int
	for _, rr := range rs.ranks {
		for _, h := range rr.History {
			if growGen[h.Gen] && !h.Replacement {
				if !h.FormedAhead {
					t.Errorf("rank %d: the grow into generation %d formed its group at the switch, not ahead", rr.Rank, h.Gen)
				}
				ahead++
			}
		}
	}
	if ahead == 0 {
		t.Error("no member's history records a grow")
	}
	// A joiner took its first step as a healing one (zero gradients while
	// the state came), so the sample check below covers that step.
	healed := 0
	for _, rr := range rs.ranks {
		for _, h := range rr.History {
			if h.Replacement && h.Healed {
				healed++
			}
		}
	}
	if healed == 0 {
		t.Error("no joiner's history records a healing step")
	}

	// No sample skipped or seen twice: each step's ids, over all ranks that
	// committed it, are exactly one global batch of distinct samples. One
	// exception is inherent to the log, not the training: a rank SIGKILLed
	// after its gradients went into a step's all-reduce (so the step counts)
	// but before it wrote its log line leaves its own share unlogged. That
	// may happen only at a step where a rank was killed, for one share.
	faultSteps := map[int]bool{}
	for _, e := range evs {
		if e.Type == events.FaultDetected && e.Step != nil {
			for d := -1; d <= 1; d++ {
				faultSteps[*e.Step+d] = true
			}
		}
	}
	perStep := map[int]map[string]int{}
	f, err := os.Open(samples)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		step, _ := strconv.Atoi(fields[1])
		if perStep[step] == nil {
			perStep[step] = map[string]int{}
		}
		for _, id := range fields[3:] {
			perStep[step][id]++
		}
	}
	for s := 0; s < steps; s++ {
		ids := perStep[s]
		total := 0
		for id, n := range ids {
			total += n
			if n > 1 {
				t.Errorf("step %d: sample %s seen %d times", s, id, n)
			}
		}
		switch {
		case total == globalBatch:
		case faultSteps[s] && isOneShare(globalBatch-total, globalBatch, 4):
			// The world may be smaller than 4 at the fault (a replacement
			// not yet admitted), so the share is that world's.
			t.Logf("step %d: the killed rank's share (%d) is unlogged (it died between the all-reduce and its log line)", s, globalBatch-total)
		default:
			t.Errorf("step %d: %d samples, want %d", s, total, globalBatch)
		}
	}

	// The result matches a fault-free run within tolerance.
	cm, fm := liveDone.FindStringSubmatch(clean.out), liveDone.FindStringSubmatch(r.out)
	if cm == nil || fm == nil {
		t.Fatalf("missing done lines:\n%s\n%s", clean.out, r.out)
	}
	cl, _ := strconv.ParseFloat(cm[2], 64)
	fl, _ := strconv.ParseFloat(fm[2], 64)
	if d := cl - fl; d > 0.05 || d < -0.05 {
		t.Errorf("final loss %.4f with faults vs %.4f without: differ by more than 0.05", fl, cl)
	}
	t.Logf("fault-free %s, with faults %s (hash equal: %v)", cm[0], fm[0], cm[3] == fm[3])

	checkGoodput(t, summaryOf(t, clean), summaryOf(t, r))
}

func summaryOf(t *testing.T, r result) events.Summary {
	t.Helper()
	for _, e := range r.events(t) {
		if e.Type == events.RunFinished && e.Summary != nil {
			return *e.Summary
		}
	}
	t.Fatalf("no summary in the event log:\n%s", r.out)
	return events.Summary{}
}

// checkGoodput: the summary's account of a faulty live run agrees with the
// wall clock. Exactly: useful + lost = wall and the causes add up to the
// lost time, in both runs; the fault-free run loses nothing. Against the
// fault-free run measured just before: the summary's goodput is within 3%
// of wall time of what the wall clock says (the fault-free run's time per
// step × this run's steps / this run's time). Both sides leave out each
// run's startup, its shutdown and its steps while the standby pool first
// filled. Startup and fill are paced by torch imports, which on a busy
// machine vary by seconds from run to run and are no fault's doing (the
// summary counts them useful at their own pace); in a stress run the
// fault-free run's fill outlasted the faulty run's, whose standbys a fault
// took early, by 5 s of a 15 s run. The comparison is only made when the
// two runs trained at the same pace (healthy step times within 3%): on a
// shared machine whose load changed between the runs, the fault-free run
// does not tell how long this one would have taken. Within that bound what
// it checks is the pricing: steps after the fill at the healthy step time
// against a run that had no faults to hide in its steps.
func checkGoodput(t *testing.T, clean, faulty events.Summary) {
	t.Helper()
	for _, s := range []struct {
		name string
		s    events.Summary
	}{{"fault-free", clean}, {"faulty", faulty}} {
		sm := s.s
		if d := sm.UsefulS + sm.LostS - sm.WallS; d > 1e-6 || d < -1e-6 {
			t.Errorf("%s run: useful %.3f + lost %.3f != wall %.3f", s.name, sm.UsefulS, sm.LostS, sm.WallS)
		}
		causes := sm.DetectS + sm.RestartS + sm.RollbackS + sm.GrowS + sm.SmallerS + sm.OtherS
		if d := causes - sm.LostS; d > 1e-6 || d < -1e-6 {
			t.Errorf("%s run: causes add to %.3f, lost %.3f", s.name, causes, sm.LostS)
		}
		if sm.HealthyStepS <= 0 || sm.StartupS <= 0 {
			t.Errorf("%s run: no step accounting: %+v", s.name, sm)
		}
	}
	if clean.Goodput < 0.999 {
		t.Errorf("fault-free run: goodput %.3f, lost %.2f s: %+v", clean.Goodput, clean.LostS, clean)
	}
	// Each grow is a pause of its own. Its price (GrowS) may be a few ms
	// below 0: a grow that stops survivors for 8 ms, with warm steps a
	// little faster than the run's mean, costs nothing; its sign is noise
	// (seen at -0.003 s for two such grows).
	grows := 0
	for _, p := range faulty.Pauses {
		if p.Cause == events.StretchGrow {
			grows++
		}
	}
	if grows == 0 || faulty.Faults == 0 || len(faulty.Pauses) == 0 {
		t.Errorf("faulty run: grows or pauses not accounted: %+v", faulty)
	}
	window := func(s events.Summary) float64 { return s.WallS - s.StartupS - s.FillS - s.ShutdownS }
	cw, fw := window(clean), window(faulty)
	cn, fn := clean.Steps-clean.FillSteps, faulty.Steps-faulty.FillSteps
	if cn < 50 || fn < 50 || cw <= 0 || fw <= 0 {
		// Seen on torch 2.6 on 2 cores: the nice-19 imports outlast a
		// 400-step fault-free run.
		t.Logf("fewer than 50 steps after the pool's first fill (fault-free %d, faulty %d): goodput not compared with the fault-free run", cn, fn)
		return
	}
	wallGoodput := cw / float64(cn) * float64(fn) / fw
	sumGoodput := (faulty.UsefulS - faulty.StartupS - faulty.FillS - faulty.ShutdownS) / fw
	pace := faulty.HealthyStepS / clean.HealthyStepS
	t.Logf("after startup and the pool's first fill, before shutdown: fault-free %d steps in %.1f s (fill %d in %.1f s), faulty %d in %.1f s (fill %d in %.1f s): wall-clock goodput %.3f, summary %.3f (lost %.1f s: %s); pace faulty/fault-free %.3f",
		cn, cw, clean.FillSteps, clean.FillS, fn, fw, faulty.FillSteps, faulty.FillS, wallGoodput, sumGoodput, faulty.LostS, faulty.Line(), pace)
	if pace < 0.97 || pace > 1.03 {
		t.Logf("the machine's pace changed between the runs by %.0f%%: goodput not compared with the fault-free run", (pace-1)*100)
		return
	}
	if d := sumGoodput - wallGoodput; d > 0.03 || d < -0.03 {
		t.Errorf("summary goodput %.3f vs wall-clock %.3f: differ by more than 3%% of wall time", sumGoodput, wallGoodput)
	}
}

// isOneShare: missing is one rank's share of batch samples split over a
// world of 2..maxWorld ranks (the sampler gives the first batch%w ranks one
// more).
func isOneShare(missing, batch, maxWorld int) bool {
	for w := 2; w <= maxWorld; w++ {
		if missing == batch/w || (batch%w != 0 && missing == batch/w+1) {
			return true
		}
	}
	return false
}

// A fault in the last steps: the replacement is ready only to join after a
// step the job never reaches, or once members are finishing. The members
// finish and exit 0; the job succeeded, and the replacement waiting for them
// must not make it look hung (it did: "ranks [3] still running 30s after
// rank 1 finished"). Without standby workers the replacement starts slowly,
// as it did then; which of the two cases a run meets depends on timing (the
// policy's transcripts live_grow_after_end and live_ready_while_finishing
// pin each down).
func TestLiveFaultInTheLastSteps(t *testing.T) {
	requireTorch(t)
	const steps = 14
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	r := bulsajo(t, 3*time.Minute, "--recovery", "live", "--nproc-per-node", "4", "--standby=false",
		"--chaos", "kill-at-step="+strconv.Itoa(steps-2), "--",
		torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"),
		"--steps", strconv.Itoa(steps), "--sleep-ms", "800", "--result-dir", results)
	if r.code != 0 || !strings.Contains(r.out, "✓ done") {
		t.Fatalf("exit %d, want a success:\n%s", r.code, r.out)
	}
	if strings.Contains(r.out, "still running") {
		t.Errorf("the job was held by its replacement:\n%s", r.out)
	}
	s := summaryOf(t, r)
	if s.Outcome != "succeeded" || s.Faults != 1 {
		t.Errorf("summary %+v, want succeeded with 1 fault", s)
	}
	// Every rank that finished as a member agrees: the three survivors, and
	// the replacement if it joined in time for the last step.
	ents, _ := os.ReadDir(results)
	if n := len(ents); n < 3 || n > 4 {
		t.Fatalf("%d result files, want 3 or 4", n)
	}
	checkLiveResults(t, results, len(ents))
	t.Logf("%s; summary: %s", regexp.MustCompile(`grow: .*`).FindString(r.out), s.Line())
}

// Two faults close together, three times in one run: a rank is killed, and
// a second one 10-30 ms after the grow that admits the first one's
// replacement, while the members' threads form that grow's group. Before
// the SDK let a newer generation end such a formation's wait, begin the
// next one beside it, and keep a newer generation's prepared group for it,
// the next generation hung 15 s (a formation waiting for the dead peer held
// the process) or failed after 3 s (one generation formed twice, on one
// port) in 5 of 8 tries, and three hangs in a row ended the job as a crash
// loop. Every fault must be a rank's exit, each followed by a regroup in
// place, and training must go on after the last one.
func TestLiveSecondFaultWhileAGrowForms(t *testing.T) {
	requireTorch(t)
	j := startLiveJob(t, "--steps", "1000000")
	running, runDir, out := j.running, j.runDir, j.out
	read := j.events
	count := func(match func(events.Event) bool) int {
		n := 0
		for _, e := range read() {
			if match(e) {
				n++
			}
		}
		return n
	}
	latestGen := func() int {
		gen := 0
		for _, e := range read() {
			if e.Type == events.GenerationStart {
				gen = e.Gen
			}
		}
		return gen
	}
	waitFor(t, 3*time.Minute, "training", func() bool { return strings.Contains(out.String(), "[rank0] step 20 ") })
	after := 0 // the generation the last kill of rank 2 landed in (or a later one)
	for i, delay := range []time.Duration{10, 20, 30} {
		var gen int
		waitFor(t, 3*time.Minute, "four ranks", func() (ok bool) { gen, ok = j.fourTraining(after); return ok })
		time.Sleep(time.Second) // training in that generation
		killRank(t, runDir, 1)
		// The replacement is admitted by a grow once it is ready (a standby
		// at once, a fresh process after its imports). Polled tightly: the
		// window is the grow's formation, tens of ms.
		for deadline := time.Now().Add(3 * time.Minute); running() && count(func(e events.Event) bool {
			return e.Type == events.GenerationStart && e.Cause == "grow" && e.Gen > gen
		}) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no grow after fault %d:\n%s", 2*i+1, out.String())
			}
		}
		time.Sleep(delay * time.Millisecond)
		after = latestGen()
		killRank(t, runDir, 2)
	}
	// Training goes on, all four ranks again, after the last fault.
	waitFor(t, 3*time.Minute, "four ranks after the last fault", func() bool { _, ok := j.fourTraining(after); return ok })
	time.Sleep(time.Second)
	j.interrupt()
	var faults int
	for _, e := range read() {
		switch {
		case e.Type == events.FaultDetected:
			faults++
			if e.Cause != "worker_exit" {
				t.Errorf("fault %d is %s (%s), want only the ranks' exits:\n%s", faults, e.Cause, e.Detail, out.String())
			}
		case e.Type == events.GenerationStart && e.Gen > 1 && e.Cause == "":
			t.Errorf("a full restart (generation %d):\n%s", e.Gen, out.String())
		case e.Type == events.RunFinished && e.Outcome != "interrupted":
			t.Errorf("outcome %s (%s), want interrupted by the test:\n%s", e.Outcome, e.Detail, out.String())
		}
	}
	if faults != 6 {
		t.Errorf("%d faults, want the 6 kills:\n%s", faults, out.String())
	}
}

// After faults, no thread of a rank keeps a CPU busy. torch 1.x's TCPStore
// client has a listener thread that spins once its connection is at EOF.
// Rank 0 used to keep the store of a group it had left (for the clients of
// a formation superseded while they connect) until a formation at least
// 5 s after it was made, with its own client's socket shut by the abandon:
// at a fault every 5 s, that thread took half a core from training in 3
// faults of 8. Here a second fault follows the first one's grow by half a
// second (that group's store is younger than 5 s at the next two
// formations), then training runs on, light, while the ranks' threads are
// sampled. torch 2.x's client has no such thread: it passes there either way.
func TestLiveNoThreadSpinsAfterAFault(t *testing.T) {
	requireTorch(t)
	j := startLiveJob(t, "--steps", "1000000", "--sleep-ms", "20")
	runDir, out := j.runDir, j.out
	waitFor(t, 3*time.Minute, "training", func() bool { return strings.Contains(out.String(), "[rank0] step 20 ") })
	rank0 := livePID(runDir, 0)
	gen := 0
	for _, rank := range []int{1, 2} {
		var ok bool
		waitFor(t, 3*time.Minute, "four ranks", func() bool { gen, ok = j.fourTraining(gen); return ok })
		time.Sleep(500 * time.Millisecond)
		killRank(t, runDir, rank)
	}
	waitFor(t, 3*time.Minute, "four ranks after the last fault", func() bool { _, ok := j.fourTraining(gen); return ok })
	if livePID(runDir, 0) != rank0 {
		t.Fatalf("rank 0 is a new process: the test needs the one that led every group")
	}
	time.Sleep(time.Second) // the regroups' own work is over
	pids := make([]int, 4)
	for r := range pids {
		pids[r] = livePID(runDir, r)
	}
	const window = 3 * time.Second
	before := threadTicks(pids)
	time.Sleep(window)
	after := threadTicks(pids)
	j.running()
	// A thread that waits uses next to nothing; the main threads train (a
	// step sleeps 20 ms). The spinning listener took 50-100 % of a core.
	busiest := 0.0
	for id, ticks := range after {
		share := float64(ticks-before[id]) / userHZ / window.Seconds()
		if id.tid == id.pid {
			continue
		}
		busiest = max(busiest, share)
		if share > 0.3 {
			t.Errorf("thread %d of worker %d used %.0f%% of a core over %v after the faults", id.tid, id.pid, 100*share, window)
		}
	}
	t.Logf("the busiest thread other than a main one used %.0f%% of a core", 100*busiest)
	j.interrupt()
}

// liveJob is a live-mode run of examples/live_ddp.py, 4 ranks, that a test
// drives (kills ranks, interrupts it) while it trains.
type liveJob struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    *syncBuffer
	runDir string
	done   chan error
}

func startLiveJob(t *testing.T, scriptArgs ...string) *liveJob {
	t.Helper()
	args := append([]string{"--recovery", "live", "--nproc-per-node", "4", "--max-restarts", "100",
		"--", torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py")}, scriptArgs...)
	cmd, out, runDir := startBulsajo(t, args...)
	j := &liveJob{t: t, cmd: cmd, out: out, runDir: runDir, done: make(chan error, 1)}
	go func() { j.done <- cmd.Wait() }()
	return j
}

// running fails the test if bulsajo has ended.
func (j *liveJob) running() bool {
	select {
	case err := <-j.done:
		j.t.Fatalf("bulsajo ended (%v) before the test was done:\n%s", err, j.out.String())
	default:
	}
	return true
}

func (j *liveJob) events() []events.Event {
	evs, _ := events.ReadFile(filepath.Join(j.runDir, "events.jsonl"))
	return evs
}

// fourTraining: the latest generation is newer than after and has all four
// ranks alive (the replacements admitted); its number. Newer: just after a
// kill the log still ends in the grow and the killed rank can still be
// tearing down (not yet a zombie), which would pass for four.
func (j *liveJob) fourTraining(after int) (int, bool) {
	var last events.Event
	for _, e := range j.events() {
		if e.Type == events.GenerationStart {
			last = e
		}
	}
	for r := 0; r < 4; r++ {
		if j.running() && livePID(j.runDir, r) == 0 {
			return 0, false
		}
	}
	return last.Gen, last.Gen > after && last.WorldSize == 4
}

// interrupt stops the job with SIGINT, as a user's ^C, and waits for its end.
func (j *liveJob) interrupt() {
	j.running()
	j.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-j.done:
	case <-time.After(time.Minute):
		j.t.Fatalf("bulsajo did not stop after SIGINT:\n%s", j.out.String())
	}
}

// userHZ is the unit of /proc's CPU times (USER_HZ: 100 on every Linux
// architecture Go runs on).
const userHZ = 100

type threadID struct{ pid, tid int }

// threadTicks: the CPU time (user + system, in 1/userHZ s) each thread of
// the processes has used.
func threadTicks(pids []int) map[threadID]int64 {
	m := map[threadID]int64{}
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat := filepath.Join(dir, e.Name(), "stat")
			u, err1 := strconv.ParseInt(statFileField(stat, 14), 10, 64)
			k, err2 := strconv.ParseInt(statFileField(stat, 15), 10, 64)
			if err1 == nil && err2 == nil {
				m[threadID{pid, tid}] = u + k
			}
		}
	}
	return m
}
