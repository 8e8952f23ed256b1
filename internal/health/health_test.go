package health

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// Fields after comm: state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime ...
	tests := []struct {
		name      string
		in        string
		wantState byte
		wantTicks uint64
		wantStop  bool
	}{
		{"running", "1234 (python3) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 17 0 0 20 0 1 0 100 0 0\n", 'R', 267, false},
		{"sleeping", "42 (bash) S 1 42 42 34816 42 4194560 2000 0 0 0 3 4 0 0 20 0 1 0 5 0 0", 'S', 7, false},
		{"stopped", "77 (sleep) T 1 77 77 0 -1 1077936128 90 0 0 0 0 0 0 0 20 0 1 0 9 0 0", 'T', 0, true},
		{"traced", "78 (gdb target) t 1 78 78 0 -1 0 0 0 0 0 12 30 0 0 20 0 1 0 9 0 0", 't', 42, true},
		{"disk sleep", "79 (kworker/0:1) D 2 0 0 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 9 0 0", 'D', 10, false},
		{"zombie", "80 (defunct) Z 1 80 80 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 9 0 0", 'Z', 2, false},
		{"comm with spaces", "555 (pt main thread) R 1 555 555 0 -1 0 0 0 0 0 1000 2000 0 0 20 0 1 0 9 0 0", 'R', 3000, false},
		{"comm with paren", "556 (a) b) S 1 556 556 0 -1 0 0 0 0 0 8 9 0 0 20 0 1 0 9 0 0", 'S', 17, false},
		{"comm with ) and spaces", "557 (x) T 1 2 3 ) R 1 557 557 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 9 0 0", 'R', 33, false},
		{"comm that is a paren", "558 ()) T 1 558 558 0 -1 0 0 0 0 0 6 7 0 0 20 0 1 0 9 0 0", 'T', 13, true},
		{"exactly fifteen fields", "9 (c) S 1 9 9 0 -1 0 0 0 0 0 4 5", 'S', 9, false},
		{"large tick counts", "9 (c) R 1 9 9 0 -1 0 0 0 0 0 18446744073709551 0 0", 'R', 18446744073709551, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat(tt.in)
			if err != nil {
				t.Fatalf("parseProcStat(%q): %v", tt.in, err)
			}
			if got.State != tt.wantState || got.CPUTicks != tt.wantTicks {
				t.Errorf("parseProcStat = {State %q, CPUTicks %d}, want {%q, %d}",
					got.State, got.CPUTicks, tt.wantState, tt.wantTicks)
			}
			if got.Stopped() != tt.wantStop {
				t.Errorf("Stopped() = %v, want %v", got.Stopped(), tt.wantStop)
			}
		})
	}
}

func TestParseProcStatErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "malformed"},
		{"no paren", "1234 python3 R 1 2 3", "malformed"},
		{"ends at paren", "1234 (python3)", "malformed"},
		{"ends after paren space", "1234 (python3) ", "malformed"},
		{"short", "1234 (python3) R 1 1234 1234 0 -1", "short"},
		{"one field short", "9 (c) S 1 9 9 0 -1 0 0 0 0 0 4", "short"},
		{"utime not a number", "9 (c) S 1 9 9 0 -1 0 0 0 0 0 x 5 0", "bad cpu times"},
		{"stime not a number", "9 (c) S 1 9 9 0 -1 0 0 0 0 0 4 y 0", "bad cpu times"},
		{"negative ticks", "9 (c) S 1 9 9 0 -1 0 0 0 0 0 -4 5 0", "bad cpu times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat(tt.in)
			if err == nil {
				t.Fatalf("parseProcStat(%q) = %+v, want error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "health: ") {
				t.Errorf("parseProcStat(%q) error = %q, want \"health: ...%s...\"", tt.in, err, tt.want)
			}
		})
	}
}

func TestReadProcStatSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	// Burn a little CPU so the tick count has something to count.
	deadline := time.Now().Add(30 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	ps, err := ReadProcStat(os.Getpid())
	if err != nil {
		t.Fatalf("ReadProcStat(self): %v", err)
	}
	if ps.State != 'R' && ps.State != 'S' {
		t.Errorf("own state = %q, want R or S", ps.State)
	}
	if ps.Stopped() {
		t.Errorf("own process reads as stopped")
	}
	ps2, err := ReadProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ps2.CPUTicks < ps.CPUTicks {
		t.Errorf("CPU ticks went backwards: %d then %d", ps.CPUTicks, ps2.CPUTicks)
	}
}

func TestReadProcStatMissing(t *testing.T) {
	// Beyond the kernel's pid_max limit (4194304), so no such process.
	if _, err := ReadProcStat(1 << 30); err == nil {
		t.Error("ReadProcStat of a missing pid succeeded")
	}
}

func TestReadProcStatStoppedChild(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})

	waitState := func(want func(ProcStat) bool) ProcStat {
		t.Helper()
		var ps ProcStat
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			ps, err = ReadProcStat(pid)
			if err != nil {
				t.Fatalf("ReadProcStat(child): %v", err)
			}
			if want(ps) {
				return ps
			}
		}
		t.Fatalf("child never reached the wanted state; last %q", ps.State)
		return ps
	}

	ps := waitState(func(p ProcStat) bool { return p.State == 'S' || p.State == 'R' })
	if ps.Stopped() {
		t.Fatalf("running child reads as stopped")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ps = waitState(ProcStat.Stopped)
	if ps.State != 'T' {
		t.Errorf("SIGSTOPped child state = %q, want T", ps.State)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitState(func(p ProcStat) bool { return !p.Stopped() })
}

const ms = time.Millisecond

func TestWatchdogThreshold(t *testing.T) {
	tests := []struct {
		name    string
		w       Watchdog
		observe []time.Duration // progress times
		want    time.Duration
	}{
		{"nothing observed: floor", Watchdog{Floor: 2 * time.Second, Factor: 5}, nil, 2 * time.Second},
		{"one observation, no interval: floor", Watchdog{Floor: 2 * time.Second, Factor: 5}, []time.Duration{time.Hour}, 2 * time.Second},
		{"fast steps: floor", Watchdog{Floor: 2 * time.Second, Factor: 5},
			[]time.Duration{0, 30 * ms, 60 * ms, 90 * ms}, 2 * time.Second},
		{"slow steps: factor x p99", Watchdog{Floor: 2 * time.Second, Factor: 5},
			[]time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second}, 5 * time.Second},
		{"p99 of a single interval", Watchdog{Floor: time.Second, Factor: 3},
			[]time.Duration{10 * time.Second, 12 * time.Second}, 6 * time.Second},
		{"p99 picks the slow outlier", Watchdog{Floor: 100 * ms, Factor: 2},
			[]time.Duration{0, 10 * ms, 20 * ms, 520 * ms}, time.Second},
		{"fractional factor", Watchdog{Floor: 0, Factor: 1.5},
			[]time.Duration{0, 100 * ms}, 150 * ms},
		{"adaptive equal to floor: floor", Watchdog{Floor: 500 * ms, Factor: 5},
			[]time.Duration{0, 100 * ms}, 500 * ms},
		{"zero factor: floor", Watchdog{Floor: 2 * time.Second},
			[]time.Duration{0, time.Minute}, 2 * time.Second},
		{"fixed timeout overrides floor", Watchdog{Floor: 2 * time.Second, Factor: 5, Timeout: 700 * ms}, nil, 700 * ms},
		{"fixed timeout overrides adaptive", Watchdog{Floor: 2 * time.Second, Factor: 5, Timeout: 3 * time.Second},
			[]time.Duration{0, 10 * time.Second, 20 * time.Second}, 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.w
			for _, at := range tt.observe {
				w.Observe(at)
			}
			if got := w.Threshold(); got != tt.want {
				t.Errorf("Threshold() = %v, want %v", got, tt.want)
			}
		})
	}
}

// p99 of 100 intervals is the largest; of 200 it ignores the single largest.
func TestWatchdogP99(t *testing.T) {
	tests := []struct {
		name string
		n    int // intervals: n-1 of 10 ms, then one of 1 s
		want time.Duration
	}{
		{"100 intervals: max", 100, 5 * time.Second},
		{"200 intervals: outlier dropped", 200, 50 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := Watchdog{Floor: ms, Factor: 5}
			now := time.Duration(0)
			w.Observe(now)
			for range tt.n - 1 {
				now += 10 * ms
				w.Observe(now)
			}
			now += time.Second
			w.Observe(now)
			if got := w.Threshold(); got != tt.want {
				t.Errorf("Threshold() = %v, want %v", got, tt.want)
			}
		})
	}
}

// The history is a window: old slow steps stop counting once enough fast
// ones have been seen.
func TestWatchdogWindow(t *testing.T) {
	w := Watchdog{Floor: ms, Factor: 2}
	now := time.Duration(0)
	w.Observe(now)
	for range 10 {
		now += time.Second
		w.Observe(now)
	}
	if got := w.Threshold(); got != 2*time.Second {
		t.Fatalf("after slow steps Threshold() = %v, want 2s", got)
	}
	for range windowSize {
		now += 10 * ms
		w.Observe(now)
	}
	if got := w.Threshold(); got != 20*ms {
		t.Errorf("after a window of fast steps Threshold() = %v, want 20ms", got)
	}
	if len(w.intervals) != windowSize {
		t.Errorf("history holds %d intervals, want %d", len(w.intervals), windowSize)
	}
}

func TestWatchdogStalled(t *testing.T) {
	type check struct {
		now         time.Duration
		wantStalled bool
		wantSilent  time.Duration
	}
	tests := []struct {
		name    string
		w       Watchdog
		observe []time.Duration
		checks  []check
	}{
		{"never armed", Watchdog{Floor: time.Second, Factor: 5}, nil, []check{
			{0, false, 0}, {time.Hour, false, 0},
		}},
		{"floor", Watchdog{Floor: time.Second, Factor: 5}, []time.Duration{10 * time.Second}, []check{
			{10 * time.Second, false, 0},
			{10500 * ms, false, 500 * ms},
			{11 * time.Second, false, time.Second}, // at the threshold: not yet
			{11*time.Second + ms, true, time.Second + ms},
			{time.Minute, true, 50 * time.Second},
		}},
		{"adaptive", Watchdog{Floor: time.Second, Factor: 4},
			[]time.Duration{0, time.Second, 2 * time.Second}, []check{
				{5 * time.Second, false, 3 * time.Second},
				{6 * time.Second, false, 4 * time.Second},
				{6*time.Second + ms, true, 4*time.Second + ms},
			}},
		{"fixed timeout", Watchdog{Floor: time.Minute, Factor: 5, Timeout: 100 * ms},
			[]time.Duration{0, time.Second}, []check{
				{1100 * ms, false, 100 * ms},
				{1101 * ms, true, 101 * ms},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.w
			for _, at := range tt.observe {
				w.Observe(at)
			}
			if w.Armed() != (len(tt.observe) > 0) {
				t.Errorf("Armed() = %v after %d observations", w.Armed(), len(tt.observe))
			}
			if n := len(tt.observe); n > 0 && w.LastProgress() != tt.observe[n-1] {
				t.Errorf("LastProgress() = %v, want %v", w.LastProgress(), tt.observe[n-1])
			}
			for _, c := range tt.checks {
				stalled, silent := w.Stalled(c.now)
				if stalled != c.wantStalled || silent != c.wantSilent {
					t.Errorf("Stalled(%v) = (%v, %v), want (%v, %v)", c.now, stalled, silent, c.wantStalled, c.wantSilent)
				}
			}
		})
	}
}

func TestWatchdogReset(t *testing.T) {
	w := DefaultWatchdog()
	w.Observe(0)
	w.Observe(time.Second)
	w.Observe(2 * time.Second)
	if got := w.Threshold(); got != 5*time.Second {
		t.Fatalf("Threshold() = %v, want 5s", got)
	}
	w.Reset()
	if w.Armed() {
		t.Error("Armed() after Reset")
	}
	if stalled, silent := w.Stalled(time.Hour); stalled || silent != 0 {
		t.Errorf("Stalled after Reset = (%v, %v), want (false, 0)", stalled, silent)
	}
	if got := w.Threshold(); got != 5*time.Second {
		t.Errorf("Threshold() after Reset = %v, want the kept 5s", got)
	}
	// The gap across the Reset (a restart) is not a step interval.
	w.Observe(time.Hour)
	if got := w.Threshold(); got != 5*time.Second {
		t.Errorf("Threshold() after the first progress of the new generation = %v, want 5s", got)
	}
	if !w.Armed() {
		t.Error("not Armed() after progress")
	}
	if stalled, _ := w.Stalled(time.Hour + 5*time.Second + ms); !stalled {
		t.Error("new generation not stalled past the kept threshold")
	}
}

func TestDefaultWatchdog(t *testing.T) {
	w := DefaultWatchdog()
	if w.Floor != 2*time.Second || w.Factor != 5 || w.Timeout != 0 {
		t.Errorf("DefaultWatchdog() = %+v, want Floor 2s, Factor 5, Timeout 0", w)
	}
}
