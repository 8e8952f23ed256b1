package launcher

import (
	"os"
	"strconv"
	"strings"
)

// GPU slots. Slot i of the node is GPU i (CUDA's order of the GPUs this
// process sees). When GPU health drains a GPU, workers started afterwards
// never get it:
//   - restart mode: every generation starts fresh, so the workers get
//     CUDA_VISIBLE_DEVICES = the healthy GPUs and LOCAL_RANK 0..n-1, as
//     torchrun would on a machine with only those GPUs;
//   - live mode: survivors keep their processes (and CUDA contexts), so
//     nothing is renumbered: LOCAL_RANK stays the GPU's index and new
//     workers take healthy GPUs no member holds.
// BULSAJO_GPU names each worker's GPU index (slot) in both modes.

// DrainSlot takes GPU slot out of use for every later worker.
func (a *Launcher) DrainSlot(slot int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.drained == nil {
		a.drained = map[int]bool{}
	}
	a.drained[slot] = true
}

// HealthySlots is how many GPU slots are not drained.
func (a *Launcher) HealthySlots() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.healthyLocked())
}

func (a *Launcher) healthyLocked() []int {
	n := max(a.cfg.GPUs, a.cfg.StandbyCount)
	var out []int
	for i := 0; i < n; i++ {
		if !a.drained[i] {
			out = append(out, i)
		}
	}
	return out
}

// RankOnSlot is the rank of gen whose worker runs on GPU slot, or -1.
func (a *Launcher) RankOnSlot(gen, slot int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g := a.gens[gen]; g != nil && !g.stopping {
		for _, w := range g.workers {
			if w.localRank == slot && !w.hasExited() {
				return w.rank
			}
		}
	}
	return -1
}

// placeGPU puts the worker of local index i of a new generation on a
// healthy GPU (see above). Without GPU health, env is left as it is.
func (a *Launcher) placeGPU(env map[string]string, i int) map[string]string {
	if a.cfg.GPUs == 0 {
		return env
	}
	a.mu.Lock()
	healthy := a.healthyLocked()
	drained := len(a.drained) > 0
	a.mu.Unlock()
	if i >= len(healthy) {
		return env // more workers than GPUs (a CPU job): as without health
	}
	env["BULSAJO_GPU"] = strconv.Itoa(healthy[i])
	if !drained {
		return env
	}
	if a.cfg.Live {
		env["LOCAL_RANK"] = strconv.Itoa(healthy[i])
		return env
	}
	visible := strings.Split(os.Getenv("CUDA_VISIBLE_DEVICES"), ",")
	var ids []string
	for _, g := range healthy {
		if g >= a.cfg.GPUs {
			break // slots past the GPUs (more workers than GPUs) have none
		}
		if os.Getenv("CUDA_VISIBLE_DEVICES") != "" && g < len(visible) {
			ids = append(ids, strings.TrimSpace(visible[g]))
		} else {
			ids = append(ids, strconv.Itoa(g))
		}
	}
	env["CUDA_VISIBLE_DEVICES"] = strings.Join(ids, ",")
	return env
}

// SlotOfRank is the GPU slot (local index) of rank in gen, or -1.
func (a *Launcher) SlotOfRank(gen, rank int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g := a.gens[gen]; g != nil {
		for _, w := range g.workers {
			if _, r := w.current(); r == rank && !w.hasExited() {
				return w.localRank
			}
		}
	}
	return -1
}
