package launcher

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// A standby imports torch on the CPUs the job trains on, at nice 19, and
// every thread of it goes back to the launcher's own nice value (0 unless
// the user ran it under nice) when it is activated (priority is per thread
// on Linux: setting the pid alone leaves the threads the import started at
// 19).
//
// Going back needs privilege (CAP_SYS_NICE, or an RLIMIT_NICE of 20 or
// more): without it the worker would train at nice 19 for good, a straggler
// its whole life wherever CPUs are contended (and its data loaders, which
// inherit it). So the launcher lowers nothing it cannot raise again; an
// unprivileged user's standbys import at normal priority.
//
// (SCHED_IDLE instead of nice 19 was measured on this 2-core machine: the
// steps taken while a standby imported were as slow as at nice 19, 4-10%
// slower than steady ones; BENCHMARKS.md.)

const capSysNice = 23

// threads lists pid's threads, the main thread first (threads it starts from
// here on inherit what it has).
func threads(pid int) []int {
	out := []int{pid}
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil && tid != pid {
			out = append(out, tid)
		}
	}
	return out
}

// lowerPriority puts a standby that is starting at nice 19, if the launcher
// may raise it again (best effort either way).
func lowerPriority(pid int) {
	if base, ok := priority(); ok && base < 19 {
		setNice(pid, 19)
	}
}

// restorePriority puts every thread of pid back to the launcher's nice value.
func restorePriority(pid int) {
	if base, ok := priority(); ok && base < 19 {
		setNice(pid, base)
	}
}

func setNice(pid, n int) {
	for _, tid := range threads(pid) {
		syscall.Setpriority(syscall.PRIO_PROCESS, tid, n)
	}
}

// priority: the launcher's own nice value, which its workers start with,
// and whether it may bring a thread back to it from 19.
var priority = sync.OnceValues(func() (int, bool) {
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		return 0, false
	}
	base := 20 - prio // the raw syscall returns 20 - nice
	var lim syscall.Rlimit
	rl := uint64(0)
	if syscall.Getrlimit(rlimitNice, &lim) == nil {
		rl = lim.Cur
	}
	status, _ := os.ReadFile("/proc/self/status")
	return base, canRaise(string(status), rl, base)
})

const rlimitNice = 13 // RLIMIT_NICE

// canRaise says whether a process with this /proc/self/status and
// RLIMIT_NICE soft limit may bring a thread back to nice value base: with
// CAP_SYS_NICE in its effective set, or a limit of 20 - base or more (20 -
// limit is the lowest nice value it may set).
func canRaise(status string, rlimitNice uint64, base int) bool {
	if int64(rlimitNice) >= int64(20-base) || rlimitNice == ^uint64(0) {
		return true
	}
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<capSysNice) != 0
		}
	}
	return false
}
