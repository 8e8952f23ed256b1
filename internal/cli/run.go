package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulsajo/bulsajo/internal/chaos"
	"github.com/bulsajo/bulsajo/internal/config"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/dashboard"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/launcher"
	"github.com/bulsajo/bulsajo/internal/metrics"
	"github.com/bulsajo/bulsajo/internal/policy"
	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/supervisor"
	"github.com/bulsajo/bulsajo/python"
)

func newRunCmd(ctx context.Context, stdout, stderr io.Writer) *cobra.Command {
	c := config.Default()
	var nproc string
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARGS...]",
		Short: "Run a training job on this machine, recovering from worker faults",
		Long: `Run COMMAND as NPROC worker processes with torchrun's environment
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...), so a script
written for torchrun runs unchanged. When a worker exits with an error, or the
job stops making progress (a hang), bulsajo stops every worker and starts the
next generation, with TORCHELASTIC_RESTART_COUNT raised by one; the script
resumes from its own checkpoint.

Progress, for hang detection, comes from the Python SDK (import bulsajo;
bulsajo.step(n): bulsajo puts it on the workers' PYTHONPATH) or from
--progress-regex matched on the workers' output.

Everything is recorded in RUN_DIR (default runs/RUN_ID): events.jsonl (one
JSON line per fault and recovery), logs/rankN.log, errors/.

Exit status: 0 when every rank exits 0; 1 when restarts run out or the job is
a crash loop; 2 for usage errors; 130/143 when stopped by SIGINT/SIGTERM.`,
		Example: `  bulsajo run --nproc-per-node 4 -- python3 train.py --steps 1500
  bulsajo run --nproc-per-node 4 --chaos kill-every=10s -- python3 examples/ddp_train.py`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c.Command = args
			n, err := parseNProc(nproc)
			if err != nil {
				return err
			}
			c.NProc = n
			if err := c.Validate(); err != nil {
				return err
			}
			return runJob(ctx, c, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // everything after the command belongs to it
	f.SetNormalizeFunc(torchrunNames)
	f.StringVar(&nproc, "nproc-per-node", "1", "number of worker processes (an integer, or \"cpu\" for one per CPU)")
	f.IntVar(&c.MaxRestarts, "max-restarts", c.MaxRestarts, "how many times the job may be restarted after faults")
	f.StringVar(&c.RunID, "run-id", "", "job id (default: random); also TORCHELASTIC_RUN_ID")
	f.StringVar(&c.RunID, "rdzv-id", "", "alias of --run-id (torchrun spelling)")
	f.StringVar(&c.RunDir, "run-dir", "", "where events, logs and the SDK go (default runs/RUN_ID)")
	f.StringVar(&c.MasterAddr, "master-addr", c.MasterAddr, "address the workers rendezvous at (MASTER_ADDR)")
	f.IntVar(&c.MasterPort, "master-port", 0, "MASTER_PORT (default: a free port, new for every generation)")
	f.StringVar(&c.Recovery, "recovery", c.Recovery, "restart: stop every worker, start the next generation from the checkpoint; live: survivors keep training (needs the SDK, bulsajo.torch)")
	f.IntVar(&c.MinNProc, "min-nproc", 0, "live: smallest number of workers to keep training with before a full restart")
	f.BoolVar(&c.Replace, "replace", c.Replace, "live: start a replacement for each lost worker (false: continue with fewer)")
	f.StringVar(&c.ProgressRegex, "progress-regex", "", "regex on worker output whose first group is the step number, e.g. 'step (\\d+)'")
	f.DurationVar(&c.HangTimeout, "hang-timeout", 0, "no progress for this long is a hang (default: adaptive, 5 x p99 step time, at least --hang-floor)")
	f.DurationVar(&c.HangFloor, "hang-floor", c.HangFloor, "lowest adaptive hang threshold")
	f.DurationVar(&c.StartupTimeout, "startup-timeout", 0, "launch to first progress (default: adaptive, 5 min until a startup was seen)")
	f.DurationVar(&c.StopGrace, "stop-grace", c.StopGrace, "time between SIGTERM and SIGKILL when stopping workers")
	f.DurationVar(&c.ExitGrace, "exit-grace", c.ExitGrace, "once a rank has finished, how long the others may take to exit (no hang detection meanwhile)")
	f.DurationVar(&c.BusyLimit, "busy-limit", c.BusyLimit, "a stall while ranks still use CPU (a checkpoint, an evaluation) is not a hang until this long; 0: every stall past the threshold is a hang")
	f.IntVar(&c.CrashLoopLimit, "crash-loop-limit", c.CrashLoopLimit, "give up after this many generations in a row fail the same way without progress")
	f.BoolVar(&c.Standby, "standby", c.Standby, "pre-start the next generation's Python workers (torch imported) to restart fast")
	f.StringVar(&c.Preload, "standby-preload", "", "modules a standby worker imports ahead (default torch,torch.distributed,torch.nn.parallel,torch._dynamo; a module that fails to import is skipped)")
	f.StringVar(&c.Chaos, "chaos", "", "testing aid: inject faults, e.g. kill-every=10s,stop-at=30s,seed=1 or, by training step, kill-at-step=300,stop-at-step=900")
	f.StringVar(&c.Python, "python", c.Python, "interpreter for a command that is a bare script.py")
	f.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus /metrics and the live dashboard at HOST:PORT (off by default)")
	f.StringVar(&c.GPUHealth, "gpu-health", c.GPUHealth, "auto: watch the GPUs through NVML when present (drain a failing GPU, restart its worker, warn); off")
	f.StringVar(&c.GPUXID, "gpu-xid", "", "override XID classes, e.g. 'drain=13,31;ignore=43' (classes drain, restart, warn, ignore)")
	f.StringVar(&c.StragglerAction, "straggler-action", c.StragglerAction, "live: a rank persistently slower than the others: warn (event, metric, a line), replace (also move it: a replacement joins; needs hardware evidence or --straggler-replace-after), off")
	f.DurationVar(&c.StragglerReplaceAfter, "straggler-replace-after", c.StragglerReplaceAfter, "live, --straggler-action replace: move a straggler without hardware evidence after it has been slow this long")
	// Accepted for torchrun compatibility; output is always streamed and kept.
	var ignored string
	f.StringVar(&ignored, "redirects", "", "accepted for torchrun compatibility (ignored)")
	f.StringVar(&ignored, "tee", "", "accepted for torchrun compatibility (ignored)")
	f.Lookup("redirects").Hidden = true
	f.Lookup("tee").Hidden = true
	return cmd
}

func parseNProc(s string) (int, error) {
	switch s {
	case "cpu", "auto":
		return max(1, runtime.NumCPU()), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%w: --nproc-per-node %q: want an integer or \"cpu\"", config.ErrUsage, s)
	}
	return n, nil
}

func runJob(ctx context.Context, c config.Run, stdout, stderr io.Writer) error {
	if c.RunID == "" {
		b := make([]byte, 3)
		rand.Read(b)
		c.RunID = hex.EncodeToString(b)
	}
	if c.RunDir == "" {
		c.RunDir = filepath.Join("runs", c.RunID)
	}
	runDir, err := filepath.Abs(c.RunDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	sdkDir, err := python.Extract(filepath.Join(runDir, "sdk"))
	if err != nil {
		return fmt.Errorf("python sdk: %w", err)
	}
	logPath := filepath.Join(runDir, "events.jsonl")
	log, err := events.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()

	con := console.New(stdout)
	var re *regexp.Regexp
	if c.ProgressRegex != "" {
		re = regexp.MustCompile(c.ProgressRegex) // validated
	}
	con.Printf("bulsajo · run %s · %d workers · %s mode · events: %s", c.RunID, c.NProc, c.Recovery, relPath(logPath))
	hctx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
	gh, err := startGPUHealth(hctx, c, runDir, con)
	if err != nil {
		return err
	}
	gpus, env := 0, map[string]string(nil)
	if gh != nil {
		defer gh.close()
		gpus, env = gh.slots, map[string]string{"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} // CUDA's GPU order = NVML's
	}
	ag, err := launcher.New(launcher.Config{
		Command: c.Command, RunID: c.RunID, RunDir: runDir, MaxRestarts: c.MaxRestarts,
		SDKDir: sdkDir, ProgressRegex: re, Standby: c.Standby, StandbyCount: c.NProc,
		Preload: c.Preload, StopGrace: c.StopGrace, Console: con, Live: c.Recovery == "live",
		GPUs: gpus, Env: env,
	})
	if err != nil {
		return err
	}
	// However the job ends, no worker outlives this function (and the
	// parent-death signal covers the ways this process can die).
	defer ag.Close()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	st := store.NewMemory() // one machine: the embedded store lives in this process
	defer st.Close()
	plan, _ := chaos.Parse(c.Chaos) // validated
	wd := health.DefaultWatchdog()
	wd.Floor, wd.Timeout = c.HangFloor, c.HangTimeout
	if os.Getenv("OMP_NUM_THREADS") == "" && c.NProc > 1 {
		con.Printf("  note: OMP_NUM_THREADS=1 for each worker (as torchrun does); set it to tune")
	}
	var observers []supervisor.Observer
	if c.MetricsAddr != "" {
		obs, addr, stop, err := serveWeb(c.MetricsAddr)
		if err != nil {
			return err
		}
		defer stop()
		observers = obs
		con.Printf("  dashboard: http://%s/ · metrics: http://%s/metrics", addr, addr)
	}
	scfg := supervisor.Config{
		RunID: c.RunID,
		Policy: policy.Config{
			WorldSize: c.NProc, MaxRestarts: c.MaxRestarts, Watchdog: wd,
			StartupTimeout: c.StartupTimeout, ProgressExpected: re != nil, CrashLoopLimit: c.CrashLoopLimit,
			Live: c.Recovery == "live", Replace: c.Replace, MinWorld: c.MinNProc, ExitGrace: c.ExitGrace,
			ProbeBusy: c.BusyLimit > 0, BusyLimit: c.BusyLimit,
		},
		MasterAddr: c.MasterAddr, MasterPort: c.MasterPort, StopGrace: c.StopGrace,
		Chaos: plan, Console: con, Log: log, Store: st, Observers: observers,
	}
	if gh != nil {
		scfg.GPU, scfg.Preflight = gh.reports, gh.preflight(hctx)
	}
	if c.StragglerAction != "off" {
		host, _ := os.Hostname()
		scfg.Straggler = supervisor.StragglerConfig{Action: c.StragglerAction, ReplaceAfter: c.StragglerReplaceAfter, Node: host}
		if gh != nil {
			scfg.Straggler.Evidence = gh.evidence
		}
	}
	res := supervisor.Run(scfg, ag, sigs)

	switch res.Outcome {
	case policy.Succeeded:
		return nil
	case policy.Interrupted:
		code := 130
		if res.Signal == syscall.SIGTERM {
			code = 143
		}
		return &ExitError{Code: code}
	}
	return &ExitError{Code: 1, Msg: res.Reason}
}

func relPath(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
	}
	return p
}

// serveWeb serves /metrics and the dashboard for `run` (read-only, like the
// coordinator's GET endpoints) and returns the observers that feed them.
func serveWeb(addr string) ([]supervisor.Observer, string, func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	m := metrics.New()
	hub := dashboard.NewHub(nil)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("/", dashboard.Handler(hub))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return []supervisor.Observer{m, hub}, l.Addr().String(), func() { srv.Close() }, nil
}
