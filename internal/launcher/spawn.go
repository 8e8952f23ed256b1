package launcher

import (
	"os/exec"
	"runtime"
	"syscall"
)

// The parent-death signal is tied to the OS thread that forked the child, not
// to the process: if Go retired that thread, the worker would be killed. All
// workers are therefore forked from one goroutine locked to its thread for the
// agent's life. When bulsajo dies by any means, even SIGKILL, the kernel
// SIGKILLs every worker.
type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var spawnCh = make(chan spawnReq)

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: this thread lives as long as the process
		for r := range spawnCh {
			r.done <- r.cmd.Start()
		}
	}()
}

// startWorkerProcess starts cmd in its own process group (so a stop reaches
// everything the worker forked) with the parent-death signal set.
func startWorkerProcess(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd, done}
	return <-done
}

// signalGroup sends sig to the worker's whole process group.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
