// Package supervisor drives the policy: it feeds it the agent's events and
// clock ticks, carries out its decisions through the agent, and writes every
// fault and recovery to the event log and the terminal.
package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/chaos"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/ports"
	"github.com/bulsajo/bulsajo/internal/store"
)

// Config is the supervisor's part of a job.
type Config struct {
	RunID      string
	Policy     policy.Config
	MasterAddr string
	MasterPort int // 0: a free port for every generation
	StopGrace  time.Duration
	Tick       time.Duration
	Chaos      chaos.Plan
	Console    *console.Console
	Log        *events.Log
	// Store receives the job's state: every event under
	// /bulsajo/runs/ID/events/SEQ and the current generation under
	// /bulsajo/runs/ID/generation. Optional.
	Store store.Store
	// Resume, when set, adopts a generation that kept running while the
	// coordinator was away (a restart or a failover) instead of starting.
	Resume *policy.Resume
	// FirstSeq is the number of events already in the store (resume).
	FirstSeq int
	// GPU delivers this node's GPU health verdicts; Preflight, when set,
	// checks the GPUs before every generation (gpu.go). Both only for a
	// Node that is a SlotNode (`bulsajo run`).
	GPU       <-chan GPUReport
	Preflight func() []GPUReport
	// Detach, when closed, ends Run at once without touching the workers:
	// this coordinator is going away and another will adopt the job.
	Detach <-chan struct{}
	// Observers see every event as it is logged and the job's progress
	// (metrics, the dashboard). They are called on the supervisor's
	// goroutine and must not block.
	Observers []Observer
	// Straggler: detection of slow ranks (straggler.go).
	Straggler StragglerConfig
}

// Observer watches a job as it runs.
type Observer interface {
	Event(events.Event)
	// Step reports the job's highest step so far and when it was reached.
	Step(job string, step int, at time.Time)
}

// Node is what the supervisor needs from an agent.
type Node interface {
	StartGeneration(launcher.GenerationSpec) error
	Regroup(launcher.RegroupSpec) error
	SpawnJoiners(n int) error
	// StopGeneration may come before the StartGeneration of gen it cancels
	// (a Ctrl-C while the launch is handed to its goroutine): the stop wins.
	StopGeneration(gen int, grace time.Duration)
	Signal(gen, rank int, sig syscall.Signal) error
	LiveRanks(gen int) []int
	Culprit(gen int, sampleCPU bool) (rank int, why string)
	// Busy: the ranks of gen using CPU now; none when a rank is stopped or
	// the driver cannot see the processes (policy.Config.ProbeBusy).
	Busy(gen int) []int
	// Stopped: the ranks of gen whose processes are stopped now (SIGSTOP,
	// a tracer); none where the driver cannot see the processes.
	Stopped(gen int) []int
	Events() <-chan launcher.Event
}

// Detached is the outcome of a Run ended by Config.Detach: the job goes on.
const Detached policy.Outcome = "detached"

// Result is how the job ended.
type Result struct {
	Outcome policy.Outcome
	Reason  string
	Signal  os.Signal // for Interrupted
	Summary events.Summary
}

type injected struct {
	gen  int
	rank int
	sig  syscall.Signal
	at   time.Time
}

type run struct {
	cfg     Config
	node    Node
	m       *policy.Machine
	start   time.Time
	con     *console.Console
	log     *events.Log
	chaos   *chaos.Injector
	inject  *injected
	lastSig os.Signal
	signals <-chan os.Signal
	result  *Result

	exitAt    map[int]time.Time // rank -> exit time, for detection latency
	exitLog   map[int]string    // rank -> its log (where its full output is)
	stepTimes []time.Duration   // per-step durations, to price rollbacks
	lastStep  int
	lastAt    time.Time
	seq       int // events written to the store
	clock     events.StepClock
	worlds    map[int]int   // generation -> world size, for the step clock
	paused    time.Duration // time this process did not run (left out of the policy's clock)
	lastTick  time.Time     // the last tick's time: a gap says this process did not run
	gpuAt     time.Time     // when the last GPU fault was reported
	strag     *stragglers   // nil: no straggler detection
}

// Run drives one job to its end. signals delivers Ctrl-C / SIGTERM; a second
// one while stopping kills the workers at once.
func Run(cfg Config, node Node, signals <-chan os.Signal) Result {
	if cfg.Tick == 0 {
		cfg.Tick = 100 * time.Millisecond
	}
	if cfg.MasterAddr == "" {
		cfg.MasterAddr = "127.0.0.1"
	}
	r := &run{cfg: cfg, node: node, m: policy.New(cfg.Policy), start: time.Now(), con: cfg.Console,
		log: cfg.Log, chaos: chaos.NewInjector(cfg.Chaos), exitAt: map[int]time.Time{}, exitLog: map[int]string{}, lastStep: -1,
		worlds: map[int]int{}, signals: signals, lastTick: time.Now()}
	r.seq = cfg.FirstSeq
	if im, ok := node.(interface {
		ImportingSince(time.Time) (time.Time, bool)
	}); ok {
		r.clock.Importing = im.ImportingSince // steps slowed by the pool's refill are not the pace
	}
	r.stragglerSetup()
	if rs := cfg.Resume; rs != nil {
		r.record(events.Event{Type: events.CoordinatorResumed, Gen: rs.Gen, WorldSize: rs.WorldSize})
		r.apply(r.m.Step(0, *rs))
	} else {
		r.record(events.Event{Type: events.RunStarted, RunID: cfg.RunID, WorldSize: cfg.Policy.WorldSize})
		r.apply(r.m.Step(0, policy.Start{}))
	}
	tick := time.NewTicker(cfg.Tick)
	defer tick.Stop()
	for r.result == nil {
		select {
		case s := <-signals:
			r.signal(s)
		case ev := <-node.Events():
			r.handle(ev)
		case g := <-cfg.GPU:
			r.gpuReport(g)
		case <-tick.C:
			// A tick far behind means this process did not run (stopped, a
			// frozen VM, swapping): the workers' silence meanwhile is ours,
			// not theirs. The policy's clock skips the gap.
			if gap := time.Since(r.lastTick); gap > max(10*cfg.Tick, time.Second) {
				r.paused += gap - cfg.Tick
				r.con.Printf("… bulsajo did not run for %s; that time does not count as the job's silence", gap.Round(time.Millisecond))
			}
			r.lastTick = time.Now()
			if g := r.m.Generation(); g > 0 {
				r.apply(r.m.Step(r.now(), policy.ProcState{Gen: g, Stopped: r.node.Stopped(g)}))
			}
			r.apply(r.m.Step(r.now(), policy.Tick{}))
			r.maybeInject()
			r.stragglerTick()
		case <-cfg.Detach:
			return Result{Outcome: Detached, Reason: "coordinator going away"}
		}
	}
	return *r.result
}

// signal handles Ctrl-C / SIGTERM: the first stops the job through the
// policy, a second kills the workers at once.
func (r *run) signal(s os.Signal) {
	if r.lastSig != nil {
		r.con.Printf("! second %s: killing workers now", s)
		r.node.StopGeneration(r.m.Generation(), 0)
		return
	}
	r.lastSig = s
	r.con.Printf("! %s: stopping workers", SignalName(s))
	r.apply(r.m.Step(r.now(), policy.Interrupt{Signal: SignalName(s)}))
}

// now is the policy's clock: time this process has been running the job
// (a stall of the process itself is left out).
func (r *run) now() time.Duration { return time.Since(r.start) - r.paused }

func (r *run) handle(ev launcher.Event) {
	switch e := ev.(type) {
	case launcher.Launched:
		if e.World > 0 {
			r.worlds[e.Gen] = e.World
		}
		r.apply(r.m.Step(r.now(), policy.Launched{Gen: e.Gen, WorldSize: e.World}))
	case launcher.Progress:
		// Before the policy sees it: a recovery it reports comes after the
		// step that ended the pause.
		r.advance(e)
		if e.Gen == r.m.Generation() {
			r.observeStep(e.Step, e.At)
		}
		r.apply(r.m.Step(r.now(), policy.Progress{Gen: e.Gen, Rank: e.Rank, Step: e.Step}))
	case launcher.Exited:
		// Under the rank its fault will name (a regroup may have renumbered it).
		now := r.m.RankNow(e.Gen, e.Rank)
		r.exitAt[now] = e.At
		r.exitLog[now] = e.Log
		injected := r.inject != nil && r.inject.gen == e.Gen && r.inject.rank == e.Rank
		r.apply(r.m.Step(r.now(), policy.Exited{Gen: e.Gen, Rank: e.Rank, Code: e.Code, Signal: e.Signal, LastError: e.LastError, Also: e.Also,
			Injected: injected, Output: e.Output, NewOutput: e.NewOutput}))
	case launcher.Stopped:
		r.apply(r.m.Step(r.now(), policy.Stopped{Gen: e.Gen}))
	case launcher.JoinerReady:
		r.apply(r.m.Step(r.now(), policy.JoinerReady{}))
	case launcher.JoinerLost:
		r.apply(r.m.Step(r.now(), policy.JoinerLost{}))
	case launcher.Finishing:
		r.apply(r.m.Step(r.now(), policy.Finishing{Gen: e.Gen, Rank: e.Rank}))
	case launcher.CollectiveFailed:
		r.apply(r.m.Step(r.now(), policy.CollectiveFailed{Gen: e.Gen, Rank: e.Rank, Detail: e.Detail}))
	case launcher.Work:
		r.work(e)
	}
}

// advance feeds the step clock; a stretch of steps it closes goes to the log.
func (r *run) advance(e launcher.Progress) {
	w := r.worlds[e.Gen]
	if w == 0 {
		w = r.cfg.Policy.WorldSize
	}
	at := e.At
	if at.IsZero() {
		at = time.Now()
	}
	if s := r.clock.Advance(e.Gen, w, e.Step, at); s != nil {
		r.record(events.Event{Type: events.StretchEnd, Gen: s.Gen, WorldSize: s.World, Stretch: s})
	}
}

// observeStep keeps per-step durations (job level: the furthest rank).
func (r *run) observeStep(step int, at time.Time) {
	if step > r.lastStep {
		if r.lastStep >= 0 && !r.lastAt.IsZero() && step-r.lastStep < 1000 {
			d := at.Sub(r.lastAt) / time.Duration(step-r.lastStep)
			if len(r.stepTimes) < 100000 {
				r.stepTimes = append(r.stepTimes, d)
			}
		}
		r.lastStep, r.lastAt = step, at
		for _, o := range r.cfg.Observers {
			o.Step(r.cfg.RunID, step, at)
		}
	}
}

func (r *run) medianStep() time.Duration {
	if len(r.stepTimes) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), r.stepTimes...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func (r *run) apply(ds []policy.Decision) {
	// In order: a fault is inspected (the culprit of a hang is read from
	// process state) and recorded before the stop that follows it changes
	// that state (SIGCONT).
	for _, d := range ds {
		switch d := d.(type) {
		case policy.Launch:
			r.launch(d)
		case policy.Regroup:
			r.regroup(d)
		case policy.SpawnJoiners:
			if err := r.node.SpawnJoiners(d.N); err != nil {
				r.con.Printf("! starting a replacement: %v", err)
			}
		case policy.Diagnose:
			rank, why := -1, ""
			if !d.StateOnly {
				rank, why = r.node.Culprit(d.Gen, true)
			} else if st := r.node.Stopped(d.Gen); len(st) > 0 {
				rank, why = st[0], "process stopped (state T)"
			}
			if rank >= 0 {
				r.con.Printf("  culprit: rank %d (%s)", rank, why)
			}
			r.apply(r.m.Step(r.now(), policy.Diagnosed{Gen: d.Gen, Rank: rank}))
		case policy.Probe:
			r.apply(r.m.Step(r.now(), policy.Probed{Gen: d.Gen, Busy: r.node.Busy(d.Gen)}))
		case policy.Busy:
			r.con.Printf("… no progress for %.1f s, but %s using CPU (a checkpoint? an evaluation?): not called a hang while it works",
				d.Silent.Seconds(), rankList(d.Ranks))
		case policy.Stop:
			r.node.StopGeneration(d.Gen, r.cfg.StopGrace)
		case policy.Fault:
			r.fault(d)
		case policy.Recovered:
			r.con.Printf("↻ generation %d running %d/%d · recovered in %.1f s · rolled back %d %s",
				d.Gen, d.WorldSize, r.cfg.Policy.WorldSize, d.Took.Seconds(), d.RolledBack, plural(d.RolledBack, "step", "steps"))
			r.record(events.Event{Type: events.Recovered, Gen: d.Gen, RecoverMS: ms(d.Took), RolledBack: d.RolledBack})
		case policy.Finish:
			r.finish(d)
		}
	}
}

func (r *run) launch(d policy.Launch) {
	r.lastStep, r.lastAt = -1, time.Time{} // a new generation's steps restart from its checkpoint
	if !r.preflight(&d) {
		return
	}
	r.worlds[d.Gen] = d.WorldSize
	port, err := r.port()
	if err != nil {
		r.finish(policy.Finish{Outcome: policy.Failed, Reason: "no free port for the rendezvous: " + err.Error()})
		return
	}
	ranks := make([]int, d.WorldSize)
	for i := range ranks {
		ranks[i] = i
	}
	spec := launcher.GenerationSpec{Gen: d.Gen, RestartCount: d.RestartCount, WorldSize: d.WorldSize, Ranks: ranks,
		GroupWorldSize: 1, MasterAddr: r.cfg.MasterAddr, MasterPort: port}
	// Recorded before the workers start: tools (bench/faults.py) read the
	// event as "pids files newer than this belong to the new generation".
	r.record(events.Event{Type: events.GenerationStart, Gen: d.Gen, WorldSize: d.WorldSize})
	// The launch can wait for rank 0's store while it imports torch (up to
	// the launcher's preload cap): Ctrl-C is still heard meanwhile, and the
	// stop it asks for ends that wait. Other events keep in their channel.
	started := make(chan error, 1)
	go func() { started <- r.node.StartGeneration(spec) }()
	for waiting := true; waiting; {
		select {
		case err = <-started:
			waiting = false
		case s := <-r.signals:
			r.signal(s)
		}
	}
	// The loop's ticks stood still meanwhile; bulsajo did run.
	r.lastTick = time.Now()
	if err != nil {
		r.finish(policy.Finish{Outcome: policy.Failed, Reason: err.Error()})
	}
}

func (r *run) regroup(d policy.Regroup) {
	r.lastStep, r.lastAt = -1, time.Time{}
	port, err := r.port()
	if err != nil {
		r.finish(policy.Finish{Outcome: policy.Failed, Reason: "no free port for the rendezvous: " + err.Error()})
		return
	}
	if d.Grow {
		r.con.Printf("↻ grow: generation %d · %d replacement(s) join after step %d · %d workers", d.Gen, d.Admit, d.AtStep, d.WorldSize)
	} else {
		r.con.Printf("↻ regroup: generation %d · %d survivors continue in place · %d joining, %d starting", d.Gen, len(d.Survivors), d.Admit, d.Spawn)
	}
	r.worlds[d.Gen] = d.WorldSize
	cause := "regroup"
	if d.Grow {
		cause = "grow"
		r.clock.Cause(events.StretchGrow)
	} else {
		r.clock.Cause(events.StretchRegroup)
	}
	r.record(events.Event{Type: events.GenerationStart, Gen: d.Gen, WorldSize: d.WorldSize, Cause: cause,
		Detail: fmt.Sprintf("members (old ranks) %v, %d admitted, %d spawned", d.Survivors, d.Admit, d.Spawn)})
	err = r.node.Regroup(launcher.RegroupSpec{From: d.Gen - 1, Gen: d.Gen, WorldSize: d.WorldSize, Survivors: d.Survivors,
		Admit: d.Admit, Spawn: d.Spawn, Kill: d.Kill, Grow: d.Grow, AtStep: d.AtStep, MasterAddr: r.cfg.MasterAddr, MasterPort: port})
	if err != nil {
		r.finish(policy.Finish{Outcome: policy.Failed, Reason: err.Error()})
	}
}

// port is the rendezvous port of a new generation: fresh each time, so a
// new generation never meets the old one's store.
func (r *run) port() (int, error) {
	if r.cfg.MasterPort > 0 {
		return r.cfg.MasterPort, nil
	}
	if r.cfg.MasterPort < 0 {
		return 0, nil // the node that hosts rank 0 chooses
	}
	return freePort(r.cfg.MasterAddr)
}

func (r *run) fault(f policy.Fault) {
	now := time.Now()
	r.clock.Cause(events.StretchFault)
	ev := events.Event{Type: events.FaultDetected, Gen: f.Gen, Cause: string(f.Kind), Detail: f.Detail}
	if f.Step >= 0 {
		ev.Step = events.Int(f.Step)
	}
	rank, why := f.Rank, ""
	var detect time.Duration
	switch f.Kind {
	case policy.FaultExit, policy.FaultNodeLost:
		// Node lost: from the last time it was heard (or its connection closed).
		detect = now.Sub(r.exitAt[f.Rank])
	case policy.FaultHang:
		detect = f.Silent
		// A stopped process is the surest sign; then the rank the policy saw
		// lagging; then CPU use.
		if cr, cwhy := r.node.Culprit(f.Gen, rank < 0); cr >= 0 {
			rank, why = cr, cwhy
		} else if rank >= 0 {
			why = "behind the other ranks"
		}
	}
	// An injected fault tells us exactly when it happened.
	if in := r.inject; in != nil && in.gen == f.Gen {
		detect = now.Sub(in.at)
		if rank < 0 {
			rank = in.rank
		}
		r.inject = nil
	}
	if rank >= 0 {
		ev.Rank = events.Int(rank)
	}
	ev.DetectMS = ms(detect)
	switch f.Kind {
	case policy.FaultExit:
		// One line per fault: the rest (the full traceback, the peers'
		// errors that followed) is in the rank logs, and the line says where.
		see := ""
		if p := r.exitLog[rank]; p != "" {
			see = " · see " + displayPath(p)
		}
		r.con.Printf("! rank %d exited (%s) · detected in %s%s", rank, f.Detail, human(detect), see)
	case policy.FaultNodeLost:
		r.con.Printf("! %s · detected in %s", f.Detail, human(detect))
	case policy.FaultCollective:
		// Every rank alive, a group broken (a regroup that could not form):
		// one line too, the ranks' own words in their logs.
		r.con.Printf("! collective failed, no rank lost (%s)", clip(f.Detail, 160))
	case policy.FaultGPU:
		detect = now.Sub(r.gpuAt)
		ev.DetectMS = ms(detect)
		r.con.Printf("! rank %d: its GPU failed (%s)", rank, f.Detail)
	case policy.FaultStraggler:
		r.con.Printf("! rank %d replaced: straggler (%s)", rank, f.Detail)
	case policy.FaultHang:
		who := "culprit unknown"
		if rank >= 0 {
			who = fmt.Sprintf("rank %d", rank)
			if why != "" {
				who += ": " + why
			}
		}
		r.con.Printf("! hang: %s · %s · detected in %s", f.Detail, who, human(detect))
		if why != "" {
			ev.Detail += "; rank " + fmt.Sprint(rank) + ": " + why
		}
	}
	r.record(ev)
}

func (r *run) finish(f policy.Finish) {
	ev := events.Event{Type: events.RunFinished, Outcome: string(f.Outcome), Detail: f.Reason,
		NoProgressGens: f.NoProgress}
	if s := r.m.JobStep(); s >= 0 {
		ev.Step = events.Int(s)
	}
	if s := r.clock.Flush(); s != nil {
		r.record(events.Event{Type: events.StretchEnd, Gen: s.Gen, WorldSize: s.World, Stretch: s})
	}
	// The summary is computed from the log itself, plus this last event.
	var evs []events.Event
	if r.log != nil {
		evs, _ = events.ReadFile(r.log.Path())
	}
	ev.Time = time.Now()
	sum := events.Summarize(append(evs, ev), r.medianStep())
	sum.Outcome = string(f.Outcome)
	ev.Summary = &sum
	r.record(ev)
	switch f.Outcome {
	case policy.Succeeded:
		r.con.Printf("✓ done %s", sum.Line())
	case policy.Interrupted:
		r.con.Printf("■ stopped %s", sum.Line())
	default:
		r.con.Printf("✗ %s: %s", f.Outcome, f.Reason)
		r.con.Printf("  %s", sum.Line())
	}
	r.result = &Result{Outcome: f.Outcome, Reason: f.Reason, Signal: r.lastSig, Summary: sum}
}

func (r *run) maybeInject() {
	gen := r.m.Generation()
	sig, due := r.chaos.DueAt(r.now(), r.m.JobStep(), r.m.Training() && r.inject == nil)
	if !due {
		return
	}
	live := r.node.LiveRanks(gen)
	if len(live) == 0 {
		return
	}
	rank := r.chaos.Pick(live)
	if err := r.node.Signal(gen, rank, sig); err != nil {
		return
	}
	r.inject = &injected{gen: gen, rank: rank, sig: sig, at: time.Now()}
	r.con.Printf("⚡ chaos: %s to rank %d", SignalName(sig), rank)
	r.record(events.Event{Type: events.FaultInjected, Gen: gen, Rank: events.Int(rank), Cause: SignalName(sig)})
}

func (r *run) record(e events.Event) {
	if e.RunID == "" {
		e.RunID = r.cfg.RunID
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	for _, o := range r.cfg.Observers {
		o.Event(e)
	}
	if r.log == nil {
		return
	}
	if err := r.log.Append(e); err != nil {
		r.con.Printf("! event log: %v", err)
	}
	if r.cfg.Store != nil {
		r.seq++
		b, _ := json.Marshal(e)
		r.cfg.Store.Put(context.Background(), fmt.Sprintf("%s/events/%08d", r.prefix(), r.seq), b)
		if e.Type == events.GenerationStart {
			r.cfg.Store.Put(context.Background(), r.prefix()+"/generation", b)
		}
	}
}

func (r *run) prefix() string { return "/bulsajo/runs/" + r.cfg.RunID }

func freePort(addr string) (int, error) { return ports.Free(addr) }

// clip is s's first line, cut to n runes.
func clip(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// displayPath is p relative to the working directory when it lies below it.
func displayPath(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return p
}

// rankList is "rank 3 is" or "ranks 0, 2 are".
func rankList(rs []int) string {
	if len(rs) == 1 {
		return fmt.Sprintf("rank %d is", rs[0])
	}
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, r)
	}
	return "ranks " + b.String() + " are"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func human(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// SignalName is a signal's name as bulsajo writes it (SIGKILL, ...).
func SignalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGSTOP:
		return "SIGSTOP"
	case syscall.SIGCONT:
		return "SIGCONT"
	}
	return s.String()
}
