// Package policy is bulsajo's decision procedure: a pure state machine that
// takes events (worker exits, progress, ticks) with the logical time at which
// they happened and returns decisions (launch a generation, stop one, record a
// fault, finish). It does no I/O and reads no clock, so the same code is driven
// by scripted transcripts in tests, by the simulator, and by the coordinator.
package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bulsajo/bulsajo/internal/health"
)

// Config is the part of a job's settings the policy decides by.
type Config struct {
	WorldSize   int
	MaxRestarts int

	// Watchdog holds the hang-detection thresholds; its state is the policy's.
	Watchdog health.Watchdog
	// StartupTimeout bounds the time from launch to the first progress of a
	// generation, once the job is known to report progress. 0 = adaptive:
	// 4 × the slowest startup seen so far, at least MinStartupTimeout, and
	// InitialStartupTimeout before any startup has been seen.
	StartupTimeout time.Duration
	// ProgressExpected says a progress source is configured (e.g. a regex), so
	// the watchdog is armed from the first generation's launch. Otherwise it
	// arms itself when the first progress report arrives (the SDK).
	ProgressExpected bool

	// CrashLoopLimit is how many consecutive generations may fail the same
	// way without doing work before the job is declared a crash loop. What
	// counts as work is decided by what was observed (see fail), not by a
	// time window.
	CrashLoopLimit int
	// ExitGrace: once a rank has finished (exit 0), the others have this
	// long to finish too; meanwhile the hang watchdog is off (the job is
	// tearing down, not training). Default 30 s.
	ExitGrace time.Duration

	// ProbeBusy: before a stall counts as a hang, ask the driver (Probe)
	// which ranks still use CPU. A rank that computes without reporting
	// progress (a checkpoint, an evaluation, a slow teardown after the last
	// step, a step slowed by a busy machine) is not hung: the watchdog waits
	// for it, up to BusyLimit. A stopped rank, or ranks that all sit
	// blocked, are a hang as before. Needs the workers' processes (the
	// driver of `bulsajo run`); off where the driver cannot see them.
	// Ignored with a fixed Watchdog.Timeout (the user's own bound).
	ProbeBusy bool
	// BusyLimit: the longest stall excused by busy ranks (an endless loop
	// is a hang too). Default 10 min.
	BusyLimit time.Duration

	// Live recovery (workers use the SDK): survivors of a fault keep their
	// processes and re-form the group; Replace starts replacements to get
	// back to WorldSize; without them the job shrinks, down to MinWorld,
	// below which it falls back to a full restart.
	Live     bool
	Replace  bool
	MinWorld int
}

// Defaults for Config fields left zero.
const (
	InitialStartupTimeout = 5 * time.Minute
	MinStartupTimeout     = 15 * time.Second
	DefaultCrashLoopLimit = 3
	DefaultExitGrace      = 30 * time.Second
	DefaultBusyLimit      = 10 * time.Minute
)

// SignalNodeLost in Exited means the rank's node was lost (no heartbeat, or
// its agent's connection closed); LastError says which node and how.
const SignalNodeLost = "NODE_LOST"

// FaultKind names what was detected.
type FaultKind string

const (
	FaultExit       FaultKind = "worker_exit"
	FaultHang       FaultKind = "hang"
	FaultCollective FaultKind = "collective_failed" // a worker's collective failed, no cause seen
	FaultNodeLost   FaultKind = "node_lost"         // the driver lost a node (Exited with Signal SignalNodeLost)
)

// Outcome is how a job ended.
type Outcome string

const (
	Succeeded   Outcome = "succeeded"
	Failed      Outcome = "failed"      // restarts exhausted
	CrashLoop   Outcome = "crash_loop"  // the same failure without progress, repeatedly
	Interrupted Outcome = "interrupted" // the user stopped it
)

// ---- inputs ----

// Input is an event fed to the machine.
type Input interface{ input() }

// Start begins the job.
type Start struct{}

// Launched: every worker of Gen has been started.
type Launched struct {
	Gen int
	// WorldSize, when set, is the world the driver actually launched: a
	// multi-node job may start with fewer nodes than asked for (--nnodes MIN:MAX).
	WorldSize int
}

// Resume: a restarted coordinator adopts generation Gen, which its agents
// kept running while it was away. Only valid before Start; no decision. The
// driver then reports Launched{Gen} once the agents confirm it.
type Resume struct {
	Gen, WorldSize, Restarts, JobStep int
}

// Exited: one worker ended. Signal is empty for a normal exit.
type Exited struct {
	Gen, Rank, Code int
	Signal          string
	LastError       string // last line the worker wrote to stderr, if any
	// Also lists other ranks that ended with this one (the rest of a lost
	// node's ranks): live recovery must not count them as survivors.
	Also []int
	// Injected: the driver sent the signal itself (--chaos).
	Injected bool
	// What the generation's workers printed before this exit (the failing
	// rank's output, the others' up to its death): Output lines in all,
	// NewOutput of them lines no earlier generation printed. Only read
	// for a job that reports no progress.
	Output, NewOutput int
}

// Progress: a worker (Rank, or -1 when unknown) reported Step.
type Progress struct{ Gen, Rank, Step int }

// Stopped: every worker of Gen has been reaped.
type Stopped struct{ Gen int }

// Interrupt: the user asked to stop (Ctrl-C, SIGTERM).
type Interrupt struct{ Signal string }

// Tick: time passed; lets the watchdog fire.
type Tick struct{}

// Diagnosed answers Diagnose: the rank to blame for a hang, or -1.
type Diagnosed struct{ Gen, Rank int }

// JoinerReady: a spawned replacement is up and waiting to be admitted.
type JoinerReady struct{}

// JoinerLost: a spawned replacement exited before it was admitted.
type JoinerLost struct{}

// CollectiveFailed: a live-mode worker reports that a collective failed and
// no new generation came.
type CollectiveFailed struct {
	Gen, Rank int
	Detail    string
}

// Probed answers Probe: the ranks of Gen that used CPU while it was looked
// at. Empty when a rank is stopped (SIGSTOP, a tracer) or none is using CPU.
type Probed struct {
	Gen  int
	Busy []int
}

// ProcState: the ranks of Gen whose processes are stopped now (state T or
// t: SIGSTOP, a tracer), as the driver reads them on every tick. A driver
// that cannot see the workers' processes does not send it. A rank stopped
// for longer than the hang threshold is a hang whether or not the job has
// made progress yet: unlike a stall, a stopped process is seen directly, so
// no startup estimate has to pass first.
type ProcState struct {
	Gen     int
	Stopped []int
}

// Finishing: a live-mode rank left its training loop with every rank
// agreeing the last step committed; what follows is teardown, not training.
type Finishing struct{ Gen, Rank int }

func (Finishing) input()        {}
func (ProcState) input()        {}
func (Probed) input()           {}
func (Start) input()            {}
func (Launched) input()         {}
func (Resume) input()           {}
func (Exited) input()           {}
func (Progress) input()         {}
func (Stopped) input()          {}
func (Interrupt) input()        {}
func (Tick) input()             {}
func (Diagnosed) input()        {}
func (CollectiveFailed) input() {}

// ---- decisions ----

// Decision is something the driver must do or record.
type Decision interface{ decision() }

// Launch the workers of generation Gen.
type Launch struct{ Gen, WorldSize, RestartCount int }

// Stop every worker of generation Gen.
type Stop struct {
	Gen    int
	Reason string
}

// Fault records a detected fault. Rank is -1 when no single rank is to blame.
// Silent is, for a hang, how long the job had made no progress.
type Fault struct {
	Gen    int
	Kind   FaultKind
	Rank   int
	Also   []int // other ranks lost with Rank (a node)
	Detail string
	Step   int // last step the job reached
	Silent time.Duration
}

// Recovered: the generation that replaced a faulty one made its first
// progress (or, for a job without progress reports, was launched).
// Took is measured from the fault's detection.
type Recovered struct {
	Gen        int
	WorldSize  int
	Took       time.Duration
	RolledBack int // steps repeated because the script resumed from a checkpoint
}

// Regroup (live mode): generation Gen is formed in place from the
// members of the current one — Survivors[i] (an old rank) becomes rank i —
// plus Admit ready joiners as the ranks after them. Kill lists old ranks to
// kill first (a hung culprit). Spawn asks for that many new joiners:
// replacement processes that start, receive nothing yet, and are admitted
// by a later Regroup once ready, so survivors never wait for a replacement
// to start. A regroup with no lost member (Grow) happens at a step
// boundary: AtStep is the last step of the old generation.
type Regroup struct {
	Gen       int
	WorldSize int
	Survivors []int
	Admit     int
	Spawn     int
	Kill      []int
	Grow      bool
	AtStep    int
}

// SpawnJoiners starts N more replacement processes (to be admitted later).
type SpawnJoiners struct{ N int }

// Diagnose asks the driver who is to blame for the hang of Gen; it answers
// with Diagnosed. StateOnly: blame only a stopped process (SIGSTOP, a
// tracer), not CPU samples or printed errors: a failed collective names no
// one, and a rank that computes, or logs an error, while the others wait is
// not to blame for it (one that is dying exits soon, a fault of its own).
type Diagnose struct {
	Gen       int
	StateOnly bool
}

// Probe asks the driver which ranks of Gen are using CPU (Config.ProbeBusy);
// it answers with Probed.
type Probe struct{ Gen int }

// Busy: the job has stalled longer than the hang threshold, but these ranks
// are using CPU, so it is not called a hang yet (once per stall).
type Busy struct {
	Gen    int
	Ranks  []int
	Silent time.Duration
}

// Finish ends the job.
type Finish struct {
	Outcome Outcome
	Reason  string
	// NoProgress: how many generations at the end ran without progress (a
	// crash loop's), so that the summary counts their time as lost even for
	// a job whose steps it cannot see.
	NoProgress int
}

func (Launch) decision()    {}
func (Stop) decision()      {}
func (Fault) decision()     {}
func (Recovered) decision() {}
func (Finish) decision()    {}
func (Regroup) decision()   {}
func (Diagnose) decision()  {}
func (Probe) decision()     {}
func (Busy) decision()      {}

// ---- machine ----

type phase int

const (
	idle     phase = iota
	starting       // Launch issued, waiting for Launched
	running
	stopping   // Stop issued, waiting for Stopped
	diagnosing // live mode: waiting for Diagnosed
	done
)

// Machine is the policy state. Use New, then Step for every input.
type Machine struct {
	cfg Config

	phase phase
	gen   int
	world int // world size of the current generation

	joiners      int // live: replacements spawned and not yet admitted
	joinersReady int // of which ready

	launchedAt   time.Duration
	progressed   bool // the current generation has reported progress
	everProgress bool // any generation has
	maxStartup   time.Duration
	rankStep     map[int]int
	doneRanks    map[int]bool
	firstDone    int           // the first rank of this generation to finish
	firstDoneAt  time.Duration // and when
	finishing    bool          // a rank of this generation reported Finishing
	afterFinish  string        // a rank that died after Finishing (live): it ended the teardown, not the training
	jobStep      int           // highest step the job has reached, across generations
	genStep      int           // highest step reached in the current generation
	// A grow not yet in effect: ranks below growFrom are the members that
	// switch after committing step growAt; the ranks from growFrom on are
	// replacements waiting for them (growFrom 0: none pending).
	growFrom, growAt int

	// set while a fault's recovery is pending
	recovering   bool
	faultAt      time.Duration
	stepAtFault  int
	restarts     int
	sameFailures int
	lastSig      string
	finishAfter  *Finish // decided while stopping; emitted on Stopped
	slots        int     // healthy slots (GPUs) left; 0 = not limited (gpu.go)

	// a stall being looked at (Config.ProbeBusy)
	probing   bool          // Probe sent, Probed not yet in
	busyUntil time.Duration // busy ranks seen: probe again after this
	busyNoted bool          // Busy told for this stall

	stoppedSince map[int]time.Duration // rank -> first seen stopped (ProcState)
	diagnosing   FaultKind             // the fault a Diagnose was sent for

	// carried[g]: where live regroups took generation g's members in
	// generation g+1 (old rank -> new rank), since the last full launch.
	carried map[int]map[int]int
}

// New returns a machine for cfg, filling defaults.
func New(cfg Config) *Machine {
	if cfg.CrashLoopLimit == 0 {
		cfg.CrashLoopLimit = DefaultCrashLoopLimit
	}
	if cfg.ExitGrace == 0 {
		cfg.ExitGrace = DefaultExitGrace
	}
	if cfg.BusyLimit == 0 {
		cfg.BusyLimit = DefaultBusyLimit
	}
	if cfg.Watchdog.Floor == 0 && cfg.Watchdog.Timeout == 0 {
		w := health.DefaultWatchdog()
		w.Timeout = cfg.Watchdog.Timeout
		cfg.Watchdog = w
	}
	return &Machine{cfg: cfg, jobStep: -1}
}

// Generation is the current generation number (0 before the first launch).
func (m *Machine) Generation() int { return m.gen }

// Restarts is how many restarts have been decided.
func (m *Machine) Restarts() int { return m.restarts }

// JobStep is the highest step the job has reached (-1 before any progress).
func (m *Machine) JobStep() int { return m.jobStep }

// Training reports whether the current generation runs and has made progress.
func (m *Machine) Training() bool { return m.phase == running && m.progressed }

// Done reports whether the machine has finished.
func (m *Machine) Done() bool { return m.phase == done }

// HangThreshold is the watchdog's current threshold.
func (m *Machine) HangThreshold() time.Duration { return m.cfg.Watchdog.Threshold() }

// Step advances the machine by one input at logical time now.
func (m *Machine) Step(now time.Duration, in Input) []Decision {
	if m.phase == done {
		return nil
	}
	switch ev := in.(type) {
	case Start:
		if m.phase == idle {
			return m.launch(now)
		}
	case Resume:
		if m.phase == idle && ev.Gen >= 1 {
			m.gen = ev.Gen - 1
			m.newGeneration(ev.WorldSize)
			m.restarts, m.jobStep = ev.Restarts, ev.JobStep
			m.everProgress = ev.JobStep >= 0
		}
	case Launched:
		if ev.Gen == m.gen && m.phase == starting {
			if ev.WorldSize > 0 {
				m.world = ev.WorldSize
			}
			m.phase = running
			m.launchedAt = now
			if m.recovering && !m.cfg.ProgressExpected && !m.everProgress {
				// No progress reports to wait for: launch is the best we know.
				return []Decision{m.recovered(now, -1)}
			}
		}
	case Progress:
		return m.progress(now, ev)
	case Exited:
		return m.exited(now, ev)
	case Tick:
		return m.tick(now)
	case Stopped:
		if ev.Gen == m.gen && m.phase == stopping {
			if m.finishAfter != nil {
				m.phase = done
				return []Decision{*m.finishAfter}
			}
			return m.launch(now)
		}
	case Interrupt:
		return m.interrupt(ev)
	case Probed:
		return m.probed(now, ev)
	case Diagnosed:
		if ev.Gen == m.gen && m.phase == diagnosing {
			switch {
			case ev.Rank >= 0:
				return m.regroup([]int{ev.Rank}, []int{ev.Rank})
			case m.diagnosing == FaultCollective:
				return m.regroup(nil, nil) // no one to blame: all re-form
			}
			return m.restartAll()
		}
	case ProcState:
		return m.procState(now, ev)
	case JoinerReady:
		if m.joinersReady < m.joiners {
			m.joinersReady++
		}
		return m.admit()
	case JoinerLost:
		if m.joiners == 0 {
			return nil // not one we are waiting for
		}
		if m.joinersReady == m.joiners {
			m.joinersReady--
		}
		m.joiners--
		if m.cfg.Live && m.cfg.Replace && m.restarts < m.cfg.MaxRestarts && m.phase != stopping {
			m.restarts++
			m.joiners++
			return []Decision{SpawnJoiners{N: 1}}
		}
	case Finishing:
		// Like a first clean exit: the hang watchdog is off for ExitGrace.
		if ev.Gen == m.gen && m.phase == running && !m.finishing && len(m.doneRanks) == 0 {
			m.finishing = true
			m.firstDone, m.firstDoneAt = ev.Rank, now
		}
	case Capacity:
		return m.capacity(ev)
	case GPUFault:
		return m.gpuFault(now, ev)
	case Straggler:
		return m.straggler(now, ev)
	case CollectiveFailed:
		// Once a rank has finished (every rank agreed the last step, or one
		// exited 0) a broken group is the teardown's: a replacement whose
		// grow the job ended before, left forming it alone. Exits decide.
		if m.finishing || len(m.doneRanks) > 0 {
			return nil
		}
		if ev.Gen == m.gen && m.phase == running {
			return m.fail(now, Fault{Gen: m.gen, Kind: FaultCollective, Rank: -1,
				Detail: fmt.Sprintf("rank %d: %s", ev.Rank, ev.Detail), Step: m.jobStep}, "collective")
		}
	}
	return nil
}

func (m *Machine) launch(now time.Duration) []Decision {
	m.carried = nil // the old generations' processes are gone with them
	m.newGeneration(m.target())
	return []Decision{Launch{Gen: m.gen, WorldSize: m.world, RestartCount: m.gen - 1}}
}

func (m *Machine) newGeneration(world int) {
	m.gen++
	m.world = world
	m.phase = starting
	m.progressed = false
	m.genStep = -1
	m.rankStep = map[int]int{}
	m.doneRanks = map[int]bool{}
	m.finishing = false
	m.afterFinish = ""
	m.growFrom, m.growAt = 0, 0
	m.probing, m.busyUntil, m.busyNoted = false, 0, false
	m.stoppedSince = nil
	m.cfg.Watchdog.Reset()
}

func (m *Machine) progress(now time.Duration, ev Progress) (out []Decision) {
	if ev.Gen != m.gen || m.phase != running {
		return nil
	}
	if !m.progressed {
		m.progressed = true
		if st := now - m.launchedAt; st > m.maxStartup {
			m.maxStartup = st
		}
		if m.recovering {
			out = append(out, m.recovered(now, ev.Step))
		}
	}
	defer func() { out = append(out, m.admit()...) }()
	if m.growFrom > 0 && (ev.Rank >= m.growFrom || ev.Step > m.growAt) {
		m.growFrom = 0 // the members switched: the replacements are members too
	}
	m.everProgress = true
	if ev.Rank >= 0 {
		if prev, ok := m.rankStep[ev.Rank]; !ok || ev.Step > prev {
			m.rankStep[ev.Rank] = ev.Step
		}
	}
	// Job-level progress: the highest step any rank has reached in this
	// generation advanced (steps re-done after a rollback count: they are
	// the job working). Several ranks reporting the same step count once.
	if ev.Step > m.genStep {
		m.genStep = ev.Step
		m.cfg.Watchdog.Observe(now)
		m.busyUntil, m.busyNoted = 0, false // the stall, if any, is over
	}
	m.jobStep = max(m.jobStep, ev.Step)
	return out
}

// admit grows the running generation by the ready joiners, at a step
// boundary a few steps ahead (so every member reaches it before switching).
func (m *Machine) admit() []Decision {
	n := min(m.joinersReady, m.target()-m.world)
	// Not once a rank has finished: the job is ending, and a new generation
	// would forget which ranks are done.
	if n <= 0 || m.phase != running || !m.progressed || m.finishing || len(m.doneRanks) > 0 {
		return nil
	}
	survivors := make([]int, m.world)
	for i := range survivors {
		survivors[i] = i
	}
	m.joiners -= n
	m.joinersReady -= n
	at := m.genStep + admitAhead
	from := m.world
	m.carryOver(survivors)
	m.newGeneration(m.world + n)
	m.growFrom, m.growAt = from, at
	return []Decision{Regroup{Gen: m.gen, WorldSize: m.world, Survivors: survivors, Admit: n, Grow: true, AtStep: at}}
}

// admitAhead: how many steps after the latest reported one a grow takes
// effect. Reports reach the agent in microseconds and a step takes
// milliseconds or more, so every member learns of the switch before it.
const admitAhead = 2

func (m *Machine) recovered(now time.Duration, firstStep int) Decision {
	m.recovering = false
	rb := 0
	if firstStep >= 0 && m.stepAtFault >= 0 && firstStep <= m.stepAtFault {
		rb = m.stepAtFault - firstStep + 1
	}
	return Recovered{Gen: m.gen, WorldSize: m.world, Took: now - m.faultAt, RolledBack: rb}
}

func (m *Machine) exited(now time.Duration, ev Exited) []Decision {
	if ev.Gen < m.gen {
		ev = m.carry(ev)
	}
	if ev.Gen != m.gen || (m.phase != running && m.phase != starting) {
		return nil // a stale generation, or the consequence of a stop
	}
	clean := ev.Code == 0 && ev.Signal == ""
	if !clean && m.cfg.Live && m.finishing && ev.Signal != SignalNodeLost {
		// Every rank had committed the last step (the SDK says finished only
		// once all agree): this death is in the teardown. A regroup or a
		// restart would train again, from the last checkpoint, or from
		// scratch without one. Said in the outcome instead.
		if m.afterFinish == "" {
			what := fmt.Sprintf("exit code %d", ev.Code)
			if ev.Signal != "" {
				what = ev.Signal
			}
			m.afterFinish = fmt.Sprintf("rank %d exited (%s) after training finished", ev.Rank, what)
		}
		clean = true
	}
	if clean {
		if len(m.doneRanks) == 0 {
			m.firstDone, m.firstDoneAt = ev.Rank, now
		}
		m.doneRanks[ev.Rank] = true
		if len(m.doneRanks) == m.world {
			m.phase = done
			if m.afterFinish != "" {
				return []Decision{Finish{Outcome: Succeeded, Reason: "all ranks ended; " + m.afterFinish}}
			}
			return []Decision{Finish{Outcome: Succeeded, Reason: "all ranks exited 0"}}
		}
		if m.growFrom > 0 && m.membersDone() {
			// The job ended before the step its replacements were to join
			// after (a fault in the last few steps): they would wait for
			// the members forever. The job is done; they are stopped.
			m.phase = stopping
			m.finishAfter = &Finish{Outcome: Succeeded, Reason: fmt.Sprintf(
				"all ranks exited 0 before step %d, after which %d replacement(s) were to join", m.growAt, m.world-m.growFrom)}
			return []Decision{Stop{Gen: m.gen, Reason: "replacements not needed"}}
		}
		return nil
	}
	detail := fmt.Sprintf("exit code %d", ev.Code)
	if ev.Signal != "" {
		detail = ev.Signal
	}
	sig := detail
	if ev.LastError != "" {
		detail += ": " + ev.LastError
		sig += ": " + ev.LastError
	}
	kind := FaultExit
	if ev.Signal == SignalNodeLost {
		kind, detail = FaultNodeLost, ev.LastError
	}
	return m.failObserved(now, Fault{Gen: m.gen, Kind: kind, Rank: ev.Rank, Also: ev.Also, Detail: detail, Step: m.jobStep},
		sig, observed{foreign: ev.Injected || foreignSignal[ev.Signal], nodeLost: ev.Signal == SignalNodeLost,
			output: ev.Output, newOutput: ev.NewOutput})
}

// carry renumbers an exit reported under an older generation into the
// current one when live regroups carried that rank over: it died after the
// regroup was decided and before its node moved it, so its exit could only
// name the generation it was in. Dropped as stale, the new generation would
// wait for a member that is gone (a rendezvous that never completes, taken
// for a hang), and a node whose members had all gone would not know the
// generation the regroup came from. Not carried: stale.
func (m *Machine) carry(ev Exited) Exited {
	rank, also := ev.Rank, ev.Also
	for g := ev.Gen; g < m.gen; g++ {
		moved, ok := m.carried[g][rank]
		if !ok {
			return ev
		}
		rank = moved
		var next []int
		for _, r := range also {
			if moved, ok := m.carried[g][r]; ok {
				next = append(next, moved)
			}
		}
		also = next
	}
	ev.Gen, ev.Rank, ev.Also = m.gen, rank, also
	return ev
}

// RankNow is the rank under which an exit reported as generation gen's rank
// will be counted (see carry): rank itself unless a regroup renumbered it.
func (m *Machine) RankNow(gen, rank int) int {
	if gen < m.gen {
		if ev := m.carry(Exited{Gen: gen, Rank: rank}); ev.Gen == m.gen {
			return ev.Rank
		}
	}
	return rank
}

// carryOver records that survivors[i], of the current generation, becomes
// rank i of the next one.
func (m *Machine) carryOver(survivors []int) {
	if m.carried == nil {
		m.carried = map[int]map[int]int{}
	}
	moved := make(map[int]int, len(survivors))
	for i, r := range survivors {
		moved[r] = i
	}
	m.carried[m.gen] = moved
	// An exit is late by the time a regroup takes to reach its node: a
	// few generations back at most (a map per regroup would grow without end).
	delete(m.carried, m.gen-carriedGens)
}

const carriedGens = 8

// membersDone: every member of a pending grow has exited 0.
func (m *Machine) membersDone() bool {
	for r := 0; r < m.growFrom; r++ {
		if !m.doneRanks[r] {
			return false
		}
	}
	return true
}

// sameFailure: sig repeats last. The same exit with an error text that was
// not read (the worker's last lines reached the launcher after its exit was
// handled, on a loaded machine) repeats one with a text, and the other way
// round: what is known agrees. Two different texts are different failures.
func sameFailure(last, sig string) bool {
	if sig == last {
		return true
	}
	lb, _, lText := strings.Cut(last, ": ")
	sb, _, sText := strings.Cut(sig, ": ")
	return last != "" && lb == sb && lText != sText
}

// peerConsequence: the error is a collective broken by a peer that went
// away, the consequence of another rank's failure, not a cause.
func peerConsequence(sig string) bool {
	return strings.Contains(sig, "Connection closed by peer") || strings.Contains(sig, "Connection reset by peer")
}

// foreignSignal lists the deaths a program does not cause itself: signals
// that another process (a person, a scheduler, the OOM killer, --chaos)
// sends, and a lost node. A program's own failures are its exit codes and
// the signals its own execution raises (SIGSEGV, SIGABRT, SIGBUS, SIGFPE,
// SIGILL, SIGPIPE, ...).
var foreignSignal = map[string]bool{
	"SIGKILL": true, "SIGTERM": true, "SIGINT": true, "SIGHUP": true, "SIGQUIT": true,
	"SIGUSR1": true, "SIGUSR2": true, SignalNodeLost: true,
}

// observed is what is known of a failed generation besides its progress.
type observed struct {
	foreign           bool // the failure is not the program's own
	nodeLost          bool // a node went away: what it printed is not known
	output, newOutput int  // see Exited
	stopped           bool // a hang whose rank was seen stopped (ProcState)
}

func (m *Machine) tick(now time.Duration) []Decision {
	if m.phase != running {
		return nil
	}
	if len(m.doneRanks) > 0 || m.finishing {
		if now-m.firstDoneAt <= m.cfg.ExitGrace {
			return nil
		}
		var left []int
		for r := 0; r < m.world; r++ {
			if !m.doneRanks[r] {
				left = append(left, r)
			}
		}
		m.phase = stopping
		m.finishAfter = &Finish{Outcome: Failed, Reason: fmt.Sprintf(
			"ranks %v still running %s after rank %d finished (hung at exit?)", left, m.cfg.ExitGrace, m.firstDone)}
		return []Decision{Stop{Gen: m.gen, Reason: "exit timeout"}}
	}
	w := &m.cfg.Watchdog
	if w.Armed() {
		if stalled, silent := w.Stalled(now); stalled {
			if m.probes(silent) {
				if m.probing || now < m.busyUntil {
					return nil
				}
				m.probing = true
				return []Decision{Probe{Gen: m.gen}}
			}
			return m.hang(now, silent, "")
		}
		return nil
	}
	if !m.cfg.ProgressExpected && !m.everProgress {
		return nil // nothing tells us what progress looks like
	}
	if since := now - m.launchedAt; since > m.startupTimeout() {
		return m.fail(now, Fault{Gen: m.gen, Kind: FaultHang, Rank: -1,
			Detail: fmt.Sprintf("no progress %.1fs after launch", since.Seconds()),
			Step:   m.jobStep, Silent: since}, "startup hang")
	}
	return nil
}

// probes says whether a stall of this length is first checked for busy
// ranks (Config.ProbeBusy) rather than called a hang at once.
func (m *Machine) probes(silent time.Duration) bool {
	return m.cfg.ProbeBusy && m.cfg.Watchdog.Timeout == 0 && silent < m.cfg.BusyLimit
}

func (m *Machine) hang(now, silent time.Duration, why string) []Decision {
	w := &m.cfg.Watchdog
	return m.fail(now, Fault{Gen: m.gen, Kind: FaultHang, Rank: m.laggingRank(),
		Detail: fmt.Sprintf("no progress for %.1fs (threshold %.1fs)%s", silent.Seconds(), w.Threshold().Seconds(), why),
		Step:   m.jobStep, Silent: silent}, "hang")
}

func (m *Machine) probed(now time.Duration, ev Probed) []Decision {
	if ev.Gen != m.gen || m.phase != running || !m.probing {
		return nil
	}
	m.probing = false
	stalled, silent := m.cfg.Watchdog.Stalled(now)
	if !stalled || len(m.doneRanks) > 0 || m.finishing {
		return nil // progress or an exit came meanwhile
	}
	busy := ev.Busy
	if m.growFrom > 0 {
		// Replacements waiting for a grow use CPU (importing, building
		// their model, polling for the group) but do none of the job's
		// work: they wait for the members, so only members' CPU says the
		// stall is work.
		busy = slices.DeleteFunc(slices.Clone(busy), func(r int) bool { return r >= m.growFrom })
	}
	if len(busy) == 0 {
		return m.hang(now, silent, "")
	}
	if silent >= m.cfg.BusyLimit {
		return m.hang(now, silent, fmt.Sprintf("; ranks %v busy for longer than %s", busy, m.cfg.BusyLimit))
	}
	// Look again one threshold later: a rank that stops using CPU while
	// the job still stalls is hung then.
	m.busyUntil = now + m.cfg.Watchdog.Threshold()
	if m.busyNoted {
		return nil
	}
	m.busyNoted = true
	return []Decision{Busy{Gen: m.gen, Ranks: slices.Clone(busy), Silent: silent}}
}

// procState tracks how long each rank has been seen stopped, and calls a
// hang once one has been stopped for longer than the hang threshold (the
// longest-stopped rank is named).
func (m *Machine) procState(now time.Duration, ev ProcState) []Decision {
	if ev.Gen != m.gen {
		return nil
	}
	since := make(map[int]time.Duration, len(ev.Stopped))
	for _, r := range ev.Stopped {
		if t, ok := m.stoppedSince[r]; ok {
			since[r] = t
		} else {
			since[r] = now
		}
	}
	m.stoppedSince = since
	if m.phase != running || len(m.doneRanks) > 0 || m.finishing {
		return nil // starting, recovering, or tearing down: not training
	}
	rank, longest := -1, time.Duration(0)
	for _, r := range ev.Stopped {
		if d := now - since[r]; rank < 0 || d > longest {
			rank, longest = r, d
		}
	}
	th := m.cfg.Watchdog.Threshold()
	if rank < 0 || longest <= th {
		return nil
	}
	return m.failObserved(now, Fault{Gen: m.gen, Kind: FaultHang, Rank: rank,
		Detail: fmt.Sprintf("stopped for %.1fs (threshold %.1fs)", longest.Seconds(), th.Seconds()),
		Step:   m.jobStep, Silent: longest}, "hang", observed{stopped: true})
}

func (m *Machine) startupTimeout() time.Duration {
	if m.cfg.StartupTimeout > 0 {
		return m.cfg.StartupTimeout
	}
	if m.maxStartup == 0 {
		return InitialStartupTimeout
	}
	return max(MinStartupTimeout, 4*m.maxStartup)
}

// laggingRank names the one rank whose last step is behind all others (it
// never reached the collective the others wait in), or -1.
func (m *Machine) laggingRank() int {
	if len(m.rankStep) < m.world || m.world < 2 {
		return -1
	}
	low, lowRank, count := 0, -1, 0
	for r, s := range m.rankStep {
		switch {
		case lowRank == -1 || s < low:
			low, lowRank, count = s, r, 1
		case s == low:
			count++
		}
	}
	if count != 1 {
		return -1
	}
	return lowRank
}

// fail records f and stops the generation; whether a new one follows is
// decided here, and carried out when the stop completes.
func (m *Machine) fail(now time.Duration, f Fault, signature string) []Decision {
	return m.failObserved(now, f, signature, observed{})
}

// failObserved is fail with what was observed of the generation. A crash
// loop is the same deterministic failure in generations that did no work:
//   - A generation that reported progress did work: the count starts over.
//   - A failure that is not the program's own (foreign) says nothing about
//     the program once it is past startup, and leaves the count as it is.
//     Before startup completed it counts, so a job killed during startup
//     every time still ends. Startup is complete at the first progress
//     report or, for a job that reports none, at its first line of output.
//   - The program's own failure, in a job that reports no progress, is a
//     repeat when the error is the same and the generation printed nothing
//     that no earlier generation had printed (it got no further, and
//     nowhere else). A generation with new output starts a new series, of
//     which it is the first: its own failure is what the next must repeat.
func (m *Machine) failObserved(now time.Duration, f Fault, signature string, o observed) []Decision {
	noReports := !m.cfg.ProgressExpected && !m.everProgress
	switch {
	case m.progressed:
		m.lastSig = "" // a generation that worked starts the count over
		m.sameFailures = 0
	case o.foreign && noReports && (o.output > 0 || o.nodeLost):
		// past startup, and not the program's doing: no verdict. A lost
		// node cannot say what it printed; losing one is no verdict on
		// the program either.
	case sameFailure(m.lastSig, signature) && !(noReports && o.newOutput > 0):
		m.sameFailures++
		if len(signature) > len(m.lastSig) && !peerConsequence(signature) {
			m.lastSig = signature // the error text, where one of them lost it
		}
	case m.lastSig != "" && peerConsequence(signature) && !(noReports && o.newOutput > 0):
		// A peer's broken connection seen before the rank that caused it
		// (which exited too, printing nothing to tell): the same failure
		// as before, not a new series.
		m.sameFailures++
	default:
		m.sameFailures = 1
		m.lastSig = signature
	}

	m.phase = stopping
	out := []Decision{f}
	recover := false
	switch {
	case m.sameFailures >= m.cfg.CrashLoopLimit:
		m.finishAfter = &Finish{Outcome: CrashLoop, Reason: fmt.Sprintf(
			"crash loop: %d generations in a row failed without progress (rank %d, %s)", m.sameFailures, f.Rank, f.Detail),
			NoProgress: m.sameFailures}
	case m.restarts >= m.cfg.MaxRestarts:
		m.finishAfter = &Finish{Outcome: Failed, Reason: fmt.Sprintf(
			"max restarts (%d) exhausted; last fault: rank %d %s", m.cfg.MaxRestarts, f.Rank, f.Detail)}
	default:
		m.restarts++
		if !m.recovering {
			// A fault during recovery keeps the first fault's clock and step:
			// the job has been down since then.
			m.faultAt = now
			m.stepAtFault = m.jobStep
		}
		m.recovering = true
		recover = true
	}
	if recover && m.cfg.Live {
		switch {
		case f.Kind == FaultExit || f.Kind == FaultNodeLost:
			return append(out, m.regroup(append([]int{f.Rank}, f.Also...), nil)...)
		case f.Kind == FaultCollective:
			// A rank stopped before the group formed makes the
			// others' collective fail with no one named: it must not be
			// kept as a survivor, or the next group hangs on it too.
			m.phase, m.diagnosing = diagnosing, f.Kind
			return append(out, Diagnose{Gen: m.gen, StateOnly: true})
		case f.Kind == FaultHang && o.stopped:
			// The stopped process is the culprit, seen directly.
			return append(out, m.regroup([]int{f.Rank}, []int{f.Rank})...)
		case f.Kind == FaultGPU || f.Kind == FaultStraggler:
			return append(out, m.regroup([]int{f.Rank}, []int{f.Rank})...)
		case f.Kind == FaultHang:
			// Survivors blocked in a collective look like the hung rank
			// (same step), so steps cannot tell whom to kill: ask for the
			// process state.
			m.phase, m.diagnosing = diagnosing, f.Kind
			return append(out, Diagnose{Gen: m.gen})
		}
	}
	return append(out, Stop{Gen: m.gen, Reason: string(f.Kind)})
}

// regroup forms the next generation from the current one's survivors (all
// ranks but dead), with replacements when configured. Too few survivors:
// a full restart instead.
func (m *Machine) regroup(dead, kill []int) []Decision {
	gone := map[int]bool{}
	for _, r := range dead {
		gone[r] = true
	}
	var survivors []int
	for r := 0; r < m.world; r++ {
		if !gone[r] && !m.doneRanks[r] {
			survivors = append(survivors, r)
		}
	}
	if len(survivors) == 0 || len(survivors) < max(1, m.cfg.MinWorld) {
		return m.restartAll()
	}
	spawn := 0
	if m.cfg.Replace {
		spawn = max(0, m.target()-len(survivors)-m.joiners)
		m.joiners += spawn
	}
	// Joiners already waiting come in with this regroup.
	admit := min(m.joinersReady, m.target()-len(survivors))
	m.joiners -= admit
	m.joinersReady -= admit
	m.carryOver(survivors)
	m.newGeneration(len(survivors) + admit)
	return []Decision{Regroup{Gen: m.gen, WorldSize: m.world, Survivors: survivors, Admit: admit, Spawn: spawn, Kill: kill}}
}

// restartAll stops the whole generation; the next is launched in full once
// it has stopped (restart mode's recovery, live mode's fallback).
func (m *Machine) restartAll() []Decision {
	m.phase = stopping
	m.joiners, m.joinersReady = 0, 0 // the agent discards them with the generation
	return []Decision{Stop{Gen: m.gen, Reason: "restart"}}
}

func (m *Machine) interrupt(ev Interrupt) []Decision {
	return m.endJob(&Finish{Outcome: Interrupted, Reason: "stopped by " + ev.Signal}, "interrupted")
}

// endJob ends the job with fin: at once when nothing runs, else after the
// generation has stopped (stopping it first with reason).
func (m *Machine) endJob(fin *Finish, reason string) []Decision {
	switch m.phase {
	case idle:
		m.phase = done
		return []Decision{*fin}
	case starting, running, diagnosing:
		m.phase = stopping
		m.finishAfter = fin
		return []Decision{Stop{Gen: m.gen, Reason: reason}}
	case stopping:
		m.finishAfter = fin // still waiting for the stop; then finish
	}
	return nil
}

func (JoinerReady) input() {}
func (JoinerLost) input()  {}

func (SpawnJoiners) decision() {}
