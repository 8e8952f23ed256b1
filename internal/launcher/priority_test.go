package launcher

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestCanRaise(t *testing.T) {
	tests := []struct {
		name   string
		status string
		rlimit uint64
		base   int
		want   bool
	}{
		{"root", "Name:\tx\nCapEff:\t000001ffffffffff\n", 0, 0, true},
		{"CAP_SYS_NICE alone", "CapEff:\t0000000000800000\n", 0, 0, true},
		{"no capabilities", "CapInh:\t0000000000800000\nCapEff:\t0000000000000000\n", 0, 0, false},
		{"other capabilities", "CapEff:\t00000000007fffff\n", 0, 0, false},
		{"RLIMIT_NICE allows nice 0", "CapEff:\t0000000000000000\n", 20, 0, true},
		{"RLIMIT_NICE allows nice 1 only", "CapEff:\t0000000000000000\n", 19, 0, false},
		{"RLIMIT_NICE unlimited", "CapEff:\t0000000000000000\n", ^uint64(0), 0, true},
		{"run under nice 10, limit allows it", "CapEff:\t0000000000000000\n", 10, 10, true},
		{"run under nice 10, limit does not", "CapEff:\t0000000000000000\n", 9, 10, false},
		{"no CapEff line", "Name:\tx\n", 0, 0, false},
		{"garbled CapEff", "CapEff:\tzz\n", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := canRaise(tt.status, tt.rlimit, tt.base); got != tt.want {
				t.Errorf("canRaise(%q, %d, %d) = %v, want %v", tt.status, tt.rlimit, tt.base, got, tt.want)
			}
		})
	}
}

// threadSched reads the policy and nice value of every thread of pid
// (/proc/PID/task/TID/stat fields 19 and 41).
func threadSched(t *testing.T, pid int) map[int][2]int {
	t.Helper()
	out := map[int][2]int{}
	for _, tid := range threads(pid) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/stat")
		if err != nil {
			continue // exited
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		nice, _ := strconv.Atoi(f[16])   // field 19
		policy, _ := strconv.Atoi(f[38]) // field 41
		out[tid] = [2]int{policy, nice}
	}
	return out
}

// A real multi-threaded process: threads started before the priority is
// lowered and after it (as an import does) are all lowered, and all end at
// nice 0.
func TestStandbyPriorityLoweredAndRestoredOnEveryThread(t *testing.T) {
	if base, ok := priority(); !ok || base != 0 {
		t.Skip("needs nice 0 and CAP_SYS_NICE or RLIMIT_NICE >= 20 (the launcher lowers nothing otherwise)")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	// Two threads at once, two more when stdin says so; then it sleeps.
	cmd := exec.Command(py, "-c", `
import sys, threading, time
def spawn(n):
    for _ in range(n):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
spawn(2)
print("ready", flush=True)
sys.stdin.readline()
spawn(2)
print("more", flush=True)
time.sleep(60)
`)
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Whole lines: a pipe read may return part of one (seen under load).
	lines := bufio.NewReader(outp)
	if l, err := lines.ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("read %q, %v; want ready", l, err)
	}
	pid := cmd.Process.Pid

	lowerPriority(pid)
	in.Write([]byte("go\n"))
	if l, err := lines.ReadString('\n'); err != nil || l != "more\n" {
		t.Fatalf("read %q, %v; want more", l, err)
	}
	low := threadSched(t, pid)
	if len(low) != 5 {
		t.Fatalf("want 5 threads, got %v", low)
	}
	for tid, s := range low {
		if s[1] != 19 {
			t.Errorf("lowered: thread %d has nice %d, want 19", tid, s[1])
		}
	}

	restorePriority(pid)
	for tid, s := range threadSched(t, pid) {
		if s != [2]int{0, 0} {
			t.Errorf("restored: thread %d has policy %d nice %d, want SCHED_OTHER (0) nice 0", tid, s[0], s[1])
		}
	}
}
