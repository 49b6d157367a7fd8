package redirector

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// initPidnsIno is the inode number of the initial PID namespace
// (PROC_PID_INIT_INO).
const initPidnsIno = 0xEFFFFFFC

// PidNS identifies a PID namespace the way bpf_get_ns_current_pid_tgid
// takes it: the nsfs device in the kernel's encoding and the inode.
type PidNS struct {
	Dev, Ino uint64
}

// IsInitial reports whether ns is the initial PID namespace (or unknown),
// where the pids the kernel records need no translation.
func (ns PidNS) IsInitial() bool { return ns.Ino == 0 || ns.Ino == initPidnsIno }

// CurrentPidNS returns the calling process's PID namespace, from
// stat(/proc/self/ns/pid). The device is converted from the encoding
// stat reports to the kernel's dev_t (major<<20 | minor), which the
// helper compares against.
func CurrentPidNS() (PidNS, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return PidNS{}, fmt.Errorf("pid namespace: %w", err)
	}
	dev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	return PidNS{Dev: dev, Ino: st.Ino}, nil
}

// agentPidNS returns the PID namespace to translate caller pids to: the
// agent's own, or the zero PidNS (no translation) in the initial
// namespace or when it cannot be read, with a note for the status.
func agentPidNS(log *slog.Logger) (PidNS, string) {
	ns, err := CurrentPidNS()
	if err != nil {
		log.Warn("caller pids cannot be translated to the agent's PID namespace", "err", err)
		return PidNS{}, "; caller pids not translated: " + err.Error()
	}
	if ns.IsInitial() {
		return PidNS{}, ""
	}
	return ns, ""
}
