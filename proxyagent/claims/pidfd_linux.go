package claims

import "golang.org/x/sys/unix"

// openProcess returns a pidfd for pid (Linux ≥ 5.3): a handle on that
// process, not on the number, so it can never come to name a later process
// with the same pid. -1 when it cannot be opened.
func openProcess(pid uint32) int {
	fd, err := unix.PidfdOpen(int(pid), 0) // always close-on-exec
	if err != nil {
		return -1
	}
	return fd
}

// processAlive reports whether the process of pidfd has not yet been
// reaped (signal 0 checks without sending), as a readable /proc/<pid>/stat
// would.
func processAlive(pidfd int) bool {
	return unix.PidfdSendSignal(pidfd, 0, nil, 0) == nil
}

func closeProcess(pidfd int) { unix.Close(pidfd) }
