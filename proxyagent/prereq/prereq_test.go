package prereq_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/prereq"
)

func osRelease(id, name, version string) string {
	return "NAME=\"" + name + "\"\nID=" + id + "\nVERSION_ID=\"" + version + "\"\n"
}

// with returns Debian12 changed by fn.
func with(fn func(*testenv.System)) testenv.System {
	s := testenv.Debian12
	fn(&s)
	return s
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		sys    testenv.System
		ids    []string // problem IDs, in order
		want   []string // substrings of Message
		tested string
	}{
		{name: "Debian 12", sys: testenv.Debian12, tested: "Debian 12+"},
		{name: "Flatcar", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("flatcar", "Flatcar Container Linux by Kinvolk", "3815.2.5")
			s.Kernel = "6.1.96-flatcar"
		}), tested: "Flatcar"},
		{name: "Ubuntu 20.04 on Azure's kernel", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("ubuntu", "Ubuntu", "20.04")
			s.Kernel = "5.15.0-1064-azure"
		}), tested: "Ubuntu 20.04+"},
		{name: "SLES 15 SP4", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("sles", "SLES", "15.4")
			s.Kernel = "5.14.21-150400.24.100-azure"
		}), tested: "SLES 15 SP4+"},
		{name: "Azure Linux 3", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("azurelinux", "Microsoft Azure Linux", "3.0")
			s.Kernel = "6.6.47.1-1.azl3"
		}), tested: "Azure Linux 2+"},
		{name: "hybrid cgroups with cgroup v2 at unified", sys: with(func(s *testenv.System) { s.Mounts = testenv.MountsHybrid }), tested: "Debian 12+"},
		{name: "unknown distribution with the capabilities", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("gentoo", "Gentoo", "2.15")
		})},
		{name: "old release of a tested distribution", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("debian", "Debian GNU/Linux", "11")
			s.Kernel = "5.10.0-30-cloud-amd64"
		})},
		{name: "old kernel", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("ubuntu", "Ubuntu", "20.04")
			s.Kernel = "5.4.0-182-generic"
		}), ids: []string{prereq.IDKernel}, want: []string{"kernel 5.4.0-182-generic is older than 5.10", "install and boot a kernel 5.10 or newer"}, tested: "Ubuntu 20.04+"},
		{name: "cgroup v1 only", sys: with(func(s *testenv.System) { s.Mounts = testenv.MountsV1Only }),
			ids: []string{prereq.IDCgroup2}, want: []string{"cgroup v2 is not mounted: boot with systemd.unified_cgroup_hierarchy=1"}, tested: "Debian 12+"},
		{name: "no BTF", sys: with(func(s *testenv.System) { s.BTF = false }),
			ids: []string{prereq.IDBTF}, want: []string{"kernel BTF is missing", "CONFIG_DEBUG_INFO_BTF=y"}, tested: "Debian 12+"},
		{name: "lockdown confidentiality", sys: with(func(s *testenv.System) { s.Lockdown = "none integrity [confidentiality]\n" }),
			ids: []string{prereq.IDLockdown}, want: []string{"lockdown is in confidentiality mode", "lockdown=integrity"}, tested: "Debian 12+"},
		{name: "kernel config without cgroup BPF", sys: with(func(s *testenv.System) {
			s.KernelConfig = "CONFIG_BPF_SYSCALL=y\n# CONFIG_CGROUP_BPF is not set\nCONFIG_DEBUG_INFO_BTF=y\n"
		}), ids: []string{prereq.IDConfig}, want: []string{"built without CONFIG_CGROUP_BPF"}, tested: "Debian 12+"},
		{name: "kernel config with everything", sys: with(func(s *testenv.System) {
			s.KernelConfig = "CONFIG_BPF_SYSCALL=y\nCONFIG_CGROUP_BPF=y\nCONFIG_DEBUG_INFO_BTF=y\n"
		}), tested: "Debian 12+"},
		{name: "old kernel, cgroup v1 and no BTF", sys: with(func(s *testenv.System) {
			s.OSRelease = osRelease("rhel", "Red Hat Enterprise Linux", "8.10")
			s.Kernel = "4.18.0-553.el8_10.x86_64"
			s.Mounts = testenv.MountsV1Only
			s.BTF = false
		}), ids: []string{prereq.IDKernel, prereq.IDCgroup2, prereq.IDBTF}, want: []string{"kernel 4.18.0-553.el8_10.x86_64 is older", "; cgroup v2 is not mounted", "; kernel BTF is missing"}},
		{name: "no procfs", sys: with(func(s *testenv.System) { s.Kernel, s.Mounts = "", "" }),
			ids: []string{prereq.IDKernel, prereq.IDCgroup2}, want: []string{"kernel version cannot be read", "mount table cannot be read"}, tested: "Debian 12+"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := testenv.NewSystemRoot(t, tc.sys)
			r := prereq.Check(prereq.Paths{Root: root})
			var ids []string
			for _, p := range r.Problems {
				ids = append(ids, p.ID)
				if p.Summary == "" || p.Fix == "" {
					t.Errorf("problem %+v lacks a summary or a fix", p)
				}
			}
			if strings.Join(ids, ",") != strings.Join(tc.ids, ",") {
				t.Errorf("problems %v, want %v: %s", ids, tc.ids, r.Message())
			}
			if r.OK() != (len(tc.ids) == 0) {
				t.Errorf("OK() = %v with problems %v", r.OK(), ids)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.Message(), w) {
					t.Errorf("message %q lacks %q", r.Message(), w)
				}
			}
			if r.Distribution != tc.tested {
				t.Errorf("distribution %q, want %q (os %+v)", r.Distribution, tc.tested, r.OS)
			}
			if strings.TrimSpace(tc.sys.Kernel) != r.Kernel {
				t.Errorf("kernel %q, want %q", r.Kernel, tc.sys.Kernel)
			}
		})
	}
}

func TestTested(t *testing.T) {
	tests := []struct {
		id, version, want string
	}{
		{"ubuntu", "18.04", ""},
		{"ubuntu", "20.04", "Ubuntu 20.04+"},
		{"ubuntu", "24.04", "Ubuntu 20.04+"},
		{"debian", "11", ""},
		{"debian", "12", "Debian 12+"},
		{"debian", "13", "Debian 12+"},
		{"mariner", "1.0", ""},
		{"mariner", "2.0", "CBL-Mariner 2+"},
		{"azurelinux", "3.0", "Azure Linux 2+"},
		{"rhel", "8.10", ""},
		{"rhel", "9.4", "RHEL 9+"},
		{"rocky", "9.3", "Rocky Linux 9+"},
		{"sles", "15-SP3", ""},
		{"sles", "15-SP4", "SLES 15 SP4+"},
		{"sles", "15.5", "SLES 15 SP4+"},
		{"sles_sap", "15.4", "SLES 15 SP4+"},
		{"flatcar", "3815.2.5", "Flatcar"},
		{"ubuntu", "", ""},
		{"", "", ""},
	}
	for _, tc := range tests {
		if got := prereq.Tested(prereq.OSRelease{ID: tc.id, VersionID: tc.version}); got != tc.want {
			t.Errorf("Tested(%s %s) = %q, want %q", tc.id, tc.version, got, tc.want)
		}
	}
}

// TestOSReleaseFallback: Flatcar keeps os-release in /usr/lib; an explicit
// path wins over both.
func TestOSReleaseFallback(t *testing.T) {
	root := testenv.NewSystemRoot(t, with(func(s *testenv.System) { s.OSRelease = "" }))
	os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/lib/os-release"), []byte(osRelease("flatcar", "Flatcar Container Linux by Kinvolk", "3815.2.5")), 0o644)
	if r := prereq.Check(prereq.Paths{Root: root}); r.OS.ID != "flatcar" || r.OSError != nil {
		t.Errorf("os %+v err %v", r.OS, r.OSError)
	}
	other := filepath.Join(t.TempDir(), "os-release")
	os.WriteFile(other, []byte(osRelease("ubuntu", "Ubuntu", "22.04")), 0o644)
	if r := prereq.Check(prereq.Paths{Root: root, OSRelease: other}); r.Distribution != "Ubuntu 20.04+" {
		t.Errorf("explicit os-release ignored: %+v", r.OS)
	}
	empty := t.TempDir()
	if r := prereq.Check(prereq.Paths{Root: empty}); r.OSError == nil || r.OK() {
		t.Errorf("empty root: os err %v, problems %v", r.OSError, r.Problems)
	}
}

func TestParseKernelRelease(t *testing.T) {
	for in, want := range map[string]prereq.KernelVersion{
		"6.1.0-18-amd64": {6, 1}, "5.15.0-1064-azure": {5, 15}, "6.6.47.1-1.azl3": {6, 6}, "5.10": {5, 10}, "6.18.44-fc-v1045": {6, 18},
	} {
		if got, err := prereq.ParseKernelRelease(in); err != nil || got != want {
			t.Errorf("ParseKernelRelease(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "linux", "6"} {
		if _, err := prereq.ParseKernelRelease(in); err == nil {
			t.Errorf("ParseKernelRelease(%q) accepted", in)
		}
	}
}

// TestThisMachine: the machine the tests run on (Debian 12, the
// project's development distribution) passes every check.
func TestThisMachine(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("no kernel BTF on this machine")
	}
	r := prereq.Check(prereq.Paths{})
	if !r.OK() {
		t.Errorf("this machine fails the prerequisites: %s", r.Message())
	}
}
