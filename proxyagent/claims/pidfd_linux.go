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
// would. The call cannot block: it is made raw, without the runtime's
// blocking-call bookkeeping, which on the agent's per-connection path
// wakes the runtime's monitor thread (see package rawio).
func processAlive(pidfd int) bool {
	_, _, e := unix.RawSyscall6(unix.SYS_PIDFD_SEND_SIGNAL, uintptr(pidfd), 0, 0, 0, 0, 0)
	return e == 0
}

func closeProcess(pidfd int) { unix.Close(pidfd) }
