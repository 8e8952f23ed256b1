// Package launcher starts, watches and stops the worker processes of each
// generation on one node. It reports what happens to them as Events; it
// decides nothing (that is the policy's job).
//
// Workers run in their own process groups with the parent-death signal set,
// so none outlives the agent. For `python SCRIPT` commands the launcher keeps a
// pool of standby workers that have already imported torch and wait for their
// rank assignment, taking the import off the critical path of a restart.
package launcher

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/atomicfile"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/health"
)

// Config is what the launcher needs to run workers.
type Config struct {
	Command       []string
	RunID         string
	RunDir        string
	MaxRestarts   int
	SDKDir        string         // directory put on workers' PYTHONPATH (holds bulsajo/)
	ProgressRegex *regexp.Regexp // optional: progress read from worker output
	Standby       bool           // keep pre-started workers ready for the next generation
	StandbyCount  int            // how many (the node's slots)
	Preload       string         // modules a standby imports; "" = the shim's default
	StopGrace     time.Duration  // SIGTERM to SIGKILL
	Console       *console.Console
	Live          bool   // workers use the SDK's live recovery (BULSAJO_RECOVERY=live)
	Dir           string // workers' working directory ("" = this process's)
	// Env is added to the workers' environment (where the caller's does
	// not set the variable already).
	Env map[string]string
	// GPUs on this node when GPU health is on (0: off); see gpus.go.
	GPUs int
}

// Events the launcher reports.
type (
	Event interface{ agentEvent() }
	// Launched: every worker of Gen has started.
	Launched struct {
		Gen int
		At  time.Time
		// World is the world size launched when it differs from the one
		// asked for (a multi-node job short of nodes); 0 otherwise.
		World int
	}
	// Exited: a worker of Gen ended.
	Exited struct {
		Gen, Rank, Code int
		Signal          string
		LastError       string // the error it died of (output.go), if any
		Log             string // its rank log (the full output)
		At              time.Time
		Also            []int // other ranks gone with this one (a lost node)
		// Output lines this generation's workers printed before this exit,
		// NewOutput of them lines no earlier generation printed (outputcount.go).
		Output, NewOutput int
	}
	// Progress: a worker reported a step (SDK or output regex).
	Progress struct {
		Gen, Rank, Step int
		At              time.Time
	}
	// RendezvousReady: rank 0 (on this node) listens on MASTER_PORT, or
	// did not within the cap (Listening false: the script meets some other
	// way). Multi-node only.
	RendezvousReady struct {
		Gen       int
		Listening bool
		At        time.Time
	}
	// Stopped: every worker of Gen has been reaped.
	Stopped struct {
		Gen int
		At  time.Time
	}
)

func (Launched) agentEvent()        {}
func (RendezvousReady) agentEvent() {}
func (Exited) agentEvent()          {}
func (Progress) agentEvent()        {}
func (Stopped) agentEvent()         {}

// ErrClosed is returned by calls on a closed launcher.
var ErrClosed = errors.New("agent: closed")

// Launcher runs the workers of one node.
type Launcher struct {
	cfg          Config
	base         []string // worker base environment
	shim         []string // command through the standby shim, or nil
	events       chan Event
	quit         chan struct{}
	progress     *net.UnixConn
	progressAddr string
	ctl          *control

	started       sync.Map // pids of every process started here (removeEmptyStacks)
	mu            sync.Mutex
	gens          map[int]*generation
	maxGen        int // the newest generation started here
	stopFirst     int // a generation asked to stop before it started (0: none)
	standbys      []*worker
	joiners       []*worker // live mode: replacements waiting to be admitted
	standbyFailed int
	refilling     bool     // a refillStandbys is running
	zyg           *zygote  // forks standbys (zygote.go); nil until first used
	zygoteOff     bool     // BULSAJO_ZYGOTE=0, or the zygote failed
	importTmp     string   // the shims' temporary directory while they import (shimEnv)
	book          lineBook // lines printed, by generation (outputcount.go)
	noStagger     atomic.Bool
	preloaded     sync.Map // pids of shims whose preload is done (listen.go)
	imports       importTracker
	noLibuv       atomic.Bool  // a shim found torch built without libuv (torchenv.go)
	drained       map[int]bool // GPUs taken out (gpus.go)
	closed        bool
	waiters       sync.WaitGroup
	faults        genFaults    // which generations have a dead worker (output.go)
	lastProgress  atomic.Int64 // unix ns of the latest Progress
}

type generation struct {
	gen       int
	workers   []*worker
	remaining int
	stopping  bool
	killTimer *time.Timer
}

// New creates the launcher and its local progress endpoint.
func New(cfg Config) (*Launcher, error) {
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	a := &Launcher{
		cfg:    cfg,
		events: make(chan Event, 4096),
		quit:   make(chan struct{}),
		gens:   map[int]*generation{},
	}
	// A Linux abstract socket: no path length limit, nothing left on disk.
	a.progressAddr = fmt.Sprintf("@bulsajo-%s-%d-%s", cfg.RunID, os.Getpid(), socketNonce)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: a.progressAddr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("agent: progress endpoint: %w", err)
	}
	a.progress = conn
	if err := a.startControl(); err != nil {
		conn.Close()
		return nil, err
	}
	a.base = a.baseEnv()
	if cfg.Standby {
		a.shim = shimArgs(cfg.Command, cfg.SDKDir)
	}
	a.zygoteOff = os.Getenv("BULSAJO_ZYGOTE") == "0"
	for _, d := range []string{"logs", "errors", "pids"} {
		if err := os.MkdirAll(filepath.Join(cfg.RunDir, d), 0o755); err != nil {
			conn.Close()
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	if a.shim != nil {
		// In the run dir, not /tmp: an agent killed with SIGKILL never
		// reaches Close, and what it leaves is then with its logs.
		if d, err := os.MkdirTemp(cfg.RunDir, "imports-"); err == nil {
			a.importTmp = d
		}
	}
	go a.readProgress()
	return a, nil
}

// shimEnv is the environment a shim starts with (a standby, the zygote).
//
// BULSAJO_IMPORT_TMPDIR: what the preload's imports make in the temporary
// directory goes to one of ours (RUN_DIR/imports-*), removed at Close. torch 2.x's import makes
// a directory there (torch.distributed.nn.jit.instantiator) that only a
// normal exit removes, and a worker killed by a fault, a standby discarded
// and the zygote end with SIGKILL: /tmp gained one for each. The script's
// own temporary files go where they would without bulsajo.
func (a *Launcher) shimEnv(extra ...string) []string {
	env := append(a.base[:len(a.base):len(a.base)], extra...)
	if a.cfg.Preload != "" {
		env = append(env, "BULSAJO_PRELOAD="+a.cfg.Preload)
	}
	if a.importTmp != "" {
		env = append(env, "BULSAJO_IMPORT_TMPDIR="+a.importTmp)
	}
	return env
}

// Events is the stream of what happens to workers.
func (a *Launcher) Events() <-chan Event { return a.events }

func (a *Launcher) emit(e Event) {
	if p, ok := e.(Progress); ok {
		a.lastProgress.Store(p.At.UnixNano())
	}
	select {
	case a.events <- e:
	case <-a.quit:
	}
}

// StartGeneration starts (or activates standbys for) every local slot of
// spec. Rank 0 goes first, and the others once its store listens (listen.go).
func (a *Launcher) StartGeneration(spec GenerationSpec) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if err := os.MkdirAll(filepath.Dir(a.errorFile(spec.Gen, 0)), 0o755); err != nil {
		a.mu.Unlock()
		return fmt.Errorf("agent: %w", err)
	}
	// A full (re)start: replacements waiting for a live regroup are moot.
	for _, w := range a.joiners {
		w.discard()
	}
	a.joiners = nil
	// remaining counts every slot from the start, so that an early exit of
	// the first ranks cannot look like the end of the generation.
	g := &generation{gen: spec.Gen, remaining: len(spec.Ranks)}
	a.gens[spec.Gen] = g
	a.maxGen = max(a.maxGen, spec.Gen)
	// Its stop came first (a Ctrl-C as the launch was handed over): none of
	// its ranks start, and it is Stopped at once.
	g.stopping = spec.Gen == a.stopFirst
	// Start missing shim workers now, all together, so their imports overlap
	// while rank 0 comes up; they are activated below like standbys.
	for a.shim != nil && len(a.standbys) < len(spec.Ranks) {
		w, err := a.startProcess(a.shim, false, 0, -1, nil)
		if err != nil {
			break
		}
		a.standbys = append(a.standbys, w)
	}
	a.mu.Unlock()

	order := make([]int, 0, len(spec.Ranks))
	for slot, r := range spec.Ranks {
		if r == 0 {
			order = append([]int{slot}, order...)
		} else {
			order = append(order, slot)
		}
	}
	for i, slot := range order {
		if i == 1 && a.shim != nil && spec.Ranks[order[0]] == 0 && !a.noStagger.Load() {
			a.mu.Lock()
			w0 := g.workers[len(g.workers)-1]
			a.mu.Unlock()
			if ok, decided := a.waitStore(g, w0, spec.MasterPort); !ok && decided {
				a.noStagger.Store(true) // this script meets some other way
			}
		}
		err := a.startSlot(g, spec, slot, a.placeGPU(a.rankEnv(spec, slot), slot), false)
		if err == errStopping {
			// Stopped while rank 0 came up (an interrupt, the coordinator):
			// the rest never start, and Stopped follows once rank 0's gone.
			a.neverStart(g, len(order)-i)
			return nil
		}
		if err != nil {
			a.neverStart(g, len(order)-i)
			a.StopGeneration(spec.Gen, 0)
			return err
		}
	}
	a.emit(Launched{Gen: spec.Gen, At: time.Now()})
	if a.shim != nil {
		go a.refillStandbys()
	}
	if spec.GroupWorldSize > 1 && spec.Ranks[order[0]] == 0 {
		// Other nodes start their ranks when told rank 0's store listens.
		go func() {
			// Long: "never listens" must mean the script meets some other
			// way, not that torch took a while to import. The coordinator
			// stops holding the other nodes back long before this.
			ok := waitListening(spec.MasterPort, 30*time.Second)
			a.emit(RendezvousReady{Gen: spec.Gen, Listening: ok, At: time.Now()})
		}()
	}
	return nil
}

// errStopping: a slot of a generation already being stopped is not started.
var errStopping = errors.New("agent: generation stopping")

// neverStart takes n slots that will never run off g's count; the
// generation has stopped when none is left running.
func (a *Launcher) neverStart(g *generation, n int) {
	a.mu.Lock()
	g.remaining -= n
	done := g.remaining == 0 && a.gens[g.gen] == g
	if done {
		if g.killTimer != nil {
			g.killTimer.Stop()
		}
		delete(a.gens, g.gen)
		a.faults.forget(g.gen)
	}
	a.mu.Unlock()
	if done {
		a.emit(Stopped{Gen: g.gen, At: time.Now()})
	}
}

// rendezvousWait caps how long the other ranks wait for rank 0's store,
// from the end of rank 0's preload.
const rendezvousWait = 2 * time.Second

// startSlot starts the worker of one slot with env, from a waiting shim
// process when there is one. join marks a live-mode replacement.
func (a *Launcher) startSlot(g *generation, spec GenerationSpec, slot int, env map[string]string, join bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if g.stopping {
		return errStopping
	}
	rank := spec.Ranks[slot]
	log := a.openRankLog(spec.Gen, rank)
	w := a.takeStandby()
	if w == nil || w.activateAs(spec.Gen, rank, env, log) != nil {
		var err error
		if w, err = a.spawn(spec.Gen, rank, env, log); err != nil {
			if log != nil {
				log.Close()
			}
			return err
		}
	}
	w.reassign(Assignment{Type: "generation", Gen: spec.Gen, Rank: rank, WorldSize: spec.WorldSize,
		MasterAddr: spec.MasterAddr, MasterPort: spec.MasterPort, Join: join})
	w.localRank, _ = strconv.Atoi(env["LOCAL_RANK"])
	if gpu, err := strconv.Atoi(env["BULSAJO_GPU"]); err == nil {
		w.localRank = gpu
	}
	g.workers = append(g.workers, w)
	a.writePID(rank, w.pid)
	return nil
}

// writePID records which process holds rank now, for operators and tools
// (py-spy, a fault script): a standby's /proc/PID/environ predates its rank.
func (a *Launcher) writePID(rank, pid int) {
	writePIDFile(filepath.Join(a.cfg.RunDir, "pids", "rank"+strconv.Itoa(rank)), pid)
}

// writePIDFile replaces path through a rename: a tool that reads it while a
// grow rewrites every rank's file sees the old pid or the new, never an
// empty file. Not synced: after a crash the file names a dead process anyway.
func writePIDFile(path string, pid int) {
	atomicfile.Write(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// Prewarm fills the standby pool before any generation runs here: a spare
// that takes over then skips the interpreter's start and torch's import.
func (a *Launcher) Prewarm() {
	if a.shim != nil {
		go a.refillStandbys()
	}
}

// StopGeneration stops every worker of gen: SIGTERM (and SIGCONT, so a
// stopped worker can act on it), then SIGKILL after grace. Stopped follows
// once all are reaped.
func (a *Launcher) StopGeneration(gen int, grace time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.gens[gen]
	if g == nil {
		if gen > a.maxGen {
			a.stopFirst = gen
		}
		return
	}
	if g.stopping {
		// Asked again without grace (a second Ctrl-C): kill now rather
		// than wait out the first request's grace.
		if grace <= 0 {
			if g.killTimer != nil {
				g.killTimer.Stop()
			}
			a.killGeneration(g)
		}
		return
	}
	g.stopping = true
	if g.remaining == 0 {
		delete(a.gens, gen)
		go a.emit(Stopped{Gen: gen, At: time.Now()})
		return
	}
	sig := syscall.SIGTERM
	if grace <= 0 {
		sig = syscall.SIGKILL
	}
	for _, w := range g.workers {
		// What a stopping generation prints (survivors' tracebacks from the
		// broken collective) goes to the rank logs only: the terminal keeps
		// the fault line and the failing rank's own error.
		w.quiet.Store(true)
		if !w.hasExited() {
			signalGroup(w.pid, sig)
			signalGroup(w.pid, syscall.SIGCONT)
		}
	}
	if grace > 0 {
		g.killTimer = time.AfterFunc(grace, func() { a.killGeneration(g) })
	}
}

func (a *Launcher) killGeneration(g *generation) {
	for _, w := range g.workers {
		if !w.hasExited() {
			signalGroup(w.pid, syscall.SIGKILL)
		}
	}
}

// Signal delivers sig to one worker process (for fault injection).
func (a *Launcher) Signal(gen, rank int, sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g := a.gens[gen]; g != nil {
		for _, w := range g.workers {
			if w.rank == rank && !w.hasExited() {
				return syscall.Kill(w.pid, sig)
			}
		}
	}
	return fmt.Errorf("agent: no live rank %d in generation %d", rank, gen)
}

// LiveRanks lists the ranks of gen whose process is running.
func (a *Launcher) LiveRanks(gen int) []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int
	if g := a.gens[gen]; g != nil && !g.stopping {
		for _, w := range g.workers {
			if !w.hasExited() {
				out = append(out, w.rank)
			}
		}
	}
	return out
}

// Culprit names the rank most likely to blame for a hang of gen, and why: a
// stopped process first; then one that printed an error and is slow to exit;
// else, when sampleCPU, the one rank whose CPU time
// moves while the others' does not (it spins while they wait for it), or the
// reverse.
func (a *Launcher) Culprit(gen int, sampleCPU bool) (int, string) {
	a.mu.Lock()
	var ws []*worker
	if g := a.gens[gen]; g != nil {
		ws = append(ws, g.workers...)
	}
	a.mu.Unlock()
	first := make([]health.ProcStat, len(ws))
	for i, w := range ws {
		st, err := health.ReadProcStat(w.pid)
		if err != nil {
			continue
		}
		if st.Stopped() {
			return w.rank, "process stopped (state T)"
		}
		first[i] = st
	}
	if rank, why := a.dyingRank(ws); rank >= 0 {
		return rank, why
	}
	if !sampleCPU {
		return -1, ""
	}
	time.Sleep(200 * time.Millisecond)
	var moving, still []int
	for i, w := range ws {
		st, err := health.ReadProcStat(w.pid)
		if err != nil {
			continue
		}
		if st.CPUTicks > first[i].CPUTicks {
			moving = append(moving, w.rank)
		} else {
			still = append(still, w.rank)
		}
	}
	switch {
	case len(moving) == 1 && len(still) > 0:
		return moving[0], "only rank using CPU (busy while the others wait)"
	case len(still) == 1 && len(moving) > 0:
		return still[0], "only rank not using CPU"
	}
	return -1, ""
}

// Busy returns the ranks of gen whose process used CPU over a short sample
// (at least 10% of a core), for the policy's check of a stall
// (policy.Config.ProbeBusy). None when a rank is stopped: a stopped rank is
// the hang, whatever the others do.
func (a *Launcher) Busy(gen int) []int {
	a.mu.Lock()
	var ws []*worker
	if g := a.gens[gen]; g != nil {
		ws = append(ws, g.workers...)
	}
	a.mu.Unlock()
	first := make([]health.ProcStat, len(ws))
	ok := make([]bool, len(ws))
	for i, w := range ws {
		st, err := health.ReadProcStat(w.pid)
		if err != nil {
			continue
		}
		if st.Stopped() {
			return nil
		}
		first[i], ok[i] = st, true
	}
	const sample = 200 * time.Millisecond
	time.Sleep(sample)
	var busy []int
	for i, w := range ws {
		st, err := health.ReadProcStat(w.pid)
		if err != nil || !ok[i] {
			continue
		}
		if st.Stopped() {
			return nil
		}
		// CPU ticks are 10 ms: 2 of them in 200 ms is 10% of a core, more
		// than the background threads of a process blocked in a collective.
		// On a loaded machine a working process may get less than that:
		// its main thread runnable (R) or in disk I/O (D, an fsync) says
		// it works too; one blocked in a collective sleeps (S).
		if st.CPUTicks >= first[i].CPUTicks+2 || working(first[i].State) || working(st.State) {
			busy = append(busy, w.rank)
		}
	}
	sort.Ints(busy)
	return busy
}

// Stopped returns the ranks of gen whose process is stopped now (SIGSTOP,
// a tracer): read from /proc on every tick of the supervisor, so cheap (one
// small file per worker, no sampling).
func (a *Launcher) Stopped(gen int) []int {
	a.mu.Lock()
	var ws []*worker
	if g := a.gens[gen]; g != nil {
		ws = append(ws, g.workers...)
	}
	a.mu.Unlock()
	var out []int
	for _, w := range ws {
		if w.hasExited() {
			continue
		}
		if st, err := health.ReadProcStat(w.pid); err == nil && st.Stopped() {
			out = append(out, w.rank)
		}
	}
	return out
}

func working(state byte) bool { return state == 'R' || state == 'D' }

// Close kills every worker and standby at once and waits for them.
func (a *Launcher) Close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	for _, g := range a.gens {
		for _, w := range g.workers {
			signalGroup(w.pid, syscall.SIGCONT)
			signalGroup(w.pid, syscall.SIGKILL)
		}
	}
	for _, w := range append(a.standbys, a.joiners...) {
		w.discard()
	}
	if a.zyg != nil {
		a.zyg.kill()
	}
	a.mu.Unlock()
	a.waiters.Wait()
	close(a.quit)
	a.progress.Close()
	a.ctl.ln.Close()
	a.removeEmptyStacks()
	if a.importTmp != "" {
		os.RemoveAll(a.importTmp) // every shim has ended
	}
}

// removeEmptyStacks deletes the stack-dump files (logs/stacks-*.txt) that
// stayed empty: the SDK opens one when a regroup begins and removes it if
// the regroup ends in time, but a process killed meanwhile (the usual end
// of a rank that a fault took) cannot. Only files of processes started
// here (the name says the pid): a run dir shared by several nodes holds
// others' files, maybe of a regroup still going on. A file with stacks in
// it is kept.
func (a *Launcher) removeEmptyStacks() {
	if a.cfg.RunDir == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(a.cfg.RunDir, "logs", "stacks-gen*-pid*.txt"))
	for _, f := range files {
		_, pid, _ := strings.Cut(strings.TrimSuffix(filepath.Base(f), ".txt"), "-pid")
		n, err := strconv.Atoi(pid)
		if _, ours := a.started.Load(n); err != nil || !ours {
			continue
		}
		if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() && st.Size() == 0 {
			os.Remove(f)
		}
	}
}

// ---- workers ----

type worker struct {
	a         *Launcher
	cmd       *exec.Cmd   // nil for a standby the zygote forked
	proc      *os.Process // what is waited for
	pid       int
	activate  func(env map[string]string) error // nil for a direct start
	discardFn func()

	quiet     atomic.Bool // output to the rank log only
	joiner    bool        // a replacement waiting for admission (under Launcher.mu)
	ready     atomic.Bool // a joiner ready to be admitted (said ready, or hello without wait)
	discarded atomic.Bool // killed on purpose before it held a rank
	localRank int         // slot on this node (its GPU); kept across regroups
	as        Assignment  // current generation, for the control endpoint (under mu)

	mu   sync.Mutex
	gen  int
	rank int // -1 while a standby
	// grewFrom: the generation a grow moved this member from (0: none). It
	// trains on there until the switch, after the grow's boundary step or a
	// later one (the SDK's group formed ahead), and its steps there count.
	grewFrom int
	log      *os.File
	errOut   stderrState   // held stderr lines and the error seen (output.go)
	out      genOutput     // lines this generation printed (outputcount.go)
	peers    genOutput     // the other workers' output when this one died
	exited   chan struct{} // the process is gone
	settled  chan struct{} // its exit has been reported (or it was a standby)
	outDone  sync.WaitGroup
}

func (w *worker) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

func (w *worker) assignment() (Assignment, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.as, w.as.Gen > 0
}

func (w *worker) current() (gen, rank int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen, w.rank
}

// reassign moves the worker to a generation (a regroup renumbers survivors).
func (w *worker) reassign(as Assignment) {
	w.mu.Lock()
	w.grewFrom = 0
	if as.Grow && !as.Join && w.rank == as.Rank {
		w.grewFrom = w.gen
	}
	w.as, w.gen, w.rank = as, as.Gen, as.Rank
	w.mu.Unlock()
}

// stepGen is the generation and rank a step reported under generation
// reported counts for: the current one, or the one a grow moved this member
// from (it trains on there until it switches). ok false: a stale report.
func (w *worker) stepGen(reported int) (gen, rank int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if reported == w.gen || (w.grewFrom > 0 && reported == w.grewFrom) {
		return reported, w.rank, true
	}
	return 0, 0, false
}

// activateAs hands a standby its rank. The worker's lock is held until the
// rank is recorded, so an immediate exit is reported against that rank.
func (w *worker) activateAs(gen, rank int, env map[string]string, log *os.File) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.activate(env); err != nil {
		return err
	}
	w.gen, w.rank, w.log = gen, rank, log
	return nil
}

// spawn starts a worker for rank right away (through the shim when the
// command allows it, so that it can write the same way either path).
func (a *Launcher) spawn(gen, rank int, env map[string]string, log *os.File) (*worker, error) {
	if a.shim != nil {
		w, err := a.startProcess(a.shim, false, gen, rank, log)
		if err != nil {
			return nil, err
		}
		return w, w.activate(env)
	}
	return a.startProcessEnv(a.cfg.Command, mergeEnv(a.base, env), nil, gen, rank, log)
}

// startProcess starts a shim worker that waits for its activation on fd 3.
// A standby (rank -1) imports at the lowest CPU priority until activated
// (priority.go).
func (a *Launcher) startProcess(args []string, standby bool, gen, rank int, log *os.File) (*worker, error) {
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	w, err := a.startProcessEnv(args, a.shimEnv("BULSAJO_ACTIVATE_FD=3"), r, gen, rank, log)
	r.Close()
	if err != nil {
		wr.Close()
		return nil, err
	}
	if standby {
		// Import at the lowest priority: it uses the cycles training leaves.
		lowerPriority(w.pid)
		a.imports.start(w.pid)
	}
	a.activation(w, wr, standby)
	return w, nil
}

// activation gives w the activation pipe wr: activate writes its env there
// (a standby goes back to normal priority first), discard closes it.
func (a *Launcher) activation(w *worker, wr *os.File, standby bool) {
	w.activate = func(env map[string]string) error {
		defer wr.Close()
		if standby {
			// What is left of its import is now its generation's start.
			a.imports.done(w.pid)
			// Back to normal priority, every thread (priority.go).
			restorePriority(w.pid)
		}
		b, _ := json.Marshal(map[string]any{"env": env})
		_, err := wr.Write(append(b, '\n'))
		return err
	}
	w.discardFn = func() { wr.Close() }
}

func (a *Launcher) startProcessEnv(args, env []string, activateFD *os.File, gen, rank int, log *os.File) (*worker, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.Dir = a.cfg.Dir
	if activateFD != nil {
		cmd.ExtraFiles = []*os.File{activateFD}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = startWorkerProcess(cmd)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("agent: start %s: %w", args[0], err)
	}
	a.waiters.Add(1)
	return a.track(cmd.Process, cmd, outR, errR, gen, rank, log), nil
}

// track follows a started process: its output and its exit. cmd is nil for
// a standby forked by the zygote. The caller has counted it in a.waiters.
func (a *Launcher) track(proc *os.Process, cmd *exec.Cmd, outR, errR *os.File, gen, rank int, log *os.File) *worker {
	w := &worker{a: a, cmd: cmd, proc: proc, pid: proc.Pid, gen: gen, rank: rank, log: log,
		exited: make(chan struct{}), settled: make(chan struct{})}
	a.started.Store(w.pid, true)
	w.outDone.Add(2)
	go w.pump(outR, false)
	go w.pump(errR, true)
	go w.wait()
	return w
}

func (w *worker) pump(r *os.File, isErr bool) {
	defer w.outDone.Done()
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			w.line(strings.TrimRight(line, "\r\n"), isErr)
		}
		if err != nil {
			return
		}
	}
}

func (w *worker) line(text string, isErr bool) {
	w.mu.Lock()
	gen, rank, log := w.gen, w.rank, w.log
	if rank >= 0 {
		w.count(gen, text)
	}
	prefix := "[standby] "
	if rank >= 0 {
		prefix = "[rank" + strconv.Itoa(rank) + "] "
	}
	if log != nil {
		log.WriteString(text + "\n")
	}
	if isErr {
		w.errLine(prefix, text) // held a moment (output.go)
	} else {
		w.errOut.stdout()
	}
	w.mu.Unlock()
	if !isErr && !w.quiet.Load() {
		w.a.cfg.Console.Line(prefix, text)
	}
	if re := w.a.cfg.ProgressRegex; re != nil && rank >= 0 {
		if m := re.FindStringSubmatch(text); m != nil {
			step := -1
			if len(m) > 1 {
				if n, err := strconv.Atoi(m[1]); err == nil {
					step = n
				}
			}
			if step >= 0 {
				w.a.emit(Progress{Gen: gen, Rank: rank, Step: step, At: time.Now()})
			}
		}
	}
}

func (w *worker) wait() {
	defer w.a.waiters.Done()
	var ps *os.ProcessState
	if w.cmd != nil {
		w.cmd.Wait()
		ps = w.cmd.ProcessState
	} else {
		ps, _ = w.proc.Wait()
	}
	at := time.Now()
	close(w.exited)
	code, sig := 1, "" // not waited for: not a success either
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig = signalName(ws.Signal())
			code = 128 + int(ws.Signal())
		} else {
			code = ps.ExitCode()
		}
	}
	// Held stderr now waits for the exit's verdict; and the peers' errors
	// from here on are the consequence of this death.
	w.stopHold()
	gen, rank := w.current()
	if rank >= 0 && (code != 0 || sig != "") {
		w.a.faults.died(gen, at)
	}
	// What the others had printed by now (not their reaction to this death).
	peers := w.a.peerOutput(w, gen)
	w.mu.Lock()
	w.peers = peers
	w.mu.Unlock()
	// Anything the worker forked goes with it.
	signalGroup(w.pid, syscall.SIGKILL)
	// Let the output drain (for the last error line), but do not wait long on
	// a grandchild that still holds the pipe. A worker that ended itself (an
	// error exit, an abort) may owe its death to a line still in the pipe:
	// under load the reader has taken over 100 ms to get to it, and the
	// fault lost its cause (and a crash loop its signature).
	drained := make(chan struct{})
	go func() { w.outDone.Wait(); close(drained) }()
	wait := 100 * time.Millisecond
	if (code != 0 && sig == "") || selfSignal[sig] {
		wait = time.Second
	}
	select {
	case <-drained:
	case <-time.After(wait):
	}
	w.a.reaped(w, code, sig, at)
}

func (a *Launcher) reaped(w *worker, code int, sig string, at time.Time) {
	defer close(w.settled)
	a.imports.done(w.pid)
	a.preloaded.Delete(w.pid)
	w.mu.Lock()
	gen, rank, log := w.gen, w.rank, w.log
	lastErr, causeAt := w.errOut.exitCause(code, sig, at), w.errOut.causeAt
	w.mu.Unlock()
	abnormal := code != 0 || sig != ""
	if abnormal && rank >= 0 && lastErr != "" {
		// A peer that printed its error first goes first: its death is the
		// fault, this one's error the consequence.
		if v := a.earlierTraceback(w, gen, causeAt); v != nil {
			select {
			case <-v.settled:
			case <-time.After(deferMax):
			}
		}
	}
	// The fault's own error stays on the terminal, before the fault line;
	// the rest of a failing generation's stderr is in the rank logs.
	fault := abnormal && rank >= 0 && a.faults.claim(gen, w)
	w.mu.Lock()
	w.release(!w.quiet.Load() && (fault || rank < 0 || !a.faults.failing(gen)))
	out := w.peers
	if w.out.gen == gen && out.gen == gen {
		out.lines += w.out.lines
		out.fresh += w.out.fresh
	}
	w.mu.Unlock()
	a.mu.Lock()
	for i, j := range a.joiners {
		if j == w {
			a.joiners = append(a.joiners[:i], a.joiners[i+1:]...)
			a.mu.Unlock()
			a.emit(JoinerLost{At: at})
			return
		}
	}
	a.mu.Unlock()
	if rank < 0 { // a standby that died before activation
		a.mu.Lock()
		for i, s := range a.standbys {
			if s == w {
				a.standbys = append(a.standbys[:i], a.standbys[i+1:]...)
				break
			}
		}
		if code != 0 && !w.discarded.Load() {
			a.standbyFailed++ // it failed on its own (e.g. its preload crashed)
		}
		a.mu.Unlock()
		return
	}
	if msg := readErrorFile(a.errorFile(gen, rank)); msg != "" && code != 0 {
		lastErr = msg
	}
	if log != nil {
		fmt.Fprintf(log, "--- exited: code %d %s\n", code, sig)
		log.Close()
	}
	a.emit(Exited{Gen: gen, Rank: rank, Code: code, Signal: sig, LastError: lastErr, At: at, Log: a.rankLogPath(rank),
		Output: out.lines, NewOutput: out.fresh})
	a.mu.Lock()
	g := a.gens[gen]
	allDone := false
	if g != nil {
		g.remaining--
		if g.remaining == 0 {
			allDone = true
			if g.killTimer != nil {
				g.killTimer.Stop()
			}
			delete(a.gens, gen)
			a.faults.forget(gen)
		}
	}
	a.mu.Unlock()
	if allDone {
		a.emit(Stopped{Gen: gen, At: time.Now()})
	}
}

// ---- standbys ----

// importTracker follows the standbys still importing (started, not yet
// preloaded, neither activated nor gone) for the step clock: on a node whose
// CPUs the ranks fill, steps taken meanwhile are slower whatever the
// importers' priority (measured on 2 cores, 4 ranks: about half again, for
// the 3-6 s a refill takes).
type importTracker struct {
	mu   sync.Mutex
	pids map[int]time.Time // importing since
	past []importSpan      // the latest finished imports
}

type importSpan struct{ began, ended time.Time }

func (t *importTracker) start(pid int) {
	t.mu.Lock()
	if t.pids == nil {
		t.pids = map[int]time.Time{}
	}
	t.pids[pid] = time.Now()
	t.mu.Unlock()
}

func (t *importTracker) done(pid int) {
	t.mu.Lock()
	if began, ok := t.pids[pid]; ok {
		delete(t.pids, pid)
		if len(t.past) == 32 { // the clock asks about the last step or so
			t.past = t.past[1:]
		}
		t.past = append(t.past, importSpan{began, time.Now()})
	}
	t.mu.Unlock()
}

// ImportingSince reports whether a standby was importing at any time since
// t, and when the earliest of those imports began. An import not done within
// preloadWait is taken for over (a shim that never says so must not mark
// the rest of the run).
func (a *Launcher) ImportingSince(t time.Time) (began time.Time, ok bool) {
	a.imports.mu.Lock()
	defer a.imports.mu.Unlock()
	note := func(b time.Time) {
		if !ok || b.Before(began) {
			began, ok = b, true
		}
	}
	for _, b := range a.imports.pids {
		if time.Since(b) < preloadWait {
			note(b)
		}
	}
	for _, p := range a.imports.past {
		if p.ended.After(t) {
			note(p.began)
		}
	}
	return began, ok
}

// takeStandby returns a live standby from the pool, or nil. Called with a.mu held.
func (a *Launcher) takeStandby() *worker {
	for len(a.standbys) > 0 {
		w := a.standbys[0]
		a.standbys = a.standbys[1:]
		if !w.hasExited() {
			return w
		}
	}
	return nil
}

// refillStandbys tops the pool up to StandbyCount, with forks of the zygote
// (zygote.go) while it serves. A standby that keeps failing (say, the
// preload crashes) turns the pool off rather than loop. One refill runs at
// a time; it checks the pool again before it ends, so a standby taken
// meanwhile is replaced too.
func (a *Launcher) refillStandbys() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refilling {
		return
	}
	a.refilling = true
	defer func() { a.refilling = false }()
	for !a.closed && len(a.standbys) < a.cfg.StandbyCount && a.standbyFailed <= 2*a.cfg.StandbyCount {
		if z := a.zygoteLocked(); z != nil {
			a.waiters.Add(1) // before Close can wait: it sets closed under mu
			a.mu.Unlock()    // the first fork waits for the zygote's import
			w, err := a.forkStandby(z)
			a.mu.Lock()
			if err != nil {
				a.waiters.Done()
				a.zygoteFailed(z, err)
				continue
			}
			if a.closed {
				w.discard()
				break
			}
			a.standbys = append(a.standbys, w)
			continue
		}
		w, err := a.startProcess(a.shim, true, 0, -1, nil)
		if err != nil {
			a.standbyFailed++
			continue
		}
		a.standbys = append(a.standbys, w)
	}
}

// zygoteLocked returns the zygote, started on first use, or nil when it is
// off or has failed. Called with a.mu held.
func (a *Launcher) zygoteLocked() *zygote {
	if a.zygoteOff {
		return nil
	}
	if a.zyg == nil {
		z, err := a.startZygote()
		if err != nil {
			a.zygoteFailed(nil, err)
			return nil
		}
		a.zyg = z
	}
	return a.zyg
}

// zygoteFailed turns the zygote off for the rest of the run: standbys
// import for themselves from here on. Called with a.mu held.
func (a *Launcher) zygoteFailed(z *zygote, err error) {
	if a.zygoteOff {
		return
	}
	a.zygoteOff = true
	if z != nil {
		z.kill()
	}
	if !a.closed && a.cfg.Console != nil {
		a.cfg.Console.Printf("  note: standbys import torch themselves from now on (%v)", err)
	}
}

func (w *worker) discard() {
	w.discarded.Store(true)
	if w.discardFn != nil {
		w.discardFn() // EOF on fd 3: the shim exits quietly
	}
	signalGroup(w.pid, syscall.SIGKILL)
}

// ---- progress from the SDK ----

// readProgress serves the local endpoint: datagrams "step GEN RANK STEP",
// and the shim's "torch nolibuv".
func (a *Launcher) readProgress() {
	buf := make([]byte, 512)
	for {
		n, _, err := a.progress.ReadFromUnix(buf)
		if err != nil {
			return
		}
		if p, ok := parseProgress(buf[:n]); ok {
			p.At = time.Now()
			a.emit(p)
		} else if isNoLibuv(buf[:n]) {
			a.noteNoLibuv()
		} else if pid, ok := parsePreloaded(buf[:n]); ok {
			a.preloaded.Store(pid, true)
			a.imports.done(pid)
		}
	}
}

func parseProgress(b []byte) (Progress, bool) {
	f := strings.Fields(string(b))
	if len(f) != 4 || f[0] != "step" {
		return Progress{}, false
	}
	var n [3]int
	for i := range n {
		v, err := strconv.Atoi(f[i+1])
		if err != nil {
			return Progress{}, false
		}
		n[i] = v
	}
	return Progress{Gen: n[0], Rank: n[1], Step: n[2]}, true
}

// ---- helpers ----

func (a *Launcher) rankLogPath(rank int) string {
	return filepath.Join(a.cfg.RunDir, "logs", "rank"+strconv.Itoa(rank)+".log")
}

func (a *Launcher) openRankLog(gen, rank int) *os.File {
	f, err := os.OpenFile(a.rankLogPath(rank),
		os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	fmt.Fprintf(f, "--- generation %d, rank %d, %s\n", gen, rank, time.Now().Format(time.RFC3339Nano))
	return f
}

// readErrorFile returns the first line of the error torch's @record wrote to
// TORCHELASTIC_ERROR_FILE, if any.
func readErrorFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var v struct {
		Message struct {
			Message string `json:"message"`
		} `json:"message"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	msg, _, _ := strings.Cut(v.Message.Message, "\n")
	return msg
}

func signalName(s syscall.Signal) string {
	if n := sigNames[s]; n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}

var sigNames = map[syscall.Signal]string{
	syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS",
	syscall.SIGHUP: "SIGHUP", syscall.SIGFPE: "SIGFPE", syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL", syscall.SIGUSR1: "SIGUSR1",
	syscall.SIGUSR2: "SIGUSR2",
}

// socketNonce tells apart the abstract sockets of agents that share a
// network namespace but not a PID namespace (containers, or one slurmd per
// PID namespace in the Slurm tests), where the pid alone collides.
var socketNonce = func() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}()
