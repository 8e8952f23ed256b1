package config

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(r *Run)
		wantMsg string
	}{
		{"no command", func(r *Run) { r.Command = nil }, "no command to run"},
		{"empty command slice", func(r *Run) { r.Command = []string{} }, "no command to run"},
		{"nproc zero", func(r *Run) { r.NProc = 0 }, "--nproc-per-node must be at least 1, got 0"},
		{"nproc negative", func(r *Run) { r.NProc = -3 }, "--nproc-per-node must be at least 1, got -3"},
		{"negative max-restarts", func(r *Run) { r.MaxRestarts = -1 }, "--max-restarts must be >= 0, got -1"},
		{"bad recovery", func(r *Run) { r.Recovery = "resize" }, `--recovery "resize": want restart or live`},
		{"empty recovery", func(r *Run) { r.Recovery = "" }, `--recovery "": want restart or live`},
		{"run id with a slash", func(r *Run) { r.RunID = "a/b" }, `--run-id "a/b"`},
		{"run id too long", func(r *Run) { r.RunID = strings.Repeat("x", 65) }, `use 1-64 letters`},
		{"run id dot-dot", func(r *Run) { r.RunID = ".." }, `--run-id ".."`},
		{"negative exit grace", func(r *Run) { r.ExitGrace = -1 }, `must not be negative`},
		{"min-nproc above nproc", func(r *Run) { r.Recovery = "live"; r.MinNProc = 5 }, `--min-nproc 5: want 0..1`},
		{"negative min-nproc", func(r *Run) { r.MinNProc = -1 }, `--min-nproc -1`},
		{"port negative", func(r *Run) { r.MasterPort = -1 }, "--master-port -1 out of range"},
		{"port too large", func(r *Run) { r.MasterPort = 65536 }, "--master-port 65536 out of range"},
		{"negative hang timeout", func(r *Run) { r.HangTimeout = -time.Second }, "durations must not be negative"},
		{"negative startup timeout", func(r *Run) { r.StartupTimeout = -time.Second }, "durations must not be negative"},
		{"negative stop grace", func(r *Run) { r.StopGrace = -time.Millisecond }, "durations must not be negative"},
		{"negative hang floor", func(r *Run) { r.HangFloor = -time.Nanosecond }, "durations must not be negative"},
		{"crash-loop-limit zero", func(r *Run) { r.CrashLoopLimit = 0 }, "--crash-loop-limit must be at least 1"},
		{"crash-loop-limit negative", func(r *Run) { r.CrashLoopLimit = -2 }, "--crash-loop-limit must be at least 1"},
		{"bad straggler action", func(r *Run) { r.StragglerAction = "kill" }, `--straggler-action "kill": want off, warn or replace`},
		{"straggler replace in restart mode", func(r *Run) { r.StragglerAction = "replace" }, `--straggler-action replace needs --recovery live`},
		{"zero straggler replace-after", func(r *Run) { r.StragglerReplaceAfter = 0 }, `--straggler-replace-after 0s: want a positive duration`},
		{"regex without group", func(r *Run) { r.ProgressRegex = `step \d+` }, "--progress-regex needs a group"},
		{"invalid regex", func(r *Run) { r.ProgressRegex = `step (\d+` }, "--progress-regex: error parsing regexp"},
		{"chaos without value", func(r *Run) { r.Chaos = "kill-every" }, "--chaos: chaos:"},
		{"chaos unknown key", func(r *Run) { r.Chaos = "explode-at=5s" }, `unknown key "explode-at"`},
		{"chaos bad duration", func(r *Run) { r.Chaos = "kill-at=soon" }, "want a positive duration"},
		{"chaos bad seed", func(r *Run) { r.Chaos = "kill-at=5s,seed=x" }, `seed "x": not an integer`},
		{"command not found", func(r *Run) { r.Command = []string{"bulsajo-no-such-command-xyz"} }, "command not found: bulsajo-no-such-command-xyz"},
		{"missing absolute path", func(r *Run) { r.Command = []string{"/nonexistent/bin/thing"} }, "command not found: /nonexistent/bin/thing"},
		{"bare script with missing interpreter", func(r *Run) {
			r.Command = []string{"train.py"}
			r.Python = "bulsajo-no-such-python"
		}, "command not found: bulsajo-no-such-python"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Default()
			r.Command = []string{"true"}
			tt.mod(&r)
			err := r.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantMsg)
			}
			if !errors.Is(err, ErrUsage) {
				t.Errorf("Validate() = %v, does not wrap ErrUsage", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Validate() = %q, want it to contain %q", err.Error(), tt.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), "usage: ") {
				t.Errorf("Validate() = %q, want the \"usage: \" prefix", err.Error())
			}
		})
	}
}

func TestValidateOK(t *testing.T) {
	tests := []struct {
		name string
		mod  func(r *Run)
		want []string // resolved command
	}{
		{"defaults with true", func(r *Run) { r.Command = []string{"true"} }, []string{"true"}},
		{"absolute path with args", func(r *Run) { r.Command = []string{"/bin/sh", "-c", "exit 0"} }, []string{"/bin/sh", "-c", "exit 0"}},
		{"limits", func(r *Run) {
			r.Command = []string{"true"}
			r.NProc = 64
			r.MaxRestarts = 0
			r.MasterPort = 65535
			r.CrashLoopLimit = 1
			r.HangTimeout = 0
			r.StartupTimeout = 0
			r.StopGrace = 0
			r.HangFloor = 0
		}, []string{"true"}},
		{"port zero means fresh", func(r *Run) { r.Command = []string{"true"}; r.MasterPort = 0 }, []string{"true"}},
		{"progress regex with group", func(r *Run) {
			r.Command = []string{"true"}
			r.ProgressRegex = `step (\d+)`
		}, []string{"true"}},
		{"progress regex with named group", func(r *Run) {
			r.Command = []string{"true"}
			r.ProgressRegex = `it=(?P<step>\d+)`
		}, []string{"true"}},
		{"chaos plan", func(r *Run) {
			r.Command = []string{"true"}
			r.Chaos = "kill-every=10s,stop-at=25s,seed=1"
		}, []string{"true"}},
		{"positive durations", func(r *Run) {
			r.Command = []string{"true"}
			r.HangTimeout = time.Minute
			r.StartupTimeout = time.Minute
		}, []string{"true"}},
		{"bare script gets interpreter", func(r *Run) {
			r.Command = []string{"train.py", "--steps", "10"}
			r.Python = "/bin/sh"
		}, []string{"/bin/sh", "train.py", "--steps", "10"}},
		{"bare script in a directory gets interpreter", func(r *Run) {
			r.Command = []string{"examples/ddp_train.py"}
			r.Python = "true"
		}, []string{"true", "examples/ddp_train.py"}},
		{"py argument is not a bare script", func(r *Run) {
			r.Command = []string{"/bin/sh", "train.py"}
		}, []string{"/bin/sh", "train.py"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Default()
			tt.mod(&r)
			if err := r.Validate(); err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !slices.Equal(r.Command, tt.want) {
				t.Errorf("Command = %q, want %q", r.Command, tt.want)
			}
		})
	}
}

// A bare script runs under the default interpreter (python3), as torchrun does.
func TestValidateBareScriptDefaultPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not on PATH")
	}
	r := Default()
	r.Command = []string{"train.py", "--lr", "0.1"}
	if err := r.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	want := []string{"python3", "train.py", "--lr", "0.1"}
	if !slices.Equal(r.Command, want) {
		t.Errorf("Command = %q, want %q", r.Command, want)
	}
	// Validating again must not prepend the interpreter a second time.
	if err := r.Validate(); err != nil {
		t.Fatalf("second Validate() = %v", err)
	}
	if !slices.Equal(r.Command, want) {
		t.Errorf("after second Validate, Command = %q, want %q", r.Command, want)
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"NProc", d.NProc, 1},
		{"MaxRestarts", d.MaxRestarts, 10},
		{"MasterAddr", d.MasterAddr, "127.0.0.1"},
		{"MasterPort", d.MasterPort, 0},
		{"Recovery", d.Recovery, "restart"},
		{"HangFloor", d.HangFloor, 2 * time.Second},
		{"HangTimeout", d.HangTimeout, time.Duration(0)},
		{"StopGrace", d.StopGrace, 3 * time.Second},
		{"CrashLoopLimit", d.CrashLoopLimit, 3},
		{"Standby", d.Standby, true},
		{"Python", d.Python, "python3"},
		{"Chaos", d.Chaos, ""},
		{"StragglerAction", d.StragglerAction, "warn"},
		{"StragglerReplaceAfter", d.StragglerReplaceAfter, time.Minute},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("Default().%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Defaults alone lack only a command.
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("Default().Validate() = %v, want the no-command error", err)
	}
}
