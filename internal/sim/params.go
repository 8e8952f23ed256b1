package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
)

// Duration is a time.Duration that reads from JSON as "10m", "38s" or a
// number of seconds, and writes as its String form.
type Duration time.Duration

func (d Duration) D() time.Duration         { return time.Duration(d) }
func (d Duration) Seconds() float64         { return time.Duration(d).Seconds() }
func (d Duration) String() string           { return time.Duration(d).String() }
func sec(s float64) Duration                { return Duration(s * float64(time.Second)) }
func (d Duration) scale(f float64) Duration { return Duration(float64(d) * f) }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want \"10m\" or seconds", b)
	}
	*d = sec(f)
	return nil
}

// Class is a fault class.
type Class int

const (
	Crash       Class = iota // process crash, node healthy (software bug, dependency)
	GPU                      // GPU fault that drains the node for repair (faulty GPU, HBM/SRAM, GSP, thermal, SDC)
	NodeLoss                 // the node vanishes (host, PSU, chassis, NIC-less host loss...)
	Network                  // switch/cable/NIC: completion errors; sometimes a whole leaf of nodes
	Hang                     // no exit, no progress (NCCL watchdog class)
	Maintenance              // planned: announced drain
	Straggler                // fail-slow episode: the job runs at its slowest node's pace
	NumClasses
)

var classNames = [NumClasses]string{"crash", "gpu", "node", "network", "hang", "maint", "straggler"}

func (c Class) String() string { return classNames[c] }

// Rates are per node-day for each class.
type Rates struct {
	Crash       float64 `json:"crash"`
	GPU         float64 `json:"gpu"`
	NodeLoss    float64 `json:"node"`
	Network     float64 `json:"network"`
	Hang        float64 `json:"hang"`
	Maintenance float64 `json:"maint"`
	Straggler   float64 `json:"straggler"`
}

func (r Rates) of(c Class) float64 {
	return [NumClasses]float64{r.Crash, r.GPU, r.NodeLoss, r.Network, r.Hang, r.Maintenance, r.Straggler}[c]
}

// Unexpected is the interruption rate: every class but maintenance and stragglers.
func (r Rates) Unexpected() float64 { return r.Crash + r.GPU + r.NodeLoss + r.Network + r.Hang }

// ScaleUnexpected returns r with the unexpected classes scaled to total
// per node-day, their shares kept.
func (r Rates) ScaleUnexpected(total float64) Rates {
	u := r.Unexpected()
	if u == 0 {
		return r
	}
	f := total / u
	r.Crash *= f
	r.GPU *= f
	r.NodeLoss *= f
	r.Network *= f
	r.Hang *= f
	return r
}

// ModeParams are the costs of one recovery mode.
type ModeParams struct {
	DetectExit     Duration `json:"detect_exit"`      // a worker process exited
	DetectNodeLoss Duration `json:"detect_node_loss"` // a node went silent
	DetectNetwork  Duration `json:"detect_network"`   // a link failed under a collective
	DetectHang     Duration `json:"detect_hang"`      // the policy's fixed hang threshold
	Diagnose       Duration `json:"diagnose"`         // live: naming a hang's culprit
	Stop           Duration `json:"stop"`             // stopping a generation
	UseSpares      bool     `json:"use_spares"`       // false: every lost node is a requeue
	Spare          Duration `json:"spare"`            // a spare takes over a slot
	Init           Duration `json:"init"`             // process start + NCCL init at ScaleRefGPUs
	Load           Duration `json:"load"`             // state load on restart
	CkptWrite      Duration `json:"ckpt_write"`       // blocking part of one disk checkpoint
	PeerState      bool     `json:"peer_state"`       // state every step in peers' memory: restart loses <= 1 step
	Overhead       float64  `json:"overhead"`         // steady throughput fraction lost (per-step state copy)
	Live           bool     `json:"live"`             // survivors keep their processes (policy Live)
	Regroup        Duration `json:"regroup"`          // live: job-wide stall to re-form the group, at ScaleRefGPUs
	StateTransfer  Duration `json:"state_transfer"`   // live: a joiner receives its state from a replica
}

// Params is everything a simulation is run with.
type Params struct {
	GPUs         int      `json:"gpus"`
	GPUsPerNode  int      `json:"gpus_per_node"`
	Days         float64  `json:"days"`       // wall time simulated (0: until WorkHours is done)
	WorkHours    float64  `json:"work_hours"` // stop when this much training is committed (Daly's T_s)
	CkptInterval Duration `json:"ckpt_interval"`
	Spares       int      `json:"spares"` // -1: P99 of nodes out for repair (ByteRobust's rule)
	StepTime     Duration `json:"step_time"`
	ReplicaNodes int      `json:"replica_nodes"` // nodes per data-parallel replica (model-parallel group)

	Rates           Rates    `json:"rates"`
	LemonFraction   float64  `json:"lemon_fraction"`
	LemonMultiplier float64  `json:"lemon_multiplier"`
	QuarantineAfter int      `json:"quarantine_after"` // faults attributed to a node before it is excluded (0: never)
	RepairAuto      Duration `json:"repair_auto"`
	RepairManual    Duration `json:"repair_manual"`
	RepairAutoShare float64  `json:"repair_auto_share"`
	NetworkRepair   Duration `json:"network_repair"`
	MaintDuration   Duration `json:"maint_duration"`
	NetworkGroup    int      `json:"network_group"`       // nodes under one leaf switch
	NetworkGroupP   float64  `json:"network_group_share"` // share of network faults that take the whole leaf
	StragglerMean   Duration `json:"straggler_mean"`
	StragglerSlow   float64  `json:"straggler_slowdown"` // step time multiple while a straggler is in the job
	HangCulpritP    float64  `json:"hang_culprit_found"` // live: diagnosis names the hung rank
	RequeueWait     Duration `json:"requeue_wait"`       // a node (or the whole job) from the cluster scheduler
	ScaleRefGPUs    int      `json:"scale_ref_gpus"`
	ScaleExp        float64  `json:"scale_exp"` // Init and Regroup grow as (GPUs/ScaleRefGPUs)^ScaleExp

	CR      ModeParams `json:"checkpoint_restart"`
	Restart ModeParams `json:"restart"`
	Peer    ModeParams `json:"peer"`
	LiveM   ModeParams `json:"live"`
}

// Llama 3 405B, Table 5 (Grattafiori et al. 2024, §3.3.4): 419 unexpected
// interruptions in 54 days on 2,048 nodes = 110,592 node-days.
const llamaNodeDays = 110592.0

// Default returns the parameters of the Llama 3 405B run (16,384 H100) with
// the costs measured by this project or published; each line says where from.
// failure-model.md is /work/shared/research/failure-model.md.
func Default() Params {
	return Params{
		GPUs:         16384, // Llama 3 405B
		GPUsPerNode:  8,
		Days:         54, // Llama 3's snapshot
		CkptInterval: Duration(30 * time.Minute),
		Spares:       -1,
		// 6·405e9·16M tokens / (16,384 × 989 TFLOPs × 40% MFU) ≈ 6 s [D, Llama 3 §3.3.2 batch and MFU]
		StepTime: sec(6),
		// TP 8 × PP 16 = 128 GPUs per data-parallel replica (Llama 3 Table 4)
		ReplicaNodes: 16,
		Rates: Rates{
			Crash:    56 / llamaNodeDays,  // software bug 54 + dependency 2 (Table 5)
			GPU:      268 / llamaNodeDays, // faulty GPU, HBM3, SRAM, GSP, thermal, SDC (Table 5 counts)
			NodeLoss: 46 / llamaNodeDays,  // unplanned host maintenance, PSU, SSD, chassis, IO board, CPU, DIMM
			Network:  42 / llamaNodeDays,  // switch/cable 35 + NIC 7
			Hang:     7 / llamaNodeDays,   // NCCL watchdog timeouts
			// 47 planned interruptions (Llama 3 §3.3.4)
			Maintenance: 47 / llamaNodeDays,
			// Assumption: Falcon (ATC 2025) saw fail-slows in 16 of 27 jobs >= 512 GPUs, mean 72 min,
			// but no per-node rate; 2.5e-4/node-day is a guess to be replaced by a measured one.
			Straggler: 2.5e-4,
		},
		LemonFraction: 0.012, // Kokolis et al.: 24 lemons = 1.2% of RSC-1 nodes
		// Lablup B200 study: top 3 of 63 nodes (4.8%) caused >50% of exclusions ⇒ ×(1-0.048)/0.048 ≈ 20 [D]
		LemonMultiplier: 20,
		QuarantineAfter: 3,                          // coordinator.DefaultQuarantineAfter
		RepairAuto:      Duration(2 * time.Hour),    // AIReSim default (hypothetical)
		RepairManual:    Duration(48 * time.Hour),   // AIReSim default (hypothetical)
		RepairAutoShare: 0.7,                        // AIReSim: 20–40% need the manual path
		NetworkRepair:   Duration(time.Hour),        // assumption: reseat/replace a cable or reroute
		MaintDuration:   Duration(4 * time.Hour),    // assumption
		NetworkGroup:    16,                         // assumption: nodes under one leaf switch (rail-optimized: fewer)
		NetworkGroupP:   0.1,                        // assumption: most switch/cable faults are one link
		StragglerMean:   Duration(72 * time.Minute), // Falcon: fail-slows last 72 min on average at >= 512 GPUs
		StragglerSlow:   1.5,                        // assumption (Falcon: JCT ×1.34 over whole jobs)
		HangCulpritP:    0,                          // architecture.md "Known limits": across nodes a live-mode hang falls back to a full restart
		RequeueWait:     Duration(11 * time.Minute), // Lablup B200 study: median retry interval 11 min
		ScaleRefGPUs:    1024,
		// fit through TrainMover's 20 s at 1,024 GPUs and FT-HSDP's 3 min at ~100K: log(9)/log(100)
		ScaleExp: math.Log(9) / math.Log(100),

		// torchrun-like checkpoint-restart, requeued by the scheduler.
		CR: ModeParams{
			DetectExit:     sec(5),                     // torchrun's monitor interval (BENCHMARKS: detected 3.3 s)
			DetectNodeLoss: Duration(10 * time.Minute), // peers block until NCCL's 10 min PG timeout
			DetectNetwork:  Duration(10 * time.Minute), // the broken side errors after ~7 s, its peers wait the timeout
			DetectHang:     Duration(10 * time.Minute), // NCCL watchdog default
			Stop:           sec(30),                    // torchrun: SIGTERM, 30 s to SIGKILL
			UseSpares:      false,                      // a lost node means a requeue (RequeueWait)
			Init:           sec(60),                    // at 1,024 GPUs; ⇒ 225 s at 16k (MegaScale: 1,047 s at 2,048 unoptimized, <30 s optimized)
			Load:           sec(38),                    // 5.7 TB (405B weights + Adam state) at 150 GB/s = 21.5% of 700 GB/s (Lablup) [D]
			CkptWrite:      sec(38),                    // same bytes, same bandwidth, blocking
		},
		// bulsajo restart mode: coordinator + agents, spares with standby workers.
		Restart: ModeParams{
			DetectExit:     Duration(5 * time.Millisecond), // BENCHMARKS multi-node: detected 3–5 ms
			DetectNodeLoss: sec(5),                         // BENCHMARKS: silence → new generation 5.05 s (lease)
			DetectNetwork:  sec(7),                         // NCCL_IB_TIMEOUT ~7 s, then the worker exits (Databricks)
			DetectHang:     sec(30),                        // watchdog 5 × p99 step time (6 s) [D]
			Stop:           sec(1),                         // BENCHMARKS scale: new generation at every agent p99 0.86 s at 10,000 agents
			UseSpares:      true,
			Spare:          Duration(105 * time.Millisecond), // BENCHMARKS: spare takeover 105 ms median
			Init:           sec(20),                          // at 1,024 GPUs (TrainMover 20 s); ⇒ 75 s at 16k
			Load:           sec(38),                          // as checkpoint-restart: the script loads its checkpoint
			CkptWrite:      sec(38),
		},
		// bulsajo restart mode + state in peers' memory every step (Gemini, ByteRobust).
		Peer: ModeParams{
			DetectExit:     Duration(5 * time.Millisecond),
			DetectNodeLoss: sec(5),
			DetectNetwork:  sec(7),
			DetectHang:     sec(30),
			Stop:           sec(1),
			UseSpares:      true,
			Spare:          Duration(105 * time.Millisecond),
			Init:           sec(20),
			Load:           sec(3),  // 38 s / 13 (Gemini: >13× faster recovery from peer memory)
			CkptWrite:      sec(38), // disk checkpoints still written for full losses
			PeerState:      true,
			Overhead:       0.009, // ByteRobust: every-step in-memory checkpoint < 0.9%
		},
		// bulsajo live mode: survivors keep their processes; a replacement joins later.
		LiveM: ModeParams{
			DetectExit:     Duration(5 * time.Millisecond),
			DetectNodeLoss: sec(5),
			DetectNetwork:  sec(7),
			DetectHang:     sec(30),
			Diagnose:       sec(1), // reading /proc on the hung ranks' nodes (assumption)
			Stop:           sec(1),
			UseSpares:      true,
			Spare:          Duration(105 * time.Millisecond),
			Init:           sec(20),
			Load:           sec(38),
			CkptWrite:      sec(38),
			Live:           true,
			Regroup:        sec(20), // at 1,024 GPUs (TrainMover 20 s); ⇒ 75 s at 16k, 116 s at 40k
			StateTransfer:  sec(7),  // 5.7 TB / 16 nodes of a replica = 356 GB per node at 50 GB/s [D]
		},
	}
}

// Mode is a recovery mode.
type Mode string

const (
	ModeCR      Mode = "checkpoint-restart"
	ModeRestart Mode = "restart"
	ModePeer    Mode = "peer"
	ModeLive    Mode = "live"
)

// Modes in the order tables show them.
var Modes = []Mode{ModeCR, ModeRestart, ModePeer, ModeLive}

// ParseMode accepts a mode name ("cr" for checkpoint-restart).
func ParseMode(s string) (Mode, bool) {
	switch s {
	case "cr", string(ModeCR):
		return ModeCR, true
	case string(ModeRestart), string(ModePeer), string(ModeLive):
		return Mode(s), true
	}
	return "", false
}

// Mode returns the costs of mode m.
func (p *Params) Mode(m Mode) ModeParams {
	switch m {
	case ModeCR:
		return p.CR
	case ModeRestart:
		return p.Restart
	case ModePeer:
		return p.Peer
	}
	return p.LiveM
}

// Nodes is the job's node count.
func (p *Params) Nodes() int { return (p.GPUs + p.GPUsPerNode - 1) / p.GPUsPerNode }

// scaleFactor is how much slower Init and Regroup are at p.GPUs than at the reference size.
func (p *Params) scaleFactor() float64 {
	if p.ScaleRefGPUs <= 0 || p.ScaleExp == 0 {
		return 1
	}
	return math.Pow(float64(p.GPUs)/float64(p.ScaleRefGPUs), p.ScaleExp)
}

// MeanRepair is the mean time a drained node is away.
func (p *Params) MeanRepair() float64 {
	return p.RepairAutoShare*p.RepairAuto.Seconds() + (1-p.RepairAutoShare)*p.RepairManual.Seconds()
}

// AutoSpares is ByteRobust's rule: the P99 of the number of nodes out for
// repair at once (Poisson with mean nodes × drain rate × mean repair time).
func (p *Params) AutoSpares() int {
	r := p.Rates
	drain := (r.GPU + r.NodeLoss) * p.MeanRepair()
	drain += r.Network * (1 + p.NetworkGroupP*float64(max(0, p.NetworkGroup-1))) * p.NetworkRepair.Seconds()
	drain += r.Maintenance * p.MaintDuration.Seconds()
	mean := float64(p.Nodes()) * drain / 86400
	// smallest k with P(X <= k) >= 0.99
	term := math.Exp(-mean)
	cdf := term
	k := 0
	for cdf < 0.99 && k < 100000 {
		k++
		term *= mean / float64(k)
		cdf += term
	}
	return k
}

// Validate reports the first thing wrong with p, as a sentence.
func (p *Params) Validate() error {
	switch {
	case p.GPUs < 1:
		return fmt.Errorf("gpus must be at least 1, got %d", p.GPUs)
	case p.GPUsPerNode < 1:
		return fmt.Errorf("gpus per node must be at least 1, got %d", p.GPUsPerNode)
	case p.Days <= 0 && p.WorkHours <= 0:
		return fmt.Errorf("days must be > 0, got %g", p.Days)
	case p.Days > 3650:
		return fmt.Errorf("days must be at most 3650, got %g", p.Days)
	case p.CkptInterval <= 0:
		return fmt.Errorf("checkpoint interval must be > 0, got %s", p.CkptInterval)
	case p.Spares < -1:
		return fmt.Errorf("spares must be >= 0 (or -1 for the P99 rule), got %d", p.Spares)
	case p.StepTime <= 0:
		return fmt.Errorf("step time must be > 0")
	case p.ReplicaNodes < 1:
		return fmt.Errorf("replica_nodes must be at least 1")
	case p.LemonFraction < 0 || p.LemonFraction > 1 || p.LemonMultiplier < 0:
		return fmt.Errorf("lemon_fraction must be in [0,1] and lemon_multiplier >= 0")
	case p.RepairAutoShare < 0 || p.RepairAutoShare > 1 || p.NetworkGroupP < 0 || p.NetworkGroupP > 1 || p.HangCulpritP < 0 || p.HangCulpritP > 1:
		return fmt.Errorf("shares and probabilities must be in [0,1]")
	case p.StragglerSlow < 1:
		return fmt.Errorf("straggler_slowdown must be >= 1")
	}
	for c := Class(0); c < NumClasses; c++ {
		if v := p.Rates.of(c); v < 0 || math.IsNaN(v) {
			return fmt.Errorf("rate of %s must be >= 0", c)
		}
	}
	if p.Nodes() > 1_000_000 {
		return fmt.Errorf("at most 1,000,000 nodes")
	}
	return nil
}

// LoadParams reads a JSON file over the defaults: fields it names replace them.
// Unknown fields are an error (a misspelt one would otherwise be ignored).
func LoadParams(path string, p *Params) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(p); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}
