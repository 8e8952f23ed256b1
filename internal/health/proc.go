package health

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStat is what /proc/PID/stat says about a process that matters for
// naming the culprit of a hang.
type ProcStat struct {
	State    byte   // R, S, D, T (stopped), t (traced), Z ...
	CPUTicks uint64 // utime + stime, in clock ticks
}

// Stopped reports a process stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
func (p ProcStat) Stopped() bool { return p.State == 'T' || p.State == 't' }

// ReadProcStat reads /proc/PID/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (ProcStat, error) {
	// comm (field 2) is in parentheses and may hold spaces or ')': split
	// after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ProcStat{}, fmt.Errorf("health: malformed stat %q", s)
	}
	f := strings.Fields(s[i+2:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return ProcStat{}, fmt.Errorf("health: short stat %q", s)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return ProcStat{}, fmt.Errorf("health: bad cpu times in stat %q", s)
	}
	return ProcStat{State: f[0][0], CPUTicks: ut + st}, nil
}
