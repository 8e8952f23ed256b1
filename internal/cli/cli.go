// Package cli is bulsajo's command line: it parses flags into config, runs
// the job, and returns an error that main maps to an exit code.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bulsajo/bulsajo/internal/config"
)

// Version is set at build time (-ldflags "-X ...cli.Version=...").
var Version = "0.1.0-dev"

// ExitError carries a specific exit code (a job's outcome, a signal).
type ExitError struct {
	Code int
	Msg  string // printed as "bulsajo: Msg" unless empty
}

func (e *ExitError) Error() string { return e.Msg }

// ExitCode maps an error from Execute to the process exit code.
func ExitCode(err error) int {
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	case errors.Is(err, config.ErrUsage):
		return 2
	}
	return 1
}

// Message is the one line to print for err, or "".
func Message(err error) string {
	var ee *ExitError
	if err == nil || (errors.As(err, &ee) && ee.Msg == "") {
		return ""
	}
	return "bulsajo: " + strings.TrimPrefix(err.Error(), "usage: ")
}

// Execute runs the command line args.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "bulsajo",
		Short:         "Keep PyTorch training running through worker crashes and hangs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v", config.ErrUsage, err)
	})
	root.AddCommand(newRunCmd(ctx, stdout, stderr), newGPUsCmd(ctx, stdout), newCoordinatorCmd(ctx, stdout), newAgentCmd(ctx, stdout),
		newSubmitCmd(ctx, stdout), newStatusCmd(ctx, stdout), newNodeCmd(ctx, stdout), newReportCmd(stdout), newSimCmd(stdout), &cobra.Command{
			Use:   "version",
			Short: "Print the version",
			Args:  cobra.NoArgs,
			Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "bulsajo", Version) },
		})
	cmd, err := root.ExecuteC()
	if err != nil && !errors.Is(err, config.ErrUsage) && cmd != nil && isCobraUsage(err) {
		err = fmt.Errorf("%w: %v", config.ErrUsage, err)
	}
	return err
}

// isCobraUsage recognizes cobra's own argument errors (unknown command...).
func isCobraUsage(err error) bool {
	var ee *ExitError
	if errors.As(err, &ee) {
		return false
	}
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires "} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// torchrunNames lets torchrun's underscore spellings (--nproc_per_node) work.
func torchrunNames(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
}
