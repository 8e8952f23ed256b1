package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/atomicfile"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/supervisor"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// JobSpec is what `bulsajo submit` asks for.
type JobSpec struct {
	ID            string   `json:"id"`
	Command       []string `json:"command"`
	Dir           string   `json:"dir,omitempty"`
	NNodesMin     int      `json:"nnodes_min"`
	NNodesMax     int      `json:"nnodes_max"`
	NProcPerNode  int      `json:"nproc_per_node"`
	Recovery      string   `json:"recovery,omitempty"`
	MaxRestarts   int      `json:"max_restarts"`
	ProgressRegex string   `json:"progress_regex,omitempty"`
	HangTimeoutMS int      `json:"hang_timeout_ms,omitempty"`
	HangFloorMS   int      `json:"hang_floor_ms,omitempty"`
	// BusyLimitMS: the longest stall not called a hang while the nodes see
	// ranks using CPU (a checkpoint, an evaluation); 0: the default
	// (policy.DefaultBusyLimit); -1: none, every stall past the threshold
	// is a hang.
	BusyLimitMS    int  `json:"busy_limit_ms,omitempty"`
	StopGraceMS    int  `json:"stop_grace_ms,omitempty"`
	ExitGraceMS    int  `json:"exit_grace_ms,omitempty"`
	CrashLoopLimit int  `json:"crash_loop_limit,omitempty"`
	Standby        bool `json:"standby,omitempty"`
	// NoReplace: live mode keeps training with fewer workers instead of
	// starting replacements on spare capacity.
	NoReplace bool `json:"no_replace,omitempty"`
	// Stragglers (live): "" or off, warn, replace; StragglerReplaceAfterMS:
	// how long a straggler without hardware evidence is slow before it is moved.
	StragglerAction         string `json:"straggler_action,omitempty"`
	StragglerReplaceAfterMS int    `json:"straggler_replace_after_ms,omitempty"`
}

// Validate checks a spec the way the CLI does, for clients that are not it.
func (sp *JobSpec) Validate() error {
	switch {
	case !wire.ValidName(sp.ID):
		return errors.New("job id must be 1-63 of [A-Za-z0-9._-]")
	case len(sp.Command) == 0 || sp.Command[0] == "":
		return errors.New("a command is required")
	case sp.NNodesMin < 1 || sp.NNodesMax < sp.NNodesMin || sp.NNodesMax > 100000:
		return errors.New("nnodes must be MIN:MAX with 1 <= MIN <= MAX")
	case sp.NProcPerNode < 1 || sp.NProcPerNode > 1024:
		return errors.New("nproc_per_node must be 1..1024")
	case sp.Recovery != "" && sp.Recovery != "restart" && sp.Recovery != "live":
		return errors.New("recovery must be restart or live")
	case sp.StragglerAction != "" && sp.StragglerAction != "off" && sp.StragglerAction != "warn" && sp.StragglerAction != "replace":
		return errors.New("straggler action must be off, warn or replace")
	case sp.StragglerAction == "replace" && sp.Recovery != "live":
		return errors.New("straggler action replace needs live recovery")
	case sp.MaxRestarts < 0 || sp.StragglerReplaceAfterMS < 0 || sp.HangTimeoutMS < 0 || sp.HangFloorMS < 0 || sp.StopGraceMS < 0 ||
		sp.ExitGraceMS < 0 || sp.CrashLoopLimit < 0 || sp.BusyLimitMS < -1:
		return errors.New("negative limits are not allowed")
	}
	if sp.ProgressRegex != "" {
		if _, err := regexp.Compile(sp.ProgressRegex); err != nil {
			return fmt.Errorf("progress regex: %v", err)
		}
	}
	// The command travels in every start message, JSON-escaped: keep it
	// well inside what the agent accepts.
	if b, _ := json.Marshal(struct {
		C []string
		D string
		R string
	}{sp.Command, sp.Dir, sp.ProgressRegex}); len(b) > maxCommandBytes {
		return fmt.Errorf("command, workdir and progress regex too long: %d bytes encoded, at most %d", len(b), maxCommandBytes)
	}
	return nil
}

// maxCommandBytes bounds a job's command line (encoded) so that every
// message carrying it fits wire.MaxMessage with room for the rest.
const maxCommandBytes = wire.MaxMessage / 4

// placement is one node's part of a generation.
type placement struct {
	Node  string `json:"node"`
	Ranks []int  `json:"ranks"`
}

// jobRecord is the job as persisted: enough to adopt it after a restart.
type jobRecord struct {
	Spec       JobSpec     `json:"spec"`
	Done       bool        `json:"done,omitempty"`
	Outcome    string      `json:"outcome,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	Gen        int         `json:"gen"`
	Restarts   int         `json:"restarts"`
	World      int         `json:"world"`
	Placement  []placement `json:"placement,omitempty"`
	MasterAddr string      `json:"master_addr,omitempty"`
	MasterPort int         `json:"master_port,omitempty"`
	Step       int         `json:"step"`
	Seq        int         `json:"seq"` // events in the store
}

// JobStatus is the job in `bulsajo status`.
type JobStatus struct {
	ID         string      `json:"id"`
	State      string      `json:"state"` // waiting, starting, training, stopping, done
	Outcome    string      `json:"outcome,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	Gen        int         `json:"gen"`
	World      int         `json:"world"`
	Restarts   int         `json:"restarts"`
	Step       int         `json:"step"`
	Placement  []placement `json:"placement,omitempty"`
	Rendezvous string      `json:"rendezvous,omitempty"`
	Events     int         `json:"events"`
}

// job is the running job: a supervisor.Node made of remote agents. Its
// methods are called by the supervisor loop (its own goroutine) and by the
// server with s.mu held; the Node methods take s.mu themselves.
type job struct {
	s   *Server
	rec jobRecord
	out chan launcher.Event
	sig chan os.Signal
	log *events.Log

	// current generation (s.mu)
	where    map[string]int  // node -> index in rec.Placement
	joiners  map[string]int  // live: node -> replacements started there, not yet admitted
	ready    map[string]int  // of which up and waiting
	prepared map[string]bool // nodes outside the generation told to pre-start standby workers
	// Starts held back until rank 0's store listens (torch's client waits a
	// whole second before it retries a refused connection).
	// Indexes into rec.Placement; the messages are made when sent (held as
	// messages, 10,000 of them made about 30 MB of garbage per generation).
	held      []int
	heldUntil time.Time
	noStagger bool // the script does not listen on MASTER_PORT: never hold
	// lastCall: until when the first generation waits for nodes that
	// dropped their session a moment ago and are reconnecting.
	lastCall time.Time
	// the generation before, to blame a fault reported after the next began
	prevGen       int
	prevPlacement []placement
	// grewFrom: the generation a grow moved the members from (0: the last
	// change was no grow). They train on there until they switch, and their
	// step reports there count (the step clock prices the grow by the gap
	// at the switch).
	grewFrom  int
	launched  map[string]bool  // node -> its workers started
	stopped   map[string]bool  // node -> its workers reaped
	frozen    map[string][]int // node -> its ranks seen stopped (SIGSTOP, a tracer) now
	probe     *busyProbe       // the busy probe waiting for the nodes' answers, or nil
	stopping  bool
	pending   *launcher.GenerationSpec // waiting for capacity
	stopFirst int                      // a generation asked to stop before its start came (0: none)
	waitSaid  bool
	faulted   bool // a fault of this generation has been reported
	adopting  bool // resumed: waiting for the agents to confirm
	resumeBy  time.Time
	savedStep int
	savedAt   time.Time

	evMu    sync.Mutex
	evs     []events.Event
	evReady chan struct{} // closed and replaced on each event
	logQ    chan events.Event
	done    chan struct{}
	detachC chan struct{}
	detachO sync.Once
}

func (s *Server) loadJob(ctx context.Context) error {
	kv, err := s.cfg.Store.Get(ctx, keyJob)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("coordinator: loading the job: %w", err)
	}
	var rec jobRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return fmt.Errorf("coordinator: stored job: %v", err)
	}
	// Events so far: for watchers that reconnect, and for this
	// coordinator's log file when it is not the one that wrote them (a
	// failover to another host).
	kvs, err := s.cfg.Store.List(ctx, "/bulsajo/runs/"+rec.Spec.ID+"/events/")
	if err != nil {
		return fmt.Errorf("coordinator: loading events: %w", err)
	}
	var evs []events.Event
	for _, kv := range kvs {
		var e events.Event
		if json.Unmarshal(kv.Value, &e) == nil {
			evs = append(evs, e)
		}
	}
	if err := seedLog(filepath.Join(s.cfg.DataDir, "runs", rec.Spec.ID, "events.jsonl"), evs); err != nil {
		return err
	}
	j, err := s.newJob(rec)
	if err != nil {
		return err
	}
	j.evs = evs
	j.rec.Seq = len(j.evs)
	s.job = j
	if rec.Done {
		close(j.done)
		return nil
	}
	// Adopt: the placement's agents should come back within a node timeout
	// or two; until then their workers keep training on their own lease.
	j.adopting = rec.Gen > 0
	// At the timing its agents had (as many as it placed, at least), and
	// the longest lease any agent was told.
	t := s.timingAt(time.Duration(levelFor(len(rec.Placement), 1, s.cfg.MaxHeartbeatsPerSecond, s.cfg.Heartbeat)) * s.cfg.Heartbeat)
	lease := max(t.lease, s.leaseHigh)
	j.resumeBy = time.Now().Add(max(2*t.nodeTimeout, lease/2))
	j.launched, j.stopped, j.frozen = map[string]bool{}, map[string]bool{}, map[string][]int{}
	for _, p := range rec.Placement {
		n := s.nodes[p.Node]
		if n == nil {
			n = &node{nodeRecord: nodeRecord{Name: p.Node}}
			s.nodes[p.Node] = n
		}
		// It may have renewed its lease right before we died.
		n.hear(time.Now())
		n.fenceAt = time.Now().Add(lease)
	}
	s.con.Printf("resuming job %s at generation %d (%d nodes); waiting for its agents", rec.Spec.ID, rec.Gen, len(rec.Placement))
	var resume *policy.Resume
	if rec.Gen > 0 {
		resume = &policy.Resume{Gen: rec.Gen, WorldSize: rec.World, Restarts: rec.Restarts, JobStep: rec.Step}
	}
	j.start(resume)
	return nil
}

// seedLog rewrites the log file at path with evs when it holds fewer.
func seedLog(path string, evs []events.Event) error {
	have, _ := events.ReadFile(path)
	if len(have) >= len(evs) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("coordinator: job dir: %w", err)
	}
	var b []byte
	for _, e := range evs {
		line, _ := json.Marshal(e)
		b = append(append(b, line...), '\n')
	}
	if err := atomicfile.WriteDurable(path, b, 0o644); err != nil {
		return fmt.Errorf("coordinator: event log: %w", err)
	}
	return nil
}

func (s *Server) newJob(rec jobRecord) (*job, error) {
	dir := filepath.Join(s.cfg.DataDir, "runs", rec.Spec.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("coordinator: job dir: %w", err)
	}
	log, err := events.Create(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		return nil, err
	}
	j := &job{s: s, rec: rec, out: make(chan launcher.Event, 1<<16), sig: make(chan os.Signal, 2), log: log,
		evReady: make(chan struct{}), logQ: make(chan events.Event, 1024), done: make(chan struct{}), detachC: make(chan struct{}),
		launched: map[string]bool{}, stopped: map[string]bool{}, frozen: map[string][]int{}}
	log.Tee(j.published)
	return j, nil
}

func (j *job) prefix() string { return "/bulsajo/runs/" + j.rec.Spec.ID }

// start runs the policy loop for the job.
func (j *job) start(resume *policy.Resume) {
	sp := j.rec.Spec
	wd := health.DefaultWatchdog()
	if sp.HangFloorMS > 0 {
		wd.Floor = ms(sp.HangFloorMS)
	}
	wd.Timeout = ms(sp.HangTimeoutMS)
	cfg := supervisor.Config{
		RunID: sp.ID,
		Policy: policy.Config{
			WorldSize: sp.NNodesMax * sp.NProcPerNode, MaxRestarts: sp.MaxRestarts, Watchdog: wd,
			ProgressExpected: sp.ProgressRegex != "", CrashLoopLimit: sp.CrashLoopLimit, ExitGrace: ms(sp.ExitGraceMS),
			// Live across nodes: the survivors on the other nodes re-form the
			// group in place, replacements start on spare capacity and join
			// at a step boundary; below MIN nodes' worth of ranks, a full
			// restart.
			Live: sp.Recovery == "live", Replace: !sp.NoReplace, MinWorld: sp.NNodesMin * sp.NProcPerNode,
			// A stall is first checked with the nodes (Busy): ranks that
			// work through a long save or an evaluation are no hang.
			ProbeBusy: sp.BusyLimitMS >= 0, BusyLimit: ms(max(sp.BusyLimitMS, 0)),
		},
		MasterPort: -1, // the node that hosts rank 0 picks it
		StopGrace:  ms(sp.StopGraceMS),
		Console:    j.s.con,
		Log:        j.log,
		Resume:     resume,
		// Events reach the metrics and the dashboard through published
		// (node events too); the supervisor adds the progress.
		Observers: []supervisor.Observer{progressOnly{j.s}},
		FirstSeq:  j.rec.Seq,
		Detach:    j.detachC,
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if sp.StragglerAction != "" && sp.StragglerAction != "off" {
		cfg.Straggler = supervisor.StragglerConfig{Action: sp.StragglerAction, ReplaceAfter: ms(sp.StragglerReplaceAfterMS), NodeOf: j.nodeOfRank}
		if cfg.Straggler.ReplaceAfter <= 0 {
			cfg.Straggler.ReplaceAfter = time.Minute
		}
	}
	j.s.bg.Add(2)
	go func() {
		defer j.s.bg.Done()
		// The policy loop has returned when done closes: nothing else writes.
		defer j.log.Close()
		for {
			select {
			case e := <-j.logQ:
				j.log.Append(e)
			case <-j.done:
				return
			}
		}
	}()
	go func() {
		defer j.s.bg.Done()
		res := supervisor.Run(cfg, j, j.sig)
		j.finished(res)
	}()
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// published receives every event written to the job's log: it goes to the
// store (the job's durable, shared record) and to watchers.
func (j *job) published(e events.Event) {
	j.evMu.Lock()
	j.evs = append(j.evs, e)
	seq := len(j.evs)
	close(j.evReady)
	j.evReady = make(chan struct{})
	j.evMu.Unlock()
	b, _ := json.Marshal(e)
	j.s.persist(fmt.Sprintf("%s/events/%08d", j.prefix(), seq), b)
	if e.RunID == "" {
		e.RunID = j.rec.Spec.ID
	}
	j.s.metrics.Event(e)
	j.s.hub.Event(e)
	if e.Type == events.FaultDetected && e.Rank != nil && e.Cause != string(policy.FaultNodeLost) {
		// Attribute the fault to the node that held the rank.
		go func(gen, rank int, why string) {
			j.s.mu.Lock()
			defer j.s.mu.Unlock()
			pl := j.rec.Placement
			switch gen {
			case j.rec.Gen:
			case j.prevGen:
				pl = j.prevPlacement
			default:
				return
			}
			for _, p := range pl {
				if slices.Contains(p.Ranks, rank) {
					if n := j.s.nodes[p.Node]; n != nil {
						j.s.fault(n, why)
					}
				}
			}
		}(e.Gen, *e.Rank, fmt.Sprintf("rank %d: %s", *e.Rank, e.Detail))
	}
}

// logAsync records an event from code that holds s.mu (the log's Tee takes
// other locks, so it is written from the job's log goroutine).
func (j *job) logAsync(e events.Event) {
	e.Time = time.Now()
	select {
	case j.logQ <- e:
	default:
	}
}

func (j *job) finished(res supervisor.Result) {
	if res.Outcome == supervisor.Detached {
		close(j.done) // its goroutines end; the job itself goes on elsewhere
		return
	}
	s := j.s
	s.mu.Lock()
	j.rec.Done, j.rec.Outcome, j.rec.Reason = true, string(res.Outcome), res.Reason
	for _, p := range j.rec.Placement {
		if n := s.nodes[p.Node]; n != nil && n.sess != nil {
			n.sess.send(wire.Msg{Type: wire.TEnd, Job: j.rec.Spec.ID})
		}
	}
	j.save()
	s.mu.Unlock()
	close(j.done)
}

// detach ends the policy loop without touching the workers (the coordinator
// is going away; another will adopt the job).
func (j *job) detach() { j.detachO.Do(func() { close(j.detachC) }) }

// save persists the job record (s.mu held).
func (j *job) save() {
	j.savedStep, j.savedAt = j.rec.Step, time.Now()
	j.evMu.Lock()
	j.rec.Seq = len(j.evs)
	j.evMu.Unlock()
	b, _ := json.Marshal(j.rec)
	j.s.persist(keyJob, b)
}

func (j *job) holds(n *node) bool { return len(j.ranksOf(n.Name)) > 0 }

// nodeOfRank names the node that holds rank (for straggler messages).
func (j *job) nodeOfRank(rank int) string {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	for _, p := range j.rec.Placement {
		if slices.Contains(p.Ranks, rank) {
			return p.Node
		}
	}
	return ""
}

func (j *job) ranksOf(name string) []int {
	if j.rec.Done {
		return nil
	}
	if len(j.where) != len(j.rec.Placement) {
		j.where = make(map[string]int, len(j.rec.Placement))
		for i, p := range j.rec.Placement {
			j.where[p.Node] = i
		}
	}
	if i, ok := j.where[name]; ok && j.rec.Placement[i].Node == name {
		return j.rec.Placement[i].Ranks
	}
	return nil
}

func (j *job) status() JobStatus {
	st := JobStatus{ID: j.rec.Spec.ID, Gen: j.rec.Gen, World: j.rec.World, Restarts: j.rec.Restarts, Step: j.rec.Step,
		Outcome: j.rec.Outcome, Reason: j.rec.Reason}
	switch {
	case j.rec.Done:
		st.State = "done"
	case j.pending != nil:
		st.State = "waiting for nodes"
	case j.stopping:
		st.State = "stopping"
	case j.adopting || j.rec.Gen == 0 || len(j.launched) < len(j.rec.Placement):
		st.State = "starting"
	default:
		st.State = "training"
	}
	if !j.rec.Done {
		st.Placement = j.rec.Placement
		if j.rec.MasterAddr != "" {
			st.Rendezvous = j.rec.MasterAddr + ":" + strconv.Itoa(j.rec.MasterPort)
		}
	}
	j.evMu.Lock()
	st.Events = len(j.evs)
	j.evMu.Unlock()
	return st
}

func (j *job) emit(e launcher.Event) {
	select {
	case j.out <- e:
	default:
		if _, ok := e.(launcher.Progress); !ok {
			// Never drop a fault or a lifecycle event; progress can be.
			go func() { j.out <- e }()
		}
	}
}

// ---- supervisor.Node ----

// Events implements supervisor.Node.
func (j *job) Events() <-chan launcher.Event { return j.out }

// StartGeneration implements supervisor.Node: place the generation on nodes
// (now, or as soon as enough are available).
func (j *job) StartGeneration(spec launcher.GenerationSpec) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	if spec.Gen == j.stopFirst {
		// Its stop came first (a cancel as the supervisor handed the
		// launch over): nothing to start.
		j.emit(launcher.Stopped{Gen: spec.Gen, At: time.Now()})
		return nil
	}
	j.pending, j.waitSaid = &spec, false
	j.launchPending()
	return nil
}

// capacityChanged: node n joined, or was released (s.mu held). O(1) per
// join unless the pending generation can start: 10,000 agents register in
// a row.
func (j *job) capacityChanged(n *node) {
	if j.pending != nil {
		j.launchPending()
	}
	if j.rec.Spec.Standby && !j.rec.Done && len(j.rec.Placement) > 0 {
		j.prepare(n)
	}
}

// prepareIdle has every usable node outside the generation (spares first of
// all) pre-start standby workers, so that taking over costs no interpreter
// start and no torch import (s.mu held).
func (j *job) prepareIdle() {
	if !j.rec.Spec.Standby || j.rec.Done || len(j.rec.Placement) == 0 {
		return
	}
	if j.prepared == nil {
		j.prepared = map[string]bool{}
	}
	for _, n := range j.s.nodes {
		j.prepare(n)
	}
}

// prepare has n pre-start standby workers if it is usable and outside the
// generation (s.mu held).
func (j *job) prepare(n *node) {
	if j.prepared == nil {
		j.prepared = map[string]bool{}
	}
	if usable(n, j.rec.Spec.NProcPerNode) && !j.holds(n) && !j.prepared[n.Name] {
		j.prepared[n.Name] = true
		n.sess.send(wire.Msg{Type: wire.TPrepare, Job: j.rec.Spec.ID, Spec: j.wireSpec(1, []int{0}, 0, 1, n.Addr, 1)})
	}
}

// someNames lists names for a console line: all of a few, the first of many.
func someNames(names []string) string {
	const most = 8
	if len(names) <= most {
		return "[" + strings.Join(names, " ") + "]"
	}
	return fmt.Sprintf("[%s … and %d more]", strings.Join(names[:most], " "), len(names)-most)
}

// launchPending starts the pending generation if there are enough nodes.
func (j *job) launchPending() {
	spec := j.pending
	sp := j.rec.Spec
	if j.s.connected < sp.NNodesMin {
		// Not enough even if every connected node were usable: skip
		// choosing (a sort of every node) on each of thousands of joins.
		if !j.waitSaid {
			j.s.con.Printf("… generation %d waits for nodes: %d connected, at least %d needed", spec.Gen, j.s.connected, sp.NNodesMin)
			j.waitSaid = true
		}
		return
	}
	nodes := choose(j.s.nodes, j.rec.Placement, j.rec.Spec.NNodesMax, j.rec.Spec.NNodesMin, j.rec.Spec.NProcPerNode)
	if len(nodes) >= sp.NNodesMin && len(nodes) < sp.NNodesMax && j.rec.Gen == 0 && j.reconnecting() {
		// The first start is for every node there is (like torchrun's
		// last call): one whose session dropped a moment ago (a burst of
		// load, a coordinator restart) is about to be back; a generation
		// placed without it would leave it idle until the next fault.
		return
	}
	if len(nodes) < sp.NNodesMin {
		if !j.waitSaid {
			j.s.con.Printf("… generation %d waits for nodes: %d of at least %d usable", spec.Gen, len(nodes), sp.NNodesMin)
			j.waitSaid = true
		}
		return
	}
	j.pending = nil
	world := len(nodes) * sp.NProcPerNode
	port := nodes[0].takePort(29500 + spec.Gen%1000)
	j.prevGen, j.prevPlacement = j.rec.Gen, j.rec.Placement
	j.grewFrom = 0
	j.rec.Gen, j.rec.Restarts, j.rec.World = spec.Gen, spec.RestartCount, world
	j.rec.MasterAddr, j.rec.MasterPort = nodes[0].Addr, port
	j.rec.Placement, j.where = nil, nil
	j.launched, j.stopped, j.stopping, j.faulted, j.adopting = map[string]bool{}, map[string]bool{}, false, false, false
	j.frozen = map[string][]int{}
	j.joiners, j.ready = map[string]int{}, map[string]int{} // a full start discards them
	j.rec.Placement = make([]placement, len(nodes))
	all := make([]int, world) // one array for every node's ranks
	for i, n := range nodes {
		ranks := all[i*sp.NProcPerNode : (i+1)*sp.NProcPerNode : (i+1)*sp.NProcPerNode]
		for k := range ranks {
			ranks[k] = i*sp.NProcPerNode + k
		}
		j.rec.Placement[i] = placement{Node: n.Name, Ranks: ranks}
	}
	j.save()
	names := make([]string, len(nodes))
	j.held = make([]int, 0, len(nodes)-1)
	for i, n := range nodes {
		names[i] = n.Name
		if i > 0 && !j.noStagger {
			j.held = append(j.held, i)
			continue
		}
		n.sess.send(j.startMsg(i))
	}
	// Holding longer than torch's one-second retry gains nothing.
	j.heldUntil = time.Now().Add(time.Second)
	j.s.con.Printf("▶ generation %d on %d nodes (%s) · world %d · rendezvous %s:%d", spec.Gen, len(nodes), someNames(names), world, j.rec.MasterAddr, port)
	j.prepareIdle()
}

// reconnecting reports whether the first generation should wait a little
// longer for a node that dropped its session a moment ago (s.mu held).
func (j *job) reconnecting() bool {
	now := time.Now()
	nt := j.s.timing.Load().nodeTimeout
	if j.lastCall.IsZero() {
		j.lastCall = now.Add(2 * nt)
	}
	if now.After(j.lastCall) {
		return false
	}
	for _, n := range j.s.nodes {
		if n.sess == nil && !n.lost && !n.Quarantined && n.NProc >= j.rec.Spec.NProcPerNode && now.Sub(n.lastHeard()) < 2*nt {
			return true
		}
	}
	return false
}

// startMsg is the start of the generation for its i-th node (s.mu held).
func (j *job) startMsg(i int) wire.Msg {
	return wire.Msg{Type: wire.TStart, Job: j.rec.Spec.ID, Gen: j.rec.Gen,
		Spec: j.wireSpec(j.rec.World, j.rec.Placement[i].Ranks, i, len(j.rec.Placement), j.rec.MasterAddr, j.rec.MasterPort)}
}

// releaseHeld sends the starts held back for rank 0's store (s.mu held).
func (j *job) releaseHeld() {
	for _, i := range j.held {
		if n := j.s.nodes[j.rec.Placement[i].Node]; n != nil && n.sess != nil {
			n.sess.send(j.startMsg(i))
		}
	}
	j.held = nil
}

// Regroup implements supervisor.Node: live recovery across nodes. Every
// node that holds a survivor renumbers its workers in place; replacements
// that are ready take the ranks after them (a grow); the new rank 0's node
// hosts the rendezvous. A lost node's ranks are simply not in the new
// generation: its workers, if any still run, cannot step without the
// survivors, who have left their group.
func (j *job) Regroup(spec launcher.RegroupSpec) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	sp := j.rec.Spec
	nodeOf := map[int]string{}
	for _, p := range j.rec.Placement {
		for _, r := range p.Ranks {
			nodeOf[r] = p.Node
		}
	}
	var order []string
	newRanks, admit := map[string][]int{}, map[string][]int{}
	add := func(n string) {
		if _, ok := newRanks[n]; !ok {
			order = append(order, n)
			newRanks[n] = nil
		}
	}
	for newRank, old := range spec.Survivors {
		add(nodeOf[old])
		newRanks[nodeOf[old]] = append(newRanks[nodeOf[old]], newRank)
	}
	// Admitted replacements, from the nodes where they are ready.
	next := len(spec.Survivors)
	for _, name := range j.joinerNodes() {
		for j.ready[name] > 0 && next < len(spec.Survivors)+spec.Admit {
			add(name)
			newRanks[name] = append(newRanks[name], next)
			admit[name] = append(admit[name], next)
			j.ready[name]--
			j.joiners[name]--
			next++
		}
	}
	if len(order) == 0 {
		return errors.New("regroup without survivors")
	}
	// A rank to kill on a node that keeps no member (a straggler moved
	// off it) gets no regroup there: kill it directly.
	for _, r := range spec.Kill {
		name := nodeOf[r]
		if _, member := newRanks[name]; member || name == "" {
			continue // that node's regroup kills it
		}
		if n := j.s.nodes[name]; n != nil && n.sess != nil {
			n.sess.send(wire.Msg{Type: wire.TSignal, Job: sp.ID, Gen: spec.From, Rank: r, Sig: "SIGKILL"})
		}
	}
	world := next
	first := j.s.nodes[order[0]]
	port := first.takePort(29500 + spec.Gen%1000)
	j.prevGen, j.prevPlacement = j.rec.Gen, j.rec.Placement
	j.grewFrom = 0
	if spec.Grow {
		j.grewFrom = j.rec.Gen
	}
	j.rec.Gen, j.rec.World = spec.Gen, world
	j.rec.MasterAddr, j.rec.MasterPort = first.Addr, port
	j.rec.Placement, j.where = nil, nil
	j.held = nil // held starts index the placement replaced here
	j.launched, j.stopped, j.stopping, j.faulted = map[string]bool{}, map[string]bool{}, false, false
	j.frozen = map[string][]int{}
	admitted := world - len(spec.Survivors)
	for gi, name := range order {
		j.rec.Placement = append(j.rec.Placement, placement{Node: name, Ranks: newRanks[name]})
		n := j.s.nodes[name]
		if n == nil || n.sess == nil {
			continue // lost meanwhile: its absence will be the next fault
		}
		n.sess.send(wire.Msg{Type: wire.TRegroup, Job: sp.ID, Gen: spec.Gen, From: spec.From, Survivors: spec.Survivors,
			Kill: spec.Kill, Admitted: admitted, AdmitRanks: admit[name], Grow: spec.Grow, AtStep: max(spec.AtStep, 0),
			Spec: j.wireSpec(world, newRanks[name], gi, len(order), first.Addr, port)})
	}
	j.save()
	what := "regroup"
	if spec.Grow {
		what = "grow"
	}
	j.s.con.Printf("↻ %s: generation %d on %d nodes %s · world %d · rendezvous %s:%d", what, spec.Gen, len(order), someNames(order), world, first.Addr, port)
	if err := j.spawn(spec.Spawn); err != nil {
		// The survivors train on; the policy waits for replacements that
		// will not come, which costs nothing but the missing ranks.
		j.s.con.Printf("! %v", err)
	}
	return nil
}

func (j *job) wireSpec(world int, ranks []int, group, groups int, addr string, port int) *wire.Spec {
	sp := j.rec.Spec
	return &wire.Spec{RunID: sp.ID, Command: sp.Command, Dir: sp.Dir, MaxRestarts: sp.MaxRestarts, ProgressRegex: sp.ProgressRegex,
		Standby: sp.Standby, Live: sp.Recovery == "live", StopGraceMS: sp.StopGraceMS, RestartCount: j.rec.Restarts,
		WorkReports: sp.Recovery == "live" && sp.StragglerAction != "" && sp.StragglerAction != "off",
		WorldSize:   world, Ranks: ranks, GroupRank: group, GroupWorldSize: groups, MasterAddr: addr, MasterPort: port}
}

// joinerNodes lists the nodes holding replacements, in name order.
func (j *job) joinerNodes() []string {
	var out []string
	for name, n := range j.joiners {
		if n > 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// SpawnJoiners implements supervisor.Node: start n replacements where
// there are free slots — spares first, then idle nodes, then free slots of
// the generation's own nodes.
func (j *job) SpawnJoiners(n int) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	return j.spawn(n)
}

func (j *job) spawn(n int) error {
	if n <= 0 {
		return nil
	}
	if j.joiners == nil {
		j.joiners, j.ready = map[string]int{}, map[string]int{}
	}
	hosts := joinerHosts(j.s.nodes, j.ranksOf)
	for _, nd := range hosts {
		free := nd.NProc - len(j.ranksOf(nd.Name)) - j.joiners[nd.Name]
		k := min(free, n)
		if k <= 0 {
			continue
		}
		nd.sess.send(wire.Msg{Type: wire.TSpawn, Job: j.rec.Spec.ID, Count: k, Spec: j.wireSpec(1, []int{0}, 0, 1, nd.Addr, 1)})
		j.joiners[nd.Name] += k
		j.s.con.Printf("+ starting %d replacement(s) on %s", k, nd.Name)
		n -= k
		if n == 0 {
			return nil
		}
	}
	return fmt.Errorf("no free slot for %d replacement(s): add a node or a spare", n)
}

// StopGeneration implements supervisor.Node.
func (j *job) StopGeneration(gen int, grace time.Duration) {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	if gen != j.rec.Gen && j.pending == nil {
		if gen > j.rec.Gen {
			j.stopFirst = gen // its start is on its way
		}
		return
	}
	if j.pending != nil {
		// Never launched: nothing to stop.
		j.pending = nil
		j.emit(launcher.Stopped{Gen: gen, At: time.Now()})
		return
	}
	j.stopping = true
	for _, i := range j.held {
		j.stopped[j.rec.Placement[i].Node] = true // never started
	}
	j.held = nil
	// One encoding for every node (10,000 of them at scale).
	m := wire.Msg{Type: wire.TStop, Job: j.rec.Spec.ID, Gen: gen, Grace: int(grace / time.Millisecond)}
	b, err := wire.Encode(m)
	for _, p := range j.rec.Placement {
		if n := j.s.nodes[p.Node]; n != nil && n.sess != nil && !j.stopped[p.Node] {
			if err != nil {
				n.sess.send(m) // ends the session, saying why
			} else {
				n.sess.sendBytes(b)
			}
		}
	}
	j.checkStopped(time.Now(), true)
}

// checkStopped reports Stopped once every node of the generation has reaped
// its workers, or is gone and its lease has run out (s.mu held). Without
// full only the count is checked: O(1) per report, for 10,000 nodes.
func (j *job) checkStopped(now time.Time, full bool) {
	if !j.stopping {
		return
	}
	if len(j.stopped) < len(j.rec.Placement) && full {
		for _, p := range j.rec.Placement {
			if j.stopped[p.Node] {
				continue
			}
			if n := j.s.nodes[p.Node]; n != nil && n.lost && !now.Before(n.fenceAt) {
				continue // given up on, and its lease is over
			}
			return
		}
	} else if len(j.stopped) < len(j.rec.Placement) {
		return
	}
	j.stopping = false
	j.emit(launcher.Stopped{Gen: j.rec.Gen, At: now})
}

// Signal implements supervisor.Node (chaos).
func (j *job) Signal(gen, rank int, sig syscall.Signal) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	for _, p := range j.rec.Placement {
		if slices.Contains(p.Ranks, rank) {
			if n := j.s.nodes[p.Node]; n != nil && n.sess != nil {
				n.sess.send(wire.Msg{Type: wire.TSignal, Job: j.rec.Spec.ID, Gen: gen, Rank: rank, Sig: supervisor.SignalName(sig)})
				return nil
			}
		}
	}
	return fmt.Errorf("rank %d is on no connected node", rank)
}

// LiveRanks implements supervisor.Node.
func (j *job) LiveRanks(gen int) []int {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	var out []int
	for _, p := range j.rec.Placement {
		if n := j.s.nodes[p.Node]; n != nil && n.sess != nil && gen == j.rec.Gen {
			out = append(out, p.Ranks...)
		}
	}
	return out
}

// Culprit implements supervisor.Node: a rank its node reported stopped;
// else the policy's own evidence (the lagging rank) is used instead (CPU
// samples are on the nodes).
func (j *job) Culprit(gen int, _ bool) (int, string) {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	if gen != j.rec.Gen {
		return -1, ""
	}
	for _, name := range slices.Sorted(maps.Keys(j.frozen)) {
		if rs := j.frozen[name]; len(rs) > 0 {
			return rs[0], "process stopped (state T) on node " + name
		}
	}
	return -1, ""
}

// busyProbe is one Busy call's question to the nodes of a generation.
type busyProbe struct {
	gen     int
	waiting map[string]bool // nodes yet to answer
	busy    []int
	stopped bool // a node saw one of its ranks stopped
	done    chan struct{}
}

// probeWait bounds how long Busy waits for the nodes' answers (each samples
// its workers for 200 ms). A node that has not answered by then counts as
// not busy: a stall nobody vouches for is a hang, as before the probe.
const probeWait = time.Second

// Busy implements supervisor.Node: the ranks of gen that use CPU, as their
// nodes see them (a probe message each; the supervisor's loop waits for
// the answers, up to probeWait). None when a rank is stopped.
func (j *job) Busy(gen int) []int {
	j.s.mu.Lock()
	if gen != j.rec.Gen || j.anyFrozen() {
		j.s.mu.Unlock()
		return nil
	}
	p := &busyProbe{gen: gen, waiting: map[string]bool{}, done: make(chan struct{})}
	for _, pl := range j.rec.Placement {
		if n := j.s.nodes[pl.Node]; n != nil && n.sess != nil && len(pl.Ranks) > 0 && !p.waiting[pl.Node] {
			p.waiting[pl.Node] = true
			n.sess.send(wire.Msg{Type: wire.TProbe, Job: j.rec.Spec.ID, Gen: gen})
		}
	}
	if len(p.waiting) == 0 {
		j.s.mu.Unlock()
		return nil
	}
	j.probe = p
	j.s.mu.Unlock()
	t := time.NewTimer(probeWait)
	select {
	case <-p.done:
	case <-t.C:
	}
	t.Stop()
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	if j.probe == p {
		j.probe = nil
	}
	if p.stopped || j.anyFrozen() {
		return nil
	}
	busy := slices.Clone(p.busy)
	slices.Sort(busy)
	return busy
}

func (j *job) anyFrozen() bool { // s.mu held
	for _, rs := range j.frozen {
		if len(rs) > 0 {
			return true
		}
	}
	return false
}

// Stopped implements supervisor.Node: the ranks of gen the nodes reported
// stopped (proc_stopped, sent when a node's set changes).
func (j *job) Stopped(gen int) []int {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	if gen != j.rec.Gen {
		return nil
	}
	var out []int
	for _, rs := range j.frozen {
		out = append(out, rs...)
	}
	slices.Sort(out)
	return out
}

// ---- from the agents (s.mu held) ----

func (j *job) fromAgent(n *node, m wire.Msg) {
	joinerMsg := m.Type == wire.TJoinerReady || m.Type == wire.TJoinerLost
	// A member's steps in the generation a grow moved it from (ranks are
	// kept in a grow, so the checks below hold for them too).
	grownStep := m.Type == wire.TProgress && j.grewFrom > 0 && m.Gen == j.grewFrom
	if m.Job != j.rec.Spec.ID || (m.Gen != j.rec.Gen && !joinerMsg && !grownStep) || j.rec.Done {
		return // another job's, or a stale generation's
	}
	// A node speaks for itself only: its own part of the generation, its
	// own ranks.
	mine := j.ranksOf(n.Name)
	switch {
	case joinerMsg:
	case len(mine) == 0:
		return
	case (m.Type == wire.TExited || m.Type == wire.TProgress || m.Type == wire.TCollectiveFailed || m.Type == wire.TWork) && !slices.Contains(mine, m.Rank):
		j.s.con.Printf("! node %s reported rank %d, which it does not hold: ignored", n.Name, m.Rank)
		return
	}
	switch m.Type {
	case wire.TLaunched:
		j.launched[n.Name] = true
		j.maybeLaunched()
	case wire.TProgress:
		if m.Step > j.rec.Step {
			j.rec.Step = m.Step
		}
		j.emit(launcher.Progress{Gen: m.Gen, Rank: m.Rank, Step: m.Step, At: time.Now()})
	case wire.TExited:
		j.faulted = j.faulted || m.Code != 0 || m.Sig != ""
		j.emit(launcher.Exited{Gen: m.Gen, Rank: m.Rank, Code: m.Code, Signal: m.Sig, LastError: m.Err, At: agentTime(m.AtMS),
			Output: m.Out, NewOutput: m.NewOut})
	case wire.TCollectiveFailed:
		j.emit(launcher.CollectiveFailed{Gen: m.Gen, Rank: m.Rank, Detail: m.Err})
	case wire.TProcStopped:
		var own []int
		for _, r := range m.StoppedRanks {
			if slices.Contains(mine, r) {
				own = append(own, r)
			}
		}
		if len(own) < len(m.StoppedRanks) {
			j.s.con.Printf("! node %s reported stopped ranks %v, of which it holds %v: the others ignored", n.Name, m.StoppedRanks, own)
		}
		j.frozen[n.Name] = own
	case wire.TBusy:
		p := j.probe
		if p == nil || p.gen != m.Gen || !p.waiting[n.Name] {
			return // late, or not asked
		}
		delete(p.waiting, n.Name)
		for _, r := range m.BusyRanks {
			if slices.Contains(mine, r) { // a node speaks for its own ranks only
				p.busy = append(p.busy, r)
			}
		}
		p.stopped = p.stopped || len(m.StoppedRanks) > 0
		if len(p.waiting) == 0 {
			close(p.done)
		}
	case wire.TWork:
		j.emit(launcher.Work{Gen: m.Gen, Rank: m.Rank, Steps: m.Steps, At: time.Now(),
			Work: time.Duration(m.WorkUS) * time.Microsecond, Wall: time.Duration(m.WallUS) * time.Microsecond})
	case wire.TListening:
		if m.Err != "" && !j.noStagger {
			j.noStagger = true // it will not listen next time either
			j.s.con.Printf("  rank 0 did not listen on MASTER_PORT: the other nodes start without waiting from now on")
		}
		j.releaseHeld()
	case wire.TJoinerReady:
		if j.joiners[n.Name] > j.ready[n.Name] {
			j.ready[n.Name]++
			j.emit(launcher.JoinerReady{At: time.Now()})
		}
	case wire.TJoinerLost:
		if j.joiners[n.Name] > 0 {
			j.joiners[n.Name]--
			j.ready[n.Name] = min(j.ready[n.Name], j.joiners[n.Name])
			j.emit(launcher.JoinerLost{At: time.Now()})
		}
	case wire.TStopped:
		j.stopped[n.Name] = true
		j.checkStopped(time.Now(), false) // lost nodes are for the next tick
	case wire.TFenced:
		j.stopped[n.Name] = true
		j.nodeLost(n, "it stopped its workers: "+m.Reason, time.Now())
		j.checkStopped(time.Now(), true)
	}
}

func agentTime(msec int64) time.Time {
	if msec <= 0 {
		return time.Now()
	}
	t := time.UnixMilli(msec)
	if now := time.Now(); t.After(now) {
		return now // clock skew: never a negative latency
	}
	return t
}

// maybeLaunched reports Launched once every node of the generation has
// started its workers.
func (j *job) maybeLaunched() {
	if len(j.launched) < len(j.rec.Placement) || j.stopping {
		return
	}
	world := 0
	if j.rec.World != j.rec.Spec.NNodesMax*j.rec.Spec.NProcPerNode {
		world = j.rec.World
	}
	j.adopting = false
	j.emit(launcher.Launched{Gen: j.rec.Gen, At: time.Now(), World: world})
}

// nodeLost turns the loss of a node that holds ranks into a fault of the
// generation (once).
func (j *job) nodeLost(n *node, why string, at time.Time) {
	j.logAsync(events.Event{Type: events.NodeLost, Node: n.Name, Gen: j.rec.Gen, Detail: why})
	ranks := j.ranksOf(n.Name)
	if len(ranks) == 0 || j.stopped[n.Name] {
		j.checkStopped(time.Now(), true)
		return
	}
	if j.adopting && !j.launched[n.Name] {
		// Resumed and this node never came back: the generation cannot be
		// adopted; report it launched so the policy handles the fault.
		j.launched[n.Name] = true
		j.maybeLaunched()
	}
	j.emit(launcher.Exited{Gen: j.rec.Gen, Rank: ranks[0], Also: ranks[1:], Code: -1, Signal: policy.SignalNodeLost,
		LastError: fmt.Sprintf("node %s lost: %s", n.Name, why), At: at})
	if !n.fenceAt.After(time.Now()) {
		j.stopped[n.Name] = true // its workers are gone with its agent: no need to wait for a tick
	}
	j.checkStopped(time.Now(), true)
}

// nodeBack reconciles a (re)connecting agent with the job (s.mu held).
func (j *job) nodeBack(n *node, cur *wire.NodeState, restarted, wasLost bool) {
	mine := j.holds(n)
	if cur != nil && (cur.Job != j.rec.Spec.ID || j.rec.Done) && !cur.Stopped {
		n.sess.send(wire.Msg{Type: wire.TEnd, Job: cur.Job}) // not ours: stop it
	}
	if cur != nil && cur.Job == j.rec.Spec.ID && !j.rec.Done {
		switch {
		case cur.Gen != j.rec.Gen || !mine:
			if !cur.Stopped {
				n.sess.send(wire.Msg{Type: wire.TStop, Job: cur.Job, Gen: cur.Gen})
			}
		case wasLost:
			// Already given up on; make sure its workers are gone.
			if !cur.Stopped {
				n.sess.send(wire.Msg{Type: wire.TStop, Job: cur.Job, Gen: cur.Gen})
			} else {
				j.stopped[n.Name] = true
			}
		default:
			// Our generation, still held by this node: adopt it.
			for _, e := range cur.Exited {
				j.fromAgent(n, e)
			}
			if cur.Stopped {
				j.stopped[n.Name] = true
				if !j.faulted {
					j.emit(launcher.Exited{Gen: j.rec.Gen, Rank: j.ranksOf(n.Name)[0], Code: -1, Signal: policy.SignalNodeLost,
						LastError: fmt.Sprintf("node %s stopped its workers while the coordinator was away", n.Name), At: time.Now()})
					j.faulted = true
				}
			} else if !j.launched[n.Name] {
				j.launched[n.Name] = true
				j.maybeLaunched()
			}
			if j.stopping && !cur.Stopped {
				n.sess.send(wire.Msg{Type: wire.TStop, Job: cur.Job, Gen: cur.Gen})
			}
			j.checkStopped(time.Now(), true)
		}
	} else if mine && !j.rec.Done && (restarted || cur == nil) && !j.stopped[n.Name] && !wasLost {
		// It held ranks and comes back without them: a new agent process,
		// so its workers died with the old one.
		j.s.con.Printf("! node %s lost its workers: its agent restarted", n.Name)
		j.nodeLost(n, "its agent restarted", time.Now())
		j.stopped[n.Name] = true
		j.checkStopped(time.Now(), true)
		j.s.fault(n, "its agent restarted")
	}
	j.capacityChanged(n)
}

// tick: silent nodes that never came back after a resume, and stops that
// wait for a lease (s.mu held).
func (j *job) tick(now time.Time) {
	if j.rec.Done {
		return
	}
	if len(j.held) > 0 && now.After(j.heldUntil) {
		j.releaseHeld()
	}
	if j.pending != nil && !j.lastCall.IsZero() && now.After(j.lastCall) {
		j.launchPending() // the last call is over: start with the nodes there are
	}
	// The step reached, for the next coordinator's rollback accounting.
	if j.rec.Step != j.savedStep && now.Sub(j.savedAt) > 2*time.Second {
		j.save()
	}
	if j.adopting && now.After(j.resumeBy) {
		for _, p := range j.rec.Placement {
			if n := j.s.nodes[p.Node]; n != nil && n.sess == nil && !n.lost && !j.launched[p.Node] {
				n.lost = true
				j.s.con.Printf("! node %s lost: did not come back after the coordinator restarted", n.Name)
				j.nodeLost(n, "did not come back after the coordinator restarted", n.lastHeard())
				j.s.fault(n, "did not come back after the coordinator restarted")
			}
		}
	}
	j.checkStopped(now, true)
}
