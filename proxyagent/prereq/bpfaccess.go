package prereq

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// IDBPFRefused identifies a bpf() system call the kernel (or a filter in
// front of it) refused.
const IDBPFRefused = "bpf-refused"

// Capability numbers (linux/capability.h) that loading and attaching the
// agent's programs needs.
const (
	capNetAdmin    = 12
	capSysAdmin    = 21
	capSysResource = 24
	capBPF         = 39
)

// ProcAccess is what /proc/<pid>/status says about a process's right to
// call bpf().
type ProcAccess struct {
	// CapEff is the effective capability set.
	CapEff uint64
	// Seccomp is the seccomp mode: 0 none, 1 strict, 2 filter.
	Seccomp int
}

func (a ProcAccess) has(c uint) bool { return a.CapEff&(1<<c) != 0 }

// ReadProcAccess reads the calling process's /proc/self/status under p.
func ReadProcAccess(p Paths) (ProcAccess, error) {
	b, err := os.ReadFile(p.path("/proc/self/status"))
	if err != nil {
		return ProcAccess{}, err
	}
	return ParseProcAccess(string(b))
}

// ParseProcAccess parses the CapEff and Seccomp lines of a
// /proc/<pid>/status text.
func ParseProcAccess(status string) (ProcAccess, error) {
	var a ProcAccess
	seen := 0
	for _, l := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "CapEff":
			a.CapEff, err = strconv.ParseUint(v, 16, 64)
			seen++
		case "Seccomp":
			a.Seccomp, err = strconv.Atoi(v)
			seen++
		}
		if err != nil {
			return a, fmt.Errorf("prereq: /proc status %s: %w", k, err)
		}
	}
	if seen != 2 {
		return a, errors.New("prereq: /proc status lacks CapEff or Seccomp")
	}
	return a, nil
}

// IsRefusal reports whether err is the kernel's (or a filter's) no to a
// system call: EPERM, EACCES or ENOSYS.
func IsRefusal(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOSYS)
}

// BPFRefused says why a bpf() call failed with err, a refusal (see
// IsRefusal), and how to fix it; ok is false for any other error. a
// describes the calling process. probe is the result of a bpf() call that
// the kernel always answers with EINVAL once the call reaches it (nil
// then): a refused probe means the system call itself is blocked. memlock
// says err came from raising RLIMIT_MEMLOCK for bpf() (kernels before 5.11
// charge eBPF memory to it).
func BPFRefused(a ProcAccess, probe, err error, memlock bool) (Problem, bool) {
	if !IsRefusal(err) {
		return Problem{}, false
	}
	p := Problem{ID: IDBPFRefused}
	switch {
	case probe != nil && a.Seccomp == 2:
		p.Summary = fmt.Sprintf("a seccomp filter blocks the bpf() system call (it answers %v)", probe)
		p.Fix = "allow bpf for the agent: systemd-nspawn --system-call-filter=bpf, docker/podman --security-opt seccomp=<a profile that allows bpf>, or a SystemCallFilter= that does not exclude it"
	case !(a.has(capBPF) && a.has(capNetAdmin)) && !a.has(capSysAdmin):
		p.Summary = fmt.Sprintf("the agent lacks the capabilities bpf() needs (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN; effective set %#x)", a.CapEff)
		p.Fix = "run it as root with those capabilities: no CapabilityBoundingSet= that drops them, docker --cap-add=BPF --cap-add=NET_ADMIN (or --cap-add=SYS_ADMIN)"
	case memlock && !a.has(capSysResource):
		p.Summary = "the agent cannot raise RLIMIT_MEMLOCK, which kernels before 5.11 charge eBPF memory to (needs CAP_SYS_RESOURCE)"
		p.Fix = "grant CAP_SYS_RESOURCE or set LimitMEMLOCK=infinity for the agent"
	case probe != nil:
		p.Summary = fmt.Sprintf("the bpf() system call is refused before the kernel looks at it (%v), by a security module or kernel.unprivileged_bpf_disabled", probe)
		p.Fix = "allow bpf for the agent in the security policy (SELinux, AppArmor) or run it with CAP_BPF"
	default:
		p.Summary = "the kernel refused the agent's eBPF programs"
		p.Fix = "check kernel lockdown (/sys/kernel/security/lockdown) and the security modules' logs (dmesg, audit)"
	}
	return p, true
}
