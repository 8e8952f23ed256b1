package coordinator

import "golang.org/x/sys/unix"

// socketInQueue is the number of bytes in a socket's receive queue.
func socketInQueue(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}
