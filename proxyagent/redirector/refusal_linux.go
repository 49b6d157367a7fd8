package redirector

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/proxyagent/prereq"
)

// probeBPF makes a bpf() call with a command no kernel knows: the kernel
// answers EINVAL (nil here); any other answer means the call was stopped
// before the kernel's bpf code (a seccomp filter, a security module).
func probeBPF() error {
	_, _, errno := unix.Syscall(unix.SYS_BPF, 0x7fffffff, 0, 0)
	if errno == 0 || errno == unix.EINVAL {
		return nil
	}
	return errno
}

// explainBPFRefusal turns a refused bpf() (or memlock) error into one that
// says what refused it and how to fix it (see prereq.BPFRefused); other
// errors are returned as they are.
func explainBPFRefusal(err error) error {
	if !prereq.IsRefusal(err) {
		return err
	}
	a, aerr := prereq.ReadProcAccess(prereq.Paths{})
	if aerr != nil {
		return err
	}
	p, ok := prereq.BPFRefused(a, probeBPF(), err, strings.Contains(err.Error(), "memlock"))
	if !ok {
		return err
	}
	return fmt.Errorf("%s: %s (%w)", p.Summary, p.Fix, err)
}
