// Package wire is the protocol between the coordinator and its agents: JSON
// messages, one per line, over a connection that starts as an authenticated
// HTTP request (POST /v1/agent, upgraded) on the coordinator's one port.
//
// Every message is decoded by Decode, which rejects anything oversized,
// unknown or incomplete with an error; a session (the caller) rejects
// messages that arrive out of order. Nothing here trusts the peer.
package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// MaxMessage is the largest message either side accepts (a start message
// carries the command line; nothing legitimate comes near this).
const MaxMessage = 1 << 20

// Protocol is the value of the Upgrade header and the version agents send.
const Protocol = "bulsajo-agent/1"

// Message types.
const (
	// agent -> coordinator
	THello            = "hello"             // first message of a session
	THeartbeat        = "heartbeat"         // every HeartbeatMS (which it carries: the interval the agent is on); renews the lease
	TLaunched         = "launched"          // every local worker of a generation started
	TExited           = "exited"            // a worker ended
	TProgress         = "progress"          // a worker committed a step
	TStopped          = "stopped"           // every local worker of a generation reaped
	TFenced           = "fenced"            // the agent stopped its workers on its own (lease expired)
	TListening        = "listening"         // rank 0's store listens (Err "timeout": it did not within the cap)
	TBye              = "bye"               // the agent closes this session itself but lives on (workers until its lease ends)
	TCollectiveFailed = "collective_failed" // live: a worker's collective broke (Err says how)
	TJoinerReady      = "joiner_ready"      // live: a replacement process is up, waiting to be admitted
	TJoinerLost       = "joiner_lost"       // live: a replacement process died before admission
	TGPU              = "gpu_health"        // a GPU verdict (Class drain/restart/warn, GPU, UUID, Reason)
	TWork             = "work"              // live: a rank's work time over Steps steps (WorkUS of WallUS), for straggler detection
	TProcStopped      = "proc_stopped"      // this node's ranks of Gen whose processes are stopped now (StoppedRanks; none: none any more)
	TBusy             = "busy"              // answer to probe: this node's ranks of Gen using CPU (BusyRanks), or the stopped ones (StoppedRanks)
	// coordinator -> agent
	TWelcome = "welcome" // answer to hello
	TAck     = "ack"     // answer to heartbeat; with HeartbeatMS and LeaseMS: the timing changed (from now on)
	TStart   = "start"   // start this node's part of a generation
	TRegroup = "regroup" // live: this node's survivors form generation Gen in place (Spec: the new part)
	TSpawn   = "spawn"   // live: start Count replacement processes for the job (Spec: the job)
	TPrepare = "prepare" // a node outside the generation (a spare) pre-starts standby workers for the job (Spec)
	TStop    = "stop"    // stop a generation
	TSignal  = "signal"  // send a signal to one rank (chaos)
	TProbe   = "probe"   // the job stalls: which of this node's ranks of Gen use CPU? (answer: busy)
	TEnd     = "end"     // the job is over: release its resources
	TReject  = "reject"  // the coordinator refuses the session; Reason says why
)

// Msg is every message; Type says which fields mean something.
type Msg struct {
	Type string `json:"type"`

	// hello
	Name     string     `json:"name,omitempty"`
	Version  string     `json:"version,omitempty"`
	NProc    int        `json:"nproc,omitempty"`
	Spare    bool       `json:"spare,omitempty"`
	Addr     string     `json:"addr,omitempty"` // host workers of other nodes reach this node at
	Instance string     `json:"instance,omitempty"`
	Current  *NodeState `json:"current,omitempty"`

	// heartbeat / ack
	Seq      uint64 `json:"seq,omitempty"`
	FreePort int    `json:"free_port,omitempty"` // a port free on the node for the next rendezvous

	// welcome, and an ack when the timing changes (both set): the lease and
	// the heartbeat interval from now on. In a heartbeat, HeartbeatMS is the
	// interval the agent is on (agents before it was added send none; an
	// agent before the ack carried it ignores it there and keeps the
	// welcome's timing).
	LeaseMS     int `json:"lease_ms,omitempty"`
	HeartbeatMS int `json:"heartbeat_ms,omitempty"`

	// job and generation (start, stop, signal, end; launched, exited, progress, stopped)
	Job   string `json:"job,omitempty"`
	Gen   int    `json:"gen,omitempty"`
	Spec  *Spec  `json:"spec,omitempty"`
	Rank  int    `json:"rank,omitempty"`
	Step  int    `json:"step,omitempty"`
	Code  int    `json:"code,omitempty"`
	Sig   string `json:"sig,omitempty"`
	Err   string `json:"err,omitempty"`
	AtMS  int64  `json:"at_ms,omitempty"`    // unix ms on the agent's clock
	Grace int    `json:"grace_ms,omitempty"` // stop
	// exited: lines the generation printed before it, and of them new ones
	Out    int `json:"out,omitempty"`
	NewOut int `json:"new_out,omitempty"`

	Reason string `json:"reason,omitempty"` // reject, fenced

	// regroup: old ranks Survivors[i] of generation From become rank i;
	// Kill lists old ranks to kill first.
	From      int   `json:"from,omitempty"`
	Survivors []int `json:"survivors,omitempty"`
	Kill      []int `json:"kill,omitempty"`
	// Admitted replacements in the whole new generation (ranks after the
	// survivors); AdmitRanks are the ones this node's joiners take.
	Admitted   int   `json:"admitted,omitempty"`
	AdmitRanks []int `json:"admit_ranks,omitempty"`
	Grow       bool  `json:"grow,omitempty"`    // no fault: switch after committing AtStep
	AtStep     int   `json:"at_step,omitempty"` // grow
	Count      int   `json:"count,omitempty"`   // spawn

	// work: over Steps steps of rank Rank, WorkUS µs of WallUS were its own
	// computation (sent only when the job's Spec asks for WorkReports).
	Steps  int   `json:"steps,omitempty"`
	WorkUS int64 `json:"work_us,omitempty"`
	WallUS int64 `json:"wall_us,omitempty"`

	// proc_stopped: the ranks (SIGSTOP, a tracer), sent when the set changes;
	// busy: the node's ranks stopped at the probe
	StoppedRanks []int `json:"stopped_ranks,omitempty"`
	// busy: the node's ranks that used CPU (or were runnable, or in disk
	// I/O) over a short sample
	BusyRanks []int `json:"busy_ranks,omitempty"`

	// gpu_health: GPU is the index on the node (-1: every GPU)
	GPU   int    `json:"gpu,omitempty"`
	UUID  string `json:"uuid,omitempty"`
	Class string `json:"class,omitempty"`
}

// Spec is one node's part of a generation, with the job it belongs to.
type Spec struct {
	RunID          string   `json:"run_id"`
	Command        []string `json:"command"`
	Dir            string   `json:"dir,omitempty"`
	MaxRestarts    int      `json:"max_restarts"`
	ProgressRegex  string   `json:"progress_regex,omitempty"`
	Standby        bool     `json:"standby,omitempty"`
	Live           bool     `json:"live,omitempty"` // workers use the SDK's live recovery
	StopGraceMS    int      `json:"stop_grace_ms,omitempty"`
	RestartCount   int      `json:"restart_count"`
	WorldSize      int      `json:"world_size"`
	Ranks          []int    `json:"ranks"`
	GroupRank      int      `json:"group_rank"`
	GroupWorldSize int      `json:"group_world_size"`
	MasterAddr     string   `json:"master_addr"`
	MasterPort     int      `json:"master_port"`
	// WorkReports: forward the workers' work-time reports (TWork). Set
	// only for a live job that detects stragglers (the default for live),
	// so an agent never sends TWork to a coordinator that did not ask; an
	// agent of an earlier version refuses a spec with it (unknown field).
	WorkReports bool `json:"work_reports,omitempty"`
}

// NodeState is what an agent that reconnects tells the coordinator about the
// generation it holds, so a restarted coordinator can adopt it.
type NodeState struct {
	Job     string `json:"job"`
	Gen     int    `json:"gen"`
	Running []int  `json:"running"` // ranks still running
	Exited  []Msg  `json:"exited,omitempty"`
	Stopped bool   `json:"stopped,omitempty"` // every worker reaped
	Step    int    `json:"step"`
}

// Errors.
var (
	ErrTooLarge = errors.New("wire: message too large")
	ErrInvalid  = errors.New("wire: invalid message")
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	sigRE  = regexp.MustCompile(`^SIG[A-Z0-9]{2,8}$`)
)

// ValidName reports whether s is a usable node or job name.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func invalid(t, why string) error { return fmt.Errorf("%w: %s: %s", ErrInvalid, t, why) }

// Decode parses and validates one message.
func Decode(line []byte) (Msg, error) {
	if len(line) > MaxMessage {
		return Msg{}, ErrTooLarge
	}
	if m, ok := decodeFast(line); ok {
		return m, m.Validate()
	}
	return decodeJSON(line)
}

// decodeJSON is Decode through encoding/json (every message but the
// commonest messages).
func decodeJSON(line []byte) (Msg, error) {
	var m Msg
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Msg{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// dec.More would miss a stray '}' or ']': only JSON whitespace may follow.
	if len(bytes.Trim(line[dec.InputOffset():], " \t\r\n")) > 0 {
		return Msg{}, invalid(m.Type, "trailing data")
	}
	return m, m.Validate()
}

// Validate checks the fields a message of its type must have.
func (m *Msg) Validate() error {
	t := m.Type
	switch t {
	case THello:
		if !ValidName(m.Name) {
			return invalid(t, "node name must be 1-63 of [A-Za-z0-9._-]")
		}
		if m.NProc < 1 || m.NProc > 1024 {
			return invalid(t, "nproc must be 1..1024")
		}
		if len(m.Addr) == 0 || len(m.Addr) > 255 {
			return invalid(t, "addr missing")
		}
		if m.FreePort < 0 || m.FreePort > 65535 {
			return invalid(t, "port out of range")
		}
		if s := m.Current; s != nil {
			if !ValidName(s.Job) || s.Gen < 1 || len(s.Running) > 1024 || len(s.Exited) > 1024 {
				return invalid(t, "bad current state")
			}
			seen := map[int]bool{}
			for _, r := range s.Running {
				if r < 0 || seen[r] {
					return invalid(t, "running ranks in current state must be distinct and >= 0")
				}
				seen[r] = true
			}
			for i := range s.Exited {
				e := &s.Exited[i]
				// An entry is a plain exited message: a nested state or spec
				// would go unvalidated (and nest without bound).
				if e.Type != TExited || e.Current != nil || e.Spec != nil || e.Validate() != nil {
					return invalid(t, "bad exited entry in current state")
				}
			}
		}
	case THeartbeat, TAck:
		if m.FreePort < 0 || m.FreePort > 65535 {
			return invalid(t, "port out of range")
		}
		switch {
		case t == THeartbeat && m.LeaseMS != 0:
			return invalid(t, "a heartbeat carries no lease")
		case t == THeartbeat && (m.HeartbeatMS < 0 || m.HeartbeatMS > MaxHeartbeatMS):
			return invalid(t, "heartbeat interval out of range")
		case t == TAck && (m.LeaseMS != 0 || m.HeartbeatMS != 0):
			return validTiming(t, m.LeaseMS, m.HeartbeatMS)
		}
	case TWelcome:
		return validTiming(t, m.LeaseMS, m.HeartbeatMS)
	case TLaunched, TStopped, TStop, TEnd, TListening:
		if !ValidName(m.Job) || (t != TEnd && m.Gen < 1) || m.Grace < 0 {
			return invalid(t, "job and generation required")
		}
	case TExited, TProgress, TSignal:
		if !ValidName(m.Job) || m.Gen < 1 || m.Rank < 0 || m.Step < 0 {
			return invalid(t, "job, generation and rank required")
		}
		if m.Out < 0 || m.NewOut < 0 || m.NewOut > m.Out {
			return invalid(t, "output counts out of range")
		}
		if (t == TSignal || m.Sig != "") && !sigRE.MatchString(m.Sig) {
			return invalid(t, "bad signal name")
		}
	case TFenced, TReject, TBye:
		if m.Reason == "" {
			return invalid(t, "reason required")
		}
	case TStart:
		if !ValidName(m.Job) || m.Gen < 1 || m.Spec == nil {
			return invalid(t, "job, generation and spec required")
		}
		return m.Spec.validate()
	case TRegroup:
		if !ValidName(m.Job) || m.Gen < 2 || m.From < 1 || m.From >= m.Gen || m.Spec == nil {
			return invalid(t, "job, generations and spec required")
		}
		if len(m.Survivors)+m.Admitted != m.Spec.WorldSize || m.Admitted < 0 || len(m.AdmitRanks) > m.Admitted ||
			len(m.Kill) > 1024 || m.AtStep < 0 {
			return invalid(t, "survivors and admitted replacements must make up the new world")
		}
		for _, r := range m.AdmitRanks {
			if r < len(m.Survivors) || r >= m.Spec.WorldSize {
				return invalid(t, "a replacement's rank must follow the survivors'")
			}
		}
		seen := map[int]bool{}
		for _, r := range append(append([]int(nil), m.Survivors...), m.Kill...) {
			if r < 0 || r > 1<<20 {
				return invalid(t, "rank out of range")
			}
			if seen[r] {
				return invalid(t, "a rank both survives and is killed, or twice")
			}
			seen[r] = true
		}
		return m.Spec.validate()
	case TSpawn:
		if !ValidName(m.Job) || m.Count < 1 || m.Count > 1024 || m.Spec == nil {
			return invalid(t, "job, count 1..1024 and spec required")
		}
		return m.Spec.validateJob()
	case TPrepare:
		if !ValidName(m.Job) || m.Spec == nil {
			return invalid(t, "job and spec required")
		}
		return m.Spec.validateJob()
	case TJoinerReady, TJoinerLost:
		if !ValidName(m.Job) {
			return invalid(t, "job required")
		}
	case TCollectiveFailed:
		if !ValidName(m.Job) || m.Gen < 1 || m.Rank < 0 {
			return invalid(t, "job, generation and rank required")
		}
	case TWork:
		const maxUS = int64(1e12) // about 11 days
		if !ValidName(m.Job) || m.Gen < 1 || m.Rank < 0 || m.Steps < 1 || m.Steps > 1e6 ||
			m.WallUS < 1 || m.WallUS > maxUS || m.WorkUS < 0 || m.WorkUS > maxUS {
			return invalid(t, "job, generation, rank, steps 1..1e6 and work/wall times required")
		}
	case TProcStopped, TBusy:
		if !ValidName(m.Job) || m.Gen < 1 || len(m.StoppedRanks) > 1024 || len(m.BusyRanks) > 1024 {
			return invalid(t, "job and generation required, at most 1024 ranks")
		}
		if !distinctRanks(m.StoppedRanks) || !distinctRanks(m.BusyRanks) {
			return invalid(t, "ranks must be distinct and >= 0")
		}
	case TProbe:
		if !ValidName(m.Job) || m.Gen < 1 {
			return invalid(t, "job and generation required")
		}
	case TGPU:
		switch {
		case m.Class != "drain" && m.Class != "restart" && m.Class != "warn":
			return invalid(t, "class must be drain, restart or warn")
		case m.GPU < -1 || m.GPU >= 1024:
			return invalid(t, "gpu index out of range")
		case m.Reason == "" || len(m.Reason) > 1024 || len(m.UUID) > 128:
			return invalid(t, "reason (1-1024 bytes) required, uuid up to 128")
		case m.Job != "" && !ValidName(m.Job), m.Gen < 0:
			return invalid(t, "bad job or generation")
		}
	case "":
		return invalid("message", "type missing")
	default:
		return invalid(t, "unknown type")
	}
	return nil
}

func distinctRanks(rs []int) bool {
	seen := make(map[int]bool, len(rs))
	for _, r := range rs {
		if r < 0 || seen[r] {
			return false
		}
		seen[r] = true
	}
	return true
}

// MaxHeartbeatMS bounds the heartbeat interval either side accepts.
const MaxHeartbeatMS = 10 * 60 * 1000

// validTiming checks a lease and heartbeat interval a coordinator gives.
func validTiming(t string, leaseMS, heartbeatMS int) error {
	if leaseMS < 100 || heartbeatMS < 10 || heartbeatMS >= leaseMS || heartbeatMS > MaxHeartbeatMS {
		return invalid(t, "lease and heartbeat must satisfy 10 <= heartbeat < lease, lease >= 100 ms, heartbeat <= 10 min")
	}
	return nil
}

// validateJob checks the job's part of a spec (what a spawn needs).
func (s *Spec) validateJob() error {
	bad := func(why string) error { return invalid("spec", why) }
	switch {
	case !ValidName(s.RunID):
		return bad("run id")
	case len(s.Command) == 0 || s.Command[0] == "":
		return bad("command missing")
	case s.MaxRestarts < 0 || s.RestartCount < 0 || s.StopGraceMS < 0:
		return bad("negative count")
	}
	if s.ProgressRegex != "" {
		if _, err := regexp.Compile(s.ProgressRegex); err != nil {
			return bad("progress regex: " + err.Error())
		}
	}
	return nil
}

func (s *Spec) validate() error {
	if err := s.validateJob(); err != nil {
		return err
	}
	bad := func(why string) error { return invalid(TStart, why) }
	switch {
	case s.WorldSize < 1 || len(s.Ranks) == 0 || len(s.Ranks) > s.WorldSize:
		return bad("world size and ranks")
	case s.GroupWorldSize < 1 || s.GroupRank < 0 || s.GroupRank >= s.GroupWorldSize:
		return bad("group rank")
	case s.MasterAddr == "" || s.MasterPort < 1 || s.MasterPort > 65535:
		return bad("rendezvous address")
	}
	seen := map[int]bool{}
	for _, r := range s.Ranks {
		if r < 0 || r >= s.WorldSize || seen[r] {
			return bad("ranks must be distinct and below the world size")
		}
		seen[r] = true
	}
	return nil
}

// Reader reads messages from a connection.
type Reader struct{ s *bufio.Scanner }

// NewReader returns a Reader that refuses lines over MaxMessage.
func NewReader(r io.Reader) *Reader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), MaxMessage+1)
	return &Reader{s: s}
}

// Read returns the next valid message, io.EOF at a clean end, or an error
// (a decode error ends the session: the stream cannot be trusted after it).
func (r *Reader) Read() (Msg, error) {
	if !r.s.Scan() {
		if err := r.s.Err(); err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				return Msg{}, ErrTooLarge
			}
			return Msg{}, err
		}
		return Msg{}, io.EOF
	}
	return Decode(r.s.Bytes())
}

// Encode returns m as one line.
func Encode(m Msg) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// Escaping can make the line longer than the one it was decoded from;
	// never send what the peer must refuse.
	if len(b) > MaxMessage {
		return nil, ErrTooLarge
	}
	return append(b, '\n'), nil
}
