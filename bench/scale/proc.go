package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat (100 on
// every Linux platform Go supports).
const clkTck = 100

// cpuSeconds returns utime+stime of pid ("self" for this process).
func cpuSeconds(pid string) (float64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15.
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clkTck, nil
}

// systemCPU returns busy and total seconds of the whole machine (/proc/stat).
func systemCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)[1:]
	for i, v := range f {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy / clkTck, total / clkTck
}

type memInfo struct {
	RSSMB   float64 `json:"vm_rss_mb"`
	HWMMB   float64 `json:"vm_hwm_mb"`
	Threads int     `json:"threads"`
}

func procMem(pid string) memInfo {
	var m memInfo
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			m.RSSMB = v / 1024
		case "VmHWM:":
			m.HWMMB = v / 1024
		case "Threads:":
			m.Threads = int(v)
		}
	}
	return m
}

// gcTrace follows the coordinator's GODEBUG=gctrace=1 lines on stderr: the
// heap after each collection is the coordinator's live heap (embedded etcd
// included: it runs in the same process).
type gcTrace struct {
	mu       sync.Mutex
	n        int
	lastLive float64 // MB live after the last GC
	lastGoal float64
	stacks   float64
	cpuMS    float64 // GC CPU (wall-clock ms × procs, roughly) summed
	maxSTW   float64 // ms, longest stop-the-world phase
	maxMark  float64 // ms, longest concurrent mark phase
}

var gcRE = regexp.MustCompile(`^gc (\d+) @[0-9.]+s \d+%: ([0-9.]+)\+([0-9.]+)\+([0-9.]+) ms clock, ([0-9.+/]+) ms cpu, (\d+)->(\d+)->(\d+) MB, (\d+) MB goal, (\d+) MB stacks`)

func (g *gcTrace) follow(r io.Reader, copyTo, gcLog io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := gcRE.FindStringSubmatch(line); m != nil {
			fmt.Fprintf(gcLog, "%s %s\n", time.Now().Format("15:04:05.000"), line)
			stw1, _ := strconv.ParseFloat(m[2], 64)
			mark, _ := strconv.ParseFloat(m[3], 64)
			stw2, _ := strconv.ParseFloat(m[4], 64)
			live, _ := strconv.ParseFloat(m[8], 64)
			goal, _ := strconv.ParseFloat(m[9], 64)
			stacks, _ := strconv.ParseFloat(m[10], 64)
			cpu := 0.0
			for _, p := range strings.FieldsFunc(m[5], func(r rune) bool { return r == '+' || r == '/' }) {
				x, _ := strconv.ParseFloat(p, 64)
				cpu += x
			}
			g.mu.Lock()
			g.n++
			g.lastLive, g.lastGoal, g.stacks = live, goal, stacks
			g.cpuMS += cpu
			g.maxSTW = max(g.maxSTW, stw1, stw2)
			g.maxMark = max(g.maxMark, mark)
			g.mu.Unlock()
			continue
		}
		fmt.Fprintln(copyTo, line)
	}
}

type gcSnap struct {
	GCs         int     `json:"gcs"`
	LiveHeapMB  float64 `json:"live_heap_after_last_gc_mb"`
	HeapGoalMB  float64 `json:"heap_goal_mb"`
	StacksMB    float64 `json:"goroutine_stacks_mb"`
	GCCPUTotalS float64 `json:"gc_cpu_s_total"`
	MaxSTWMS    float64 `json:"max_stop_the_world_ms"`
	MaxMarkMS   float64 `json:"max_concurrent_mark_ms"`
}

func (g *gcTrace) snap() gcSnap {
	g.mu.Lock()
	defer g.mu.Unlock()
	return gcSnap{GCs: g.n, LiveHeapMB: g.lastLive, HeapGoalMB: g.lastGoal, StacksMB: g.stacks, GCCPUTotalS: g.cpuMS / 1000, MaxSTWMS: g.maxSTW, MaxMarkMS: g.maxMark}
}

type machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

func machineInfo() machine {
	m := machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				m.CPUModel = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotal = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// cpuWindow samples the coordinator, this process and the machine.
type cpuSample struct {
	at          time.Time
	coord, self float64
	busy, total float64
	hbSent      uint64
	acks        uint64
	gc          gcSnap
}

type cpuUse struct {
	WindowS          float64 `json:"window_s"`
	CoordCPUPerS     float64 `json:"coordinator_cpu_s_per_s"`
	SimCPUPerS       float64 `json:"simulator_cpu_s_per_s"`
	MachineBusyPerS  float64 `json:"machine_busy_cpu_s_per_s"`
	OtherCPUPerS     float64 `json:"other_processes_cpu_s_per_s"`
	HeartbeatsPerS   float64 `json:"heartbeats_per_s,omitempty"`
	AcksPerS         float64 `json:"acks_per_s,omitempty"`
	GCsPerS          float64 `json:"coordinator_gcs_per_s"`
	CoordUSPerHB     float64 `json:"coordinator_us_per_heartbeat,omitempty"`
	CoordNetUSPerHB  float64 `json:"coordinator_us_per_heartbeat_net_of_idle,omitempty"`
	CoordCPUPercent  float64 `json:"coordinator_percent_of_one_core"`
	MachineCPUPctAll float64 `json:"machine_busy_percent_of_all_cores"`
}

func (s *sim) sample(pid string, g *gcTrace) cpuSample {
	c, _ := cpuSeconds(pid)
	me, _ := cpuSeconds("self")
	busy, total := systemCPU()
	var hb, acks uint64
	if s != nil {
		hb, acks = s.hbSent.Load(), s.acks.Load()
	}
	return cpuSample{at: time.Now(), coord: c, self: me, busy: busy, total: total, hbSent: hb, acks: acks, gc: g.snap()}
}

func diff(a, b cpuSample, idlePerS float64) cpuUse {
	w := b.at.Sub(a.at).Seconds()
	u := cpuUse{WindowS: round(w, 2), CoordCPUPerS: round((b.coord-a.coord)/w, 4), SimCPUPerS: round((b.self-a.self)/w, 4),
		MachineBusyPerS: round((b.busy-a.busy)/w, 4), HeartbeatsPerS: round(float64(b.hbSent-a.hbSent)/w, 1),
		AcksPerS: round(float64(b.acks-a.acks)/w, 1), GCsPerS: round(float64(b.gc.GCs-a.gc.GCs)/w, 2)}
	u.OtherCPUPerS = round(u.MachineBusyPerS-u.CoordCPUPerS-u.SimCPUPerS, 4)
	u.CoordCPUPercent = round(100*u.CoordCPUPerS, 1)
	if b.total > a.total {
		u.MachineCPUPctAll = round(100*(b.busy-a.busy)/(b.total-a.total), 1)
	}
	if u.HeartbeatsPerS > 0 {
		u.CoordUSPerHB = round(1e6*u.CoordCPUPerS/u.HeartbeatsPerS, 2)
		u.CoordNetUSPerHB = round(1e6*(u.CoordCPUPerS-idlePerS)/u.HeartbeatsPerS, 2)
	}
	return u
}

func round(x float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if x < 0 {
		return -float64(int64(-x*p+0.5)) / p
	}
	return float64(int64(x*p+0.5)) / p
}

// waitQuiet waits until the machine is mostly idle (other people's jobs
// share it), at most d; it returns the busy fraction it last saw.
func waitQuiet(d time.Duration, below float64) float64 {
	deadline := time.Now().Add(d)
	for {
		b0, t0 := systemCPU()
		time.Sleep(2 * time.Second)
		b1, t1 := systemCPU()
		frac := 0.0
		if t1 > t0 {
			frac = (b1 - b0) / (t1 - t0)
		}
		if frac < below || time.Now().After(deadline) {
			return frac
		}
	}
}
