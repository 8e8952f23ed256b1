package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bulsajo/bulsajo/internal/config"
	"github.com/bulsajo/bulsajo/internal/dashboard"
	"github.com/bulsajo/bulsajo/internal/events"
)

func newReportCmd(stdout io.Writer) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "report RUN_DIR",
		Short: "Write an HTML report of a run from its event log and print its summary",
		Long: `Read RUN_DIR/events.jsonl (a run's directory, or a coordinator's
DATA_DIR/runs/JOB) and write RUN_DIR/report.html: the timeline of generations
with each fault and recovery, goodput, lost time by cause and the faults, in
one self-contained file. A log cut short by a kill -9 is reported up to its
last whole line. RUN_DIR may also be the events.jsonl file itself.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: report takes one RUN_DIR, got %d arguments", config.ErrUsage, len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return report(args[0], out, stdout)
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "where to write the report (default RUN_DIR/report.html)")
	return cmd
}

func report(arg, out string, stdout io.Writer) error {
	logPath, dir := arg, filepath.Dir(arg)
	if fi, err := os.Stat(arg); err == nil && fi.IsDir() {
		logPath, dir = filepath.Join(arg, "events.jsonl"), arg
	} else if err != nil {
		return fmt.Errorf("%w: report: %s: no such run directory", config.ErrUsage, arg)
	}
	evs, err := events.ReadFile(logPath)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: report: no event log at %s", config.ErrUsage, logPath)
	}
	if err != nil {
		return fmt.Errorf("report: %s: %w", logPath, err)
	}
	if len(evs) == 0 {
		return fmt.Errorf("report: %s holds no events", logPath)
	}
	if out == "" {
		out = filepath.Join(dir, "report.html")
	}
	var b bytes.Buffer
	sum := dashboard.WriteReport(&b, evs)
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	state := "log ends without a finish (the run was cut short)"
	if last := evs[len(evs)-1]; last.Type == events.RunFinished {
		state = last.Outcome
	}
	fmt.Fprintf(stdout, "run %s: %s\n%s\nreport: %s\n", evs[0].RunID, state, sum.Line(), out)
	return nil
}
