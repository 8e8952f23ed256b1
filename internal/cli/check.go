package cli

import (
	"context"
	"io"
	"net"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bulsajo/bulsajo/internal/wire"
)

// Check parses a bulsajo command line (args without the program name) as
// Execute would and validates what can be validated without running it:
// the subcommand, every flag and its type, the argument count, addresses,
// --nnodes, --nproc-per-node and node names. It runs nothing. The
// Kubernetes manifests' test uses it, so that a manifest cannot carry a
// command line the binary would refuse.
func Check(args []string) (subcommand string, flags *pflag.FlagSet, err error) {
	root := &cobra.Command{Use: "bulsajo", SilenceUsage: true, SilenceErrors: true}
	ctx := context.Background()
	root.AddCommand(newRunCmd(ctx, io.Discard, io.Discard), newCoordinatorCmd(ctx, io.Discard), newAgentCmd(ctx, io.Discard),
		newSubmitCmd(ctx, io.Discard), newStatusCmd(ctx, io.Discard), newNodeCmd(ctx, io.Discard))
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		return "", nil, usage("not a bulsajo command: %q", strings.Join(args, " "))
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return "", nil, usage("%s: %v", cmd.Name(), err)
	}
	f := cmd.Flags()
	if err := cmd.ValidateArgs(f.Args()); err != nil {
		return "", nil, usage("%s: %v", cmd.Name(), err)
	}
	str := func(name string) string {
		if fl := f.Lookup(name); fl != nil {
			return fl.Value.String()
		}
		return ""
	}
	hostPort := func(name string) error {
		if v := str(name); v != "" {
			if _, _, err := net.SplitHostPort(v); err != nil {
				return usage("%s %q: want host:port", "--"+name, v)
			}
		}
		return nil
	}
	for _, name := range []string{"listen", "advertise", "health-addr"} {
		if err := hostPort(name); err != nil {
			return "", nil, err
		}
	}
	switch cmd.Name() {
	case "agent", "submit", "status", "release":
		if _, err := splitAddrs(str("coordinator")); err != nil {
			return "", nil, err
		}
	}
	switch cmd.Name() {
	case "agent":
		if n, err := parseNProc(str("nproc-per-node")); err != nil {
			return "", nil, err
		} else if n < 1 || n > 1024 {
			return "", nil, usage("--nproc-per-node must be 1..1024")
		}
		if name := str("node-name"); name != "" && !wire.ValidName(name) {
			return "", nil, usage("--node-name %q: 1-63 of [A-Za-z0-9._-]", name)
		}
		if str("token-file") == "" {
			return "", nil, usage("--token-file is required (the coordinator's join token)")
		}
	case "submit":
		if _, _, err := parseNNodes(str("nnodes")); err != nil {
			return "", nil, err
		}
		if _, err := parseNProc(str("nproc-per-node")); err != nil {
			return "", nil, err
		}
		if len(f.Args()) == 0 {
			return "", nil, usage("submit: no command to run")
		}
		if str("token-file") == "" {
			return "", nil, usage("--token-file is required (the coordinator's join token)")
		}
	}
	return cmd.Name(), f, nil
}
