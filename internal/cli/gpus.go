package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulsajo/bulsajo/internal/gpu"
)

// `bulsajo gpus`: what the GPU probe reads on this machine, and the
// verdicts bulsajo would act on; with --watch, the watch loop's verdicts
// for that long. A check of a node, and of the NVML build.
func newGPUsCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Show this machine's GPUs as bulsajo's GPU health sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := gpu.Open()
			if errors.Is(err, gpu.ErrUnavailable) {
				fmt.Fprintln(stdout, err)
				return &ExitError{Code: 1}
			}
			if err != nil {
				return usage("%v", err)
			}
			defer p.Close()
			mon := gpu.NewMonitor(p, gpu.MonitorConfig{Interval: time.Second})
			start := time.Now()
			pre := mon.Preflight(ctx)
			devs := mon.Devices()
			fmt.Fprintf(stdout, "%d GPU(s) · preflight %s\n", len(devs), time.Since(start).Round(time.Millisecond))
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GPU\tUUID\tNAME\tPCI\tTEMP\tPOWER\tSM MHz\tTHROTTLE\tPCIe\tECC corr/unc\tREMAP c/u/pend/fail\tRECOVERY\tNVLINK up")
			for _, d := range devs {
				s, err := p.Sample(ctx, d.Index)
				if err != nil {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\terror: %v\n", d.Index, d.UUID, d.Name, d.PCIBusID, err)
					continue
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d °C\t%.0f W\t%d\t%#x %s\tx%d/x%d\t%d/%d\t%d/%d/%v/%v\t%s\t%v\n", d.Index, d.UUID, d.Name, d.PCIBusID,
					s.TempC, float64(s.PowerMW)/1000, s.SMClockMHz, s.ClockEventReasons, gpu.ReasonNames(s.ClockEventReasons),
					s.PCIeWidth, s.MaxPCIeWidth, s.ECCVolCorr, s.ECCVolUncorr, s.RemapCorr, s.RemapUnc, s.RemapPending, s.RemapFailed,
					gpu.RecoveryName(s.RecoveryAction), d.NVLinksUp)
			}
			tw.Flush()
			for _, v := range pre {
				fmt.Fprintf(stdout, "preflight: %s\n", v)
			}
			if len(pre) == 0 {
				fmt.Fprintln(stdout, "preflight: every GPU fit to run")
			}
			if watch > 0 {
				fmt.Fprintf(stdout, "watching for %s (events and samples every 1 s)…\n", watch)
				wctx, cancel := context.WithTimeout(ctx, watch)
				defer cancel()
				go mon.Run(wctx)
				n := 0
				for {
					select {
					case v := <-mon.Verdicts():
						n++
						fmt.Fprintf(stdout, "%s %s\n", time.Now().Format("15:04:05"), v)
					case <-wctx.Done():
						fmt.Fprintf(stdout, "%d verdict(s) in %s\n", n, watch)
						var st []string
						for _, s := range mon.Status() {
							st = append(st, fmt.Sprintf("GPU %d %s", s.Index, s.State))
						}
						fmt.Fprintln(stdout, strings.Join(st, " · "))
						return nil
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&watch, "watch", 0, "also run the watch loop this long and print its verdicts")
	return cmd
}
