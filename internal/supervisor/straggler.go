package supervisor

import (
	"fmt"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/straggler"
)

// StragglerConfig turns on straggler detection (live mode: the SDK reports
// work time). Action "warn" tells; "replace" also moves a straggler off its
// slot (policy.Straggler: in live mode it is killed and a replacement
// joins) once hardware evidence backs it or it has been slow for
// ReplaceAfter, never on a single window.
type StragglerConfig struct {
	Action       string // "" (off), warn, replace
	ReplaceAfter time.Duration
	Detector     straggler.Config
	Node         string // this node's name, for the messages (one node)
	// NodeOf names the node of a rank (several nodes); overrides Node.
	NodeOf func(rank int) string
	// Evidence is the hardware evidence against the GPU in slot (its
	// throttle reasons, a low SM clock), "" when there is none. Optional.
	Evidence func(slot int) string
}

// RankSpeedObserver is an Observer that also takes the ranks' relative
// speeds once per straggler window (the metrics).
type RankSpeedObserver interface {
	RankSpeeds(job string, speeds map[int]float64)
}

// rankSlotter is a Node that knows the GPU slot of a rank (the local launcher).
type rankSlotter interface {
	SlotOfRank(gen, rank int) int
}

type stragglers struct {
	d        *straggler.Detector
	world    int
	replaced map[int]bool // generation -> a straggler was replaced in it
	jobSlow  bool
}

func (r *run) stragglerSetup() {
	if r.cfg.Straggler.Action == "" || !r.cfg.Policy.Live {
		return
	}
	r.strag = &stragglers{d: straggler.New(r.cfg.Straggler.Detector), replaced: map[int]bool{}}
}

// stragglerGen starts the detector over when the generation changed.
func (r *run) stragglerGen() {
	s := r.strag
	gen := r.m.Generation()
	w := r.worlds[gen]
	s.d.Generation(r.now(), gen, w == s.world)
	s.world = w
}

func (r *run) work(e launcher.Work) {
	if r.strag == nil || e.Gen != r.m.Generation() {
		return
	}
	r.stragglerGen()
	r.strag.d.Add(straggler.Report{Rank: e.Rank, Steps: e.Steps, Work: e.Work, Wall: e.Wall})
}

// stragglerTick closes a window when one is due and acts on its verdict.
func (r *run) stragglerTick() {
	s := r.strag
	if s == nil {
		return
	}
	r.stragglerGen()
	now := r.now()
	if !s.d.Due(now) {
		return
	}
	v := s.d.Close(now)
	if !r.m.Training() {
		return // recovering: the window says nothing about speed
	}
	gen := r.m.Generation()
	if v.Speeds != nil {
		for _, o := range r.cfg.Observers {
			if so, ok := o.(RankSpeedObserver); ok {
				so.RankSpeeds(r.cfg.RunID, v.Speeds)
			}
		}
	}
	for _, st := range v.New {
		slot, gpuName, evidence := r.rankHardware(gen, st.Rank)
		r.con.Printf("⚠ straggler: rank %d%s at %.2f of median for %s (%s)", st.Rank, r.onNode(st.Rank), st.Speed, humanFor(st.For), evidenceText(gpuName, evidence))
		ev := events.Event{Type: events.StragglerDetected, Gen: gen, Rank: events.Int(st.Rank), Node: r.nodeOf(st.Rank),
			Speed: round2(st.Speed), Cause: evidenceCause(evidence),
			Detail: fmt.Sprintf("at %.2f of the median of the other ranks for %s", st.Speed, humanFor(st.For))}
		if slot >= 0 && gpuName != "" {
			ev.GPU = events.Int(slot)
		}
		r.record(ev)
	}
	for _, rank := range v.Back {
		r.con.Printf("✓ straggler: rank %d%s back to speed", rank, r.onNode(rank))
		r.record(events.Event{Type: events.StragglerRecovered, Gen: gen, Rank: events.Int(rank), Node: r.nodeOf(rank)})
	}
	if j := v.JobSlow; j != nil {
		r.con.Printf("⚠ job slowing: %.2f steps/s, %.2f of its best (%.2f)", j.Rate, j.Ratio, j.Baseline)
		r.record(events.Event{Type: events.JobSlowdown, Gen: gen, Speed: round2(j.Ratio),
			Detail: fmt.Sprintf("%.3f steps/s against a best of %.3f", j.Rate, j.Baseline)})
	}
	if v.JobBack {
		r.con.Printf("✓ job back to speed")
		r.record(events.Event{Type: events.JobSpeedRecovered, Gen: gen})
	}
	if r.cfg.Straggler.Action != "replace" || s.replaced[gen] {
		return
	}
	// One move per generation: the move makes a new generation, whose
	// ranks are measured afresh.
	for _, st := range v.Slow {
		_, gpuName, evidence := r.rankHardware(gen, st.Rank)
		if evidence == "" && st.For < r.cfg.Straggler.ReplaceAfter {
			continue
		}
		why := fmt.Sprintf("slow for %s", humanFor(st.For))
		if evidence != "" {
			why = gpuName + ": " + evidence
		}
		s.replaced[gen] = true
		r.con.Printf("↻ straggler: moving rank %d%s (%s)", st.Rank, r.onNode(st.Rank), why)
		r.apply(r.m.Step(r.now(), policy.Straggler{Gen: gen, Rank: st.Rank,
			Detail: fmt.Sprintf("at %.2f of median, %s", st.Speed, why)}))
		return
	}
}

// rankHardware is the slot of rank, the GPU's name for messages ("" when
// the job has no GPU health) and the hardware evidence against it.
func (r *run) rankHardware(gen, rank int) (int, string, string) {
	rs, ok := r.node.(rankSlotter)
	if !ok || r.cfg.Straggler.Evidence == nil {
		return -1, "", ""
	}
	slot := rs.SlotOfRank(gen, rank)
	if slot < 0 {
		return -1, "", ""
	}
	return slot, fmt.Sprintf("GPU %d", slot), r.cfg.Straggler.Evidence(slot)
}

func (r *run) nodeOf(rank int) string {
	if f := r.cfg.Straggler.NodeOf; f != nil {
		return f(rank)
	}
	return r.cfg.Straggler.Node
}

func (r *run) onNode(rank int) string {
	if n := r.nodeOf(rank); n != "" {
		return " on node " + n
	}
	return ""
}

func evidenceText(gpuName, evidence string) string {
	switch {
	case gpuName == "":
		return "no hardware evidence"
	case evidence == "":
		return gpuName + ": no hardware evidence"
	}
	return gpuName + ": " + evidence
}

func evidenceCause(evidence string) string {
	if evidence == "" {
		return "none"
	}
	return evidence
}

// humanFor spells how long something lasted: "15 s", "3 min".
func humanFor(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%d s", int(d.Round(time.Second)/time.Second))
	}
	if d < time.Hour {
		return fmt.Sprintf("%d min", int(d.Round(time.Minute)/time.Minute))
	}
	return fmt.Sprintf("%.1f h", d.Hours())
}

func round2(f float64) float64 { return float64(int(f*100+0.5)) / 100 }
