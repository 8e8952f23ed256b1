package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulsajo/bulsajo/internal/sim"
)

func newSimCmd(stdout io.Writer) *cobra.Command {
	var (
		gpus, perNode, spares, trials, sweep int
		days, rate                           float64
		ckpt                                 time.Duration
		modes, params, out                   string
		seed                                 uint64
		asJSON                               bool
	)
	def := sim.Default()
	cmd := &cobra.Command{
		Use:   "sim [flags]",
		Short: "Simulate a large training run under faults: ETTR of each recovery mode",
		Long: `Simulate one training job of --gpus GPUs for --days under faults drawn from
published failure rates (Llama 3's 54-day interruption table by default), with
the recovery policy bulsajo runs (internal/policy, the same code), and print,
for each recovery mode, the effective training time ratio (ETTR: time whose
training is kept / wall time) with its standard error over --trials Monte Carlo
runs, where the rest of the time went, and the faults by class.

Modes: checkpoint-restart (torchrun-like: NCCL-timeout detection, requeue),
restart (bulsajo restart mode with spares), peer (restart mode with state in
peers' memory every step), live (bulsajo live mode: survivors keep training).
Every cost and rate is a parameter; --params FILE (JSON) overrides any of them
(see internal/sim/params.go for each default and its source).

With --out DIR it writes ettr.svg (ETTR against checkpoint interval for each
mode) and timeline.svg (one run of each mode). Same flags and seed, same bytes.`,
		Example: `  bulsajo sim --gpus 40000 --days 54 --trials 100
  bulsajo sim --gpus 16384 --rate 6.5e-3 --mode restart,live --ckpt-interval 15m --out sim-out`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := def
			if params != "" {
				if err := sim.LoadParams(params, &p); err != nil {
					return usage("--params: %v", err)
				}
			}
			f := cmd.Flags()
			if f.Changed("gpus") {
				p.GPUs = gpus
			}
			if f.Changed("gpus-per-node") {
				p.GPUsPerNode = perNode
			}
			if f.Changed("days") {
				p.Days = days
			}
			if f.Changed("ckpt-interval") {
				p.CkptInterval = sim.Duration(ckpt)
			}
			if f.Changed("spares") {
				p.Spares = spares
			}
			if f.Changed("rate") {
				if rate <= 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
					return usage("--rate must be > 0 (interruptions per node-day), got %g", rate)
				}
				p.Rates = p.Rates.ScaleUnexpected(rate)
			}
			if err := p.Validate(); err != nil {
				return usage("%v", err)
			}
			if p.Days <= 0 {
				return usage("--days must be > 0")
			}
			if trials < 1 || trials > 100000 {
				return usage("--trials must be between 1 and 100000, got %d", trials)
			}
			if sweep < 0 {
				return usage("--sweep-trials must be >= 0, got %d", sweep)
			}
			var ms []sim.Mode
			if modes == "all" {
				ms = sim.Modes
			} else {
				for _, s := range strings.Split(modes, ",") {
					m, ok := sim.ParseMode(strings.TrimSpace(s))
					if !ok {
						return usage("--mode %q: want all, or a list of checkpoint-restart (cr), restart, peer, live", s)
					}
					ms = append(ms, m)
				}
			}
			if out == "" {
				sweep = 0 // the sweep only feeds the chart
			}
			rep := sim.Run(p, ms, trials, seed, sweep)
			if out != "" {
				if err := rep.WriteCharts(out); err != nil {
					return fmt.Errorf("--out: %v", err)
				}
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			rep.WriteTable(stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&gpus, "gpus", def.GPUs, "GPUs in the job")
	f.IntVar(&perNode, "gpus-per-node", def.GPUsPerNode, "GPUs per node (a node is what fails and is replaced)")
	f.Float64Var(&days, "days", def.Days, "wall time to simulate, days")
	f.DurationVar(&ckpt, "ckpt-interval", def.CkptInterval.D(), "training time between checkpoints")
	f.IntVar(&spares, "spares", def.Spares, "spare nodes (-1: the P99 of nodes out for repair at once)")
	f.Float64Var(&rate, "rate", def.Rates.Unexpected(), "unexpected interruptions per node-day (class shares kept; Llama 3: 3.79e-3, RSC-1: 6.5e-3)")
	f.StringVar(&modes, "mode", "all", "all, or a comma-separated list of checkpoint-restart (cr), restart, peer, live")
	f.IntVar(&trials, "trials", 20, "Monte Carlo trials per mode")
	f.IntVar(&sweep, "sweep-trials", 10, "trials per point of the checkpoint-interval sweep in ettr.svg (0: no sweep); needs --out")
	f.Uint64Var(&seed, "seed", 1, "random seed: the same seed gives the same output")
	f.StringVar(&params, "params", "", "JSON file of parameters over the defaults (flags override it)")
	f.StringVar(&out, "out", "", "folder for the charts (ettr.svg, timeline.svg)")
	f.BoolVar(&asJSON, "json", false, "print the results as JSON")
	return cmd
}
