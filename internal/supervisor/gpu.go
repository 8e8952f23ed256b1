package supervisor

import (
	"fmt"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/policy"
)

// GPUReport is one verdict of the node's GPU monitor (internal/gpu), with
// the GPU given as the worker slot it backs.
type GPUReport struct {
	Slot   int
	UUID   string
	Class  string // drain, restart, warn
	Reason string
}

// SlotNode is a Node whose workers sit on GPU slots (the local launcher).
type SlotNode interface {
	DrainSlot(slot int)
	HealthySlots() int
	RankOnSlot(gen, slot int) int
}

// gpuReport carries out a GPU verdict: drain takes the GPU out (the
// generation continues without it: restart on the healthy GPUs, or a live
// regroup), restart faults the worker on it, warn is told and logged.
func (r *run) gpuReport(g GPUReport) {
	sn, ok := r.node.(SlotNode)
	if !ok || r.result != nil {
		return
	}
	gen := r.m.Generation()
	rank := sn.RankOnSlot(gen, g.Slot)
	slot := g.Slot
	ev := events.Event{Gen: gen, GPU: &slot, UUID: g.UUID, Detail: g.Reason}
	if rank >= 0 {
		ev.Rank = events.Int(rank)
	}
	switch g.Class {
	case "warn":
		r.con.Printf("⚠ GPU %d: %s", g.Slot, g.Reason)
		ev.Type = events.GPUWarning
		r.record(ev)
	case "restart":
		r.gpuAt = timeNow()
		ev.Type = events.GPUFault
		r.record(ev)
		if rank >= 0 {
			r.apply(r.m.Step(r.now(), policy.GPUFault{Gen: gen, Rank: rank, Detail: g.Reason}))
		} else {
			r.con.Printf("! GPU %d: %s (no worker on it)", g.Slot, g.Reason)
		}
	case "drain":
		r.gpuAt = timeNow()
		sn.DrainSlot(g.Slot)
		left := sn.HealthySlots()
		who := "no worker on it"
		if rank >= 0 {
			who = "rank " + itoa(rank) + " leaves the job"
		}
		r.con.Printf("✗ GPU %d drained: %s · %s · %d healthy GPU(s) left", g.Slot, g.Reason, who, left)
		ev.Type = events.GPUDrained
		ev.WorldSize = left
		r.record(ev)
		r.apply(r.m.Step(r.now(), policy.Capacity{Slots: left}))
		if rank >= 0 && r.result == nil {
			r.apply(r.m.Step(r.now(), policy.GPUFault{Gen: gen, Rank: rank, Detail: g.Reason}))
		}
	}
}

// preflight checks the GPUs before generation d starts; a drained GPU
// shrinks it. false: the job ended meanwhile (too few GPUs).
func (r *run) preflight(d *policy.Launch) bool {
	if r.cfg.Preflight == nil {
		return true
	}
	for _, g := range r.cfg.Preflight() {
		r.gpuReport(g)
	}
	if r.result != nil {
		return false
	}
	if !r.m.Starting(d.Gen) {
		// Too few GPUs: the policy stopped a generation that never started.
		r.apply(r.m.Step(r.now(), policy.Stopped{Gen: d.Gen}))
		return false
	}
	d.WorldSize = r.m.World()
	return true
}

func itoa(n int) string { return fmt.Sprint(n) }

var timeNow = time.Now
