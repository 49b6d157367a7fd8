package handler

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/testenv"
)

// TestCheckPrerequisites runs the handler's pre-check against crafted
// roots: a missing prerequisite writes an error status naming it and its
// fix (also in ebpfProgramStatus); an unknown distribution with the
// capabilities goes on with a warning in the handler log.
func TestCheckPrerequisites(t *testing.T) {
	tests := []struct {
		name    string
		sys     testenv.System
		ok      bool
		want    string // in the status message and ebpfProgramStatus
		wantLog string
	}{
		{name: "Debian 12", sys: testenv.Debian12, ok: true, wantLog: `distribution="Debian 12+"`},
		{name: "Flatcar", sys: func() testenv.System {
			s := testenv.Debian12
			s.OSRelease = "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nVERSION_ID=3815.2.5\n"
			return s
		}(), ok: true, wantLog: `distribution=Flatcar`},
		{name: "unknown distribution", sys: func() testenv.System {
			s := testenv.Debian12
			s.OSRelease = "NAME=\"Gentoo\"\nID=gentoo\nVERSION_ID=2.15\n"
			return s
		}(), ok: true, wantLog: "level=WARN msg=\"distribution not tested"},
		{name: "cgroup v1 only", sys: func() testenv.System {
			s := testenv.Debian12
			s.Mounts = testenv.MountsV1Only
			return s
		}(), want: "cgroup v2 is not mounted: boot with systemd.unified_cgroup_hierarchy=1"},
		{name: "old kernel", sys: func() testenv.System {
			s := testenv.Debian12
			s.Kernel = "4.19.0-27-cloud-amd64"
			return s
		}(), want: "kernel 4.19.0-27-cloud-amd64 is older than 5.10"},
		{name: "no BTF", sys: func() testenv.System {
			s := testenv.Debian12
			s.BTF = false
			return s
		}(), want: "kernel BTF is missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := testenv.NewSystemRoot(t, tc.sys)
			statusDir := t.TempDir()
			var logBuf bytes.Buffer
			e := &Env{Version: "1.2.3", Seq: 4, Handler: extension.HandlerEnvironment{StatusFolder: statusDir},
				Log: slog.New(slog.NewTextHandler(&logBuf, nil))}
			var stderr bytes.Buffer
			getenv := func(k string) string {
				if k == EnvSystemRoot {
					return root
				}
				return ""
			}
			if got := checkPrerequisites(e, getenv, &stderr, true); got != tc.ok {
				t.Fatalf("checkPrerequisites = %v, want %v; stderr %s", got, tc.ok, stderr.String())
			}
			if tc.wantLog != "" && !strings.Contains(logBuf.String(), tc.wantLog) {
				t.Errorf("handler log lacks %q:\n%s", tc.wantLog, logBuf.String())
			}
			it, err := extension.ReadStatus(extension.StatusPath(statusDir, 4))
			if tc.ok {
				if err == nil {
					t.Errorf("status written on a capable machine: %+v", it.Status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := it.Status
			msg := msgOf(st)
			if st.Status != extension.StatusError || st.Code != ExitUnsupportedOS || st.Operation != OperationOSCheck || !strings.Contains(msg, tc.want) ||
				!strings.HasPrefix(msg, "OS version not supported: Linux:") {
				t.Errorf("status %s/%d/%s %q, want error naming %q", st.Status, st.Code, st.Operation, msg, tc.want)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.want)
			}
			if len(st.Substatus) != 3 {
				t.Fatalf("substatus %+v", st.Substatus)
			}
			_, agent, err := ParseAggregate([]byte(`{"timestamp":"x","proxyAgentStatus":` + st.Substatus[1].FormattedMessage.Message + `}`))
			if err != nil {
				t.Fatal(err)
			}
			eb := agent.Modules["ebpfProgramStatus"]
			if agent.Status != "ERROR" || agent.Version != "1.2.3" || eb.Status != "STOPPED" || !strings.Contains(eb.Message, tc.want) {
				t.Errorf("proxyAgentStatus %+v", agent)
			}
		})
	}
}

// TestPrerequisitePathsOSRelease: under $GPA_ROOT its etc/os-release is
// the one read, as the hermetic tests and the demo rely on.
func TestPrerequisitePathsOSRelease(t *testing.T) {
	root := testenv.NewSystemRoot(t, testenv.Debian12)
	p := PrerequisitePaths(Layout{Root: root}, func(string) string { return "/sysroot" })
	if p.OSRelease != filepath.Join(root, "etc/os-release") || p.Root != "/sysroot" {
		t.Errorf("paths %+v", p)
	}
	p = PrerequisitePaths(Layout{Root: t.TempDir()}, func(string) string { return "" })
	if p.OSRelease != "" || p.Root != "" {
		t.Errorf("paths without a relocated os-release %+v", p)
	}
}

// TestRefusesWithoutPrerequisites: only what sets up or runs the agent
// refuses on a machine that lacks a prerequisite; the rest stop or remove
// it and exit as they always do.
func TestRefusesWithoutPrerequisites(t *testing.T) {
	for _, tc := range []struct {
		mode, cmd string
		args      []string
		want      bool
	}{
		{"monitor", "", nil, true},
		{"command", "install", []string{"install"}, true},
		{"command", "enable", []string{"enable"}, true},
		{"command", "disable", []string{"disable"}, false},
		{"command", "uninstall", []string{"uninstall"}, false},
		{"command", "update", []string{"update"}, true},
		{"command", "reset", []string{"reset"}, false},
		{"setup", "", []string{"setup", "install"}, true},
		{"setup", "", []string{"setup", "uninstall"}, false},
		{"setup", "", []string{"setup", "restore"}, false},
	} {
		var c Command
		if tc.cmd != "" {
			var ok bool
			if c, ok = LookupCommand(tc.cmd); !ok {
				t.Fatalf("no command %q", tc.cmd)
			}
		}
		if got := refusesWithoutPrerequisites(tc.mode, c, tc.args); got != tc.want {
			t.Errorf("%s %v: refuses %v, want %v", tc.mode, tc.args, got, tc.want)
		}
	}
}

// TestLostPrerequisiteGoesOn: a command that does not refuse goes on where
// a prerequisite is missing, writes no status and says why in the log.
func TestLostPrerequisiteGoesOn(t *testing.T) {
	sys := testenv.Debian12
	sys.Mounts = testenv.MountsV1Only
	root := testenv.NewSystemRoot(t, sys)
	statusDir := t.TempDir()
	var logBuf, stderr bytes.Buffer
	e := &Env{Version: "1.2.3", Seq: 4, Handler: extension.HandlerEnvironment{StatusFolder: statusDir},
		Log: slog.New(slog.NewTextHandler(&logBuf, nil))}
	getenv := func(k string) string {
		if k == EnvSystemRoot {
			return root
		}
		return ""
	}
	if !checkPrerequisites(e, getenv, &stderr, false) {
		t.Fatal("a removing command was refused")
	}
	if _, err := extension.ReadStatus(extension.StatusPath(statusDir, 4)); err == nil {
		t.Error("status written by a command that goes on")
	}
	if !strings.Contains(logBuf.String(), "level=WARN") || !strings.Contains(logBuf.String(), "cgroup v2 is not mounted") {
		t.Errorf("handler log does not say why:\n%s", logBuf.String())
	}
}
