// Command scale measures the multi-node coordinator's control plane with
// thousands of simulated agents on real loopback connections:
//
//	go run ./bench/scale -agents 10000 -label default-hb
//
// It starts `bulsajo coordinator` as a child process, connects N simulated
// agents that speak the wire protocol (hello, heartbeats at the interval the
// welcome gives, launched for start, stopped for stop), submits a job that
// places a rank on every one of them, and measures:
//
//   - registration: time until all N agents are welcomed;
//   - steady state: the coordinator's CPU (utime+stime from /proc/PID/stat)
//     per second and per heartbeat, ack round trips, memory (VmRSS, and the
//     live heap from GODEBUG=gctrace=1 on its stderr);
//   - node loss: an agent's connection is closed (or it goes silent) at T;
//     for every other agent, the arrival of its stop and then of the new
//     generation's start, relative to T; p50/p99/max over all agents.
//
// Agents are simulated (their workers "start" and "stop" at once): the
// numbers are the control plane's alone. The simulator shares the machine's
// cores with the coordinator; its CPU is reported separately.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/events"
)

type options struct {
	agents       int
	bin          string
	build        bool
	heartbeat    time.Duration
	nodeTimeout  time.Duration
	lease        time.Duration
	closeLosses  int
	silentLosses int
	cpuWindow    time.Duration
	idleWindow   time.Duration
	srcAddrs     int
	concurrency  int
	shards       int
	nofile       uint64
	pin          bool
	label        string
	out          string
	keep         bool
	coordRev     string
	seed         int64
	lossGap      time.Duration
	simGOGC      int
	quietWait    time.Duration
	pprof        string
	coordPprof   string
}

func main() {
	var o options
	flag.IntVar(&o.agents, "agents", 1000, "simulated agents (one TCP connection each)")
	flag.StringVar(&o.bin, "bin", "bin/bulsajo", "the bulsajo binary that runs the coordinator")
	flag.BoolVar(&o.build, "build", false, "go build -o BIN ./cmd/bulsajo first")
	flag.DurationVar(&o.heartbeat, "heartbeat", 0, "coordinator --heartbeat (0: its default)")
	flag.DurationVar(&o.nodeTimeout, "node-timeout", 0, "coordinator --node-timeout (0: its default)")
	flag.DurationVar(&o.lease, "lease", 0, "coordinator --lease (0: its default)")
	flag.IntVar(&o.closeLosses, "losses", 5, "node losses by connection close")
	flag.IntVar(&o.silentLosses, "silent-losses", 3, "node losses by silence (no heartbeat; detected after --node-timeout)")
	flag.DurationVar(&o.cpuWindow, "cpu-window", 20*time.Second, "steady-state CPU measurement window")
	flag.DurationVar(&o.idleWindow, "idle-window", 5*time.Second, "CPU window of the coordinator with no agent")
	flag.IntVar(&o.srcAddrs, "src-addrs", 4, "loopback source addresses 127.0.0.2.. to spread connections over (0: 127.0.0.1 only)")
	flag.IntVar(&o.concurrency, "connect-concurrency", 128, "agents connecting at once")
	flag.IntVar(&o.shards, "hb-shards", 100, "heartbeat goroutines (phases spread over the interval)")
	flag.Uint64Var(&o.nofile, "nofile", 0, "RLIMIT_NOFILE to set (0: agents + 4096)")
	flag.BoolVar(&o.pin, "pin", false, "pin the coordinator to CPU 0 and the simulator to CPU 1")
	flag.StringVar(&o.label, "label", "", "name of this run in the results file (default: derived from the settings)")
	flag.StringVar(&o.out, "out", "", "results JSON to add this run to (runs with the same label are replaced)")
	flag.BoolVar(&o.keep, "keep", false, "keep the coordinator's data directory")
	flag.StringVar(&o.coordRev, "coordinator-rev", "", "what the coordinator binary was built from (recorded)")
	flag.Int64Var(&o.seed, "seed", 1, "seed for picking the nodes to lose")
	flag.DurationVar(&o.lossGap, "loss-gap", 2*time.Second, "pause after a new generation reached every agent, before the next loss")
	flag.IntVar(&o.simGOGC, "sim-gogc", 400, "GOGC of the simulator (less GC work competing with the coordinator)")
	flag.DurationVar(&o.quietWait, "quiet-wait", 5*time.Minute, "wait up to this long for the machine to be idle before starting")
	flag.StringVar(&o.pprof, "pprof", "", "serve the simulator's net/http/pprof on this address (debugging)")
	flag.StringVar(&o.coordPprof, "coordinator-pprof", "", "the coordinator's net/http/pprof address, if it serves one: an execution trace of the first loss is saved in its data dir")
	flag.Parse()
	if o.pprof != "" {
		go http.ListenAndServe(o.pprof, nil)
	}
	debug.SetGCPercent(o.simGOGC)
	if o.label == "" {
		o.label = fmt.Sprintf("n%d", o.agents)
		if o.heartbeat > 0 {
			o.label += "-hb" + o.heartbeat.String()
		}
		if o.pin {
			o.label += "-pinned"
		}
	}
	res, err := run(o)
	if res != nil && o.out != "" {
		if werr := writeResults(o.out, res); werr != nil {
			fmt.Fprintln(os.Stderr, "writing results:", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

type coordProc struct {
	cmd     *exec.Cmd
	pid     string
	addr    string
	dataDir string
	gc      *gcTrace
	exited  chan struct{}
}

func startCoordinator(o options, dataDir string) (*coordProc, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	args := []string{"coordinator", "--listen", addr, "--data-dir", dataDir}
	if o.heartbeat > 0 {
		args = append(args, "--heartbeat", o.heartbeat.String())
	}
	if o.nodeTimeout > 0 {
		args = append(args, "--node-timeout", o.nodeTimeout.String())
	}
	if o.lease > 0 {
		args = append(args, "--lease", o.lease.String())
	}
	name := o.bin
	if o.pin {
		args = append([]string{"-c", "0", o.bin}, args...)
		name = "taskset"
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	logFile, err := os.Create(filepath.Join(dataDir, "coordinator.log"))
	if err != nil {
		return nil, err
	}
	// The console goes to a file: a pipe that fills would block the
	// coordinator (it prints with its lock held). A tailer stamps lines.
	cmd.Stdout = logFile
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &coordProc{cmd: cmd, pid: strconv.Itoa(cmd.Process.Pid), addr: addr, dataDir: dataDir, gc: &gcTrace{}, exited: make(chan struct{})}
	errLog, _ := os.Create(filepath.Join(dataDir, "coordinator.stderr"))
	gcLog, _ := os.Create(filepath.Join(dataDir, "coordinator.gctrace"))
	go p.gc.follow(stderr, errLog, gcLog)
	go func() { cmd.Wait(); logFile.Close(); close(p.exited) }()
	go p.stampLog()
	// Ready when GET /v1/status answers (the embedded etcd starts first).
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("coordinator exited: %v (see %s)", cmd.ProcessState, dataDir)
		default:
		}
		resp, err := http.Get("http://" + addr + "/v1/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("coordinator did not come up in 90 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stampLog follows coordinator.log (the console has no timestamps) and
// writes coordinator.stamped.log: each line with the time it was seen
// (polled every 20 ms, so up to 20 ms late, more when the machine is busy).
func (p *coordProc) stampLog() {
	in, err := os.Open(filepath.Join(p.dataDir, "coordinator.log"))
	if err != nil {
		return
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(p.dataDir, "coordinator.stamped.log"))
	if err != nil {
		return
	}
	defer out.Close()
	br := bufio.NewReaderSize(in, 1<<20)
	bw := bufio.NewWriter(out)
	var partial string
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF {
			partial += line
			bw.Flush()
			select {
			case <-p.exited:
				return
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return
		}
		line = strings.TrimRight(partial+line, "\n")
		partial = ""
		if len(line) > 300 {
			line = line[:300] + fmt.Sprintf("… (%d bytes)", len(line))
		}
		fmt.Fprintf(bw, "%s %s\n", time.Now().Format("15:04:05.000"), line)
	}
}

func (p *coordProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// ---- results ----

type durStats struct {
	N       int     `json:"n"`
	FirstMS float64 `json:"first_ms"`
	P50MS   float64 `json:"p50_ms"`
	P90MS   float64 `json:"p90_ms"`
	P99MS   float64 `json:"p99_ms"`
	MaxMS   float64 `json:"max_ms"`
}

func stats(ds []time.Duration) durStats {
	if len(ds) == 0 {
		return durStats{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	ms := func(d time.Duration) float64 { return round(float64(d)/1e6, 1) }
	return durStats{N: len(s), FirstMS: ms(s[0]), P50MS: ms(s[rankIndex(len(s), 0.5)]), P90MS: ms(s[rankIndex(len(s), 0.9)]),
		P99MS: ms(s[rankIndex(len(s), 0.99)]), MaxMS: ms(s[len(s)-1])}
}

type registration struct {
	Agents           int      `json:"agents"`
	TotalS           float64  `json:"all_welcomed_s"`
	PerS             float64  `json:"agents_per_s"`
	ConnectLatency   durStats `json:"per_agent_connect_to_welcome"`
	DialRetries      int64    `json:"dial_retries"`
	Concurrency      int      `json:"connect_concurrency"`
	CoordCPUS        float64  `json:"coordinator_cpu_s"`
	CoordCPUPerAgent float64  `json:"coordinator_cpu_ms_per_agent"`
}

type coordTimeline struct {
	NodeLostMS  *float64 `json:"node_lost_event_ms,omitempty"`
	FaultMS     *float64 `json:"fault_event_ms,omitempty"`
	GenStartMS  *float64 `json:"generation_started_event_ms,omitempty"`
	RecoveredMS *float64 `json:"recovered_event_ms,omitempty"`
	FaultDetect float64  `json:"fault_detect_ms_reported,omitempty"`
}

type loss struct {
	Variant  string `json:"variant"`
	Victim   string `json:"victim"`
	FromGen  int    `json:"from_gen"`
	ToGen    int    `json:"to_gen"`
	T        string `json:"t"`
	TMeaning string `json:"t_is"`
	Expected int    `json:"expected_agents"`
	Complete bool   `json:"complete"`
	// Arrival at each agent, relative to T.
	Stop  durStats `json:"stop_arrival"`
	Start durStats `json:"new_generation_start_arrival"`
	// Stop to start at each agent (the agent answered stopped at once).
	StopToStart durStats `json:"stop_to_start_per_agent"`
	// The coordinator's own record (its event log), relative to T.
	Coordinator coordTimeline `json:"coordinator_events"`
	CoordCPUS   float64       `json:"coordinator_cpu_s_during"`
	// CPU the simulator and other processes (other people's jobs on a
	// shared machine) used meanwhile.
	SimCPUS   float64 `json:"simulator_cpu_s_during"`
	OtherCPUS float64 `json:"other_processes_cpu_s_during"`
	startDs   []time.Duration
	stopDs    []time.Duration
	detectD   time.Duration
}

type lossSummary struct {
	Losses int `json:"losses"`
	// Pooled over every agent of every loss.
	Start durStats `json:"new_generation_start_arrival_all_agents"`
	Stop  durStats `json:"stop_arrival_all_agents"`
	// Per loss: the last agent to get the new generation (the "every agent" time).
	LastAgent durStats `json:"time_to_reach_every_agent_per_loss"`
	// Coordinator detection (node_lost event - T), per loss.
	Detection durStats `json:"detection_per_loss"`
}

type result struct {
	Label       string            `json:"label"`
	When        string            `json:"when"`
	Machine     machine           `json:"machine"`
	Settings    map[string]any    `json:"settings"`
	Idle        cpuUse            `json:"coordinator_idle_no_agents"`
	IdleMem     memInfo           `json:"coordinator_memory_no_agents"`
	Register    registration      `json:"registration"`
	FirstLaunch durStats          `json:"first_generation_submit_to_start_arrival"`
	Steady      cpuUse            `json:"steady_state_cpu"`
	Acks        ackStats          `json:"steady_state_heartbeat_acks"`
	Mem         memInfo           `json:"coordinator_memory_steady"`
	Heap        gcSnap            `json:"coordinator_heap_steady"`
	SimMem      memInfo           `json:"simulator_memory"`
	PerAgentKB  float64           `json:"coordinator_rss_kb_per_agent"`
	Losses      []loss            `json:"losses"`
	Summary     map[string]any    `json:"loss_summary"`
	LossAcks    ackStats          `json:"acks_during_losses"`
	LossCPU     cpuUse            `json:"cpu_during_loss_phase"`
	Unexpected  int64             `json:"sessions_ended_unexpectedly"`
	Reconnects  int64             `json:"sessions_reconnected"`
	Retimes     int64             `json:"acks_that_changed_the_timing"`
	TimingReg   map[string]int64  `json:"coordinator_timing_after_registration"`
	FirstGens   int               `json:"generations_until_every_agent_started"`
	Spurious    int               `json:"spurious_node_losses"`
	SpuriousEx  []string          `json:"spurious_node_losses_first,omitempty"`
	Rejects     int64             `json:"rejects"`
	FirstError  string            `json:"first_error,omitempty"`
	MemEnd      memInfo           `json:"coordinator_memory_end"`
	Notes       []string          `json:"notes"`
	Extra       map[string]string `json:"extra,omitempty"`
}

func run(o options) (*result, error) {
	res := &result{Label: o.label, When: time.Now().UTC().Format(time.RFC3339), Machine: machineInfo(), Extra: map[string]string{}}
	// File descriptors: set before the coordinator starts, so it inherits
	// the limit (Go passes an explicitly set RLIMIT_NOFILE on to children).
	nofile := o.nofile
	if nofile == 0 {
		nofile = uint64(o.agents) + 4096
	}
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if rl.Cur < nofile || rl.Max < nofile {
		want := syscall.Rlimit{Cur: nofile, Max: max(nofile, rl.Max)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return nil, fmt.Errorf("RLIMIT_NOFILE %d: %w (run as root or raise the hard limit)", nofile, err)
		}
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if o.build {
		logf("building %s", o.bin)
		b := exec.Command("go", "build", "-o", o.bin, "./cmd/bulsajo")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
	}
	if o.pin {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("taskset: %v: %s", err, out)
		}
		runtime.GOMAXPROCS(1)
	}
	if o.quietWait > 0 {
		logf("waiting for the machine to be quiet (other jobs share it)")
		frac := waitQuiet(o.quietWait, 0.15)
		logf("machine busy %.0f%% before the run", 100*frac)
		res.Extra["machine_busy_before_run"] = fmt.Sprintf("%.0f%%", 100*frac)
	}
	dataDir, err := os.MkdirTemp("/var/tmp", "bulsajo-scale-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(dataDir)
	}
	coord, err := startCoordinator(o, dataDir)
	if err != nil {
		return nil, err
	}
	defer coord.stop()
	token, err := auth.ReadToken(filepath.Join(dataDir, "join.token"))
	if err != nil {
		return nil, err
	}
	// Check the source addresses work (all of 127/8 is loopback on Linux).
	nsrc := o.srcAddrs
	if nsrc > 0 {
		if c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", coord.addr); err != nil {
			logf("source address 127.0.0.2 unusable (%v): using 127.0.0.1 only", err)
			nsrc = 0
		} else {
			c.Close()
		}
	}
	res.Settings = map[string]any{
		"agents": o.agents, "nproc_per_agent": 1, "coordinator_args": coord.cmd.Args[1:], "coordinator_rev": o.coordRev,
		"rlimit_nofile": rl.Cur, "source_addresses": nsrc, "connect_concurrency": o.concurrency, "heartbeat_shards": o.shards,
		"pinned": o.pin, "simulator_gogc": o.simGOGC, "cpu_window_s": o.cpuWindow.Seconds(), "close_losses": o.closeLosses, "silent_losses": o.silentLosses,
		"simulator_gomaxprocs": runtime.GOMAXPROCS(0), "data_dir_fs": "ext4 on /var/tmp (embedded etcd, fsync)",
	}
	logf("coordinator pid %s on %s (data %s), nofile %d", coord.pid, coord.addr, dataDir, rl.Cur)

	// Idle: no agent yet (embedded etcd and the 50 ms ticker).
	time.Sleep(2 * time.Second)
	a0 := (*sim)(nil).sample(coord.pid, coord.gc)
	time.Sleep(o.idleWindow)
	a1 := (*sim)(nil).sample(coord.pid, coord.gc)
	res.Idle = diff(a0, a1, 0)
	res.IdleMem = procMem(coord.pid)
	logf("idle: coordinator %.3f cpu-s/s, rss %.1f MB", res.Idle.CoordCPUPerS, res.IdleMem.RSSMB)

	// Registration.
	s := newSim(coord.addr, token, o.agents, nsrc, o.shards)
	// Filled in however the run ends (a run that stops early still tells).
	defer func() {
		res.Unexpected, res.Reconnects, res.Retimes = s.unexpected.Load(), s.reconnects.Load(), s.retimes.Load()
	}()
	go s.probe()
	r0 := s.sample(coord.pid, coord.gc)
	lat := make([]time.Duration, o.agents)
	sem := make(chan struct{}, o.concurrency)
	var wg sync.WaitGroup
	var failed atomic.Int64
	t0 := time.Now()
	for i, a := range s.agents {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int, a *simAgent) {
			defer func() { <-sem; wg.Done() }()
			st := time.Now()
			if err := s.connect(a); err != nil {
				failed.Add(1)
				s.noteErr(err)
				return
			}
			lat[i] = time.Since(st)
		}(i, a)
	}
	wg.Wait()
	regTime := time.Since(t0)
	r1 := s.sample(coord.pid, coord.gc)
	if f := failed.Load(); f > 0 {
		return res, fmt.Errorf("%d agents could not connect: %v", f, s.firstErr.Load())
	}
	res.Register = registration{Agents: o.agents, TotalS: round(regTime.Seconds(), 3), PerS: round(float64(o.agents)/regTime.Seconds(), 1),
		ConnectLatency: stats(lat), DialRetries: s.dialRetries.Load(), Concurrency: o.concurrency,
		CoordCPUS: round(r1.coord-r0.coord, 3), CoordCPUPerAgent: round(1000*(r1.coord-r0.coord)/float64(o.agents), 4)}
	// Let every agent send a heartbeat or two, at the timing for all of
	// them, before the job starts.
	time.Sleep(2*time.Duration(s.hbInterval.Load()) + time.Second)
	hb := time.Duration(s.hbInterval.Load())
	res.TimingReg = coordTiming(coord.addr)
	logf("registered %d agents in %.2f s (%.0f/s); coordinator timing %v", o.agents, regTime.Seconds(), res.Register.PerS, res.TimingReg)
	res.Settings["heartbeat_ms"] = hb.Milliseconds()
	res.Settings["lease_ms"] = s.leaseMS.Load()

	// Submit: every agent gets a rank.
	minNodes := max(1, o.agents-1-o.agents/100)
	spec := coordinator.JobSpec{ID: "scale", Command: []string{"/bin/true"}, NNodesMin: minNodes, NNodesMax: o.agents,
		NProcPerNode: 1, MaxRestarts: 1000}
	res.Settings["job"] = spec
	client := coordinator.NewClient([]string{coord.addr}, token, nil)
	ts := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = client.Submit(ctx, spec)
	cancel()
	if err != nil {
		return res, fmt.Errorf("submit: %w", err)
	}
	// Every agent's first start, of whichever generation (an agent whose
	// session the coordinator ended reconnects and gets the next one).
	if !waitAllStarted(s, 60*time.Second) {
		n := 0
		for _, a := range s.agents {
			if a.firstStart.Load() != 0 {
				n++
			}
		}
		return res, fmt.Errorf("%d of %d agents got a start in 60 s (generation 1: %d)", n, o.agents, s.rec.count(true, 1))
	}
	var firsts []arrival
	for _, a := range s.agents {
		firsts = append(firsts, arrival{int32(a.id), a.firstStart.Load()})
	}
	res.FirstLaunch = stats(since(firsts, ts))
	res.FirstGens = s.rec.maxStartGen()
	logf("every one of %d agents started (generations: %d): p50 %.0f ms, max %.0f ms after submit", o.agents, res.FirstGens, res.FirstLaunch.P50MS, res.FirstLaunch.MaxMS)
	time.Sleep(3 * time.Second)

	// Steady state: N agents heartbeating, a job training.
	s.startRecording()
	c0 := s.sample(coord.pid, coord.gc)
	time.Sleep(o.cpuWindow)
	c1 := s.sample(coord.pid, coord.gc)
	res.Acks = s.stopRecording()
	res.Steady = diff(c0, c1, res.Idle.CoordCPUPerS)
	res.Mem = procMem(coord.pid)
	res.Heap = c1.gc
	res.SimMem = procMem("self")
	res.PerAgentKB = round((res.Mem.RSSMB-res.IdleMem.RSSMB)*1024/float64(o.agents), 1)
	logf("steady: coordinator %.3f cpu-s/s (%.1f µs/heartbeat, %.0f hb/s), sim %.3f, others %.3f, machine %.0f%% busy; acks p50 %.2f ms p99 %.2f ms max %.1f ms; rss %.0f MB, live heap %.0f MB",
		res.Steady.CoordCPUPerS, res.Steady.CoordUSPerHB, res.Steady.HeartbeatsPerS, res.Steady.SimCPUPerS, res.Steady.OtherCPUPerS, res.Steady.MachineCPUPctAll,
		res.Acks.P50MS, res.Acks.P99MS, res.Acks.MaxMS, res.Mem.RSSMB, res.Heap.LiveHeapMB)
	logf("steady: max gap between messages at an agent %.0f ms (%d over the real agent's %.0f ms read deadline); simulator: tick late max %.0f ms, shard pass max %.0f ms, oversleep max %.0f ms, heartbeat send gap max %.0f ms",
		res.Acks.MaxGapMS, res.Acks.LongGaps, res.Acks.GapLimitMS, res.Acks.SimMaxTickLateMS, res.Acks.SimMaxPassMS, res.Acks.SimMaxOversleep, res.Acks.SimMaxSendGapMS)

	// Node losses.
	rng := rand.New(rand.NewSource(o.seed))
	evPath := filepath.Join(dataDir, "runs", spec.ID, "events.jsonl")
	s.startRecording()
	lp0 := s.sample(coord.pid, coord.gc)
	var variants []string
	for range o.closeLosses {
		variants = append(variants, "close")
	}
	for range o.silentLosses {
		variants = append(variants, "silent")
	}
	for k, v := range variants {
		var traced chan struct{}
		if k == 0 && o.coordPprof != "" {
			traced = make(chan struct{})
			go func() {
				defer close(traced)
				resp, err := http.Get("http://" + o.coordPprof + "/debug/pprof/trace?seconds=4")
				if err != nil {
					logf("trace: %v", err)
					return
				}
				defer resp.Body.Close()
				f, _ := os.Create(filepath.Join(dataDir, "loss1.trace"))
				io.Copy(f, resp.Body)
				f.Close()
			}()
			time.Sleep(500 * time.Millisecond)
		}
		l, err := s.lose(v, rng, coord, evPath)
		if traced != nil {
			<-traced
		}
		if err != nil {
			res.FirstError = err.Error()
			logf("loss %d: %v", k+1, err)
			res.Losses = append(res.Losses, l)
			break
		}
		res.Losses = append(res.Losses, l)
		logf("loss %d (%s, %s, gen %d→%d): first stop %+.0f ms; new generation at every agent: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d/%d agents); coordinator node_lost %s, cpu %.2f s (others %.2f s)",
			k+1, v, l.Victim, l.FromGen, l.ToGen, l.Stop.FirstMS, l.Start.P50MS, l.Start.P99MS, l.Start.MaxMS, l.Start.N, l.Expected,
			fmtPtr(l.Coordinator.NodeLostMS), l.CoordCPUS, l.OtherCPUS)
		time.Sleep(o.lossGap)
	}
	res.LossAcks = s.stopRecording()
	res.LossCPU = diff(lp0, s.sample(coord.pid, coord.gc), res.Idle.CoordCPUPerS)
	res.Summary = map[string]any{}
	for _, v := range []string{"close", "silent"} {
		var all, allStop, last, det []time.Duration
		n := 0
		for _, l := range res.Losses {
			if l.Variant != v {
				continue
			}
			n++
			all = append(all, l.startDs...)
			allStop = append(allStop, l.stopDs...)
			if len(l.startDs) > 0 {
				last = append(last, slicesMax(l.startDs))
			}
			det = append(det, l.detectD)
		}
		if n > 0 {
			res.Summary[v] = lossSummary{Losses: n, Start: stats(all), Stop: stats(allStop), LastAgent: stats(last), Detection: stats(det)}
		}
	}
	res.MemEnd = procMem(coord.pid)
	victims := map[string]bool{}
	for _, l := range res.Losses {
		victims[l.Victim] = true
	}
	if evs, err := events.ReadFile(evPath); err == nil {
		for _, e := range evs {
			if e.Type == events.NodeLost && !victims[e.Node] {
				res.Spurious++
				if res.Spurious <= 5 {
					res.SpuriousEx = append(res.SpuriousEx, fmt.Sprintf("%s %s: %s", e.Time.Format("15:04:05.000"), e.Node, e.Detail))
				}
			}
		}
	}
	res.Unexpected = s.unexpected.Load()
	res.Reconnects = s.reconnects.Load()
	res.Retimes = s.retimes.Load()
	res.Rejects = s.rejects.Load()
	if e, ok := s.firstErr.Load().(string); ok && res.FirstError == "" {
		res.FirstError = e
	}
	res.Notes = []string{
		fmt.Sprintf("The simulator (%d agents, one goroutine each plus %d heartbeat goroutines) runs on the same %d-core machine as the coordinator and competes with it for CPU; the coordinator's CPU is measured on its own (/proc/PID/stat), the simulator's and the machine's separately.", o.agents, o.shards, runtime.NumCPU()),
		"Agents are simulated: start is answered with launched and stop with stopped at once (no worker processes), so the loss-to-new-generation times are the control plane's alone; a real node adds its workers' stop grace and start time.",
		"Arrival times are taken by the simulator's reader goroutine when the message is decoded, on the same clock as T.",
		"Coordinator memory includes the embedded etcd (same process). Live heap is from GODEBUG=gctrace=1.",
	}
	if o.keep {
		res.Extra["data_dir"] = dataDir
	}
	return res, nil
}

func fmtPtr(p *float64) string {
	if p == nil {
		return "?"
	}
	return fmt.Sprintf("%+.0f ms", *p)
}

func slicesMax(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func since(as []arrival, t time.Time) []time.Duration {
	out := make([]time.Duration, len(as))
	for i, a := range as {
		out[i] = time.Duration(a.at - t.UnixNano())
	}
	return out
}

func waitAllStarted(s *sim, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for _, a := range s.agents {
		for a.firstStart.Load() == 0 {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return true
}

// coordTiming is the timing the coordinator tells agents now (GET /v1/status).
func coordTiming(addr string) map[string]int64 {
	resp, err := http.Get("http://" + addr + "/v1/status")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st coordinator.Status
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	return map[string]int64{"heartbeat_ms": st.HeartbeatMS, "node_timeout_ms": st.NodeTimeoutMS, "lease_ms": st.LeaseMS}
}

func waitCount(s *sim, gen, want int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for s.rec.count(true, gen) < want {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// lose takes one placed agent away and times the new generation's arrival
// at every other agent.
func (s *sim) lose(variant string, rng *rand.Rand, coord *coordProc, evPath string) (loss, error) {
	g := s.rec.maxStartGen()
	placed := s.rec.get(true, g)
	var victim *simAgent
	for range 1000 {
		a := s.agents[placed[rng.Intn(len(placed))].id]
		if a.alive.Load() {
			victim = a
			break
		}
	}
	if victim == nil {
		return loss{}, errors.New("no live placed agent to lose")
	}
	l := loss{Variant: variant, Victim: victim.name, FromGen: g, ToGen: g + 1}
	c0 := s.sample(coord.pid, coord.gc)
	var T time.Time
	switch variant {
	case "close":
		l.TMeaning = "the simulated agent closed its connection"
		T = time.Now()
		victim.kill()
	case "silent":
		l.TMeaning = "the simulated agent sent its last heartbeat (then went silent: no heartbeat, no answer)"
		victim.silent.Store(true)
		// A heartbeat may be being written right now: let it finish.
		time.Sleep(20 * time.Millisecond)
		T = time.Unix(0, victim.lastHB.Load())
	}
	expected := 0
	for _, a := range s.agents {
		if a != victim && a.alive.Load() {
			expected++
		}
	}
	l.Expected = expected
	l.T = T.Format(time.RFC3339Nano)
	l.Complete = waitCount(s, g+1, expected, 60*time.Second)
	c1 := s.sample(coord.pid, coord.gc)
	l.CoordCPUS = round(c1.coord-c0.coord, 3)
	l.SimCPUS = round(c1.self-c0.self, 3)
	l.OtherCPUS = round((c1.busy-c0.busy)-(c1.coord-c0.coord)-(c1.self-c0.self), 3)
	starts := s.rec.get(true, g+1)
	stops := s.rec.get(false, g)
	l.startDs, l.stopDs = since(starts, T), since(stops, T)
	l.Start, l.Stop = stats(l.startDs), stats(l.stopDs)
	stopAt := map[int32]int64{}
	for _, a := range stops {
		stopAt[a.id] = a.at
	}
	var s2s []time.Duration
	for _, a := range starts {
		if t, ok := stopAt[a.id]; ok {
			s2s = append(s2s, time.Duration(a.at-t))
		}
	}
	l.StopToStart = stats(s2s)
	// The coordinator's own timeline. Its log goroutine may lag a little.
	time.Sleep(200 * time.Millisecond)
	l.Coordinator = timeline(evPath, victim.name, g, T)
	if l.Coordinator.NodeLostMS != nil {
		l.detectD = time.Duration(*l.Coordinator.NodeLostMS * 1e6)
	}
	if !l.Complete {
		return l, fmt.Errorf("generation %d reached %d of %d agents in 60 s", g+1, len(starts), expected)
	}
	// The lost node comes back as a restarted agent (idle until the next
	// generation takes it), so the job keeps its size.
	if !victim.waitGone(30 * time.Second) {
		victim.kill()
		victim.waitGone(10 * time.Second)
	}
	if err := s.connect(victim); err != nil {
		return l, fmt.Errorf("reconnecting %s: %w", victim.name, err)
	}
	return l, nil
}

func timeline(path, node string, gen int, T time.Time) coordTimeline {
	var tl coordTimeline
	evs, err := events.ReadFile(path)
	if err != nil {
		return tl
	}
	rel := func(t time.Time) *float64 { x := round(float64(t.Sub(T))/1e6, 1); return &x }
	for _, e := range evs {
		switch {
		case e.Type == events.NodeLost && e.Node == node && e.Gen == gen && tl.NodeLostMS == nil:
			tl.NodeLostMS = rel(e.Time)
		case e.Type == events.FaultDetected && e.Gen == gen && tl.FaultMS == nil && strings.Contains(e.Detail, node):
			tl.FaultMS = rel(e.Time)
			tl.FaultDetect = e.DetectMS
		case e.Type == events.GenerationStart && e.Gen == gen+1 && tl.GenStartMS == nil:
			tl.GenStartMS = rel(e.Time)
		case e.Type == events.Recovered && e.Gen == gen+1 && tl.RecoveredMS == nil:
			tl.RecoveredMS = rel(e.Time)
		}
	}
	return tl
}

// ---- the results file ----

type resultsFile struct {
	Description string            `json:"description"`
	Method      []string          `json:"method"`
	Findings    []string          `json:"findings,omitempty"` // written by hand; kept
	Runs        []json.RawMessage `json:"runs"`
}

func writeResults(path string, r *result) error {
	var f resultsFile
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	f.Description = "Control-plane scale of the bulsajo multi-node coordinator: one coordinator process, N simulated agents on real loopback TCP connections (bench/scale)."
	f.Method = method
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var runs []json.RawMessage
	replaced := false
	for _, old := range f.Runs {
		var h struct {
			Label string `json:"label"`
		}
		json.Unmarshal(old, &h)
		if h.Label == r.Label {
			runs = append(runs, b)
			replaced = true
		} else {
			runs = append(runs, old)
		}
	}
	if !replaced {
		runs = append(runs, b)
	}
	f.Runs = runs
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}

var method = []string{
	"`bulsajo coordinator` runs as a child process (embedded etcd in a fresh data dir on ext4, GODEBUG=gctrace=1); RLIMIT_NOFILE is raised before it starts so it inherits the limit.",
	"N simulated agents open real TCP connections over loopback (source addresses 127.0.0.2..5), POST /v1/agent with the join token, Upgrade: bulsajo-agent/1, then hello/welcome with internal/wire; each heartbeats at the welcome's interval (100 shard goroutines, phases spread over the interval), answers start with launched and stop with stopped at once, and records the arrival time of every start and stop.",
	"A job (command /bin/true, never run) is submitted through coordinator.Client with nnodes (N-1-N/100):N, 1 process per node, so every agent holds a rank.",
	"Steady state: utime+stime of the coordinator from /proc/PID/stat over the window, per second and per heartbeat (heartbeats counted by the simulator); ack round trip from heartbeat write to ack decode; VmRSS/VmHWM from /proc/PID/status; live heap from the last gctrace line.",
	"Node loss (close): one placed agent closes its connection at T. Node loss (silent): one placed agent stops heartbeating and answering; T is its last heartbeat. For every other agent: arrival of stop (generation g) and of start (generation g+1), minus T; p50/p99/max over all agents of all losses, and per loss the last agent. The coordinator's own timeline (node_lost, fault, generation_started events from its event log) is reported relative to T. After each loss the lost agent reconnects as a restarted agent (new instance), idle until the next generation takes it.",
}
