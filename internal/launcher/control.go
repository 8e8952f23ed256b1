package launcher

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The control endpoint is the live-mode SDK's line to its agent: a unix
// stream socket (BULSAJO_AGENT_CTL) carrying JSON lines. A worker says hello
// once; the agent answers with its current assignment and sends a new one
// whenever the worker's generation changes (a regroup). Workers report
// committed steps and failed collectives on the same connection. The peer's
// pid (SO_PEERCRED) ties a connection to the worker process, so a process
// cannot speak for another.

// Assignment is what a worker is told about its generation.
type Assignment struct {
	Type       string `json:"type"` // "generation"
	Gen        int    `json:"gen"`
	Rank       int    `json:"rank"`
	WorldSize  int    `json:"world_size"`
	MasterAddr string `json:"master_addr"`
	MasterPort int    `json:"master_port"`
	Join       bool   `json:"join"` // a replacement: it must receive state
	Grow       bool   `json:"grow"` // no member lost: switch after step AtStep
	AtStep     int    `json:"at_step"`
}

// ctlMsg is a message from a worker.
type ctlMsg struct {
	Type   string `json:"type"` // hello, ready, step, finished, collective_failed, work
	Gen    int    `json:"gen"`
	Rank   int    `json:"rank"`
	Step   int    `json:"step"`
	Detail string `json:"detail"`
	// Wait, on a joiner's hello: it is not ready to be admitted until it
	// says "ready" (the SDK does when the script enters steps()).
	Wait bool `json:"wait"`
	// work: Steps steps took WallS seconds, WorkS of them the rank's own
	// computation (collective waits left out).
	Steps int     `json:"steps"`
	WorkS float64 `json:"work_s"`
	WallS float64 `json:"wall_s"`
}

// Work is a live-mode worker's work-time report (straggler detection):
// over Steps committed steps, Work of the Wall time was its own computation.
type Work struct {
	Gen, Rank  int
	Steps      int
	Work, Wall time.Duration
	At         time.Time
}

func (Work) agentEvent() {}

// CollectiveFailed is reported by a live-mode worker whose collective failed
// without a new generation following.
type CollectiveFailed struct {
	Gen, Rank int
	Detail    string
	At        time.Time
}

func (CollectiveFailed) agentEvent() {}

// Finishing: a live-mode worker left its training loop (all ranks agreed
// the last step committed); it is tearing down.
type Finishing struct {
	Gen, Rank int
	At        time.Time
}

func (Finishing) agentEvent() {}

// JoinerReady: a replacement process is up and waiting to be admitted.
type JoinerReady struct{ At time.Time }

// JoinerLost: a replacement process exited before it was admitted.
type JoinerLost struct{ At time.Time }

func (JoinerReady) agentEvent() {}
func (JoinerLost) agentEvent()  {}

type control struct {
	ln    *net.UnixListener
	addr  string
	mu    sync.Mutex
	conns map[int]*ctlConn // by worker pid
}

type ctlConn struct {
	mu sync.Mutex
	c  *net.UnixConn
}

func (c *ctlConn) send(v any) {
	b, _ := json.Marshal(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.c.Write(append(b, '\n'))
}

func (a *Launcher) startControl() error {
	addr := fmt.Sprintf("@bulsajo-%s-%d-%s-ctl", a.cfg.RunID, os.Getpid(), socketNonce)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return fmt.Errorf("agent: control endpoint: %w", err)
	}
	a.ctl = &control{ln: ln, addr: addr, conns: map[int]*ctlConn{}}
	go a.acceptControl()
	return nil
}

func (a *Launcher) acceptControl() {
	for {
		c, err := a.ctl.ln.AcceptUnix()
		if err != nil {
			return
		}
		go a.serveControl(c)
	}
}

func (a *Launcher) serveControl(c *net.UnixConn) {
	defer c.Close()
	pid, err := peerPID(c)
	if err != nil {
		return
	}
	w := a.workerByPID(pid)
	if w == nil {
		return // not one of ours
	}
	cc := &ctlConn{c: c}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		var m ctlMsg
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		switch m.Type {
		case "hello":
			a.ctl.mu.Lock()
			a.ctl.conns[pid] = cc
			a.ctl.mu.Unlock()
			if as, ok := w.assignment(); ok {
				cc.send(as)
			} else if w.joiner && !m.Wait && !w.ready.Swap(true) {
				a.emit(JoinerReady{At: time.Now()})
			}
		case "ready":
			if w.joiner && !w.ready.Swap(true) {
				a.emit(JoinerReady{At: time.Now()})
			}
		case "step":
			if gen, rank, ok := w.stepGen(m.Gen); ok {
				a.emit(Progress{Gen: gen, Rank: rank, Step: m.Step, At: time.Now()})
			}
		case "finished":
			gen, rank := w.current()
			if m.Gen == gen {
				a.emit(Finishing{Gen: gen, Rank: rank, At: time.Now()})
			}
		case "work":
			gen, rank := w.current()
			if m.Gen == gen && m.Steps > 0 && m.WallS > 0 && m.WorkS >= 0 && m.WallS < 1e6 && m.WorkS < 1e6 {
				a.emit(Work{Gen: gen, Rank: rank, Steps: m.Steps, At: time.Now(),
					Work: time.Duration(m.WorkS * float64(time.Second)), Wall: time.Duration(m.WallS * float64(time.Second))})
			}
		case "collective_failed":
			gen, rank := w.current()
			if m.Gen == gen {
				a.emit(CollectiveFailed{Gen: gen, Rank: rank, Detail: m.Detail, At: time.Now()})
			}
		}
	}
	a.ctl.mu.Lock()
	if a.ctl.conns[pid] == cc {
		delete(a.ctl.conns, pid)
	}
	a.ctl.mu.Unlock()
}

// tell sends w its assignment, if it has said hello (else it gets it then).
func (a *Launcher) tell(w *worker) {
	as, ok := w.assignment()
	if !ok || a.ctl == nil {
		return
	}
	a.ctl.mu.Lock()
	cc := a.ctl.conns[w.pid]
	a.ctl.mu.Unlock()
	if cc != nil {
		cc.send(as)
	}
}

func peerPID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

func (a *Launcher) workerByPID(pid int) *worker {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.joiners {
		if w.pid == pid {
			return w
		}
	}
	for _, g := range a.gens {
		for _, w := range g.workers {
			if w.pid == pid {
				return w
			}
		}
	}
	return nil
}

// ---- regroup ----

// RegroupSpec forms generation Gen in place: the worker holding old rank
// Survivors[i] of generation From becomes rank i; Admit ready joiners take
// the ranks after them; Spawn new joiners are started. Kill lists old ranks
// to kill first. Grow marks a regroup without a fault, which members carry
// out after step AtStep instead of abandoning the step in flight.
type RegroupSpec struct {
	From, Gen int
	WorldSize int
	Survivors []int
	Admit     int
	// AdmitRanks, when set, are the ranks this node's admitted joiners take
	// (a multi-node regroup: the joiners may be on another node than the
	// survivors); otherwise they take the ranks after the survivors.
	AdmitRanks []int
	Spawn      int
	Kill       []int
	Grow       bool
	AtStep     int
	MasterAddr string
	MasterPort int
}

// Regroup carries out a live-mode regroup on this node.
func (a *Launcher) Regroup(spec RegroupSpec) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	old := a.gens[spec.From]
	if old == nil {
		// A node that only admits joiners, or one whose members of that
		// generation have all exited (and were reported) since the regroup
		// was decided: none is carried over, the policy hears of each.
		old = &generation{gen: spec.From}
	}
	for _, r := range spec.Kill {
		for _, w := range old.workers {
			if w.rank == r && !w.hasExited() {
				signalGroup(w.pid, syscall.SIGKILL)
			}
		}
	}
	g := &generation{gen: spec.Gen, remaining: spec.WorldSize}
	a.gens[spec.Gen] = g
	a.maxGen = max(a.maxGen, spec.Gen)
	assign := func(w *worker, rank int, join bool) {
		w.reassign(Assignment{Type: "generation", Gen: spec.Gen, Rank: rank, WorldSize: spec.WorldSize,
			MasterAddr: spec.MasterAddr, MasterPort: spec.MasterPort, Join: join, Grow: spec.Grow, AtStep: spec.AtStep})
		g.workers = append(g.workers, w)
	}
	var members []*worker
	for newRank, oldRank := range spec.Survivors {
		for i, w := range old.workers {
			if w.rank != oldRank || w.hasExited() {
				continue
			}
			// The survivor now belongs to the new generation: its exit is
			// reported there, and the old one no longer waits for it.
			old.workers = append(old.workers[:i], old.workers[i+1:]...)
			old.remaining--
			assign(w, newRank, false)
			members = append(members, w)
			break
		}
	}
	admit := spec.AdmitRanks
	if admit == nil {
		for i := 0; i < spec.Admit; i++ {
			admit = append(admit, len(spec.Survivors)+i)
		}
	}
	for _, rank := range admit {
		w := a.takeReadyJoiner()
		if w == nil {
			break
		}
		log := a.openRankLog(spec.Gen, rank)
		w.mu.Lock()
		w.log = log
		w.mu.Unlock()
		assign(w, rank, true)
		members = append(members, w)
	}
	// The generation here is the members on this node (members that died
	// meanwhile will never report).
	g.remaining = len(members)
	if old.remaining == 0 {
		delete(a.gens, spec.From)
	}
	a.mu.Unlock()
	for _, w := range members {
		_, rank := w.current()
		a.writePID(rank, w.pid)
		a.tell(w)
	}
	a.emit(Launched{Gen: spec.Gen, At: time.Now()})
	return a.SpawnJoiners(spec.Spawn)
}

// SpawnJoiners starts n replacement processes. A joiner runs the script up
// to its training loop (the SDK's steps()), says it is ready there and
// waits, outside every generation, until a regroup admits it; it then
// receives the training state from a member.
func (a *Launcher) SpawnJoiners(n int) error {
	for i := 0; i < n; i++ {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return ErrClosed
		}
		local := a.freeLocalRank()
		env := map[string]string{
			"RANK": "-1", "LOCAL_RANK": strconv.Itoa(local), "BULSAJO_GENERATION": "0", "BULSAJO_JOIN": "1",
			"WORLD_SIZE": "0", "LOCAL_WORLD_SIZE": strconv.Itoa(a.cfg.StandbyCount),
			"TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_ERROR_FILE": filepath.Join(a.cfg.RunDir, "errors", "joiner.json"),
		}
		w := a.takeStandby()
		if w == nil || w.activateAs(0, -1, env, nil) != nil {
			var err error
			if w, err = a.spawn(0, -1, env, nil); err != nil {
				a.mu.Unlock()
				return err
			}
		}
		w.joiner = true
		w.localRank = local
		a.joiners = append(a.joiners, w)
		a.mu.Unlock()
	}
	if n > 0 && a.shim != nil {
		go a.refillStandbys()
	}
	return nil
}

// freeLocalRank is the lowest local slot (GPU) no member or joiner holds.
// Called with a.mu held.
func (a *Launcher) freeLocalRank() int {
	used := map[int]bool{}
	for _, g := range a.gens {
		for _, w := range g.workers {
			if !w.hasExited() {
				used[w.localRank] = true
			}
		}
	}
	for _, w := range a.joiners {
		used[w.localRank] = true
	}
	n := 0
	for used[n] || a.drained[n] {
		n++
	}
	return n
}

// takeReadyJoiner removes and returns the first joiner ready to be admitted.
// Called with a.mu held.
func (a *Launcher) takeReadyJoiner() *worker {
	for i, w := range a.joiners {
		if w.ready.Load() && !w.hasExited() {
			a.joiners = append(a.joiners[:i], a.joiners[i+1:]...)
			w.joiner = false
			return w
		}
	}
	return nil
}
