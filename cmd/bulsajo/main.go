// Command bulsajo keeps PyTorch training jobs running through faults.
// main only maps errors to exit codes; everything else is in internal/cli.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/bulsajo/bulsajo/internal/cli"
)

func main() {
	err := cli.Execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	if msg := cli.Message(err); msg != "" {
		fmt.Fprintln(os.Stderr, msg)
	}
	os.Exit(cli.ExitCode(err))
}
