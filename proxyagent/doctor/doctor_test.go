package doctor_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/mountinfo"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/doctor"
	"github.com/opengpa/gpa/proxyagent/redirector"
	"github.com/opengpa/gpa/proxyagent/status"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

const keyGUID = "5d1a3e1c-0c1a-4b8e-9e21-7d0c3b1f2a44"

// listenLine is a /proc/net/tcp LISTEN line for addr (hex, host order) and port.
func listenLine(addrHex string, port int) string {
	return fmt.Sprintf("   0: %s:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n", addrHex, port)
}

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

// install is a crafted machine: system root (procfs, sysfs, os-release)
// and an installed agent whose files the test owns.
type install struct {
	sys, root, cfg, logs, keys, statusFile string
	cgroup                                 string
	cgroupID                               uint64
	opts                                   doctor.Options
}

func agentStatus(ts time.Time, overall status.OverallState, keyGuid, state string) status.Aggregate {
	run := status.ModuleStatus{Status: status.Running, Message: "ok"}
	key := status.ModuleStatus{Status: status.Running, Message: "latched", States: map[string]string{"secureChannelState": state}}
	if keyGuid != "" {
		key.States["keyGuid"] = keyGuid
	}
	ebpf := run
	if overall != status.Success {
		ebpf = status.ModuleStatus{Status: status.Stopped, Message: "cgroup v2 is not mounted: boot with systemd.unified_cgroup_hierarchy=1"}
	}
	return status.Aggregate{Timestamp: status.FormatTimestamp(ts), ProxyAgentStatus: status.AgentStatus{
		Version: "1.0.0", Status: overall, MonitorStatus: run, KeyLatchStatus: key, EbpfProgramStatus: ebpf, ProxyListenerStatus: run, TelemetryLoggerStatus: run}}
}

func newInstall(t *testing.T, sys testenv.System) *install {
	t.Helper()
	cg, err := mountinfo.Find("cgroup2")
	if err != nil {
		t.Skip("no cgroup v2 on this machine")
	}
	id, err := redirector.CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	if sys.Mounts == testenv.MountsUnified {
		sys.Mounts = strings.Replace(sys.Mounts, "/sys/fs/cgroup ", cg+" ", 1)
	}
	if sys.NetTCP == "" {
		sys.NetTCP = tcpHeader + listenLine("0100007F", 3080)
	}
	in := &install{sys: testenv.NewSystemRoot(t, sys), root: t.TempDir(), cgroup: cg, cgroupID: id}
	r := in.root
	in.logs = filepath.Join(r, "var/log/azure-proxy-agent")
	in.keys = filepath.Join(r, "var/lib/azure-proxy-agent/keys")
	in.cfg = filepath.Join(r, "etc/azure/proxy-agent.json")
	in.statusFile = filepath.Join(in.logs, "status.json")
	mk := func(p string, mode fs.FileMode, data string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	mk(filepath.Join(r, "usr/sbin/azure-proxy-agent"), 0o755, "#!/bin/sh\n")
	mk(filepath.Join(r, "usr/lib/systemd/system/azure-proxy-agent.service"), 0o644, "[Service]\n")
	cfg, _ := json.Marshal(map[string]any{
		"logFolder": in.logs, "latchKeyFolder": in.keys,
		"statusFolder": in.logs, "bpfPinPath": filepath.Join(r, "sys/fs/bpf/azure-proxy-agent"), "cgroupRoot": cg,
		"listenAddress": "127.0.0.1:3080", "monitorIntervalInSeconds": 60,
	})
	mk(in.cfg, 0o644, string(cfg))
	os.MkdirAll(filepath.Dir(in.keys), 0o755)
	os.MkdirAll(in.keys, 0o700)
	os.Chmod(in.keys, 0o700)
	mk(filepath.Join(in.keys, keyGUID+".key"), 0o600, "secret")
	os.MkdirAll(filepath.Join(r, "var/lib/azure-proxy-agent/rules"), 0o755)
	mk(filepath.Join(in.logs, "ProxyAgent.log"), 0o640, "")
	mk(filepath.Join(in.logs, "ProxyAgent.Audit.jsonl"), 0o640, "")
	in.writeStatus(t, agentStatus(now.Add(-30*time.Second), status.Success, keyGUID, "WireServer Enforce -  IMDS Enforce - HostGA Enforce"))
	pins := filepath.Join(r, "sys/fs/bpf/azure-proxy-agent")
	os.MkdirAll(pins, 0o700)
	in.opts = doctor.Options{SystemRoot: in.sys, InstallRoot: r, Owner: os.Getuid(), UID: os.Geteuid(),
		Now: func() time.Time { return now },
		Redirect: func(pinDir string) []doctor.Attachment {
			var out []doctor.Attachment
			for _, w := range [][2]string{{"link_sockops", "CGroupSockOps"}, {"link_connect6", "CGroupInet6Connect"}, {"link_connect4", "CGroupInet4Connect"}} {
				out = append(out, doctor.Attachment{Pin: filepath.Join(pinDir, w[0]), Want: w[1], Got: w[1], CgroupID: id})
			}
			return out
		}}
	return in
}

func (in *install) writeStatus(t *testing.T, a status.Aggregate) {
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(in.statusFile, b, 0o640)
}

func findings(r doctor.Report) map[string][]doctor.Finding {
	m := map[string][]doctor.Finding{}
	for _, f := range r.Findings {
		m[f.ID] = append(m[f.ID], f)
	}
	return m
}

// worst is the worst severity among the findings with id.
func worst(r doctor.Report, id string) doctor.Severity {
	rank := map[doctor.Severity]int{doctor.OK: 0, doctor.Info: 1, doctor.Unknown: 2, doctor.Warn: 3, doctor.Fail: 4}
	var w doctor.Severity
	for _, f := range findings(r)[id] {
		if w == "" || rank[f.Severity] > rank[w] {
			w = f.Severity
		}
	}
	return w
}

func TestDoctor(t *testing.T) {
	tests := []struct {
		name   string
		sys    func(*testenv.System)
		change func(t *testing.T, in *install)
		id     string // the finding that changes
		sev    doctor.Severity
		want   string // in its message or fix
	}{
		{name: "healthy installation", id: "status.agent", sev: doctor.OK, want: "SUCCESS"},
		{name: "cgroup v1 only", sys: func(s *testenv.System) { s.Mounts = testenv.MountsV1Only },
			id: "prereq.cgroup2", sev: doctor.Fail, want: "systemd.unified_cgroup_hierarchy=1"},
		{name: "old kernel", sys: func(s *testenv.System) { s.Kernel = "5.4.0-182-generic" },
			id: "prereq.kernel", sev: doctor.Fail, want: "older than 5.10"},
		{name: "no BTF", sys: func(s *testenv.System) { s.BTF = false }, id: "prereq.btf", sev: doctor.Fail, want: "CONFIG_DEBUG_INFO_BTF"},
		{name: "unknown distribution", sys: func(s *testenv.System) { s.OSRelease = "NAME=Gentoo\nID=gentoo\nVERSION_ID=2.15\n" },
			id: "prereq.distribution", sev: doctor.Warn, want: "not a tested distribution"},
		{name: "key file readable by others", change: func(t *testing.T, in *install) {
			os.Chmod(filepath.Join(in.keys, keyGUID+".key"), 0o644)
		}, id: "file.key", sev: doctor.Fail, want: "other r"},
		{name: "key folder open", change: func(t *testing.T, in *install) { os.Chmod(in.keys, 0o755) },
			id: "file.keys", sev: doctor.Fail, want: "mode 0755"},
		{name: "binary group-writable", change: func(t *testing.T, in *install) {
			os.Chmod(filepath.Join(in.root, "usr/sbin/azure-proxy-agent"), 0o775)
		}, id: "file.binary", sev: doctor.Fail, want: "group w"},
		{name: "unit missing", change: func(t *testing.T, in *install) {
			os.Remove(filepath.Join(in.root, "usr/lib/systemd/system/azure-proxy-agent.service"))
		}, id: "file.unit", sev: doctor.Fail, want: "does not exist"},
		{name: "rules file world-writable", change: func(t *testing.T, in *install) {
			p := filepath.Join(in.root, "var/lib/azure-proxy-agent/rules/local.json")
			os.WriteFile(p, []byte("{}"), 0o666)
			os.Chmod(p, 0o666)
		}, id: "file.rules", sev: doctor.Fail, want: "other w"},
		{name: "audit log world-readable", change: func(t *testing.T, in *install) {
			os.Chmod(filepath.Join(in.logs, "ProxyAgent.Audit.jsonl"), 0o644)
		}, id: "file.log", sev: doctor.Fail, want: "command lines"},
		{name: "listener on every address", sys: func(s *testenv.System) {
			s.NetTCP = tcpHeader + listenLine("00000000", 3080)
		}, id: "listener.loopback", sev: doctor.Fail, want: "0.0.0.0:3080"},
		{name: "listener also on IPv6 any", sys: func(s *testenv.System) {
			s.NetTCP6 = tcpHeader + listenLine("00000000000000000000000000000000", 3080)
		}, id: "listener.loopback", sev: doctor.Fail, want: "[::]:3080"},
		{name: "other ports on every address do not matter", sys: func(s *testenv.System) {
			s.NetTCP = tcpHeader + listenLine("0100007F", 3080) + listenLine("00000000", 22)
		}, id: "listener.loopback", sev: doctor.OK, want: "127.0.0.1:3080 only"},
		{name: "nothing listening", sys: func(s *testenv.System) { s.NetTCP = tcpHeader },
			id: "listener.loopback", sev: doctor.Fail, want: "systemctl start azure-proxy-agent"},
		{name: "status stale", change: func(t *testing.T, in *install) {
			in.writeStatus(t, agentStatus(now.Add(-10*time.Minute), status.Success, keyGUID, "x"))
		}, id: "status.fresh", sev: doctor.Fail, want: "10m0s ago"},
		{name: "status missing", change: func(t *testing.T, in *install) { os.Remove(in.statusFile) },
			id: "status.fresh", sev: doctor.Fail, want: "has not run"},
		{name: "agent reports ERROR", change: func(t *testing.T, in *install) {
			in.writeStatus(t, agentStatus(now, status.Error, keyGUID, "x"))
		}, id: "status.agent", sev: doctor.Fail, want: "ebpfProgramStatus STOPPED: cgroup v2 is not mounted"},
		{name: "no key latched", change: func(t *testing.T, in *install) {
			in.writeStatus(t, agentStatus(now, status.Success, "", "Unknown"))
		}, id: "key.latched", sev: doctor.Fail, want: "no key latched"},
		{name: "key file gone", change: func(t *testing.T, in *install) { os.Remove(filepath.Join(in.keys, keyGUID+".key")) },
			id: "key.latched", sev: doctor.Fail, want: "is missing"},
		{name: "secure channel disabled", change: func(t *testing.T, in *install) {
			in.writeStatus(t, agentStatus(now, status.Success, "", "disabled"))
		}, id: "key.latched", sev: doctor.Info, want: "disabled"},
		{name: "log folder missing", change: func(t *testing.T, in *install) { os.RemoveAll(in.logs) },
			id: "logs.writable", sev: doctor.Fail, want: "does not exist"},
		{name: "config invalid", change: func(t *testing.T, in *install) { os.WriteFile(in.cfg, []byte(`{"listenAddress": 5}`), 0o644) },
			id: "config", sev: doctor.Fail, want: "listenAddress"},
		{name: "redirect not pinned", change: func(t *testing.T, in *install) {
			in.opts.Redirect = func(pinDir string) []doctor.Attachment {
				return []doctor.Attachment{{Pin: filepath.Join(pinDir, "link_sockops"), Err: fs.ErrNotExist}}
			}
		}, id: "redirect.pinned", sev: doctor.Fail, want: "missing link_sockops"},
		{name: "redirect on another cgroup", change: func(t *testing.T, in *install) {
			in.opts.Redirect = func(pinDir string) []doctor.Attachment {
				return []doctor.Attachment{{Pin: filepath.Join(pinDir, "link_connect4"), Want: "CGroupInet4Connect", Got: "CGroupInet4Connect", CgroupID: in.cgroupID + 1}}
			}
		}, id: "redirect.attached", sev: doctor.Fail, want: fmt.Sprintf("link_connect4 is CGroupInet4Connect on cgroup %d", 0)},
		{name: "pinned links need CAP_BPF", change: func(t *testing.T, in *install) {
			in.opts.Redirect = func(pinDir string) []doctor.Attachment {
				return []doctor.Attachment{{Pin: filepath.Join(pinDir, "link_connect4"), Err: fs.ErrPermission}}
			}
		}, id: "redirect.pinned", sev: doctor.Unknown, want: "CAP_BPF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys := testenv.Debian12
			if tc.sys != nil {
				tc.sys(&sys)
			}
			in := newInstall(t, sys)
			if tc.change != nil {
				tc.change(t, in)
			}
			if tc.name == "redirect on another cgroup" {
				tc.want = fmt.Sprintf("link_connect4 is CGroupInet4Connect on cgroup %d", in.cgroupID+1)
			}
			r := doctor.Run(in.opts, "1.0.0")
			var text bytes.Buffer
			doctor.PrintText(&text, r)
			got := findings(r)[tc.id]
			if len(got) == 0 {
				t.Fatalf("no finding %s:\n%s", tc.id, text.String())
			}
			if w := worst(r, tc.id); w != tc.sev {
				t.Errorf("%s is %s, want %s:\n%s", tc.id, w, tc.sev, text.String())
			}
			matched := false
			for _, f := range got {
				if strings.Contains(f.Message+" "+f.Fix, tc.want) {
					matched = true
				}
				if (f.Severity == doctor.Fail || f.Severity == doctor.Warn || f.Severity == doctor.Unknown) && f.Fix == "" {
					t.Errorf("finding without a fix: %+v", f)
				}
			}
			if !matched {
				t.Errorf("%s lacks %q:\n%s", tc.id, tc.want, text.String())
			}
			// Only the changed check may differ from the healthy install.
			for _, f := range r.Findings {
				if f.ID == tc.id || f.Severity == doctor.OK || f.Severity == doctor.Info {
					continue
				}
				if tc.id == "redirect.pinned" && f.ID == "redirect.attached" || tc.id == "status.fresh" && f.ID == "key.latched" ||
					tc.id == "logs.writable" && strings.HasPrefix(f.ID, "logs.") || tc.id == "logs.writable" && (f.ID == "file.logs" || f.ID == "status.fresh" || f.ID == "key.latched") {
					continue // follows from the change
				}
				t.Errorf("unexpected %s finding %s: %s", f.Severity, f.ID, f.Message)
			}
			if r.Failed() != (tc.sev == doctor.Fail) {
				t.Errorf("Failed() = %v with %s %s", r.Failed(), tc.id, tc.sev)
			}
			if r.Counts[tc.sev] == 0 {
				t.Errorf("counts %v", r.Counts)
			}
		})
	}
}

// TestDoctorMissingPathFixes: a path that does not exist gets a fix that
// makes it, not one that changes the owner or mode of what is not there.
func TestDoctorMissingPathFixes(t *testing.T) {
	in := newInstall(t, testenv.Debian12)
	os.Remove(in.cfg)
	os.RemoveAll(in.keys)
	os.RemoveAll(in.logs)
	r := doctor.Run(in.opts, "1.0.0")
	var text bytes.Buffer
	doctor.PrintText(&text, r)
	for id, want := range map[string]string{
		"file.config": "reinstall the agent",
		"file.keys":   "it creates the key folder",
		"file.logs":   "it creates the log folder",
	} {
		got := findings(r)[id]
		if len(got) == 0 {
			t.Fatalf("no finding %s:\n%s", id, text.String())
		}
		for _, f := range got {
			if f.Severity != doctor.Fail || !strings.Contains(f.Message, "does not exist") || !strings.Contains(f.Fix, want) ||
				strings.Contains(f.Fix, "chmod") {
				t.Errorf("%s: %s %q fix %q, want a fix with %q", id, f.Severity, f.Message, f.Fix, want)
			}
		}
	}
}

// TestDoctorReadOnlyUsr: where /usr is read-only (Flatcar) doctor checks
// the binary and unit where the extension installs them there.
func TestDoctorReadOnlyUsr(t *testing.T) {
	in := newInstall(t, testenv.Debian12)
	for _, p := range [][2]string{
		{"usr/sbin/azure-proxy-agent", "opt/bin/azure-proxy-agent"},
		{"usr/lib/systemd/system/azure-proxy-agent.service", "etc/systemd/system/azure-proxy-agent.service"},
	} {
		to := filepath.Join(in.root, p[1])
		os.MkdirAll(filepath.Dir(to), 0o755)
		if err := os.Rename(filepath.Join(in.root, p[0]), to); err != nil {
			t.Fatal(err)
		}
	}
	usr := filepath.Join(in.root, "usr")
	os.RemoveAll(usr)
	os.Mkdir(usr, 0o755)
	if err := syscall.Mount("tmpfs", usr, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
		testenv.SkipOrFail(t, "mount a read-only tmpfs as /usr: %v", err)
		return
	}
	t.Cleanup(func() { syscall.Unmount(usr, syscall.MNT_DETACH) })
	r := doctor.Run(in.opts, "1.0.0")
	for id, want := range map[string]string{"file.binary": "opt/bin/azure-proxy-agent", "file.unit": "etc/systemd/system/"} {
		got := findings(r)[id]
		if len(got) != 1 || got[0].Severity != doctor.OK || !strings.Contains(got[0].Message, want) {
			t.Errorf("%s: %+v, want OK naming %s", id, got, want)
		}
	}
}

// TestPrintJSON: the JSON form carries every finding with id, severity
// and fix.
func TestPrintJSON(t *testing.T) {
	in := newInstall(t, testenv.Debian12)
	os.Chmod(in.keys, 0o755)
	r := doctor.Run(in.opts, "1.0.0")
	var buf bytes.Buffer
	if err := doctor.PrintJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Version  string           `json:"version"`
		Findings []doctor.Finding `json:"findings"`
		Counts   map[string]int   `json:"counts"`
	}
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Version != "1.0.0" || len(back.Findings) != len(r.Findings) || back.Counts["fail"] != 1 {
		t.Fatalf("round trip %+v", back)
	}
	for _, f := range back.Findings {
		if f.ID == "file.keys" && (f.Severity != doctor.Fail || f.Fix == "") {
			t.Errorf("file.keys %+v", f)
		}
	}
}
