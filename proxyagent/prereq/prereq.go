// Package prereq decides whether a machine can run the agent by what it
// has, not by the name of its distribution: a kernel new enough for the
// eBPF programs in package bpf, a mounted cgroup v2 hierarchy, kernel BTF
// for the programs' CO-RE relocations, and no kernel setting that forbids
// loading them. Every check reads files only (procfs, sysfs, os-release and
// the kernel config when present) under a configurable root, so the
// extension handler can run it before installing anything and tests can
// run it against a crafted root. Whether the programs really load and
// attach is known only when the agent loads them; the agent reports that
// in ebpfProgramStatus, and BPFRefused turns a refused bpf() into what
// refused it (a seccomp filter, missing capabilities, RLIMIT_MEMLOCK, a
// security module) and how to fix it.
//
// The distributions the project tests are listed by Tested; any other
// distribution that passes the checks is supported, and callers warn.
package prereq

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opengpa/gpa/internal/mountinfo"
)

// MinKernel is the oldest kernel the eBPF programs run on. The programs
// need cgroup/connect4 and connect6 hooks (4.17), socket-local storage
// (BPF_MAP_TYPE_SK_STORAGE, 5.2) used from the connect and sockops hooks,
// task_struct.start_boottime read through CO-RE (5.5), and cgroup bpf_link
// with pinning and atomic program update (5.7), which the agent uses to
// keep the redirect in place across restarts. 5.10 is the first long-term
// kernel that has all of them; the kernels of every tested distribution
// are newer (RHEL 9 and SLES 15 SP4: 5.14, Azure's Ubuntu 20.04 kernel:
// 5.15).
var MinKernel = KernelVersion{Major: 5, Minor: 10}

// Paths says where the checks read. The zero value reads the running
// system.
type Paths struct {
	// Root prefixes /proc, /sys, /boot and the os-release files; "" is /.
	Root string
	// OSRelease, when set, is the os-release file to read instead of
	// Root/etc/os-release (falling back to Root/usr/lib/os-release).
	OSRelease string
}

func (p Paths) path(abs string) string {
	if p.Root == "" {
		return abs
	}
	return filepath.Join(p.Root, abs)
}

// Problem identifiers, stable for logs and doctor findings.
const (
	IDKernel   = "kernel"
	IDCgroup2  = "cgroup2"
	IDBTF      = "btf"
	IDLockdown = "lockdown"
	IDConfig   = "kernel-config"
)

// Problem is one missing prerequisite: what is missing and how to fix it.
type Problem struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
	Fix     string `json:"fix"`
}

// String is "<summary>: <fix>", the text the extension status carries.
func (p Problem) String() string { return p.Summary + ": " + p.Fix }

// Report is the result of Check.
type Report struct {
	// OS is what os-release says (zero when it could not be read).
	OS OSRelease
	// OSError is why os-release could not be read, if it could not.
	OSError error
	// Kernel is the running kernel's release string (e.g. "6.1.0-18-amd64").
	Kernel string
	// Distribution names the tested distribution OS matched ("Debian 12+"),
	// or is "" for a distribution the project does not test.
	Distribution string
	// Problems are the missing prerequisites, in check order; empty means
	// the machine can run the agent as far as files tell.
	Problems []Problem
}

// OK reports whether no prerequisite is missing.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Message joins the problems' texts with "; " ("" when OK).
func (r Report) Message() string {
	s := make([]string, len(r.Problems))
	for i, p := range r.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "; ")
}

// Tested reports whether the distribution is one the project tests.
func (r Report) Tested() bool { return r.Distribution != "" }

// Check runs every check under p.
func Check(p Paths) Report {
	var r Report
	r.OS, r.OSError = p.ReadOSRelease()
	r.Distribution = Tested(r.OS)

	r.Kernel, r.Problems = checkKernel(p)
	if pr, ok := checkCgroup2(p); !ok {
		r.Problems = append(r.Problems, pr)
	}
	if _, err := os.Stat(p.path("/sys/kernel/btf/vmlinux")); err != nil {
		r.Problems = append(r.Problems, Problem{IDBTF,
			"kernel BTF is missing (no /sys/kernel/btf/vmlinux), which the eBPF programs need for CO-RE relocation",
			"use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every tested distribution's stock kernel is)"})
	}
	if data, err := os.ReadFile(p.path("/sys/kernel/security/lockdown")); err == nil && bytes.Contains(data, []byte("[confidentiality]")) {
		r.Problems = append(r.Problems, Problem{IDLockdown,
			"kernel lockdown is in confidentiality mode, which forbids the eBPF programs' reads of kernel memory",
			"boot with lockdown=integrity (or without lockdown=confidentiality)"})
	}
	if r.Kernel != "" {
		r.Problems = append(r.Problems, checkConfig(p, r.Kernel)...)
	}
	return r
}

// KernelVersion is a kernel's major and minor version.
type KernelVersion struct{ Major, Minor int }

// String is "major.minor".
func (v KernelVersion) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Less reports whether v is older than w.
func (v KernelVersion) Less(w KernelVersion) bool {
	return v.Major < w.Major || v.Major == w.Major && v.Minor < w.Minor
}

// ParseKernelRelease reads the version at the start of a kernel release
// string such as "5.15.0-1064-azure" or "6.6.47.1-1.azl3".
func ParseKernelRelease(s string) (KernelVersion, error) {
	s = strings.TrimSpace(s)
	end := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if end >= 0 {
		s = s[:end]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return KernelVersion{}, fmt.Errorf("kernel release %q has no major.minor", s)
	}
	maj, err1 := strconv.Atoi(parts[0])
	min, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return KernelVersion{}, fmt.Errorf("kernel release %q has no major.minor", s)
	}
	return KernelVersion{maj, min}, nil
}

func checkKernel(p Paths) (string, []Problem) {
	data, err := os.ReadFile(p.path("/proc/sys/kernel/osrelease"))
	if err != nil {
		return "", []Problem{{IDKernel, "the kernel version cannot be read (" + err.Error() + ")",
			"mount procfs on /proc"}}
	}
	rel := strings.TrimSpace(string(data))
	v, err := ParseKernelRelease(rel)
	if err != nil {
		return rel, []Problem{{IDKernel, err.Error(), "run a Linux kernel " + MinKernel.String() + " or newer"}}
	}
	if v.Less(MinKernel) {
		return rel, []Problem{{IDKernel,
			fmt.Sprintf("kernel %s is older than %s, the oldest kernel with every eBPF feature the redirect programs use", rel, MinKernel),
			"install and boot a kernel " + MinKernel.String() + " or newer (e.g. the distribution's Azure-tuned or HWE kernel)"}}
	}
	return rel, nil
}

// checkCgroup2 looks for a cgroup2 mount in /proc/mounts (unified or the
// "unified" directory of a hybrid hierarchy; the agent attaches to its
// root).
func checkCgroup2(p Paths) (Problem, bool) {
	_, err := mountinfo.FindIn(p.path("/proc/mounts"), "cgroup2")
	switch {
	case err == nil:
		return Problem{}, true
	case errors.Is(err, mountinfo.ErrNotMounted):
		return Problem{IDCgroup2, "cgroup v2 is not mounted",
			"boot with systemd.unified_cgroup_hierarchy=1 (or mount cgroup2 on /sys/fs/cgroup)"}, false
	}
	return Problem{IDCgroup2, "the mount table cannot be read (" + err.Error() + ")", "mount procfs on /proc"}, false
}

// kernelOptions are the config options the programs cannot do without.
var kernelOptions = []string{"CONFIG_BPF_SYSCALL", "CONFIG_CGROUP_BPF", "CONFIG_DEBUG_INFO_BTF"}

// checkConfig reads /boot/config-<release> when it exists (most
// distributions ship it; Flatcar does not) and reports options that are
// not built in.
func checkConfig(p Paths, release string) []Problem {
	data, err := os.ReadFile(p.path("/boot/config-" + release))
	if err != nil {
		return nil
	}
	var out []Problem
	for _, opt := range kernelOptions {
		if !bytes.Contains(data, []byte("\n"+opt+"=y")) && !bytes.HasPrefix(data, []byte(opt+"=y")) {
			out = append(out, Problem{IDConfig,
				fmt.Sprintf("the kernel is built without %s (/boot/config-%s)", opt, release),
				"use a kernel built with " + opt + "=y"})
		}
	}
	return out
}

// OSRelease is the part of os-release(5) the checks use.
type OSRelease struct {
	ID         string `json:"id"`
	IDLike     string `json:"idLike,omitempty"`
	Name       string `json:"name"`
	VersionID  string `json:"versionId"`
	PrettyName string `json:"prettyName,omitempty"`
}

// String is "<NAME>-<VERSION_ID>", as upstream's messages name an OS.
func (o OSRelease) String() string { return o.Name + "-" + o.VersionID }

// ReadOSRelease reads the machine's os-release: p.OSRelease when set,
// else Root/etc/os-release, falling back to Root/usr/lib/os-release when
// that does not exist (os-release(5)).
func (p Paths) ReadOSRelease() (OSRelease, error) {
	if p.OSRelease != "" {
		return ReadOSRelease(p.OSRelease)
	}
	o, err := ReadOSRelease(p.path("/etc/os-release"))
	if errors.Is(err, os.ErrNotExist) {
		return ReadOSRelease(p.path("/usr/lib/os-release"))
	}
	return o, err
}

// ReadOSRelease parses an os-release file.
func ReadOSRelease(path string) (OSRelease, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return OSRelease{}, err
	}
	var o OSRelease
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			o.ID = v
		case "ID_LIKE":
			o.IDLike = v
		case "NAME":
			o.Name = v
		case "VERSION_ID":
			o.VersionID = v
		case "PRETTY_NAME":
			o.PrettyName = v
		}
	}
	return o, nil
}

// tested are the distributions the project tests, by os-release ID, with
// the oldest tested VERSION_ID (major, minor).
var tested = []struct {
	ids          []string
	name         string
	major, minor int
}{
	{[]string{"ubuntu"}, "Ubuntu 20.04+", 20, 4},
	{[]string{"debian"}, "Debian 12+", 12, 0},
	{[]string{"azurelinux"}, "Azure Linux 2+", 2, 0},
	{[]string{"mariner"}, "CBL-Mariner 2+", 2, 0},
	{[]string{"rhel"}, "RHEL 9+", 9, 0},
	{[]string{"rocky"}, "Rocky Linux 9+", 9, 0},
	{[]string{"sles", "sles_sap"}, "SLES 15 SP4+", 15, 4},
	{[]string{"flatcar"}, "Flatcar", 0, 0},
}

// Tested returns the name of the tested distribution o is ("Debian 12+"),
// or "" when the project does not test o's distribution or release.
func Tested(o OSRelease) string {
	id := strings.ToLower(o.ID)
	for _, t := range tested {
		for _, want := range t.ids {
			if id != want {
				continue
			}
			if t.major == 0 {
				return t.name
			}
			maj, min, err := splitVersion(o.VersionID)
			if err == nil && (maj > t.major || maj == t.major && min >= t.minor) {
				return t.name
			}
		}
	}
	return ""
}

// TestedDistributions lists the tested distributions, for messages.
func TestedDistributions() []string {
	out := make([]string, len(tested))
	for i, t := range tested {
		out[i] = t.name
	}
	return out
}

// splitVersion parses "22.04", "9", "15.4" or "15-SP4".
func splitVersion(v string) (major, minor int, err error) {
	v = strings.ToUpper(strings.TrimSpace(v))
	v = strings.Replace(v, "-SP", ".", 1)
	parts := strings.SplitN(v, ".", 3)
	major, err = strconv.Atoi(parts[0])
	if err != nil {
		return 0, 0, fmt.Errorf("version %q: %w", v, err)
	}
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	return major, minor, nil
}
