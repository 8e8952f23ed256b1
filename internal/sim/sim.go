// Package sim is a discrete-event simulator of a large training job under
// faults. It drives the real recovery policy (internal/policy's Machine): the
// simulator plays the cluster — nodes failing, spares, repairs, checkpoints,
// detection delays and restart costs in virtual time — and feeds the policy
// the inputs a coordinator would (Exited, Tick, Stopped, Launched, Progress,
// JoinerReady, Diagnosed); the policy's decisions (Stop, Launch, Regroup,
// Diagnose, SpawnJoiners, Finish) decide what happens next. One policy rank
// stands for one node: a node is the unit that fails and is replaced.
package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/policy"
)

// Cause is where a second of wall time went.
type Cause int

const (
	Productive Cause = iota // training whose result is kept
	CkptCost                // blocking checkpoint writes and steady per-step state copies
	Detect                  // from a fault until the policy knows (and, live, names a hang's culprit)
	WaitNode                // waiting for a node from the cluster (requeue)
	RestartC                // stop + process start + NCCL init + state load
	Rollback                // training redone because its result was lost
	RegroupC                // live: survivors re-forming the group (after a loss or to admit a joiner)
	Slow                    // throughput lost to stragglers and to replicas waiting for a joiner
	NumCauses
)

var causeNames = [NumCauses]string{"productive", "checkpoint", "detect", "wait_node", "restart", "rollback", "regroup", "slow"}

func (c Cause) String() string { return causeNames[c] }

// TrialResult is one simulated run.
type TrialResult struct {
	Wall        float64            // seconds
	Time        [NumCauses]float64 // seconds by cause; they sum to Wall
	Faults      [NumClasses]int    // faults that hit the job's nodes, by class
	Interrupts  int                // job faults of the unexpected classes (MTTF = Wall / Interrupts)
	Overlapped  int                // faults that came while the job was already down
	SparesUsed  int                // takeovers by a spare node
	Requeues    int                // nodes (or jobs) that had to come from the cluster
	Quarantined int                // nodes excluded after QuarantineAfter faults
	QLemons     int                // of which lemons
	Resubmits   int                // the policy ended the job (crash loop) and it was resubmitted
	Decisions   int                // policy faults recorded
	Regroups    int                // live regroups (losses and admissions)
	Restarts    int                // full restarts (Launch after a fault)
	Timeline    []Segment          `json:"-"`
	Lost        []Segment          `json:"-"` // training later rolled back (Cause Rollback), drawn over Timeline
	Marks       []Mark             `json:"-"`
}

// ETTR is productive time / wall time.
func (r *TrialResult) ETTR() float64 { return r.Time[Productive] / r.Wall }

// Segment is a stretch of one run's timeline: training (Cause Productive) or down for Cause.
type Segment struct {
	From, To float64
	Cause    Cause
}

// Mark is a fault on the timeline.
type Mark struct {
	At    float64
	Class Class
}

type nodeState uint8

const (
	nsJob nodeState = iota
	nsSpare
	nsRepair
	nsJoiner
	nsQuarantined
	nsReleased
)

type node struct {
	state     nodeState
	slot      int // nsJob: its slot; nsJoiner: the slot it will fill
	lastSlot  int
	ep        uint64
	sep       uint64 // straggler episode epoch
	lemon     bool
	hung      bool
	straggle  bool
	faults    int
	quarantin bool
}

type slot struct {
	node   int // -1: vacant
	joiner int // node being prepared for it, -1 none
	ep     uint64
}

type jstate uint8

const (
	jsDown jstate = iota
	jsTraining
	jsWriting
)

type pending struct {
	class Class
	slots []int
	eps   []uint64
	node  int
	gen   int   // phantom ranks: the generation they belong to
	ranks []int // phantom ranks: admitted by the policy without a ready joiner here
}

type trial struct {
	p      *Params
	mp     ModeParams
	mode   Mode
	rng    *rand.Rand
	q      queue
	now    time.Duration
	m      *policy.Machine
	cfg    policy.Config
	record bool

	nodes    []node
	slots    []slot
	rankSlot []int
	slotRank []int
	vacant   []int
	spares   []int
	ready    []int // slots whose joiner is ready, in order
	target   int   // spare pool size
	hungN    int

	replicas   int
	badInRep   []int // vacant slots per replica
	badReps    int
	stragglers int
	slowRate   float64

	st        jstate
	cause     Cause
	lastAcct  time.Duration
	work      float64
	ckptWork  float64
	ckptAt    float64
	rate      float64
	ckEp      uint64
	jobEp     uint64
	finalCkpt bool
	finished  bool
	end       time.Duration

	cum      [2][NumClasses]float64 // cumulative class rates per second: normal, lemon
	total    [2]float64
	pend     []pending
	stepSec  float64
	scale    float64
	segStart time.Duration
	segCause Cause
	downAt   time.Duration
	res      TrialResult
}

func dur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// RunTrial simulates one run of mode with p, from seed.
func RunTrial(p *Params, mode Mode, seed uint64, trialNo int, record bool) TrialResult {
	t := &trial{p: p, mp: p.Mode(mode), mode: mode, record: record,
		rng: rand.New(rand.NewPCG(seed, uint64(trialNo)))}
	t.setup()
	t.loop()
	return t.res
}

func (t *trial) setup() {
	p := t.p
	n := p.Nodes()
	t.stepSec = p.StepTime.Seconds()
	t.scale = p.scaleFactor()
	t.slowRate = 1
	// Class rates per node-second; the fleet average of the unexpected
	// classes is the table's, lemons carrying LemonMultiplier × a normal node's.
	norm := 1 / (1 - p.LemonFraction + p.LemonFraction*p.LemonMultiplier)
	for l := 0; l < 2; l++ {
		acc := 0.0
		for c := Class(0); c < NumClasses; c++ {
			r := p.Rates.of(c) / 86400
			if c != Maintenance && c != Straggler {
				r *= norm
				if l == 1 {
					r *= p.LemonMultiplier
				}
			}
			acc += r
			t.cum[l][c] = acc
		}
		t.total[l] = acc
	}
	t.target = p.Spares
	if t.target < 0 {
		t.target = p.AutoSpares()
	}
	if p.Days > 0 {
		t.end = dur(p.Days * 86400)
	} else {
		t.end = dur(p.WorkHours * 3600 * 1000) // a safety cap; the run ends when the work is done
	}
	t.slots = make([]slot, n)
	t.rankSlot = make([]int, n)
	t.slotRank = make([]int, n)
	t.replicas = (n + p.ReplicaNodes - 1) / p.ReplicaNodes
	t.badInRep = make([]int, t.replicas)
	for i := range n {
		id := t.newNode()
		t.nodes[id].state, t.nodes[id].slot, t.nodes[id].lastSlot = nsJob, i, i
		t.slots[i] = slot{node: id, joiner: -1}
		t.rankSlot[i], t.slotRank[i] = i, i
	}
	for range t.target {
		id := t.newNode()
		t.nodes[id].state = nsSpare
		t.spares = append(t.spares, id)
	}
	t.cfg = policy.Config{
		WorldSize:        n,
		MaxRestarts:      math.MaxInt32,
		Watchdog:         health.Watchdog{Timeout: t.mp.DetectHang.D()},
		ProgressExpected: true,
		Live:             t.mp.Live,
		Replace:          true,
	}
	t.q.push(event{at: t.end, kind: evEnd})
	t.m = policy.New(t.cfg)
	// The first launch is free: wall time starts when the job first trains.
	for _, d := range t.m.Step(0, policy.Start{}) {
		if l, ok := d.(policy.Launch); ok {
			t.m.Step(0, policy.Launched{Gen: l.Gen})
			t.m.Step(0, policy.Progress{Gen: l.Gen, Rank: -1, Step: 1})
		}
	}
	t.st = jsTraining
	t.rate = 1
	t.schedCkpt()
}

func (t *trial) newNode() int {
	id := len(t.nodes)
	t.nodes = append(t.nodes, node{slot: -1, lastSlot: -1, lemon: t.rng.Float64() < t.p.LemonFraction})
	t.clock(id)
	return id
}

// clock draws a node's next fault.
func (t *trial) clock(id int) {
	nd := &t.nodes[id]
	nd.ep++
	tot := t.total[b2i(nd.lemon)]
	if tot <= 0 {
		return
	}
	at := t.now + dur(t.rng.ExpFloat64()/tot)
	if at < t.end {
		t.q.push(event{at: at, kind: evNodeFail, a: id, ep: nd.ep})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (t *trial) loop() {
	for t.q.len() > 0 && !t.finished {
		e := t.q.pop()
		t.now = e.at
		switch e.kind {
		case evEnd:
			t.finish()
		case evNodeFail:
			if t.nodes[e.a].ep == e.ep {
				t.nodeFail(e.a)
			}
		case evNodeBack:
			if t.nodes[e.a].ep == e.ep {
				t.nodeBack(e.a)
			}
		case evStraggleEnd:
			nd := &t.nodes[e.a]
			if nd.straggle && e.ep == nd.sep {
				nd.straggle = false
				if nd.state == nsJob {
					t.stragglers--
					t.rateChanged()
				}
			}
		case evDeliver:
			t.deliver(e.a)
		case evStopped:
			t.step(policy.Stopped{Gen: e.a})
		case evLaunched:
			if e.ep == t.jobEp {
				t.step(policy.Launched{Gen: e.a})
				if e.ep == t.jobEp {
					t.q.push(event{at: t.now + t.mp.Load.D(), kind: evFirstStep, a: e.a, ep: t.jobEp})
					t.setDown(RestartC)
				}
			}
		case evFirstStep:
			if e.ep == t.jobEp && e.b == 1 {
				// a regrouped generation is up in place: the driver says so first
				t.step(policy.Launched{Gen: e.a})
			}
			if e.ep == t.jobEp {
				t.firstStep(e.a)
			}
		case evDiagnosed:
			t.diagnosed(e.a)
		case evJoinerReady:
			nd := &t.nodes[e.b]
			if nd.ep == e.ep && nd.state == nsJoiner && t.slots[e.a].joiner == e.b {
				t.ready = append(t.ready, e.a)
				t.step(policy.JoinerReady{})
			}
		case evCkptStart:
			if e.ep == t.ckEp && t.st == jsTraining {
				t.ckptStart()
			}
		case evCkptDone:
			if e.ep == t.ckEp && t.st == jsWriting {
				t.advance()
				t.ckptWork = t.ckptAt
				t.setState(jsTraining, Productive)
				if t.finalCkpt {
					t.finish()
					break
				}
				t.schedCkpt()
			}
		case evResubmit:
			t.m = policy.New(t.cfg)
			t.step(policy.Start{})
		case evPhase:
			if e.ep == t.jobEp && t.st == jsDown {
				t.setDown(Cause(e.a))
			}
		}
	}
	if !t.finished {
		t.finish()
	}
}

// ---- accounting ----

// advance charges the time since the last call to the current state.
func (t *trial) advance() {
	dt := (t.now - t.lastAcct).Seconds()
	t.lastAcct = t.now
	if dt <= 0 {
		return
	}
	switch t.st {
	case jsTraining:
		eff := t.rate * (1 - t.mp.Overhead)
		t.work += eff * dt
		t.res.Time[Productive] += eff * dt
		t.res.Time[CkptCost] += t.rate * t.mp.Overhead * dt
		t.res.Time[Slow] += (1 - t.rate) * dt
	case jsWriting:
		t.res.Time[CkptCost] += dt
	default:
		t.res.Time[t.cause] += dt
	}
}

func (t *trial) setState(st jstate, c Cause) {
	t.advance()
	if st != jsDown {
		c = Productive
	}
	if t.record && c != t.segCause {
		if t.now > t.segStart {
			t.res.Timeline = append(t.res.Timeline, Segment{t.segStart.Seconds(), t.now.Seconds(), t.segCause})
		}
		t.segStart, t.segCause = t.now, c
	}
	t.st, t.cause = st, c
}

func (t *trial) setDown(c Cause) {
	if t.st != jsDown {
		t.ckEp++ // a write in progress is lost
		t.downAt = t.now
	}
	t.setState(jsDown, c)
}

func (t *trial) rollback(lost float64) {
	if lost <= 0 {
		return
	}
	t.work -= lost
	t.res.Time[Productive] -= lost
	t.res.Time[Rollback] += lost
	if t.record {
		// roughly where the lost training was: just before the job went down
		to := t.downAt.Seconds()
		t.res.Lost = append(t.res.Lost, Segment{max(0, to-lost/max(t.rate, 1e-9)), to, Rollback})
	}
}

func (t *trial) finish() {
	t.setState(t.st, t.cause)
	if t.record && t.now > t.segStart {
		t.res.Timeline = append(t.res.Timeline, Segment{t.segStart.Seconds(), t.now.Seconds(), t.segCause})
	}
	t.res.Wall = t.now.Seconds()
	t.finished = true
}

// ---- checkpoints and throughput ----

func (t *trial) effRate() float64 { return t.rate * (1 - t.mp.Overhead) }

// schedCkpt plans the next checkpoint (and, for a fixed amount of work, the end).
func (t *trial) schedCkpt() {
	t.ckEp++
	if t.st != jsTraining {
		return
	}
	eff := t.effRate()
	if eff <= 0 {
		return
	}
	need := t.p.CkptInterval.Seconds() - (t.work - t.ckptWork)
	final := false
	if t.p.WorkHours > 0 {
		if left := t.p.WorkHours*3600 - t.work; left <= need {
			need, final = left, true
		}
	}
	at := t.now + dur(max(0, need)/eff)
	if need <= 0 {
		at = t.now
	}
	t.finalCkpt = final
	t.q.push(event{at: at, kind: evCkptStart, ep: t.ckEp})
}

func (t *trial) ckptStart() {
	t.advance()
	t.ckptAt = t.work
	if t.mp.CkptWrite <= 0 {
		t.ckptWork = t.work
		if t.finalCkpt {
			t.finish()
			return
		}
		t.schedCkpt()
		return
	}
	t.setState(jsWriting, Productive)
	t.ckEp++
	t.q.push(event{at: t.now + t.mp.CkptWrite.D(), kind: evCkptDone, ep: t.ckEp})
}

// rateChanged recomputes throughput: whole replicas only, at the slowest node's pace.
func (t *trial) rateChanged() {
	r := float64(t.replicas-t.badReps) / float64(t.replicas)
	if t.stragglers > 0 {
		r /= t.p.StragglerSlow
	}
	if r == t.rate {
		return
	}
	t.advance()
	t.rate = r
	if t.st == jsTraining {
		t.schedCkpt()
	}
}

// ---- slots and nodes ----

func (t *trial) vacate(s int) {
	sl := &t.slots[s]
	if sl.node < 0 {
		return
	}
	if t.nodes[sl.node].straggle {
		t.stragglers--
	}
	t.nodes[sl.node].slot = -1
	sl.node = -1
	t.vacant = append(t.vacant, s)
	rep := s / t.p.ReplicaNodes
	if t.badInRep[rep] == 0 {
		t.badReps++
	}
	t.badInRep[rep]++
	t.rateChanged()
}

func (t *trial) fill(s, id int) {
	sl := &t.slots[s]
	sl.node, sl.joiner = id, -1
	nd := &t.nodes[id]
	nd.state, nd.slot = nsJob, s
	nd.lastSlot = s
	if nd.straggle {
		t.stragglers++
	}
	for i, v := range t.vacant {
		if v == s {
			t.vacant[i] = t.vacant[len(t.vacant)-1]
			t.vacant = t.vacant[:len(t.vacant)-1]
			break
		}
	}
	rep := s / t.p.ReplicaNodes
	t.badInRep[rep]--
	if t.badInRep[rep] == 0 {
		t.badReps--
	}
	t.rateChanged()
}

// acquire takes a node for slot s: a spare, or one from the cluster after
// RequeueWait. It returns the node, how long it takes to be there, and
// whether it came from the cluster.
func (t *trial) acquire(s int) (int, time.Duration, bool) {
	if t.mp.UseSpares && len(t.spares) > 0 {
		id := t.spares[len(t.spares)-1]
		t.spares = t.spares[:len(t.spares)-1]
		if t.nodes[id].lastSlot != s {
			t.res.SparesUsed++ // not the node's own slot (a crashed process restarting in place)
		}
		return id, t.mp.Spare.D(), false
	}
	t.res.Requeues++
	return t.newNode(), t.p.RequeueWait.D(), true
}

// release puts a healthy node back: the spare pool, or the cluster when the pool is full.
func (t *trial) release(id int) {
	nd := &t.nodes[id]
	nd.hung = false
	if nd.quarantin {
		t.quarantine(id)
		return
	}
	if t.mp.UseSpares && len(t.spares) < t.target {
		nd.state = nsSpare
		t.spares = append(t.spares, id)
		return
	}
	nd.state = nsReleased
	nd.ep++
}

// keep puts a healthy node whose process died on top of the spare pool,
// so that the replacement process starts there (not counted as a spare used).
func (t *trial) keep(id int) {
	nd := &t.nodes[id]
	nd.hung = false
	if nd.quarantin {
		t.quarantine(id)
		return
	}
	nd.state = nsSpare
	t.spares = append(t.spares, id)
}

func (t *trial) quarantine(id int) {
	nd := &t.nodes[id]
	nd.state = nsQuarantined
	nd.ep++ // no more faults, never back
	t.res.Quarantined++
	if nd.lemon {
		t.res.QLemons++
	}
}

// away sends a node off for d (repair, maintenance) unless it is quarantined.
func (t *trial) away(id int, d time.Duration) {
	nd := &t.nodes[id]
	nd.hung = false
	if nd.quarantin {
		t.quarantine(id)
		return
	}
	nd.state = nsRepair
	nd.ep++
	t.q.push(event{at: t.now + d, kind: evNodeBack, a: id, ep: nd.ep})
}

func (t *trial) nodeBack(id int) {
	nd := &t.nodes[id]
	if nd.state != nsRepair {
		return
	}
	t.release(id)
	if nd.state == nsSpare {
		t.clock(id)
	}
}

func (t *trial) repairTime() time.Duration {
	if t.rng.Float64() < t.p.RepairAutoShare {
		return dur(t.rng.ExpFloat64() * t.p.RepairAuto.Seconds())
	}
	return dur(t.rng.ExpFloat64() * t.p.RepairManual.Seconds())
}

// ---- faults ----

func (t *trial) pickClass(lemon bool) Class {
	l := b2i(lemon)
	u := t.rng.Float64() * t.total[l]
	for c := Class(0); c < NumClasses-1; c++ {
		if u < t.cum[l][c] {
			return c
		}
	}
	return NumClasses - 1
}

func (t *trial) nodeFail(id int) {
	nd := &t.nodes[id]
	c := t.pickClass(nd.lemon)
	t.clock(id)
	removes := c == GPU || c == NodeLoss || c == Network || c == Maintenance
	switch nd.state {
	case nsSpare, nsJoiner:
		if c == Straggler {
			t.straggle(id)
			return
		}
		if !removes {
			return
		}
		if nd.state == nsSpare {
			for i, v := range t.spares {
				if v == id {
					t.spares = append(t.spares[:i], t.spares[i+1:]...)
					break
				}
			}
		} else {
			s := nd.slot
			t.slots[s].joiner = -1
			for i, v := range t.ready {
				if v == s {
					t.ready = append(t.ready[:i], t.ready[i+1:]...)
					break
				}
			}
			t.step(policy.JoinerLost{})
		}
		t.away(id, t.awayTime(c))
		return
	case nsJob:
	default:
		return
	}
	if c == Straggler {
		t.res.Faults[Straggler]++
		t.straggle(id)
		return
	}
	t.jobFault(id, c)
}

func (t *trial) awayTime(c Class) time.Duration {
	switch c {
	case Network:
		return dur(t.rng.ExpFloat64() * t.p.NetworkRepair.Seconds())
	case Maintenance:
		return t.p.MaintDuration.D()
	}
	return t.repairTime()
}

func (t *trial) straggle(id int) {
	nd := &t.nodes[id]
	if nd.straggle {
		return
	}
	nd.straggle = true
	nd.sep++ // its own epoch: a fault or repair meanwhile must not cancel the end
	t.q.push(event{at: t.now + dur(t.rng.ExpFloat64()*t.p.StragglerMean.Seconds()), kind: evStraggleEnd, a: id, ep: nd.sep})
	if nd.state == nsJob {
		t.stragglers++
		t.rateChanged()
	}
}

func (t *trial) jobFault(id int, c Class) {
	nd := &t.nodes[id]
	t.res.Faults[c]++
	if c != Maintenance {
		t.res.Interrupts++
	}
	if t.record {
		t.res.Marks = append(t.res.Marks, Mark{t.now.Seconds(), c})
	}
	wasUp := t.st != jsDown
	if !wasUp {
		t.res.Overlapped++
	}
	if c != Maintenance && c != Network {
		nd.faults++
		if t.p.QuarantineAfter > 0 && nd.faults >= t.p.QuarantineAfter {
			nd.quarantin = true
		}
	}
	s := nd.slot
	hit := []int{s}
	var detect time.Duration
	switch c {
	case Crash:
		detect = t.mp.DetectExit.D()
		if t.mp.Live || nd.quarantin {
			// the dead rank leaves the group; a fresh process on the same node joins later
			t.vacate(s)
			t.keep(id)
		}
	case GPU:
		detect = t.mp.DetectExit.D()
		t.vacate(s)
		t.away(id, t.repairTime())
	case NodeLoss:
		detect = t.mp.DetectNodeLoss.D()
		t.vacate(s)
		t.away(id, t.repairTime())
	case Network:
		detect = t.mp.DetectNetwork.D()
		if t.p.NetworkGroup > 1 && t.rng.Float64() < t.p.NetworkGroupP {
			g := s / t.p.NetworkGroup * t.p.NetworkGroup
			for o := g; o < min(g+t.p.NetworkGroup, len(t.slots)); o++ {
				if o != s && t.slots[o].node >= 0 {
					hit = append(hit, o)
				}
			}
		}
		for _, o := range hit {
			other := t.slots[o].node
			t.vacate(o)
			t.away(other, t.awayTime(Network))
		}
	case Maintenance:
		// Announced: restart modes checkpoint first, so nothing is rolled back.
		if wasUp && !t.mp.Live {
			t.advance()
			t.ckptWork = t.work
			detect = t.mp.CkptWrite.D()
		}
		t.vacate(s)
		t.away(id, t.p.MaintDuration.D())
	case Hang:
		nd.hung = true
		t.hungN++
	}
	if wasUp {
		t.setDown(Detect) // every peer blocks in its next collective
		if c == Maintenance && detect > 0 {
			t.setDown(CkptCost)
		}
	}
	if c == Hang && wasUp && t.m.Training() {
		// the watchdog sees the last step now and fires after its threshold
		t.step(policy.Progress{Gen: t.m.Generation(), Rank: -1, Step: int(t.work) + 2})
		t.q.push(event{at: t.now + t.mp.DetectHang.D() + time.Millisecond, kind: evDeliver, a: t.addPending(Hang, nil, id)})
		return
	}
	if c == Hang {
		detect = t.mp.DetectHang.D() // hung while not training: caught when the next start times out
	}
	t.q.push(event{at: t.now + detect, kind: evDeliver, a: t.addPending(c, hit, id)})
}

func (t *trial) addPending(c Class, hit []int, id int) int {
	p := pending{class: c, slots: hit, node: id}
	for _, s := range hit {
		p.eps = append(p.eps, t.slots[s].ep)
	}
	t.pend = append(t.pend, p)
	return len(t.pend) - 1
}

// deliver tells the policy about a fault once its detection delay has
// passed, in terms of the generation running now: the ranks that the hit
// slots hold now, unless a launch since has replaced them.
func (t *trial) deliver(i int) {
	p := t.pend[i]
	t.pend[i] = pending{}
	if p.class == Hang && p.slots == nil {
		nd := &t.nodes[p.node]
		if nd.hung && nd.state == nsJob && t.st == jsDown {
			ds := t.m.Step(t.now, policy.Tick{})
			if len(ds) == 0 {
				// not stalled by the policy's clock yet (progress came later): look again
				t.q.push(event{at: t.now + t.mp.DetectHang.D(), kind: evDeliver, a: t.addPending(Hang, nil, p.node)})
			}
			t.apply(ds)
		}
		return
	}
	var ranks []int
	if p.ranks != nil {
		if p.gen != t.m.Generation() {
			return
		}
		ranks = p.ranks
	}
	for k, s := range p.slots {
		if t.slots[s].ep == p.eps[k] && t.slotRank[s] >= 0 {
			ranks = append(ranks, t.slotRank[s])
		}
	}
	if len(ranks) == 0 {
		return
	}
	ex := policy.Exited{Gen: t.m.Generation(), Rank: ranks[0], Code: 1, Also: ranks[1:],
		LastError: fmt.Sprintf("%s on node %d", p.class, p.node)}
	if p.class == NodeLoss || p.class == Maintenance {
		ex.Code, ex.Signal = 0, policy.SignalNodeLost
	}
	if p.class == Hang {
		ex.LastError = "no progress at start on node " + fmt.Sprint(p.node)
	}
	t.step(ex)
}

// ---- the policy ----

func (t *trial) step(in policy.Input) {
	t.apply(t.m.Step(t.now, in))
}

func (t *trial) apply(ds []policy.Decision) {
	for _, d := range ds {
		switch d := d.(type) {
		case policy.Fault:
			t.res.Decisions++
		case policy.Stop:
			t.setDown(RestartC)
			t.jobEp++
			t.dropJoiners()
			t.q.push(event{at: t.now + t.mp.Stop.D(), kind: evStopped, a: d.Gen})
		case policy.Launch:
			t.launch(d)
		case policy.Regroup:
			t.regroup(d)
		case policy.Diagnose:
			t.setDown(Detect)
			t.jobEp++
			t.q.push(event{at: t.now + t.mp.Diagnose.D(), kind: evDiagnosed, a: d.Gen})
		case policy.SpawnJoiners:
			t.spawn(d.N)
		case policy.Finish:
			// The policy gave up (a crash loop): the job is resubmitted.
			t.res.Resubmits++
			t.setDown(WaitNode)
			t.jobEp++
			t.dropJoiners()
			t.q.push(event{at: t.now + t.p.RequeueWait.D(), kind: evResubmit})
		}
	}
}

func (t *trial) dropJoiners() {
	for s := range t.slots {
		if j := t.slots[s].joiner; j >= 0 {
			t.slots[s].joiner = -1
			t.release(j)
		}
	}
	t.ready = t.ready[:0]
}

func (t *trial) launch(d policy.Launch) {
	t.jobEp++
	t.res.Restarts++
	// What the new generation resumes from.
	restore := t.ckptWork
	if t.mp.PeerState {
		restore = t.work - math.Mod(t.work, t.stepSec)
	}
	t.rollback(t.work - restore)
	// Every process is new: hung ones were killed with the rest.
	for s := range t.slots {
		if id := t.slots[s].node; id >= 0 && t.nodes[id].hung {
			t.nodes[id].hung = false
		}
	}
	t.hungN = 0
	var wait, spare time.Duration
	for len(t.vacant) > 0 {
		s := t.vacant[len(t.vacant)-1]
		id, w, cluster := t.acquire(s)
		if cluster {
			wait = max(wait, w)
		} else {
			spare = max(spare, w)
		}
		t.fill(s, id)
	}
	t.rankSlot = t.rankSlot[:len(t.slots)]
	for s := range t.slots {
		t.slots[s].ep++
		t.rankSlot[s], t.slotRank[s] = s, s
	}
	init := t.mp.Init.D()
	init = time.Duration(float64(init) * t.scale)
	if wait > 0 {
		t.setDown(WaitNode)
		t.q.push(event{at: t.now + wait, kind: evPhase, a: int(RestartC), ep: t.jobEp})
	} else {
		t.setDown(RestartC)
	}
	t.q.push(event{at: t.now + wait + spare + init, kind: evLaunched, a: d.Gen, ep: t.jobEp})
}

func (t *trial) firstStep(gen int) {
	t.setState(jsTraining, Productive)
	t.rateChanged()
	t.step(policy.Progress{Gen: gen, Rank: -1, Step: int(t.work) + 1})
	if t.st != jsTraining {
		return // the step's decisions (an admission) stopped it again
	}
	if t.hungN > 0 {
		// a hung rank survived the regroup: one step, then the job blocks on it
		for s := range t.slots {
			if id := t.slots[s].node; id >= 0 && t.nodes[id].hung && t.slotRank[s] >= 0 {
				t.setDown(Detect)
				t.q.push(event{at: t.now + t.mp.DetectHang.D() + time.Millisecond, kind: evDeliver, a: t.addPending(Hang, nil, id)})
				return
			}
		}
		t.hungN = 0
	}
	t.schedCkpt()
}

func (t *trial) regroup(d policy.Regroup) {
	t.jobEp++
	t.res.Regroups++
	if !d.Grow {
		// survivors redo the step that was in flight
		t.rollback(math.Mod(t.work, t.stepSec))
	}
	for _, r := range d.Kill {
		s := t.rankSlot[r]
		if s < 0 {
			continue
		}
		if id := t.slots[s].node; id >= 0 {
			if t.nodes[id].hung {
				t.nodes[id].hung = false
				t.hungN--
			}
			t.vacate(s)
			t.keep(id)
		}
	}
	next := make([]int, 0, d.WorldSize)
	for _, r := range d.Survivors {
		next = append(next, t.rankSlot[r])
	}
	for range d.Admit {
		if len(t.ready) == 0 {
			// The policy counted a joiner as ready that is gone here
			// (JoinerLost does not say which one was lost): a phantom
			// rank, reported lost below.
			next = append(next, -1)
			continue
		}
		s := t.ready[0]
		t.ready = t.ready[1:]
		t.fill(s, t.slots[s].joiner)
		next = append(next, s)
	}
	for s := range t.slotRank {
		t.slotRank[s] = -1
	}
	t.rankSlot = t.rankSlot[:0]
	var phantom []int
	for r, s := range next {
		t.rankSlot = append(t.rankSlot, s)
		if s < 0 {
			phantom = append(phantom, r)
			continue
		}
		t.slotRank[s] = r
	}
	if d.Spawn > 0 {
		t.spawn(d.Spawn)
	}
	t.setDown(RegroupC)
	regroup := time.Duration(float64(t.mp.Regroup.D()) * t.scale)
	t.q.push(event{at: t.now + regroup, kind: evFirstStep, a: d.Gen, b: 1, ep: t.jobEp})
	// A survivor whose node died while the policy was not listening is lost now.
	for _, s := range next {
		if s >= 0 && t.slots[s].node < 0 {
			t.q.push(event{at: t.now, kind: evDeliver, a: t.addPending(NodeLoss, []int{s}, -1)})
		}
	}
	if phantom != nil {
		t.pend = append(t.pend, pending{class: NodeLoss, node: -1, gen: d.Gen, ranks: phantom})
		t.q.push(event{at: t.now, kind: evDeliver, a: len(t.pend) - 1})
	}
}

// spawn prepares up to n replacements for vacant slots.
func (t *trial) spawn(n int) {
	for _, s := range t.vacant {
		if n == 0 {
			break
		}
		if t.slots[s].joiner >= 0 {
			continue
		}
		id, w, _ := t.acquire(s)
		nd := &t.nodes[id]
		nd.state, nd.slot = nsJoiner, s
		t.slots[s].joiner = id
		n--
		t.q.push(event{at: t.now + w + t.mp.StateTransfer.D(), kind: evJoinerReady, a: s, b: id, ep: nd.ep})
	}
}

func (t *trial) diagnosed(gen int) {
	if gen != t.m.Generation() {
		return
	}
	culprit := -1
	for s := range t.slots {
		if id := t.slots[s].node; id >= 0 && t.nodes[id].hung && t.slotRank[s] >= 0 {
			if t.rng.Float64() < t.p.HangCulpritP {
				culprit = t.slotRank[s]
			}
			break
		}
	}
	t.step(policy.Diagnosed{Gen: gen, Rank: culprit})
}
