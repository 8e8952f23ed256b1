package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/bulsajo/bulsajo/internal/config"
)

func usageErr(msg string) error { return fmt.Errorf("%w: %s", config.ErrUsage, msg) }

func TestExitCodeAndMessage(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode int
		wantMsg  string
	}{
		{"nil", nil, 0, ""},
		{"usage", usageErr("--nproc-per-node must be at least 1, got 0"), 2, "bulsajo: --nproc-per-node must be at least 1, got 0"},
		{"usage from config", func() error { r := config.Default(); return r.Validate() }(), 2,
			"bulsajo: no command to run (example: bulsajo run --nproc-per-node 4 -- python3 train.py)"},
		{"wrapped usage", fmt.Errorf("%w", usageErr("bad")), 2, "bulsajo: bad"},
		{"exit error", &ExitError{Code: 1, Msg: "restarts exhausted"}, 1, "bulsajo: restarts exhausted"},
		{"exit error 130 silent", &ExitError{Code: 130}, 130, ""},
		{"exit error 143 silent", &ExitError{Code: 143}, 143, ""},
		{"exit error code 0", &ExitError{Code: 0, Msg: "odd"}, 0, "bulsajo: odd"},
		{"wrapped exit error", fmt.Errorf("job: %w", &ExitError{Code: 7, Msg: "seven"}), 7, "bulsajo: job: seven"},
		{"plain error", errors.New("run dir: permission denied"), 1, "bulsajo: run dir: permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExitCode(tt.err); got != tt.wantCode {
				t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.wantCode)
			}
			got := Message(tt.err)
			if got != tt.wantMsg {
				t.Errorf("Message(%v) = %q, want %q", tt.err, got, tt.wantMsg)
			}
			if strings.Contains(got, "usage: ") {
				t.Errorf("Message(%v) = %q still holds \"usage: \"", tt.err, got)
			}
		})
	}
}

func TestParseNProc(t *testing.T) {
	tests := []struct {
		in        string
		want      int
		wantUsage bool
	}{
		{"4", 4, false},
		{"1", 1, false},
		{"0", 0, false},   // range is Validate's job
		{"-2", -2, false}, // likewise
		{"cpu", max(1, runtime.NumCPU()), false},
		{"auto", max(1, runtime.NumCPU()), false},
		{"x", 0, true},
		{"", 0, true},
		{"4.5", 0, true},
		{"CPU", 0, true},
		{" 4", 0, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			got, err := parseNProc(tt.in)
			if tt.wantUsage {
				if !errors.Is(err, config.ErrUsage) {
					t.Fatalf("parseNProc(%q) error = %v, want a usage error", tt.in, err)
				}
				if !strings.Contains(err.Error(), "--nproc-per-node") {
					t.Errorf("parseNProc(%q) error %q does not name the flag", tt.in, err)
				}
				if ExitCode(err) != 2 {
					t.Errorf("ExitCode = %d, want 2", ExitCode(err))
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseNProc(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestExecuteVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	err := Execute(context.Background(), []string{"version"}, &out, &errOut)
	if err != nil {
		t.Fatalf("Execute(version) = %v", err)
	}
	if want := "bulsajo " + Version + "\n"; out.String() != want {
		t.Errorf("stdout = %q, want %q", out.String(), want)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", errOut.String())
	}
}

// These fail before any worker could be started: flag parsing, argument
// checks or config validation.
func TestExecuteUsageErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantMsg string
	}{
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"unknown root flag", []string{"--bogus"}, "unknown flag"},
		{"unknown shorthand", []string{"-z"}, "unknown shorthand"},
		{"version with args", []string{"version", "extra"}, "unknown command"},
		{"version unknown flag", []string{"version", "--bogus"}, "unknown flag"},
		{"run unknown flag", []string{"run", "--bogus", "--", "true"}, "unknown flag"},
		{"run bad int flag", []string{"run", "--max-restarts", "many", "--", "true"}, "invalid argument"},
		{"run bad duration", []string{"run", "--hang-timeout", "soon", "--", "true"}, "invalid argument"},
		{"run without command", []string{"run"}, "no command to run"},
		{"run bad nproc", []string{"run", "--nproc-per-node", "x", "--", "true"}, `--nproc-per-node "x"`},
		{"run zero nproc", []string{"run", "--nproc-per-node", "0", "--", "true"}, "must be at least 1"},
		{"run torchrun spelling", []string{"run", "--nproc_per_node", "0", "--", "true"}, "must be at least 1"},
		{"run bad recovery", []string{"run", "--recovery", "resize", "--", "true"}, "--recovery"},
		{"run bad chaos", []string{"run", "--chaos", "boom", "--", "true"}, "--chaos"},
		{"run bad regex", []string{"run", "--progress-regex", `step \d+`, "--", "true"}, "needs a group"},
		{"run missing command", []string{"run", "--", "bulsajo-no-such-command-xyz"}, "command not found"},
		// multi-node commands
		{"coordinator args", []string{"coordinator", "extra"}, "unknown command"},
		{"coordinator lease below timeout", []string{"coordinator", "--lease", "1s", "--node-timeout", "2s"}, "--lease"},
		{"coordinator zero heartbeat", []string{"coordinator", "--heartbeat", "0s"}, "--heartbeat"},
		{"coordinator quarantine 0", []string{"coordinator", "--quarantine-after", "0"}, "--quarantine-after"},
		{"coordinator negative heartbeat budget", []string{"coordinator", "--max-heartbeats-per-second", "-1"}, "--max-heartbeats-per-second"},
		{"coordinator cert without key", []string{"coordinator", "--tls-cert", "c.pem"}, "--tls-key"},
		{"agent without coordinator", []string{"agent", "--token-file", "t"}, "--coordinator host:port is required"},
		{"agent bad coordinator", []string{"agent", "--coordinator", "nohostport"}, "want host:port"},
		{"agent bad name", []string{"agent", "--coordinator", "h:1", "--node-name", "bad name", "--token-file", "t"}, "--node-name"},
		{"agent no token file", []string{"agent", "--coordinator", "h:1", "--node-name", "n1"}, "--token-file is required"},
		{"agent zero slots", []string{"agent", "--coordinator", "h:1", "--nproc-per-node", "0"}, "--nproc-per-node"},
		{"submit bad nnodes", []string{"submit", "--coordinator", "h:1", "--nnodes", "3:2", "--", "true"}, "--nnodes"},
		{"submit nnodes text", []string{"submit", "--coordinator", "h:1", "--nnodes", "two", "--", "true"}, "--nnodes"},
		{"submit without command", []string{"submit", "--coordinator", "h:1", "--token-file", "t"}, "no command"},
		{"submit no token file", []string{"submit", "--coordinator", "h:1", "--", "true"}, "--token-file is required"},
		{"status without coordinator", []string{"status"}, "--coordinator"},
		{"node release no name", []string{"node", "release", "--coordinator", "h:1"}, "accepts 1 arg"},
		{"node release bad name", []string{"node", "release", "a/b", "--coordinator", "h:1", "--token-file", "t"}, "node name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Execute(context.Background(), tt.args, &out, &errOut)
			if err == nil {
				t.Fatalf("Execute(%q) = nil, want a usage error", tt.args)
			}
			if !errors.Is(err, config.ErrUsage) {
				t.Errorf("Execute(%q) = %v, not a usage error", tt.args, err)
			}
			if code := ExitCode(err); code != 2 {
				t.Errorf("ExitCode = %d, want 2", code)
			}
			msg := Message(err)
			if !strings.HasPrefix(msg, "bulsajo: ") || strings.Contains(msg, "usage: ") {
				t.Errorf("Message = %q, want \"bulsajo: \" and no \"usage: \"", msg)
			}
			if !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("Message = %q, want it to contain %q", msg, tt.wantMsg)
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing (errors are printed by main)", out.String())
			}
		})
	}
}

func TestExecuteHelp(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "Keep PyTorch training running"},
		{[]string{"run", "--help"}, "--nproc-per-node"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := Execute(context.Background(), tt.args, &out, &errOut); err != nil {
				t.Fatalf("Execute(%q) = %v", tt.args, err)
			}
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("help output lacks %q:\n%s", tt.want, out.String())
			}
		})
	}
}

func TestIsCobraUsage(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"unknown command", errors.New(`unknown command "frob" for "bulsajo"`), true},
		{"unknown flag", errors.New("unknown flag: --bogus"), true},
		{"unknown shorthand", errors.New("unknown shorthand flag: 'z' in -z"), true},
		{"accepts", errors.New("accepts 0 arg(s), received 1"), true},
		{"requires", errors.New("requires at least 1 arg(s), only received 0"), true},
		{"exit error never", &ExitError{Code: 1, Msg: "unknown command in worker output"}, false},
		{"plain runtime error", errors.New("run dir: permission denied"), false},
		// BUG: a system error whose text is EINVAL's ("invalid argument") is
		// taken for a cobra argument error, so a runtime failure exits 2 as a
		// usage error. E.g. `bulsajo run --run-id <120 chars> -- true` fails
		// to bind the progress socket and exits 2.
		{"EINVAL from bind", fmt.Errorf("agent: progress endpoint: %w",
			&os.SyscallError{Syscall: "bind", Err: syscall.EINVAL}), false},
		{"EINVAL from mkdir", fmt.Errorf("run dir: %w",
			&os.PathError{Op: "mkdir", Path: "/x", Err: syscall.EINVAL}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isCobraUsage(tt.err); got != tt.want {
				t.Errorf("isCobraUsage(%q) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
