package policy

import (
	"fmt"
	"time"
)

// FaultGPU: the GPU monitor reported a fault of the GPU under a rank.
const FaultGPU FaultKind = "gpu"

// Capacity: the healthy slots (GPUs) left for the job changed (a GPU was
// drained). Generations launch min(WorldSize, Slots) workers and live mode
// starts replacements only into healthy slots; fewer than MinWorld (at
// least 1) ends the job.
type Capacity struct{ Slots int }

// GPUFault: the GPU of Rank (generation Gen) failed. Restart mode restarts
// the generation; live mode kills the rank and regroups the others.
type GPUFault struct {
	Gen, Rank int
	Detail    string
}

func (Capacity) input() {}
func (GPUFault) input() {}

// target is the world size generations aim for.
func (m *Machine) target() int {
	if m.slots > 0 && m.slots < m.cfg.WorldSize {
		return m.slots
	}
	return m.cfg.WorldSize
}

// World is the current generation's world size.
func (m *Machine) World() int { return m.world }

// Starting reports whether generation gen was decided and not yet launched.
func (m *Machine) Starting(gen int) bool { return m.phase == starting && m.gen == gen }

func (m *Machine) capacity(ev Capacity) []Decision {
	if ev.Slots <= 0 {
		ev.Slots = 0
	}
	m.slots = ev.Slots
	if min := max(1, m.cfg.MinWorld); ev.Slots < min {
		m.slots = -1 // nothing left to launch on
		return m.endJob(&Finish{Outcome: Failed, Reason: fmt.Sprintf(
			"%d healthy GPU(s) left, fewer than the %d workers the job needs (--min-nproc)", ev.Slots, min)}, "no healthy GPUs")
	}
	if m.phase == starting {
		// Decided but not yet started (the driver's preflight runs here).
		m.world = min(m.world, m.target())
	}
	return nil
}

func (m *Machine) gpuFault(now time.Duration, ev GPUFault) []Decision {
	if ev.Gen != m.gen || (m.phase != running && m.phase != starting) || ev.Rank < 0 || ev.Rank >= m.world {
		return nil
	}
	return m.fail(now, Fault{Gen: m.gen, Kind: FaultGPU, Rank: ev.Rank, Detail: ev.Detail, Step: m.jobStep}, "gpu: "+ev.Detail)
}

// FaultStraggler: a rank was replaced for being persistently slow
// (--straggler-action replace).
const FaultStraggler FaultKind = "straggler"

// Straggler: move Rank of generation Gen off its slot. Live mode kills
// it and regroups the others, with a replacement when configured (the
// path a GPU fault takes); restart mode restarts the generation.
type Straggler struct {
	Gen, Rank int
	Detail    string
}

func (Straggler) input() {}

func (m *Machine) straggler(now time.Duration, ev Straggler) []Decision {
	if ev.Gen != m.gen || !m.Training() || ev.Rank < 0 || ev.Rank >= m.world {
		return nil // only a generation that trains can have a straggler
	}
	return m.fail(now, Fault{Gen: m.gen, Kind: FaultStraggler, Rank: ev.Rank, Detail: ev.Detail, Step: m.jobStep}, "straggler")
}
