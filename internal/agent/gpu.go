package agent

import (
	"context"
	"os"
	"syscall"

	"github.com/bulsajo/bulsajo/internal/gpu"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// GPU health on a node: the agent runs the monitor (preflight before each
// generation, a watch loop meanwhile) and reports every verdict to the
// coordinator, which quarantines the node on a drain. A restart-class
// fault kills the worker on that GPU here; its exit is the fault the
// policy sees.

// watchGPUs forwards the monitor's verdicts until ctx ends.
func (a *Agent) watchGPUs(ctx context.Context) {
	go a.cfg.GPU.Run(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-a.cfg.GPU.Verdicts():
			a.gpuVerdict(v)
		}
	}
}

// gpuPreflight checks the GPUs before a generation starts here.
func (a *Agent) gpuPreflight() {
	if a.cfg.GPU == nil {
		return
	}
	for _, v := range a.cfg.GPU.Preflight(context.Background()) {
		a.gpuVerdict(v)
	}
}

func (a *Agent) gpuVerdict(v gpu.Verdict) {
	if v.Class == gpu.None {
		return
	}
	slot, ok := a.gpuSlots()[v.Index]
	if !ok && v.Index >= 0 {
		return // not a GPU this node's workers use
	}
	if v.Index < 0 {
		slot = -1
	}
	a.con.Printf("%s GPU %d: %s", map[gpu.Class]string{gpu.Warn: "⚠", gpu.Restart: "!", gpu.Drain: "✗"}[v.Class], slot, v.Reason)
	a.mu.Lock()
	m := wire.Msg{Type: wire.TGPU, Job: a.job, Gen: a.gen, GPU: slot, UUID: v.UUID, Class: v.Class.String(), Reason: trimTo(v.Reason, 1024)}
	if v.Class == gpu.Drain {
		// Said again on every new session: a coordinator that restarts
		// must still know this node is unfit.
		a.gpuDrains = append(a.gpuDrains, m)
	}
	ag, gen := a.ag, a.gen
	a.mu.Unlock()
	a.sendNow(m)
	if v.Class == gpu.Restart && ag != nil && slot >= 0 {
		if rank := ag.RankOnSlot(gen, slot); rank >= 0 {
			ag.Signal(gen, rank, syscall.SIGKILL)
		}
	}
}

// gpuSlots maps GPU indices to worker slots (CUDA_VISIBLE_DEVICES order).
func (a *Agent) gpuSlots() map[int]int {
	return gpu.SlotMap(a.cfg.GPU.Devices(), os.Getenv("CUDA_VISIBLE_DEVICES"))
}

// resendGPU repeats the drains this node reported, on a new session.
func (a *Agent) resendGPU(s *session) {
	a.mu.Lock()
	ms := append([]wire.Msg(nil), a.gpuDrains...)
	a.mu.Unlock()
	for _, m := range ms {
		s.send(m)
	}
}

func trimTo(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
