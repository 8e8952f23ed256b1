package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/bulsajo/bulsajo/internal/atomicfile"
	"github.com/bulsajo/bulsajo/internal/config"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/gpu"
	"github.com/bulsajo/bulsajo/internal/supervisor"
)

// gpuHealth is `bulsajo run`'s GPU watch: the monitor, and its verdicts as
// supervisor reports on worker slots.
type gpuHealth struct {
	mon     *gpu.Monitor
	probe   gpu.Probe
	slotOf  map[int]int // GPU index -> worker slot
	slots   int
	initial []supervisor.GPUReport // the first preflight's, given to the first generation
	reports chan supervisor.GPUReport
	file    string // RUN_DIR/gpus.json: every GPU's state
	saveMu  sync.Mutex
}

// startGPUHealth opens the probe. Without NVML (no driver, or a build
// without the nvml tag) it says so once and returns nil: the job runs as
// it would without GPU health.
func startGPUHealth(ctx context.Context, c config.Run, runDir string, con *console.Console) (*gpuHealth, error) {
	if c.GPUHealth == "off" {
		return nil, nil
	}
	p, err := gpu.Open()
	if errors.Is(err, gpu.ErrUnavailable) {
		con.Printf("  %v; running without it", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", config.ErrUsage, err)
	}
	rules := gpu.DefaultRules()
	rules.ParseXIDClasses(c.GPUXID) // validated
	h := &gpuHealth{probe: p, mon: gpu.NewMonitor(p, gpu.MonitorConfig{Rules: rules}),
		reports: make(chan supervisor.GPUReport, 64), file: filepath.Join(runDir, "gpus.json")}
	first := h.mon.Preflight(ctx)
	devs := h.mon.Devices()
	h.slotOf = gpu.SlotMap(devs, os.Getenv("CUDA_VISIBLE_DEVICES"))
	h.slots = len(h.slotOf)
	h.initial = h.translate(first)
	name := "GPU"
	if len(devs) > 0 && devs[0].Name != "" {
		name = devs[0].Name
	}
	con.Printf("  GPU health: watching %d × %s (XIDs, ECC, row remaps, throttling, PCIe, NVLink; state in %s)", h.slots, name, relPath(h.file))
	go h.mon.Run(ctx)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case v := <-h.mon.Verdicts():
				for _, r := range h.translate([]gpu.Verdict{v}) {
					select {
					case h.reports <- r:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	h.save()
	return h, nil
}

func (h *gpuHealth) translate(vs []gpu.Verdict) []supervisor.GPUReport {
	var out []supervisor.GPUReport
	for _, v := range vs {
		slot, ok := h.slotOf[v.Index]
		if !ok || v.Class == gpu.None {
			continue // not one of the job's GPUs
		}
		out = append(out, supervisor.GPUReport{Slot: slot, UUID: v.UUID, Class: v.Class.String(), Reason: v.Reason})
	}
	h.save()
	return out
}

// preflight runs before every generation.
func (h *gpuHealth) preflight(ctx context.Context) func() []supervisor.GPUReport {
	return func() []supervisor.GPUReport {
		if h.initial != nil {
			out := h.initial
			h.initial = nil
			return out
		}
		return h.translate(h.mon.Preflight(ctx))
	}
}

// evidence is the hardware evidence against the GPU of worker slot: its
// hardware throttle reasons in the latest sample, else a warning the
// monitor holds for it (thermal/power throttling held, PCIe width
// degraded). "" when there is none.
func (h *gpuHealth) evidence(slot int) string {
	idx := -1
	for i, s := range h.slotOf {
		if s == slot {
			idx = i
		}
	}
	for _, st := range h.mon.Status() {
		if st.Index != idx {
			continue
		}
		switch {
		case st.Reasons != "":
			return st.Reasons
		case st.State == "warn":
			return st.Reason
		}
	}
	return ""
}

// save writes every GPU's state to RUN_DIR/gpus.json (for people and tools).
func (h *gpuHealth) save() {
	h.saveMu.Lock()
	defer h.saveMu.Unlock()
	st := h.mon.Status()
	b, _ := json.MarshalIndent(st, "", "  ")
	atomicfile.Write(h.file, append(b, '\n'), 0o644)
}

func (h *gpuHealth) close() {
	h.save()
	h.probe.Close()
}

// openGPUMonitor is the agent's GPU watch (nil when off or unavailable).
func openGPUMonitor(mode, xid string, con *console.Console) (*gpu.Monitor, error) {
	switch mode {
	case "off":
		return nil, nil
	case "auto":
	default:
		return nil, fmt.Errorf("%w: --gpu-health %q: want auto or off", config.ErrUsage, mode)
	}
	rules := gpu.DefaultRules()
	if err := rules.ParseXIDClasses(xid); err != nil {
		return nil, fmt.Errorf("%w: --gpu-xid: %v", config.ErrUsage, err)
	}
	p, err := gpu.Open()
	if errors.Is(err, gpu.ErrUnavailable) {
		con.Printf("  %v; running without it", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", config.ErrUsage, err)
	}
	return gpu.NewMonitor(p, gpu.MonitorConfig{Rules: rules}), nil
}
