// Package config holds the settings of a `bulsajo run` job: a struct with
// Default() and Validate(), so every check on user input lives in one place.
package config

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/bulsajo/bulsajo/internal/chaos"
	"github.com/bulsajo/bulsajo/internal/gpu"
)

// Run is one job on one machine.
type Run struct {
	Command []string
	// Remote: the command runs on other nodes (bulsajo submit), so it is
	// not looked up on this machine's PATH.
	Remote      bool
	NProc       int
	MaxRestarts int
	RunID       string
	RunDir      string // default runs/<run-id>
	MasterAddr  string
	MasterPort  int    // 0: a fresh free port per generation
	Recovery    string // restart | live
	MinNProc    int    // live: smallest world to continue with (0: 1)
	Replace     bool   // live: start replacements for lost workers

	ProgressRegex  string
	HangTimeout    time.Duration // 0: adaptive
	HangFloor      time.Duration
	StartupTimeout time.Duration // 0: adaptive
	StopGrace      time.Duration
	ExitGrace      time.Duration // after a rank finishes, how long the others may take
	BusyLimit      time.Duration // longest stall excused while ranks use CPU; 0: no such check
	CrashLoopLimit int
	Standby        bool
	Preload        string
	Chaos          string
	Python         string // interpreter for a bare `script.py` command
	MetricsAddr    string // HOST:PORT for /metrics and the dashboard; "" = off
	GPUHealth      string // auto (watch the GPUs when NVML is there) | off
	GPUXID         string // XID class overrides, e.g. "drain=13;ignore=43"
	// Stragglers (live mode): off | warn | replace; replace moves a slow
	// rank once hardware evidence backs it or after StragglerReplaceAfter.
	StragglerAction       string
	StragglerReplaceAfter time.Duration
}

// Default returns the settings used when no flag says otherwise.
func Default() Run {
	return Run{
		NProc:          1,
		MaxRestarts:    10,
		MasterAddr:     "127.0.0.1",
		Recovery:       "restart",
		Replace:        true,
		HangFloor:      2 * time.Second,
		StopGrace:      3 * time.Second,
		ExitGrace:      30 * time.Second,
		BusyLimit:      10 * time.Minute,
		CrashLoopLimit: 3,
		Standby:        true,
		Python:         "python3",
		GPUHealth:      "auto",

		StragglerAction:       "warn",
		StragglerReplaceAfter: time.Minute,
	}
}

// ErrUsage marks errors in what the user asked for (exit code 2).
var ErrUsage = errors.New("usage")

func usage(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Validate checks the settings and resolves the command: a bare `train.py`
// runs under the Python interpreter, as torchrun does.
func (r *Run) Validate() error {
	if len(r.Command) == 0 {
		return usage("no command to run (example: bulsajo run --nproc-per-node 4 -- python3 train.py)")
	}
	if r.NProc < 1 {
		return usage("--nproc-per-node must be at least 1, got %d", r.NProc)
	}
	if r.MaxRestarts < 0 {
		return usage("--max-restarts must be >= 0, got %d", r.MaxRestarts)
	}
	if r.RunID != "" && (!runIDPattern.MatchString(r.RunID) || r.RunID == "." || r.RunID == "..") {
		return usage("--run-id %q: use 1-64 letters, digits, '.', '_' or '-'", r.RunID)
	}
	if r.Recovery != "restart" && r.Recovery != "live" {
		return usage("--recovery %q: want restart or live", r.Recovery)
	}
	if r.MinNProc < 0 || r.MinNProc > r.NProc {
		return usage("--min-nproc %d: want 0..%d (--nproc-per-node)", r.MinNProc, r.NProc)
	}
	if r.MasterPort < 0 || r.MasterPort > 65535 {
		return usage("--master-port %d out of range", r.MasterPort)
	}
	if r.HangTimeout < 0 || r.StartupTimeout < 0 || r.StopGrace < 0 || r.HangFloor < 0 || r.ExitGrace < 0 || r.BusyLimit < 0 {
		return usage("durations must not be negative")
	}
	if r.CrashLoopLimit < 1 {
		return usage("--crash-loop-limit must be at least 1")
	}
	if r.ProgressRegex != "" {
		re, err := regexp.Compile(r.ProgressRegex)
		if err != nil {
			return usage("--progress-regex: %v", err)
		}
		if re.NumSubexp() < 1 {
			return usage("--progress-regex needs a group capturing the step number, e.g. 'step (\\d+)'")
		}
	}
	if r.MetricsAddr != "" {
		host, port, err := net.SplitHostPort(r.MetricsAddr)
		if p, perr := strconv.Atoi(port); err != nil || perr != nil || p < 0 || p > 65535 || strings.ContainsAny(host, " /") {
			return usage("--metrics-addr %q: want HOST:PORT, e.g. 127.0.0.1:9400", r.MetricsAddr)
		}
	}
	if r.GPUHealth != "auto" && r.GPUHealth != "off" {
		return usage("--gpu-health %q: want auto or off", r.GPUHealth)
	}
	if rules := gpu.DefaultRules(); rules.ParseXIDClasses(r.GPUXID) != nil {
		return usage("--gpu-xid: %v", rules.ParseXIDClasses(r.GPUXID))
	}
	switch r.StragglerAction {
	case "off", "warn":
	case "replace":
		if r.Recovery != "live" {
			return usage("--straggler-action replace needs --recovery live (the live SDK reports each rank's work time)")
		}
	default:
		return usage("--straggler-action %q: want off, warn or replace", r.StragglerAction)
	}
	if r.StragglerReplaceAfter <= 0 {
		return usage("--straggler-replace-after %s: want a positive duration, e.g. 60s", r.StragglerReplaceAfter)
	}
	if _, err := chaos.Parse(r.Chaos); err != nil {
		return usage("--chaos: %v", err)
	}
	if strings.HasSuffix(r.Command[0], ".py") {
		r.Command = append([]string{r.Python}, r.Command...)
	}
	if _, err := exec.LookPath(r.Command[0]); err != nil && !r.Remote {
		return usage("command not found: %s", r.Command[0])
	}
	return nil
}
