package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bulsajo/bulsajo/internal/agent"
	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/config"
	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/events"
	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/slurm"
	"github.com/bulsajo/bulsajo/internal/store"
	"github.com/bulsajo/bulsajo/internal/store/etcdstore"
	"github.com/bulsajo/bulsajo/internal/wire"
	"github.com/bulsajo/bulsajo/python"
)

func usage(format string, args ...any) error {
	return fmt.Errorf("%w: %s", config.ErrUsage, fmt.Sprintf(format, args...))
}

// clientTLS is the TLS setting of a client command: --tls-ca FILE trusts
// that CA (the coordinator writes DATA_DIR/tls/ca.pem with --tls).
func clientTLS(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	return auth.ClientTLS(caFile)
}

func splitAddrs(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, usage("--coordinator %q: want host:port", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, usage("--coordinator host:port is required")
	}
	return out, nil
}

// conn is how a client command reaches the coordinator.
type conn struct{ coord, tokenFile, caFile string }

func (c *conn) flags(f *pflag.FlagSet, token bool) {
	f.StringVar(&c.coord, "coordinator", "", "coordinator host:port (comma-separated for several; the leader answers)")
	if token {
		f.StringVar(&c.tokenFile, "token-file", "", "the coordinator's join token file")
	}
	f.StringVar(&c.caFile, "tls-ca", "", "connect with TLS, trusting this CA (the coordinator's DATA_DIR/tls/ca.pem)")
}

// credentials reads the token (required) and the TLS setting.
func (c *conn) credentials() (string, *tls.Config, error) {
	if c.tokenFile == "" {
		return "", nil, usage("--token-file is required (the coordinator's join token)")
	}
	token, err := auth.ReadToken(c.tokenFile)
	if err != nil {
		return "", nil, err
	}
	tlsCfg, err := clientTLS(c.caFile)
	return token, tlsCfg, err
}

// ---- coordinator ----

func newCoordinatorCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	var (
		listen, tokenFile, dataDir, etcdEndpoints, advertise string
		healthAddr, slurmExcluded                            string
		useTLS, slurmDrain                                   bool
		tlsCert, tlsKey                                      string
		lease, heartbeat, nodeTimeout                        time.Duration
		quarantineAfter, maxHeartbeats                       int
	)
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run the multi-node coordinator (agents, jobs, state in etcd)",
		Long: `Run the coordinator: agents on other hosts join it with the join token,
jobs are submitted to it (bulsajo submit), and it keeps the job training when
nodes fail. Its state lives in etcd: an embedded single member in DATA_DIR by
default, or an external cluster (--etcd-endpoints), where several
coordinators elect a leader and the others stand by.

One port serves everything: agent sessions and admin calls need the token;
GET /v1/status, GET /metrics and the dashboard at / are read-only and open.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxHeartbeats < 0 {
				return usage("--max-heartbeats-per-second must be 0 (a fixed interval) or more")
			}
			if quarantineAfter < 1 {
				return usage("--quarantine-after must be at least 1")
			}
			if !(heartbeat > 0 && heartbeat < nodeTimeout && nodeTimeout <= lease) {
				return usage("need 0 < --heartbeat < --node-timeout <= --lease")
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usage("--tls-cert and --tls-key go together")
			}
			return runCoordinator(ctx, stdout, coordinatorOpts{listen: listen, tokenFile: tokenFile, dataDir: dataDir,
				etcd: etcdEndpoints, advertise: advertise, healthAddr: healthAddr, tls: useTLS,
				slurmDrain: slurmDrain, slurmExcluded: slurmExcluded, cert: tlsCert, key: tlsKey,
				cfg: coordinator.Config{Lease: lease, Heartbeat: heartbeat, NodeTimeout: nodeTimeout, QuarantineAfter: quarantineAfter,
					MaxHeartbeatsPerSecond: maxHeartbeats}})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "0.0.0.0:7070", "address to serve agents, admin calls, metrics and the dashboard on")
	f.StringVar(&tokenFile, "token-file", "", "join token file; created (mode 0600) if missing (default DATA_DIR/join.token)")
	f.StringVar(&dataDir, "data-dir", "bulsajo-data", "where the embedded etcd, event logs and TLS files live")
	f.StringVar(&etcdEndpoints, "etcd-endpoints", "", "external etcd cluster (comma-separated URLs); coordinators elect a leader")
	f.StringVar(&advertise, "advertise", "", "host:port others reach this coordinator at (default: --listen)")
	f.StringVar(&healthAddr, "health-addr", "", "also serve /healthz and /readyz here, from the start (a standby coordinator answers it while the main port is closed); the main port always serves them")
	f.BoolVar(&useTLS, "tls", false, "serve TLS with certificates generated in DATA_DIR/tls on first start")
	f.StringVar(&tlsCert, "tls-cert", "", "serve TLS with this certificate (with --tls-key)")
	f.StringVar(&tlsKey, "tls-key", "", "key of --tls-cert")
	f.DurationVar(&lease, "lease", coordinator.DefaultLease, "an agent that cannot reach the coordinator this long stops its workers; a silent node's ranks move only after it (the least: it grows with the heartbeat interval)")
	f.DurationVar(&heartbeat, "heartbeat", coordinator.DefaultHeartbeat, "agents' heartbeat interval (the least: it grows with the number of agents, see --max-heartbeats-per-second)")
	f.DurationVar(&nodeTimeout, "node-timeout", coordinator.DefaultNodeTimeout, "no heartbeat for this long and a node is lost (the least: at least 3 heartbeat intervals)")
	f.IntVar(&maxHeartbeats, "max-heartbeats-per-second", coordinator.DefaultMaxHeartbeatsPerSecond, "the agents' heartbeats together stay under this: the interval grows with their number (0: fixed)")
	f.IntVar(&quarantineAfter, "quarantine-after", coordinator.DefaultQuarantineAfter, "faults on a node before it is quarantined")
	f.BoolVar(&slurmDrain, "slurm-drain", true, "in a Slurm job: drain a quarantined node (scontrol update State=DRAIN; needs Slurm admin rights, a refusal is shown)")
	f.StringVar(&slurmExcluded, "slurm-excluded", "", "in a Slurm job: file listing quarantined nodes Slurm would not drain, one a line, for the requeue to exclude (default DATA_DIR/slurm-excluded)")
	return cmd
}

type coordinatorOpts struct {
	listen, tokenFile, dataDir, etcd, advertise string
	healthAddr, slurmExcluded                   string
	tls, slurmDrain                             bool
	cert, key                                   string
	cfg                                         coordinator.Config
}

func runCoordinator(ctx context.Context, stdout io.Writer, o coordinatorOpts) error {
	con := console.New(stdout)
	if os.Getenv("GOGC") == "" {
		// The heap is mostly long-lived session state (about 20 KB an
		// agent). At Go's default, 10,000 agents' heartbeats bring a
		// collection every few seconds, whose 100-250 ms of marking often
		// overlaps a generation change; twice the headroom halves them.
		// GOGC in the environment wins.
		debug.SetGCPercent(200)
	}
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if o.tokenFile == "" {
		o.tokenFile = filepath.Join(dataDir, "join.token")
	}
	token, created, err := auth.LoadOrCreateToken(o.tokenFile)
	if err != nil {
		return err
	}
	if created {
		con.Printf("created join token %s (mode 0600): copy it to every agent and admin host", o.tokenFile)
	}
	var tlsCfg *tls.Config
	switch {
	case o.cert != "":
		if tlsCfg, err = auth.ServerTLSFromFiles(o.cert, o.key); err != nil {
			return err
		}
	case o.tls:
		host, _, _ := net.SplitHostPort(o.listen)
		var ca string
		var made bool
		if tlsCfg, ca, made, err = auth.LoadOrCreateServerTLS(filepath.Join(dataDir, "tls"), []string{host}); err != nil {
			return err
		}
		if made {
			con.Printf("generated TLS certificates in %s; clients trust them with --tls-ca %s", filepath.Dir(ca), ca)
		}
	}
	if o.advertise == "" {
		o.advertise = o.listen
	}
	// --health-addr answers from now on: a coordinator that is starting or
	// standing by for the leadership is alive but not ready.
	var (
		ready    atomic.Pointer[coordinator.Server]
		standing atomic.Bool
	)
	if o.healthAddr != "" {
		stop, err := serveHealth(o.healthAddr, func(ctx context.Context) error {
			if srv := ready.Load(); srv != nil {
				return srv.Ready(ctx)
			}
			if standing.Load() {
				return errors.New("standing by: another coordinator leads")
			}
			return errors.New("starting")
		})
		if err != nil {
			return err
		}
		defer stop()
	}

	// The store: embedded etcd, or an external cluster with a leader election.
	var st store.Store
	var lost <-chan struct{}
	if o.etcd == "" {
		t0 := time.Now()
		emb, err := etcdstore.StartEmbedded(ctx, filepath.Join(dataDir, "etcd"))
		if err != nil {
			return fmt.Errorf("embedded etcd: %w", err)
		}
		defer emb.Close()
		st = emb.Store()
		con.Printf("state: embedded etcd in %s (started in %d ms)", filepath.Join(dataDir, "etcd"), time.Since(t0).Milliseconds())
	} else {
		eps := strings.Split(o.etcd, ",")
		ext, err := etcdstore.OpenEtcd(ctx, eps)
		if err != nil {
			return err
		}
		defer ext.Close()
		if least := time.Duration(etcdstore.DefaultElectionTTL)*time.Second + 2*time.Second; o.cfg.Lease < least {
			con.Printf("! warning: --lease %s is shorter than a leader takeover (election TTL %d s + reconnecting, about %s): "+
				"a failover will fence the workers and restart the job", o.cfg.Lease, etcdstore.DefaultElectionTTL, least)
		}
		con.Printf("state: etcd %v; campaigning for leadership as %s", eps, o.advertise)
		standing.Store(true)
		lead, err := ext.Campaign(ctx, "coordinator", o.advertise)
		if err != nil {
			if ctx.Err() != nil {
				return &ExitError{Code: 130}
			}
			return fmt.Errorf("leader election: %w", err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			lead.Resign(rctx)
			cancel()
		}()
		con.Printf("elected leader")
		st, lost = lead.Store(), lead.Done()
		o.cfg.Leading = func() bool {
			select {
			case <-lost:
				return false
			default:
				return true
			}
		}
	}

	o.cfg.Token, o.cfg.Store, o.cfg.DataDir, o.cfg.Console, o.cfg.Version = token, st, dataDir, con, Version
	if o.cfg.Slurm = slurm.FromEnv(); o.cfg.Slurm != nil {
		excluded := o.slurmExcluded
		if excluded == "" {
			excluded = filepath.Join(dataDir, "slurm-excluded")
		}
		drain := o.slurmDrain
		o.cfg.OnQuarantine = func(node, reason string) {
			srv := ready.Load()
			err := errors.New("--slurm-drain=false")
			if drain {
				err = slurm.Drain(ctx, node, reason)
			}
			if err == nil {
				srv.SetDrain(node, "drained")
				return
			}
			// Not allowed to drain (a normal user): keep the node out of
			// this job (quarantine does) and of its requeue (the file).
			note := fmt.Sprintf("not drained (%v); excluded from this job and its requeue (%s)", err, excluded)
			if f, ferr := os.OpenFile(excluded, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); ferr == nil {
				fmt.Fprintln(f, node)
				f.Close()
			} else {
				note = fmt.Sprintf("not drained (%v); excluded from this job; recording it for the requeue failed: %v", err, ferr)
			}
			if srv != nil {
				srv.SetDrain(node, note)
			}
		}
	}
	srv, err := coordinator.New(o.cfg)
	if err != nil {
		return err
	}
	ready.Store(srv)
	if o.cfg.Slurm != nil {
		con.Printf("slurm job %s · nodes %s · restart %d", o.cfg.Slurm.JobID, o.cfg.Slurm.NodeList, o.cfg.Slurm.RestartCount)
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	scaled := ""
	if o.cfg.MaxHeartbeatsPerSecond > 0 {
		scaled = fmt.Sprintf(" (growing with the agents: at most %d heartbeats/s)", o.cfg.MaxHeartbeatsPerSecond)
	}
	con.Printf("bulsajo coordinator %s on %s://%s · heartbeat %s · node timeout %s · lease %s%s", Version, scheme, l.Addr(),
		o.cfg.Heartbeat, o.cfg.NodeTimeout, o.cfg.Lease, scaled)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l, tlsCfg) }()
	select {
	case <-ctx.Done():
		srv.Close()
		con.Printf("coordinator stopping; agents keep their workers for a lease and reconnect to the next one")
		return nil
	case <-lost:
		// Leave at once, deciding nothing more: the new leader adopts the
		// job and the agents reconnect to it (their lease covers the gap).
		return errors.New("lost the coordinator leadership (etcd session ended); another coordinator takes over")
	case err := <-errc:
		srv.Close()
		return err
	}
}

// ---- agent ----

func newAgentCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	var (
		cn                              conn
		name, advertise, dataDir, nproc string
		gpuHealth, gpuXID               string
		healthAddr                      string
		spare                           bool
		requeueAfter                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run this node's agent: join the coordinator and run its share of the job",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addrs, err := splitAddrs(cn.coord)
			if err != nil {
				return err
			}
			n, err := parseNProc(nproc)
			if err != nil {
				return err
			}
			if n < 1 || n > 1024 {
				return usage("--nproc-per-node must be 1..1024")
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			if !wire.ValidName(name) {
				return usage("--node-name %q: 1-63 of [A-Za-z0-9._-]", name)
			}
			token, tlsCfg, err := cn.credentials()
			if err != nil {
				return err
			}
			if dataDir == "" {
				dataDir = filepath.Join(os.TempDir(), "bulsajo-agent-"+name)
			}
			dataDir, err = filepath.Abs(dataDir)
			if err != nil {
				return err
			}
			sdk, err := python.Extract(filepath.Join(dataDir, "sdk"))
			if err != nil {
				return fmt.Errorf("python sdk: %w", err)
			}
			con := console.New(stdout)
			role := "worker node"
			if spare {
				role = "spare"
			}
			con.Printf("bulsajo agent %s · %s · %d slots · coordinator %s", name, role, n, strings.Join(addrs, ","))
			sctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			mon, err := openGPUMonitor(gpuHealth, gpuXID, con)
			if err != nil {
				return err
			}
			a := agent.New(agent.Config{Coordinators: addrs, Token: token, TLS: tlsCfg, Name: name, NProc: n,
				Spare: spare, Advertise: advertise, DataDir: dataDir, SDKDir: sdk, Console: con, Version: Version, GPU: mon})
			if healthAddr != "" {
				stop, err := serveHealth(healthAddr, a.Ready)
				if err != nil {
					return err
				}
				defer stop()
			}
			var requeued chan error
			if requeueAfter > 0 {
				if job := slurm.FromEnv(); job != nil {
					self := os.Getenv("SLURMD_NODENAME")
					if self == "" {
						self = name
					}
					rctx, cancel := context.WithCancel(sctx)
					defer cancel()
					sctx = rctx
					requeued = make(chan error, 1)
					go func() { requeued <- requeueOnLoss(rctx, cancel, a, con, job, self, requeueAfter) }()
				} else {
					con.Printf("! --slurm-requeue-after: not in a Slurm job (no SLURM_JOB_ID); ignored")
				}
			}
			if err := a.Run(sctx); err != nil {
				return err
			}
			if requeued != nil {
				select {
				case err := <-requeued:
					return err
				default:
				}
			}
			con.Printf("agent stopped; no worker left running")
			return nil
		},
	}
	f := cmd.Flags()
	f.SetNormalizeFunc(torchrunNames)
	cn.flags(f, true)
	f.StringVar(&nproc, "nproc-per-node", "1", "worker slots on this node (an integer, or \"cpu\")")
	f.StringVar(&gpuHealth, "gpu-health", "auto", "auto: watch the GPUs through NVML when present and report faults (a drain quarantines this node); off")
	f.StringVar(&gpuXID, "gpu-xid", "", "override XID classes, e.g. 'drain=13,31;ignore=43' (classes drain, restart, warn, ignore)")
	f.StringVar(&name, "node-name", "", "this node's name (default: hostname)")
	f.BoolVar(&spare, "spare", false, "hot spare: hold no ranks until a node fails")
	f.StringVar(&advertise, "advertise-addr", "", "address other nodes' workers reach this node at (default: the one used to reach the coordinator)")
	f.StringVar(&dataDir, "data-dir", "", "where job logs go (default TMPDIR/bulsajo-agent-NAME)")
	f.StringVar(&healthAddr, "health-addr", "", "serve /healthz (alive) and /readyz (session with the coordinator up) on host:port; off when empty")
	f.DurationVar(&requeueAfter, "slurm-requeue-after", 0, "in a Slurm job: no coordinator for this long (its batch host died) and the agents requeue the job, one of them, in a fixed order, then exit; 0: off")
	return cmd
}

// requeueOnLoss watches the agent's session; once there has been none for
// after (the batch host, and the coordinator with it, is gone: Slurm does
// not requeue a --no-kill job for that), it requeues the job in this node's
// turn and ends the agent. It returns nil while the agent ends for another
// reason.
func requeueOnLoss(ctx context.Context, cancel func(), a *agent.Agent, con *console.Console, job *slurm.Info, self string, after time.Duration) error {
	last := time.Now()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if a.Ready(ctx) == nil {
				last = now
				continue
			}
			if now.Sub(last) < after {
				continue
			}
		}
		con.Printf("! no coordinator for %s: requeueing Slurm job %s (restart %d)", after.Round(time.Second), job.JobID, job.RestartCount)
		did, err := slurm.RequeueAfterLoss(ctx, job.JobID, self, job.RestartCount, 10*time.Second, con.Printf)
		switch {
		case err != nil:
			con.Printf("! requeue: %v", err)
		case did:
			con.Printf("requeued Slurm job %s", job.JobID)
		default:
			con.Printf("the job was requeued or is ending already")
		}
		cancel()
		return &ExitError{Code: 3, Msg: fmt.Sprintf("lost the coordinator for %s; Slurm job %s requeued", after.Round(time.Second), job.JobID)}
	}
}

// serveHealth serves the probes on addr until stop is called. The address
// is checked here, so a typo is a usage error before anything starts.
func serveHealth(addr string, ready func(context.Context) error) (stop func(), err error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, usage("--health-addr %q: want host:port", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--health-addr: %w", err)
	}
	srv := &http.Server{Handler: health.Handler(ready), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return func() { srv.Close() }, nil
}

// ---- submit ----

func newSubmitCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	c := config.Default()
	var cn conn
	var nnodes, nproc, dir string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "submit [flags] -- COMMAND [ARGS...]",
		Short: "Run a job on the coordinator's nodes; follow it to its end",
		Long: `Submit COMMAND to run on NNODES nodes with NPROC workers each, with torchrun's
environment. submit follows the job, printing faults and recoveries, and exits
with the job's status (0 succeeded, 1 failed, 130 when you stop it with
Ctrl-C). If the coordinator restarts or fails over meanwhile, submit
reconnects and keeps following.`,
		Example: `  bulsajo submit --coordinator host:7070 --token-file join.token --nnodes 2:4 --nproc-per-node 8 -- python3 train.py`,
		Args:    cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			addrs, err := splitAddrs(cn.coord)
			if err != nil {
				return err
			}
			lo, hi, err := parseNNodes(nnodes)
			if err != nil {
				return err
			}
			n, err := parseNProc(nproc)
			if err != nil {
				return err
			}
			c.Command, c.NProc, c.Remote = args, n, true
			if err := c.Validate(); err != nil {
				return err
			}
			token, tlsCfg, err := cn.credentials()
			if err != nil {
				return err
			}
			if c.RunID == "" {
				b := make([]byte, 3)
				rand.Read(b)
				c.RunID = hex.EncodeToString(b)
			}
			if dir == "" {
				dir, _ = os.Getwd()
			}
			sp := coordinator.JobSpec{ID: c.RunID, Command: c.Command, Dir: dir, NNodesMin: lo, NNodesMax: hi, NProcPerNode: n,
				Recovery: c.Recovery, MaxRestarts: c.MaxRestarts, ProgressRegex: c.ProgressRegex,
				HangTimeoutMS: int(c.HangTimeout.Milliseconds()), HangFloorMS: int(c.HangFloor.Milliseconds()),
				StopGraceMS: int(c.StopGrace.Milliseconds()), ExitGraceMS: int(c.ExitGrace.Milliseconds()),
				CrashLoopLimit: c.CrashLoopLimit, Standby: c.Standby, NoReplace: !c.Replace,
				BusyLimitMS: int(c.BusyLimit.Milliseconds())}
			if c.BusyLimit == 0 {
				sp.BusyLimitMS = -1 // --busy-limit 0: no stall is excused
			}
			if c.Recovery == "live" && c.StragglerAction != "off" {
				// Only live jobs carry it: restart mode has no work reports.
				sp.StragglerAction, sp.StragglerReplaceAfterMS = c.StragglerAction, int(c.StragglerReplaceAfter.Milliseconds())
			}
			return runSubmit(ctx, stdout, coordinator.NewClient(addrs, token, tlsCfg), sp, wait)
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.SetNormalizeFunc(torchrunNames)
	cn.flags(f, true)
	f.StringVar(&nnodes, "nnodes", "1", "nodes: N, or MIN:MAX to keep training on fewer after a loss")
	f.StringVar(&nproc, "nproc-per-node", "1", "workers per node")
	f.StringVar(&dir, "workdir", "", "workers' directory on the nodes (default: this one, where it exists there)")
	f.StringVar(&c.RunID, "run-id", "", "job id (default: random)")
	f.StringVar(&c.Recovery, "recovery", c.Recovery, "restart: stop everyone, restart from the checkpoint; live: survivors on the other nodes keep training (SDK), down to MIN nodes' worth of ranks")
	f.IntVar(&c.MaxRestarts, "max-restarts", c.MaxRestarts, "how many times the job may be restarted after faults")
	f.BoolVar(&c.Replace, "replace", c.Replace, "live: start replacements on spare capacity (a spare node, free slots); false: continue with fewer")
	f.StringVar(&c.ProgressRegex, "progress-regex", "", "regex on worker output whose first group is the step number")
	f.DurationVar(&c.HangTimeout, "hang-timeout", 0, "no progress for this long is a hang (default: adaptive)")
	f.DurationVar(&c.HangFloor, "hang-floor", c.HangFloor, "lowest adaptive hang threshold")
	f.DurationVar(&c.BusyLimit, "busy-limit", c.BusyLimit, "a stall while ranks still use CPU (a checkpoint, an evaluation) is not a hang until this long; 0: every stall past the threshold is a hang")
	f.DurationVar(&c.StopGrace, "stop-grace", c.StopGrace, "time between SIGTERM and SIGKILL when stopping workers")
	f.DurationVar(&c.ExitGrace, "exit-grace", c.ExitGrace, "once a rank has finished, how long the others may take")
	f.IntVar(&c.CrashLoopLimit, "crash-loop-limit", c.CrashLoopLimit, "give up after this many identical failures without progress")
	f.BoolVar(&c.Standby, "standby", c.Standby, "pre-start the next generation's Python workers on each node")
	f.StringVar(&c.StragglerAction, "straggler-action", c.StragglerAction, "live: a rank persistently slower than the others: warn (event, metric, a line), replace (also move it: a replacement joins on spare capacity), off")
	f.DurationVar(&c.StragglerReplaceAfter, "straggler-replace-after", c.StragglerReplaceAfter, "live, --straggler-action replace: move a straggler without hardware evidence after it has been slow this long")
	f.DurationVar(&wait, "reconnect-timeout", 2*time.Minute, "how long to keep trying when the coordinator is unreachable")
	return cmd
}

var nnodesRE = regexp.MustCompile(`^(\d+)(?::(\d+))?$`)

func parseNNodes(s string) (int, int, error) {
	m := nnodesRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, usage("--nnodes %q: want N or MIN:MAX", s)
	}
	lo, _ := strconv.Atoi(m[1])
	hi := lo
	if m[2] != "" {
		hi, _ = strconv.Atoi(m[2])
	}
	if lo < 1 || hi < lo || hi > 100000 {
		return 0, 0, usage("--nnodes %q: need 1 <= MIN <= MAX", s)
	}
	return lo, hi, nil
}

func runSubmit(ctx context.Context, stdout io.Writer, cl *coordinator.Client, sp coordinator.JobSpec, wait time.Duration) error {
	con := console.New(stdout)
	if err := cl.Submit(ctx, sp); err != nil {
		return clientErr(err)
	}
	con.Printf("bulsajo · job %s submitted · %d-%d nodes × %d workers", sp.ID, sp.NNodesMin, sp.NNodesMax, sp.NProcPerNode)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var stopSig os.Signal
	go func() {
		for s := range sigs {
			stopSig = s
			con.Printf("! %s: stopping the job", s)
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			cl.Cancel(cctx, sp.ID)
			cancel()
		}
	}()
	last, err := cl.Follow(ctx, sp.ID, 0, wait, func(e events.Event) { printEvent(con, e) })
	if err != nil {
		return clientErr(err)
	}
	switch last.Outcome {
	case "succeeded":
		return nil
	case "interrupted":
		if stopSig == syscall.SIGTERM {
			return &ExitError{Code: 143}
		}
		return &ExitError{Code: 130}
	}
	return &ExitError{Code: 1, Msg: last.Detail}
}

// printEvent is submit's line for an event.
func printEvent(con *console.Console, e events.Event) {
	rank := ""
	if e.Rank != nil {
		rank = fmt.Sprintf(" · rank %d", *e.Rank)
	}
	switch e.Type {
	case events.GenerationStart:
		con.Printf("▶ generation %d · world %d", e.Gen, e.WorldSize)
	case events.FaultDetected:
		con.Printf("! %s%s: %s · detected in %.0f ms", e.Cause, rank, e.Detail, e.DetectMS)
	case events.FaultInjected:
		con.Printf("⚡ %s%s", e.Cause, rank)
	case events.Recovered:
		con.Printf("↻ generation %d training · recovered in %.1f s · rolled back %d steps", e.Gen, e.RecoverMS/1000, e.RolledBack)
	case events.NodeLost:
		con.Printf("! node %s lost: %s", e.Node, e.Detail)
	case events.NodeQuarantined:
		con.Printf("! node %s quarantined: %s", e.Node, e.Detail)
	case events.NodeReleased:
		con.Printf("+ node %s released", e.Node)
	case events.CoordinatorResumed:
		con.Printf("↻ coordinator resumed generation %d (workers kept training)", e.Gen)
	case events.RunFinished:
		if e.Summary != nil {
			con.Printf("■ %s %s", e.Outcome, e.Summary.Line())
		} else {
			con.Printf("■ %s %s", e.Outcome, e.Detail)
		}
	}
}

func clientErr(err error) error {
	var ae *coordinator.APIError
	if errors.As(err, &ae) {
		msg := strings.TrimSuffix(ae.Msg, ".")
		if strings.Contains(msg, "HTTPS server") {
			msg += " (it serves TLS: pass --tls-ca DATA_DIR/tls/ca.pem)"
		}
		return fmt.Errorf("coordinator: %s", msg)
	}
	return err
}

// ---- status, node release ----

func newStatusCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	var cn conn
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster: nodes, quarantine, the job",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addrs, err := splitAddrs(cn.coord)
			if err != nil {
				return err
			}
			tlsCfg, err := clientTLS(cn.caFile)
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			st, err := coordinator.NewClient(addrs, "", tlsCfg).Status(cctx)
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(stdout, st)
			return nil
		},
	}
	f := cmd.Flags()
	cn.flags(f, false)
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printStatus(w io.Writer, st coordinator.Status) {
	if j := st.Job; j != nil {
		fmt.Fprintf(w, "job %s: %s · generation %d · world %d · step %d · restarts %d", j.ID, j.State, j.Gen, j.World, j.Step, j.Restarts)
		if j.Outcome != "" {
			fmt.Fprintf(w, " · %s", j.Outcome)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "no job")
	}
	if s := st.Slurm; s != nil {
		fmt.Fprintf(w, "slurm job %s · nodes %s · restarts %d\n", s.JobID, s.NodeList, s.RestartCount)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tADDR\tSLOTS\tRANKS\tFAULTS\tQUARANTINE")
	for _, n := range st.Nodes {
		name := n.Name
		if n.Spare {
			name += " (spare)"
		}
		q := "-"
		if n.Quarantined {
			q = n.Reason
		}
		if n.Slurm != "" {
			q += " · slurm: " + n.Slurm
		}
		ranks := "-"
		if len(n.Ranks) > 0 {
			ranks = fmt.Sprintf("%d-%d", n.Ranks[0], n.Ranks[len(n.Ranks)-1])
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", name, n.State, n.Addr, n.NProc, ranks, n.Faults, q)
	}
	tw.Flush()
	for _, n := range st.Nodes {
		for _, g := range n.GPUs {
			fmt.Fprintf(w, "  %s GPU %d %s: %s\n", n.Name, g.GPU, g.State, g.Reason)
		}
	}
}

func newNodeCmd(ctx context.Context, stdout io.Writer) *cobra.Command {
	var cn conn
	node := &cobra.Command{Use: "node", Short: "Manage nodes (release from quarantine)"}
	rel := &cobra.Command{
		Use:   "release NAME",
		Short: "Bring a quarantined node back into new generations",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			addrs, err := splitAddrs(cn.coord)
			if err != nil {
				return err
			}
			if !wire.ValidName(args[0]) {
				return usage("node name %q: 1-63 of [A-Za-z0-9._-]", args[0])
			}
			token, tlsCfg, err := cn.credentials()
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			was, err := coordinator.NewClient(addrs, token, tlsCfg).Release(cctx, args[0])
			if err != nil {
				return clientErr(err)
			}
			if was {
				fmt.Fprintf(stdout, "node %s released from quarantine\n", args[0])
			} else {
				fmt.Fprintf(stdout, "node %s was not quarantined\n", args[0])
			}
			return nil
		},
	}
	cn.flags(rel.Flags(), true)
	node.AddCommand(rel)
	return node
}
