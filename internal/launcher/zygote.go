package launcher

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The zygote refills the standby pool by fork instead of by import.
//
// A standby started fresh imports torch: about a second of CPU, taken from
// training on a node whose CPUs the ranks fill, and it is paid again for
// every fault (measured on 2 cores: steps 5-10 % slower for the seconds a
// refill lasts, most of the run at a fault every 5 s). The zygote is the
// standby shim in zygote mode (python/bulsajo/_standby.py): it imports once,
// at nice 19 like a standby, then forks a standby per request. A fork costs
// milliseconds, and the standby shares the zygote's pages.
//
// The fork is a clone with CLONE_PARENT, so each standby is the launcher's
// own child, in its own process group, with the launcher's parent-death
// signal: waited for, stopped and reaped like a standby started here. If
// the zygote cannot serve (gone, an unsupported platform, a reply that does
// not come), the pool goes back to starting standbys, for the rest of the
// run. BULSAJO_ZYGOTE=0 in the environment turns it off.

// zygoteReadyWait bounds the wait for the zygote's import (at nice 19 on a
// busy node, several times the quiet machine's second); zygoteReplyWait the
// wait for one fork.
const (
	zygoteReadyWait = 2 * time.Minute
	zygoteReplyWait = 10 * time.Second
)

type zygote struct {
	mu    sync.Mutex // one request at a time
	conn  *net.UnixConn
	pid   int
	ready bool
}

var errZygoteGone = errors.New("zygote gone")

// startZygote starts the zygote; it imports in the background. Called with
// a.mu held.
func (a *Launcher) startZygote() (*zygote, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "zygote"), os.NewFile(uintptr(fds[1]), "zygote")
	defer theirs.Close()
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, err
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("zygote socket is a %T", c)
	}
	// Its output (a preload's complaint, say) goes to a log of its own.
	logf, err := os.OpenFile(filepath.Join(a.cfg.RunDir, "logs", "zygote.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(a.shim[0], a.shim[1:]...)
	cmd.Env = a.shimEnv("BULSAJO_ZYGOTE_FD=3")
	cmd.Dir = a.cfg.Dir
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startWorkerProcess(cmd); err != nil {
		conn.Close()
		return nil, err
	}
	z := &zygote{conn: conn, pid: cmd.Process.Pid}
	a.started.Store(z.pid, true)
	// Beside pids/rankN, for operators and tools: a fork is named
	// bulsajo-zygote too for the moment before it renames itself.
	pidFile := filepath.Join(a.cfg.RunDir, "pids", "zygote")
	writePIDFile(pidFile, z.pid)
	// Its import is a standby's import (priority.go, and the step clock's
	// importTracker); its forks inherit the nice value until activated.
	lowerPriority(z.pid)
	a.imports.start(z.pid)
	a.waiters.Add(1)
	go func() {
		defer a.waiters.Done()
		cmd.Wait()
		os.Remove(pidFile)
		a.imports.done(z.pid)
		conn.Close() // a request in flight fails at once
	}()
	return z, nil
}

// fork asks the zygote for a standby whose stdout, stderr and fd 3 are
// files[0..2]; it returns the standby's pid.
func (z *zygote) fork(files []*os.File) (int, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	buf := make([]byte, 256)
	read := func(limit time.Duration) (string, error) {
		z.conn.SetReadDeadline(time.Now().Add(limit))
		n, err := z.conn.Read(buf)
		if err != nil {
			return "", err
		}
		if n == 0 {
			return "", errZygoteGone
		}
		return string(buf[:n]), nil
	}
	if !z.ready {
		msg, err := read(zygoteReadyWait)
		if err != nil {
			return 0, fmt.Errorf("zygote never ready: %w", err)
		}
		if !strings.HasPrefix(msg, "ready ") {
			return 0, fmt.Errorf("zygote: %s", msg)
		}
		z.ready = true
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	z.conn.SetWriteDeadline(time.Now().Add(zygoteReplyWait))
	if _, _, err := z.conn.WriteMsgUnix([]byte("fork"), syscall.UnixRights(fds...), nil); err != nil {
		return 0, fmt.Errorf("zygote: %w", err)
	}
	msg, err := read(zygoteReplyWait)
	if err != nil {
		return 0, fmt.Errorf("zygote: %w", err)
	}
	if p, ok := strings.CutPrefix(msg, "pid "); ok {
		if pid, err := strconv.Atoi(p); err == nil && pid > 0 {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("zygote: %s", msg)
}

// kill ends the zygote (its standbys are the launcher's and stay).
func (z *zygote) kill() {
	signalGroup(z.pid, syscall.SIGKILL)
	z.conn.Close()
}

// forkStandby makes a standby from the zygote. The caller has counted it
// in a.waiters (and uncounts it on an error).
func (a *Launcher) forkStandby(z *zygote) (*worker, error) {
	var pipes [3][2]*os.File // stdout, stderr, activation: read, write end
	closeAll := func() {
		for _, p := range pipes {
			for _, f := range p {
				if f != nil {
					f.Close()
				}
			}
		}
	}
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll()
			return nil, err
		}
		pipes[i] = [2]*os.File{r, w}
	}
	// The standby writes stdout and stderr, and reads its activation.
	pid, err := z.fork([]*os.File{pipes[0][1], pipes[1][1], pipes[2][0]})
	if err != nil {
		closeAll()
		return nil, err
	}
	pipes[0][1].Close()
	pipes[1][1].Close()
	pipes[2][0].Close()
	// The standby moves to its own group itself; so does this, before
	// anyone may signal the group (it cannot fail while the child has not
	// exec'd, which it never does).
	syscall.Setpgid(pid, pid)
	proc, _ := os.FindProcess(pid) // cannot fail on Unix
	w := a.track(proc, nil, pipes[0][0], pipes[1][0], 0, -1, nil)
	a.activation(w, pipes[2][1], true)
	return w, nil
}
