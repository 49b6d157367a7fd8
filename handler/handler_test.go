package handler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func TestLayout(t *testing.T) {
	tests := []struct {
		root, in, want string
	}{
		{"", "/usr/sbin/azure-proxy-agent", "/usr/sbin/azure-proxy-agent"},
		{"/r", "/usr/sbin/azure-proxy-agent", "/r/usr/sbin/azure-proxy-agent"},
		{"/r", "/var/log/azure-proxy-agent", "/r/var/log/azure-proxy-agent"},
		{"/r", "/var/log/azure-proxy-agent/events", "/r/var/log/azure-proxy-agent/events"},
		{"/r", "/var/lib/azure-proxy-agent/keys", "/r/var/lib/azure-proxy-agent/keys"},
		{"/r", "/var/log/azure-proxy-agentX", "/var/log/azure-proxy-agentX"},
		{"/r", "/sys/fs/cgroup", "/sys/fs/cgroup"},
		{"/r", "127.0.0.1:3080", "127.0.0.1:3080"},
	}
	for _, tc := range tests {
		if got := (Layout{Root: tc.root}).Relocate(tc.in); got != tc.want {
			t.Errorf("Relocate(%q) under %q = %q, want %q", tc.in, tc.root, got, tc.want)
		}
	}
	l := Layout{Root: "/r"}
	for _, p := range []string{l.AgentBinary(), l.AgentConfig(), l.StateDir(), l.LogDir(), l.LibDir(), l.UnitDir(), l.WaagentDir(), l.ManPage()} {
		if !strings.HasPrefix(p, "/r/") {
			t.Errorf("%s not under root", p)
		}
	}
}

// TestReadOnlyUsrLayout: the production layout on a read-only /usr
// (Flatcar, no $GPA_ROOT): binary in /opt/bin, unit in
// /etc/systemd/system, whose ExecStart names the binary there and the
// config, and the config's eBPF object under /opt.
func TestReadOnlyUsrLayout(t *testing.T) {
	l := Layout{UsrReadOnly: true}
	for got, want := range map[string]string{
		l.AgentBinary(): "/opt/bin/azure-proxy-agent",
		l.UnitFile():    "/etc/systemd/system/azure-proxy-agent.service",
		l.EBPFObject():  "/opt/azure-proxy-agent/ebpf_cgroup.o",
		l.AgentConfig(): "/etc/azure/proxy-agent.json",
		l.LogDir():      "/var/log/azure-proxy-agent",
	} {
		if got != want {
			t.Errorf("path %q, want %q", got, want)
		}
	}
	tmpl, err := os.ReadFile("../packaging/azure-proxy-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	if u := string(RenderUnit(tmpl, l)); !strings.Contains(u, "\nExecStart=/opt/bin/azure-proxy-agent --config /etc/azure/proxy-agent.json\n") {
		t.Errorf("unit:\n%s", u)
	}
	bundled, err := os.ReadFile("../packaging/proxy-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := RenderConfig(bundled, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), `"ebpfFileFullPath": "/opt/azure-proxy-agent/ebpf_cgroup.o"`) ||
		!strings.Contains(string(cfg), `"/var/log/azure-proxy-agent"`) {
		t.Errorf("config:\n%s", cfg)
	}
}

func TestRenderConfig(t *testing.T) {
	bundled, err := os.ReadFile("../packaging/proxy-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		root    string
		overlay string
		check   map[string]any
		wantErr bool
	}{
		{"production unchanged", "", "", map[string]any{"logFolder": "/var/log/azure-proxy-agent", "cgroupRoot": "/sys/fs/cgroup", "statusFolder": "/var/log/azure-proxy-agent"}, false},
		{"relocated", "/r", "", map[string]any{"logFolder": "/r/var/log/azure-proxy-agent", "latchKeyFolder": "/r/var/lib/azure-proxy-agent/keys",
			"ebpfFileFullPath": "/r/usr/lib/azure-proxy-agent/ebpf_cgroup.o", "cgroupRoot": "/sys/fs/cgroup", "wireServerAddress": "168.63.129.16:80"}, false},
		{"overlay wins", "/r", `{"cgroupRoot":"/r/cg","pollKeyStatusIntervalInSeconds":1,"wireServerAddress":"127.0.0.1:1","extra":{"a":1}}`,
			map[string]any{"cgroupRoot": "/r/cg", "pollKeyStatusIntervalInSeconds": 1.0, "wireServerAddress": "127.0.0.1:1", "logFolder": "/r/var/log/azure-proxy-agent"}, false},
		{"bad overlay", "", `[1]`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := RenderConfig(bundled, Layout{Root: tc.root}, []byte(tc.overlay))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			var got map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.check {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
	if _, err := RenderConfig([]byte("nope"), Layout{}, nil); err == nil {
		t.Error("bad bundled config accepted")
	}
}

func TestUnit(t *testing.T) {
	tmpl, err := os.ReadFile("../packaging/azure-proxy-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	l := Layout{Root: root}
	unit := RenderUnit(tmpl, l)
	u, err := ParseUnitExec(unit)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{l.AgentBinary(), "--config", l.AgentConfig()}
	if strings.Join(u.Argv, " ") != strings.Join(want, " ") {
		t.Errorf("ExecStart = %v, want %v", u.Argv, want)
	}
	if u.RestartSec != 5*time.Second {
		t.Errorf("RestartSec = %v", u.RestartSec)
	}
	// In production, upstream's line exactly (the agent reads
	// /etc/azure/proxy-agent.json by default).
	prod := RenderUnit(tmpl, Layout{})
	if pu, _ := ParseUnitExec(prod); len(pu.Argv) != 1 || pu.Argv[0] != "/usr/sbin/azure-proxy-agent" ||
		!strings.Contains(string(prod), "\nExecStart=/usr/sbin/azure-proxy-agent\n") {
		t.Errorf("production ExecStart = %v", pu.Argv)
	}
	for _, line := range []string{"Restart=always", "ProtectSystem=strict", "NoNewPrivileges=yes", "IPAddressDeny=any",
		"IPAddressAllow=127.0.0.1 168.63.129.16 169.254.169.254", "DefaultDependencies=no", "Before=network-pre.target",
		"Wants=network-pre.target", "SystemCallErrorNumber=EPERM",
		"Conflicts=shutdown.target", "WantedBy=multi-user.target", "LogsDirectory=azure-proxy-agent", "StateDirectory=azure-proxy-agent"} {
		if !strings.Contains(string(unit), line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
	// systemd's IP filter admits the agent's peers: local clients, the
	// host, and containers reaching the container listener from their own
	// addresses (Docker 172.17/16, Kubernetes pods 10.244/16, Podman
	// 10.88/16, CGNAT-range CNIs, IPv6 ULA); nothing public.
	var allow []netip.Prefix
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "IPAddressAllow="); ok {
			for _, f := range strings.Fields(v) {
				p, err := netip.ParsePrefix(f)
				if err != nil {
					a, aerr := netip.ParseAddr(f)
					if aerr != nil {
						t.Fatalf("IPAddressAllow entry %q: %v", f, err)
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				allow = append(allow, p)
			}
		}
	}
	admitted := func(s string) bool {
		a := netip.MustParseAddr(s)
		return slices.ContainsFunc(allow, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	for _, peer := range []string{"127.0.0.1", "127.0.0.2", "::1", "168.63.129.16", "169.254.169.254", "172.17.0.2", "10.244.1.7",
		"10.88.0.5", "192.168.49.2", "100.64.3.4", "fd00::5"} {
		if !admitted(peer) {
			t.Errorf("unit's IP filter drops %s", peer)
		}
	}
	for _, public := range []string{"8.8.8.8", "20.42.0.1", "2001:db8::1", "169.254.1.1"} {
		if admitted(public) {
			t.Errorf("unit's IP filter admits %s", public)
		}
	}
	if _, err := ParseUnitExec([]byte("[Service]\n")); err == nil {
		t.Error("unit without ExecStart accepted")
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.SkipOrFail(t, "systemd-analyze not installed (scripts/deps.sh installs systemd)")
		return
	}
	os.MkdirAll(filepath.Dir(l.AgentBinary()), 0o755)
	os.MkdirAll(filepath.Dir(l.AgentConfig()), 0o755)
	os.WriteFile(l.AgentBinary(), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(l.AgentConfig(), []byte("{}"), 0o644)
	p := filepath.Join(root, UnitName)
	os.WriteFile(p, unit, 0o644)
	out, err := exec.Command(sa, "verify", p).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestStatusState drives the state machine at a given time between
// observations: upstream's 15 s cadence, and the monitor's 1 s fast
// polling, which must reach error no sooner than 20 failures at 15 s do.
func TestStatusState(t *testing.T) {
	type step struct {
		ok         bool
		wantStatus string
		wantCode   int
	}
	S, F := true, false
	const interval = 15 * time.Second
	tests := []struct {
		name     string
		interval time.Duration // the state's normal cadence
		gap      time.Duration // time between observations
		pre      []bool
		steps    []step
	}{
		{"one success", interval, interval, nil, []step{{S, "success", 0}}},
		{"success then failure", interval, interval, []bool{S}, []step{{F, "transitioning", 0}}},
		{"19 failures stay transitioning", interval, interval, nil, func() []step {
			var s []step
			for i := 0; i < 19; i++ {
				s = append(s, step{F, "transitioning", 0})
			}
			return s
		}()},
		{"20th failure is error", interval, interval, repeat(F, 19), []step{{F, "error", 4}, {F, "error", 4}}},
		{"error recovers in two", interval, interval, repeat(F, 20), []step{{S, "transitioning", 0}, {S, "success", 0}}},
		{"error, success, failure", interval, interval, repeat(F, 20), []step{{S, "transitioning", 0}, {F, "transitioning", 0}}},
		{"a success ends the streak", interval, interval, append(append(repeat(F, 19), S), repeat(F, 18)...),
			[]step{{F, "transitioning", 0}, {F, "error", 4}}},
		{"1 s polling: 20 failures stay transitioning", interval, time.Second, repeat(F, 19), []step{{F, "transitioning", 0}}},
		{"1 s polling: 284 s of failures stay transitioning", interval, time.Second, repeat(F, 284), []step{{F, "transitioning", 0}}},
		{"1 s polling: 285 s of failures is error", interval, time.Second, repeat(F, 285), []step{{F, "error", 4}, {F, "error", 4}}},
		{"1 s polling: a success restarts the clock", interval, time.Second, append(append(repeat(F, 200), S), repeat(F, 100)...),
			[]step{{F, "transitioning", 0}}},
		{"slow polling: still 20 failures", interval, 10 * time.Minute, repeat(F, 18), []step{{F, "transitioning", 0}, {F, "error", 4}}},
		{"no interval: failures only", 0, 0, repeat(F, 19), []step{{F, "error", 4}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStatusState(20, tc.interval)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, ok := range tc.pre {
				apply(s, now, ok, fmt.Sprint("pre", i))
				now = now.Add(tc.gap)
			}
			for i, st := range tc.steps {
				msg := fmt.Sprint("event", i)
				apply(s, now, st.ok, msg)
				now = now.Add(tc.gap)
				status, code, m := s.Status()
				if status != st.wantStatus || code != st.wantCode || m != msg {
					t.Fatalf("step %d: got %s/%d/%q, want %s/%d/%q", i, status, code, m, st.wantStatus, st.wantCode, msg)
				}
			}
		})
	}
	s := NewStatusState(20, interval)
	now := time.Now()
	for i := 0; i < 20000; i++ {
		s.Failure(now.Add(time.Duration(i)*time.Second), "x")
	}
	if s.Failures() != maxFailureCount {
		t.Errorf("failures = %d, want saturation at %d", s.Failures(), maxFailureCount)
	}
	if st, code, _ := s.Status(); st != "error" || code != 4 {
		t.Errorf("after 20000 failures: %s/%d", st, code)
	}
	huge := NewStatusState(math.MaxInt, time.Hour)
	for i := 0; i < 3; i++ {
		huge.Failure(now.Add(time.Duration(i)*time.Hour), "x")
	}
	if st, _, _ := huge.Status(); st != "transitioning" {
		t.Errorf("a huge threshold overflowed: %s", st)
	}
}

func repeat(b bool, n int) []bool {
	out := make([]bool, n)
	for i := range out {
		out[i] = b
	}
	return out
}

func apply(s *StatusState, now time.Time, ok bool, msg string) {
	if ok {
		s.Success(msg)
	} else {
		s.Failure(now, msg)
	}
}

// aggregateDoc builds an aggregate status document.
func aggregateDoc(ts, version, overall string, conn, failed int, cmdLen int) []byte {
	mk := func(n int) []ConnectionSummary {
		var l []ConnectionSummary
		for i := 0; i < n; i++ {
			l = append(l, ConnectionSummary{UserName: "root", IP: "168.63.129.16", Port: 80, ProcessCmdLine: strings.Repeat("c", cmdLen),
				ResponseStatus: "200 OK", Count: uint64(i + 1)})
		}
		return l
	}
	mod := "RUNNING"
	if overall != "SUCCESS" {
		mod = "STOPPED"
	}
	doc := map[string]any{
		"timestamp": ts,
		"proxyAgentStatus": map[string]any{
			"version": version, "status": overall,
			"monitorStatus":         map[string]any{"status": "RUNNING", "message": "m"},
			"keyLatchStatus":        map[string]any{"status": "RUNNING", "message": "k", "states": map[string]any{"secureChannelState": "WireServer Enforce -  IMDS Enforce - HostGA Enforce"}},
			"ebpfProgramStatus":     map[string]any{"status": mod, "message": "ebpf msg"},
			"proxyListenerStatus":   map[string]any{"status": "RUNNING", "message": "l"},
			"telemetryLoggerStatus": map[string]any{"status": "UNKNOWN", "message": "t"},
			"proxyConnectionsCount": 1,
		},
		"proxyConnectionSummary":    mk(conn),
		"failedAuthenticateSummary": mk(failed),
	}
	b, _ := json.Marshal(doc)
	return b
}

func TestEvaluate(t *testing.T) {
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	fresh := "2025-04-23T11:59:30.123"
	tests := []struct {
		name        string
		data        []byte
		fetchErr    error
		wantHealthy bool
		wantMsg     string // substring of the top message
		wantSub     [3]string
		wantCode    [3]int
	}{
		{"healthy", aggregateDoc(fresh, "1.0.0", "SUCCESS", 3, 0, 10), nil, true, SuccessMessage,
			[3]string{"success", "success", "success"}, [3]int{0, 0, 0}},
		{"Z timestamp", aggregateDoc("2025-04-23T11:59:30Z", "1.0.0", "SUCCESS", 0, 0, 10), nil, true, SuccessMessage,
			[3]string{"success", "success", "success"}, [3]int{0, 0, 0}},
		{"agent ERROR is never success", aggregateDoc(fresh, "1.0.0", "ERROR", 1, 1, 10), nil, false, "ebpfProgramStatus STOPPED: ebpf msg",
			[3]string{"success", "error", "success"}, [3]int{0, 4, 0}},
		{"agent UNKNOWN", aggregateDoc(fresh, "1.0.0", "UNKNOWN", 1, 1, 10), nil, false, "UNKNOWN",
			[3]string{"success", "transitioning", "success"}, [3]int{0, 4, 0}},
		{"stale", aggregateDoc("2025-04-23T11:54:59.000", "1.0.0", "SUCCESS", 1, 1, 10), nil, false, "stale",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"future", aggregateDoc("2025-04-23T12:06:00.000", "1.0.0", "SUCCESS", 1, 1, 10), nil, false, "stale",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"bad timestamp", aggregateDoc("yesterday", "1.0.0", "SUCCESS", 1, 1, 10), nil, false, "Error in parsing timestamp",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"version mismatch", aggregateDoc(fresh, "0.9.0", "SUCCESS", 1, 1, 10), nil, false, "version 0.9.0 does not match proxy agent file version in extension 1.0.0",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"fetch error", nil, errors.New("aggregate status unavailable: boom"), false, "boom",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"garbage", []byte("{"), nil, false, "not valid JSON",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
		{"no proxyAgentStatus", []byte(`{"timestamp":"` + fresh + `"}`), nil, false, "no proxyAgentStatus",
			[3]string{"transitioning", "transitioning", "transitioning"}, [3]int{4, 4, 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := Evaluate(tc.data, tc.fetchErr, "1.0.0", now, 5*time.Minute)
			if ev.Healthy != tc.wantHealthy {
				t.Errorf("healthy = %v", ev.Healthy)
			}
			if !strings.Contains(ev.Message, tc.wantMsg) {
				t.Errorf("message %q lacks %q", ev.Message, tc.wantMsg)
			}
			if len(ev.Substatus) != 3 {
				t.Fatalf("%d substatuses", len(ev.Substatus))
			}
			names := [3]string{SubConnectionSummary, SubAgentStatus, SubFailedAuthSummary}
			for i, s := range ev.Substatus {
				if s.Name != names[i] || s.Status != tc.wantSub[i] || s.Code != tc.wantCode[i] {
					t.Errorf("substatus[%d] = %s/%s/%d, want %s/%s/%d", i, s.Name, s.Status, s.Code, names[i], tc.wantSub[i], tc.wantCode[i])
				}
				if s.FormattedMessage == nil || s.FormattedMessage.Message == "" {
					t.Errorf("substatus[%d] without message", i)
				}
			}
			if tc.wantSub[0] == "success" {
				// Full shape: [1] carries the agent's own proxyAgentStatus JSON.
				var ps map[string]any
				if err := json.Unmarshal([]byte(ev.Substatus[1].FormattedMessage.Message), &ps); err != nil {
					t.Fatalf("[1] message is not JSON: %v", err)
				}
				kl, _ := ps["keyLatchStatus"].(map[string]any)
				states, _ := kl["states"].(map[string]any)
				if _, ok := states["secureChannelState"]; !ok {
					t.Error("keyLatchStatus.states.secureChannelState missing from [1]")
				}
				if _, ok := ps["ebpfProgramStatus"]; !ok {
					t.Error("ebpfProgramStatus missing from [1]")
				}
				if ps["version"] != "1.0.0" {
					t.Errorf("[1] version = %v", ps["version"])
				}
			}
		})
	}
}

func TestSummariesTopNAndTrim(t *testing.T) {
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name              string
		conn, failed, cmd int
		wantConnEntries   int // -1: dropped note
		wantFailedEntries int // -1: truncated
	}{
		{"empty", 0, 0, 5, 0, 0},
		{"top 100 and 50", 150, 80, 5, 100, 50},
		{"over the limit drops connection summary", 100, 50, 1000, -1, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := Evaluate(aggregateDoc("2025-04-23T11:59:59.000", "1.0.0", "SUCCESS", tc.conn, tc.failed, tc.cmd), nil, "1.0.0", now, 5*time.Minute)
			c, f := ev.Substatus[0].FormattedMessage.Message, ev.Substatus[2].FormattedMessage.Message
			if n := len(c) + len(f); n > MaxSummaryBytes {
				t.Errorf("summaries %d bytes > %d", n, MaxSummaryBytes)
			}
			check := func(msg, empty string, want int) {
				switch want {
				case 0:
					if msg != empty {
						t.Errorf("got %q, want %q", msg, empty)
					}
				case -1:
				default:
					var l []ConnectionSummary
					if err := json.Unmarshal([]byte(msg), &l); err != nil {
						t.Fatalf("not JSON: %v", err)
					}
					if len(l) != want {
						t.Errorf("%d entries, want %d", len(l), want)
					}
					for i := 1; i < len(l); i++ {
						if l[i-1].Count > l[i].Count {
							t.Fatal("not ascending by count")
						}
					}
					// the largest counts are the ones kept
					if l[len(l)-1].Count != uint64(max(tc.conn, tc.failed)) && l[len(l)-1].Count != uint64(min(tc.conn, tc.failed)) {
						t.Errorf("largest count %d not kept", l[len(l)-1].Count)
					}
				}
			}
			check(c, EmptyConnectionSummary, tc.wantConnEntries)
			check(f, EmptyFailedAuthSummary, tc.wantFailedEntries)
			if tc.wantConnEntries == -1 && c != SummaryDroppedNote {
				t.Errorf("connection summary not replaced by note: %.80q", c)
			}
			data, err := extension.MarshalStatus(extension.Status{Name: StatusName, Operation: OperationEnable, Status: "success", Substatus: ev.Substatus}, now)
			if err != nil || len(data) > extension.MaxStatusFileSize {
				t.Errorf("status file %d bytes, err %v", len(data), err)
			}
		})
	}
}

func TestAggregateFetcher(t *testing.T) {
	body := aggregateDoc("2025-04-23T11:59:59.000", "1.0.0", "SUCCESS", 0, 0, 1)
	// The agent's status file: redirect running (HTTP may be asked) or not.
	running := aggregateDoc("2025-04-23T11:59:58.000", "1.0.0", "SUCCESS", 0, 0, 2)
	starting := aggregateDoc("2025-04-23T11:59:58.000", "1.0.0", "ERROR", 0, 0, 2)
	unprotected := []byte(strings.Replace(string(running), "WireServer Enforce", "WireServer Disabled", 1))
	ok := func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || r.URL.Path != "/gpa-aggregated-status" {
			http.Error(w, "bad", 400)
			return
		}
		w.Write(body)
	}
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		file      []byte
		wantBody  []byte
		wantHTTP  bool
		wantInErr string
	}{
		{"redirect running: http", ok, running, body, true, ""},
		{"403 falls back to file", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 403) }, running, running, true, ""},
		{"400 falls back to file", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 400) }, running, running, true, ""},
		{"hang times out to file", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, running, running, true, ""},
		{"redirect not running: file only", ok, starting, starting, false, ""},
		{"WireServer not protected: file only", ok, unprotected, unprotected, false, ""},
		{"unparseable file: file only", ok, []byte(`{"from":"file"}`), []byte(`{"from":"file"}`), false, ""},
		{"no file: nothing asked", ok, nil, nil, false, "not asked"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				tc.handler(w, r)
			}))
			defer srv.Close()
			path := filepath.Join(t.TempDir(), "status.json")
			if tc.file != nil {
				os.WriteFile(path, tc.file, 0o640)
			}
			f := &AggregateFetcher{URL: srv.URL + "/gpa-aggregated-status", File: func() string { return path }, Timeout: 300 * time.Millisecond,
				Dial: standInAgent}
			got, err := f.Fetch(context.Background())
			if asked := hits.Load() > 0; asked != tc.wantHTTP {
				t.Errorf("HTTP asked = %v, want %v", asked, tc.wantHTTP)
			}
			if tc.wantInErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantInErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("err = %v, want %q and the file", err, tc.wantInErr)
				}
				return
			}
			if err != nil || string(got) != string(tc.wantBody) {
				t.Fatalf("got %.60q, %v", got, err)
			}
		})
	}
	// The file still says redirected, but the kernel no longer redirects
	// (the agent just removed it): nothing is asked, the file answers.
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1); ok(w, r) }))
	defer srv.Close()
	stale := filepath.Join(t.TempDir(), "status.json")
	os.WriteFile(stale, running, 0o640)
	for _, redirected := range []bool{false, true} {
		f := &AggregateFetcher{URL: srv.URL + "/gpa-aggregated-status", File: func() string { return stale },
			Timeout: time.Second, Redirected: func() bool { return redirected }, Dial: standInAgent}
		before := hits.Load()
		got, err := f.Fetch(context.Background())
		if asked := hits.Load() > before; asked != redirected || err != nil {
			t.Errorf("kernel redirect %v: HTTP asked %v (%.40q, %v)", redirected, asked, got, err)
		}
	}

	// A v1.0 host's states protect the WireServer too; and with the kernel
	// check set, its answer decides whatever the file's state says.
	for _, tc := range []struct {
		state      string
		redirected *bool
		want       bool
	}{
		{"wireserver", nil, true},
		{"wireserverandimds", nil, true},
		{"disabled", nil, false},
		{"WireServer Disabled -  IMDS Enforce - HostGA Disabled", new(true), true},
		{"wireserver", new(false), false},
	} {
		p := filepath.Join(t.TempDir(), "status.json")
		os.WriteFile(p, []byte(strings.Replace(string(running), "WireServer Enforce -  IMDS Enforce - HostGA Enforce", tc.state, 1)), 0o640)
		f := &AggregateFetcher{URL: srv.URL + "/gpa-aggregated-status", File: func() string { return p }, Timeout: time.Second, Dial: standInAgent}
		if tc.redirected != nil {
			f.Redirected = func() bool { return *tc.redirected }
		}
		before := hits.Load()
		if _, err := f.Fetch(context.Background()); err != nil || (hits.Load() > before) != tc.want {
			t.Errorf("state %q, kernel %v: HTTP asked %v (want %v), %v", tc.state, tc.redirected, hits.Load() > before, tc.want, err)
		}
	}

	// No readable, well-formed file: the agent is asked only when the
	// kernel says the redirect is in place; its answer replaces the file.
	for _, file := range [][]byte{nil, []byte(`{"timestamp":"2025-04-23T11:5`), {}} {
		for _, redirected := range []bool{false, true} {
			p := filepath.Join(t.TempDir(), "status.json")
			if file != nil {
				os.WriteFile(p, file, 0o640)
			}
			f := &AggregateFetcher{URL: srv.URL + "/gpa-aggregated-status", File: func() string { return p },
				Timeout: time.Second, Redirected: func() bool { return redirected }, Dial: standInAgent}
			before := hits.Load()
			got, err := f.Fetch(context.Background())
			asked := hits.Load() > before
			switch {
			case asked != redirected:
				t.Errorf("file %q, kernel redirect %v: HTTP asked %v", file, redirected, asked)
			case redirected && (err != nil || string(got) != string(body)):
				t.Errorf("file %q, redirected: got %.40q, %v; want the agent's answer", file, got, err)
			case !redirected && file == nil && (err == nil || !strings.Contains(err.Error(), "not asked")):
				t.Errorf("no file, not redirected: err %v", err)
			case !redirected && file != nil && (err != nil || string(got) != string(file)):
				t.Errorf("file %q, not redirected: got %.40q, %v; want the file", file, got, err)
			}
		}
	}

	// Connection refused also falls back.
	path := filepath.Join(t.TempDir(), "status.json")
	os.WriteFile(path, running, 0o640)
	f := &AggregateFetcher{URL: "http://127.0.0.1:1/gpa-aggregated-status", File: func() string { return path }, Timeout: time.Second}
	if got, err := f.Fetch(context.Background()); err != nil || string(got) != string(running) {
		t.Errorf("refused: %.40q %v", got, err)
	}
}

// standInAgent dials a test's stand-in agent, which listens at the URL's
// address itself (no kernel redirect in these tests).
func standInAgent(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// A connection the kernel did not redirect (its peer is the URL's own
// address: the real WireServer) is closed before a byte is sent, however
// the file and the pinned policy read a moment before; one whose peer is
// elsewhere (the agent's listener) is used. The file answers instead.
func TestAggregateOnlyThroughRedirect(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1) }))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "status.json")
	running := aggregateDoc("2025-04-23T11:59:58.000", "1.0.0", "SUCCESS", 0, 0, 2) // redirect running
	os.WriteFile(path, running, 0o640)
	f := &AggregateFetcher{URL: srv.URL + "/gpa-aggregated-status", File: func() string { return path }, Timeout: time.Second,
		Redirected: func() bool { return true }}
	got, err := f.Fetch(context.Background())
	if err != nil || string(got) != string(running) || requests.Load() != 0 {
		t.Fatalf("not redirected: %.40q %v, %d requests reached the address", got, err, requests.Load())
	}
	// checkRedirected: the peer decides.
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := checkRedirected(c, srv.Listener.Addr().String()); err == nil {
		t.Error("a connection to the asked address itself passed")
	}
	if err := checkRedirected(c, "168.63.129.16:80"); err != nil {
		t.Errorf("a connection that reached another address (the listener): %v", err)
	}
}

// GPA_AGGREGATE_STATUS_URL naming another address than the WireServer's
// (a listener, a test's stand-in agent) is asked first, as upstream asks,
// with no file yet and without the kernel's redirect, which that address
// does not need; the WireServer's own address is asked only through the
// redirect (no pinned redirect here: not asked).
func TestAggregateURLElsewhereAskedFirst(t *testing.T) {
	e := commandEnv(t, nil)
	s := e.NewSetup()
	body := aggregateDoc("2025-04-23T11:59:58.000", "1.0.0", "SUCCESS", 0, 0, 2)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(body)
	}))
	defer srv.Close()
	url := srv.URL + "/gpa-aggregated-status"
	redirected, dial := s.aggregateAccess(url)
	if redirected == nil || dial == nil {
		t.Fatal("no access for a URL elsewhere")
	}
	f := &AggregateFetcher{URL: url, File: func() string { return filepath.Join(t.TempDir(), "status.json") },
		Timeout: time.Second, Redirected: redirected, Dial: dial}
	got, err := f.Fetch(context.Background())
	if err != nil || string(got) != string(body) || hits.Load() != 1 {
		t.Fatalf("got %.40q, %v after %d requests; want the URL's answer", got, err, hits.Load())
	}

	ws := msp.DefaultEndpoints().WireServer
	redirected, dial = s.aggregateAccess("http://" + ws.Addr().String() + "/gpa-aggregated-status")
	if redirected == nil || dial != nil {
		t.Fatal("the WireServer's URL is not checked against the redirect")
	}
	if redirected() {
		t.Error("no redirect is pinned, yet the WireServer's URL would be asked")
	}
	// Azure's own WireServer address stays the WireServer's when the
	// installed config moves it.
	os.MkdirAll(filepath.Dir(e.Layout.AgentConfig()), 0o755)
	os.WriteFile(e.Layout.AgentConfig(), []byte(`{"wireServerAddress":"127.0.0.1:1"}`), 0o644)
	if redirected, dial = s.aggregateAccess("http://" + ws.Addr().String() + "/gpa-aggregated-status"); dial != nil || redirected() {
		t.Error("with the WireServer moved by the config, Azure's address would be asked directly")
	}
	// A URL elsewhere whose connection reaches the WireServer address
	// itself is refused before anything is sent.
	c, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := dialAvoiding(netip.MustParseAddrPort(c.Addr().String()))(context.Background(), "tcp", c.Addr().String()); err == nil {
		t.Error("a connection to the avoided address was kept")
	}
}

func TestDetermineUpdateAction(t *testing.T) {
	tests := []struct {
		bundled, installed, running string
		want                        UpdateAction
	}{
		{"1.0.1", "1.0.0", "1.0.0", VersionMismatch},
		{"1.0.1", "", "", VersionMismatch},
		{"1.0.1", "1.0.1", "1.0.0", ResumeInterruptedUpdate},
		{"1.0.1", "1.0.1", "", ResumeInterruptedUpdate},
		{"1.0.1", "1.0.1", "1.0.1", NoUpdate},
	}
	for _, tc := range tests {
		if got := DetermineUpdateAction(tc.bundled, tc.installed, tc.running); got != tc.want {
			t.Errorf("%+v: got %v", tc, got)
		}
	}
}

func TestOptionsFromEnv(t *testing.T) {
	env := map[string]string{EnvMonitorInterval: "250ms", EnvErrorThreshold: "3", EnvAggregateURL: "http://127.0.0.1:9/x", EnvHeartbeatInterval: "bogus", EnvUpdateRetryInterval: "2s"}
	o := OptionsFromEnv(func(k string) string { return env[k] })
	if o.MonitorInterval != 250*time.Millisecond || o.ErrorThreshold != 3 || o.AggregateURL != "http://127.0.0.1:9/x" || o.UpdateRetryInterval != 2*time.Second {
		t.Errorf("overrides not applied: %+v", o)
	}
	if o.HeartbeatInterval != 5*time.Minute {
		t.Errorf("invalid value not ignored: %v", o.HeartbeatInterval)
	}
	d := OptionsFromEnv(func(string) string { return "" })
	if d.MonitorInterval != 15*time.Second || d.AggregateURL != DefaultAggregateURL || d.ErrorThreshold != 20 || d.UpdateRetryInterval != time.Minute {
		t.Errorf("defaults: %+v", d)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestStatusSizeBound: whatever the agent reports, the status file stays
// within waagent's 128 KiB limit.
func TestStatusSizeBound(t *testing.T) {
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	huge := strings.Repeat("\u00e9\"<>", 50000)
	docs := map[string][]byte{
		"huge module message": func() []byte {
			b, _ := json.Marshal(map[string]any{"timestamp": "2025-04-23T11:59:59.000",
				"proxyAgentStatus": map[string]any{"version": "1.0.0", "status": "SUCCESS", "keyLatchStatus": map[string]any{"status": "RUNNING", "message": huge}}})
			return b
		}(),
		"huge summaries": aggregateDoc("2025-04-23T11:59:59.000", "1.0.0", "SUCCESS", 100, 50, 3000),
		"quote-heavy everything": func() []byte {
			var conn []ConnectionSummary
			for i := 0; i < 100; i++ {
				conn = append(conn, ConnectionSummary{UserName: "u", ProcessCmdLine: strings.Repeat(`"\\`, 600), Count: uint64(i)})
			}
			b, _ := json.Marshal(map[string]any{"timestamp": "2025-04-23T11:59:59.000",
				"proxyAgentStatus":          map[string]any{"version": "1.0.0", "status": "SUCCESS", "keyLatchStatus": map[string]any{"status": "RUNNING", "message": huge}},
				"proxyConnectionSummary":    conn,
				"failedAuthenticateSummary": conn[:50]})
			return b
		}(),
	}
	for name, doc := range docs {
		ev := Evaluate(doc, nil, "1.0.0", now, 5*time.Minute)
		if !ev.Healthy {
			t.Fatalf("%s: not evaluated as healthy: %.200s", name, ev.Message)
		}
		ev2 := Evaluate(nil, errors.New(huge), "1.0.0", now, 5*time.Minute)
		for i, e := range []Evaluation{ev, ev2} {
			st := BoundStatus(extension.Status{Name: StatusName, Operation: OperationEnable, Status: "success",
				FormattedMessage: extension.Message(extension.TruncateUTF8(e.Message, MaxStatusMessage)), Substatus: e.Substatus}, now)
			if len(st.Substatus) != 3 {
				t.Fatalf("%s: %d substatuses", name, len(st.Substatus))
			}
			data, err := extension.MarshalStatus(st, now)
			if err != nil || len(data) > extension.MaxStatusFileSize {
				t.Errorf("%s/%d: %d bytes, %v", name, i, len(data), err)
			}
		}
	}
}
