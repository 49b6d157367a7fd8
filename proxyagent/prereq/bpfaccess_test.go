package prereq

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

func TestParseProcAccess(t *testing.T) {
	a, err := ParseProcAccess("Name:\tazure-proxy-agent\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nSeccomp:\t2\nSeccomp_filters:\t1\n")
	if err != nil || a.CapEff != 0x1fffeffffff || a.Seccomp != 2 {
		t.Errorf("ParseProcAccess = %+v, %v", a, err)
	}
	if _, err := ParseProcAccess("Name:\tx\nCapEff:\t0\n"); err == nil {
		t.Error("status without Seccomp accepted")
	}
	if _, err := ParseProcAccess("CapEff:\tzz\nSeccomp:\t0\n"); err == nil {
		t.Error("malformed CapEff accepted")
	}
}

func TestBPFRefused(t *testing.T) {
	const all = 1<<40 - 1
	noBPF := uint64(all &^ (1<<capBPF | 1<<capSysAdmin))
	eperm := fmt.Errorf("load eBPF objects: %w", syscall.EPERM)
	memlock := fmt.Errorf("raise memlock limit: failed to set memlock rlimit: %w", syscall.EPERM)
	tests := []struct {
		name    string
		a       ProcAccess
		probe   error
		err     error
		memlock bool
		want    string // "" means not explained
	}{
		{"seccomp filter blocks bpf", ProcAccess{CapEff: all, Seccomp: 2}, syscall.EPERM, memlock, true, "seccomp filter blocks"},
		{"seccomp filter answering ENOSYS", ProcAccess{CapEff: all, Seccomp: 2}, syscall.ENOSYS, fmt.Errorf("x: %w", syscall.ENOSYS), false, "seccomp filter blocks"},
		{"seccomp filter that allows bpf: capabilities", ProcAccess{CapEff: noBPF, Seccomp: 2}, nil, eperm, false, "lacks the capabilities"},
		{"no CAP_BPF nor CAP_SYS_ADMIN", ProcAccess{CapEff: noBPF}, nil, eperm, false, "lacks the capabilities"},
		{"CAP_BPF without CAP_NET_ADMIN", ProcAccess{CapEff: 1 << capBPF}, nil, eperm, false, "lacks the capabilities"},
		{"CAP_SYS_ADMIN alone suffices", ProcAccess{CapEff: 1 << capSysAdmin}, nil, eperm, false, "refused the agent's eBPF programs"},
		{"memlock without CAP_SYS_RESOURCE", ProcAccess{CapEff: all &^ (1 << capSysResource)}, nil, memlock, true, "RLIMIT_MEMLOCK"},
		{"security module", ProcAccess{CapEff: all}, syscall.EACCES, fmt.Errorf("x: %w", syscall.EACCES), false, "security module"},
		{"not a refusal", ProcAccess{CapEff: all}, nil, errors.New("verifier: invalid argument"), false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := BPFRefused(tc.a, tc.probe, tc.err, tc.memlock)
			if tc.want == "" {
				if ok {
					t.Errorf("explained %v as %q", tc.err, p)
				}
				return
			}
			if !ok || p.ID != IDBPFRefused || !strings.Contains(p.Summary, tc.want) || p.Fix == "" {
				t.Errorf("BPFRefused = %+v, %v; want a %s problem saying %q with a fix", p, ok, IDBPFRefused, tc.want)
			}
		})
	}
}
