//go:build linux

package netlab

import (
	"errors"
	"syscall"
)

// enterNetns switches the calling OS thread into the network namespace
// bound at path. The caller must have locked the goroutine to its thread.
func enterNetns(path string) error {
	if sysSetns < 0 {
		return errors.New("setns: system call number unknown on this architecture")
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	nr := sysSetns // a variable: the constant may be -1
	if _, _, errno := syscall.RawSyscall(uintptr(nr), uintptr(fd), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}

// onMainThread reports whether the calling goroutine runs on the process's
// main thread.
func onMainThread() bool { return syscall.Gettid() == syscall.Getpid() }
