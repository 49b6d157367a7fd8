package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/hostconn"
)

// shipped is upstream's Linux config file as packaged.
const shipped = `{
  "logFolder": "/var/log/azure-proxy-agent",
  "eventFolder": "/var/log/azure-proxy-agent/events",
  "latchKeyFolder": "/var/lib/azure-proxy-agent/keys",
  "monitorIntervalInSeconds": 60,
  "pollKeyStatusIntervalInSeconds": 15,
  "hostGAPluginSupport": 1,
  "ebpfProgramName": "ebpf_cgroup.o",
  "fileLogLevel": "Trace",
  "fileLogLevelForEvents": "Info",
  "fileLogLevelForSystemEvents": "Info",
  "canonicalRequestMode": "Shadow"
}`

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "proxy-agent.json")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadShippedConfig(t *testing.T) {
	c, err := Load(write(t, shipped))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"logFolder", c.LogFolder, "/var/log/azure-proxy-agent"},
		{"latchKeyFolder", c.LatchKeyFolder, "/var/lib/azure-proxy-agent/keys"},
		{"poll", c.PollInterval(), 15 * time.Second},
		{"status interval", c.StatusInterval(), 60 * time.Second},
		{"fileLogLevel", c.FileLogLevel, "Trace"},
		{"cgroupRoot default", c.CgroupRoot, "/sys/fs/cgroup"},
		{"listen default", c.ListenAddress, "127.0.0.1:3080"},
		{"ws default", c.WireServerAddress, "168.63.129.16:80"},
		{"imds default", c.IMDSAddress, "169.254.169.254:80"},
		{"hgap default", c.HostGAPluginAddress, "168.63.129.16:32526"},
		{"status folder default", c.StatusFolder, "/var/log/azure-proxy-agent"},
		{"status file", c.StatusFile(), "/var/log/azure-proxy-agent/status.json"},
		{"rules folder", c.RulesFolder(), "/var/lib/azure-proxy-agent/rules"},
		{"mark default", c.SocketMark, hostconn.Mark},
		{"max connections default", c.MaxConnections, 500},
		{"bpf pin default", c.BpfPinPath, "/sys/fs/bpf/azure-proxy-agent"},
		{"provision timeout", c.ProvisionTimeout(), 2 * time.Minute},
		{"eventFolder", c.EventFolder, "/var/log/azure-proxy-agent/events"},
		{"fileLogLevelForEvents", c.FileLogLevelForEvents, "Info"},
		{"maxEventFileCount default", c.MaxEventFileCount, 30},
		{"sendTelemetry default", c.SendTelemetry, true},
		{"warnings", len(c.Warnings), 0},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestLoadOverrides(t *testing.T) {
	t.Setenv("GPA_TEST_ROOT", "/tmp/gpa-root")
	c, err := Load(write(t, "\xEF\xBB\xBF"+`{
		"latchKeyFolder": "%GPA_TEST_ROOT%/keys",
		"logFolder": "%GPA_TEST_UNSET_VAR%/logs",
		"statusFolder": "%GPA_TEST_ROOT%/status",
		"pollKeyStatusIntervalInSeconds": 0.05,
		"wireServerAddress": "127.0.0.1:40001",
		"socketMark": 0,
		"maxActiveTcpConnections": 7,
		"cgroupRoot": "/cg",
		"unknownKey": {"x": 1}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.LatchKeyFolder != "/tmp/gpa-root/keys" || c.StatusFolder != "/tmp/gpa-root/status" {
		t.Errorf("expansion: keys=%q status=%q", c.LatchKeyFolder, c.StatusFolder)
	}
	if c.LogFolder != "%GPA_TEST_UNSET_VAR%/logs" {
		t.Errorf("unset variable must stay literal, got %q", c.LogFolder)
	}
	if c.PollInterval() != 50*time.Millisecond {
		t.Errorf("poll = %v", c.PollInterval())
	}
	if c.SocketMark != 0 || c.WireServerAddress != "127.0.0.1:40001" || c.MaxConnections != 7 || c.CgroupRoot != "/cg" {
		t.Errorf("overrides not applied: %+v", c)
	}
	if c.RulesFolder() != "/tmp/gpa-root/rules" {
		t.Errorf("rules folder %q", c.RulesFolder())
	}
}

func TestLoadTolerated(t *testing.T) {
	c, err := Parse([]byte(`{"fileLogLevel":"Verbose"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.FileLogLevel != "Info" || len(c.Warnings) != 1 {
		t.Errorf("got level %q warnings %v", c.FileLogLevel, c.Warnings)
	}
}

// Upstream keys this agent does not use are accepted with any value and
// change nothing (package documentation: "Accepted and ignored").
func TestIgnoredKeysAccepted(t *testing.T) {
	c, err := Parse([]byte(`{"ebpfProgramName":{"a":1},"ebpfFileFullPath":[],"enableHttpProxyTrace":"yes",
		"canonicalRequestMode":"bogus","hostGAPluginSupport":true}`))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.LogFolder != d.LogFolder || c.FileLogLevel != d.FileLogLevel || len(c.Warnings) != 0 {
		t.Errorf("ignored keys changed the config: %+v", c)
	}
}

// The telemetry keys (§6, §7.1): absent fileLogLevelForEvents means no
// log events; eventFolder is expanded and may be empty; sendTelemetry
// (this project's) turns the pipeline off.
func TestTelemetryKeys(t *testing.T) {
	t.Setenv("GPA_TEST_ROOT", "/tmp/gpa-root")
	cases := []struct {
		body     string
		folder   string
		level    string
		files    int
		send     bool
		warnings int
	}{
		{`{}`, "/var/log/azure-proxy-agent/events", "", 30, true, 0},
		{`{"eventFolder":"%GPA_TEST_ROOT%/ev","fileLogLevelForEvents":"warn","maxEventFileCount":5,"sendTelemetry":false}`,
			"/tmp/gpa-root/ev", "Warn", 5, false, 0},
		{`{"eventFolder":"","fileLogLevelForEvents":"Loud"}`, "", "Info", 30, true, 1},
	}
	for _, c := range cases {
		cfg, err := Parse([]byte(c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		if cfg.EventFolder != c.folder || cfg.FileLogLevelForEvents != c.level || cfg.MaxEventFileCount != c.files ||
			cfg.SendTelemetry != c.send || len(cfg.Warnings) != c.warnings {
			t.Errorf("%s: folder %q level %q files %d send %v warnings %v", c.body, cfg.EventFolder, cfg.FileLogLevelForEvents,
				cfg.MaxEventFileCount, cfg.SendTelemetry, cfg.Warnings)
		}
	}
	// maxEventFileCount 0 (upstream: no overflow file is ever stored)
	// loads; the folder stays for status events and files already there.
	if c, err := Parse([]byte(`{"maxEventFileCount":0}`)); err != nil || c.EventFolder != Default().EventFolder || c.MaxEventFileCount != 0 {
		t.Errorf("maxEventFileCount 0: folder %q count %d err %v", c.EventFolder, c.MaxEventFileCount, err)
	}
	for _, bad := range []string{`{"maxEventFileCount":-1}`, `{"maxEventFileCount":"x"}`, `{"eventFolder":7}`, `{"sendTelemetry":"no"}`,
		`{"fileLogLevelForEvents":1}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"not json", `{"logFolder": `, "invalid JSON"},
		{"wrong type", `{"pollKeyStatusIntervalInSeconds": "15"}`, `"pollKeyStatusIntervalInSeconds"`},
		{"negative interval", `{"pollKeyStatusIntervalInSeconds": -0.5}`, `"pollKeyStatusIntervalInSeconds"`},
		{"negative timeout", `{"hostRequestTimeoutInSeconds": -1}`, `"hostRequestTimeoutInSeconds"`},
		{"bad address", `{"wireServerAddress": "168.63.129.16"}`, `"wireServerAddress"`},
		{"bad port", `{"listenAddress": "127.0.0.1:70000"}`, `"listenAddress"`},
		{"mark out of range", `{"socketMark": -1}`, `"socketMark"`},
		{"empty key folder", `{"latchKeyFolder": ""}`, `"latchKeyFolder"`},
		{"zero connections", `{"maxConnections": 0}`, `"maxConnections"`},
		{"array", `[]`, "invalid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.body)
			_, err := Load(p)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name %s and the file", err, tc.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file loaded")
	}
}

// A file upstream reads loads here too: a 0-second interval (upstream
// would loop without pausing) keeps the default with a warning, and a key
// in other letter case, which upstream ignores, is ignored with a warning
// instead of taken (encoding/json matches names in any case).
func TestUpstreamTolerance(t *testing.T) {
	c, err := Parse([]byte(`{"monitorIntervalInSeconds":0,"pollKeyStatusIntervalInSeconds":0,` +
		`"MAXCONNECTIONSPERCALLER":0,"LogFolder":"/elsewhere","maxConnections":300,"maxHeaderByteſ":2048}`))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.MonitorIntervalInSeconds != d.MonitorIntervalInSeconds || c.PollKeyStatusIntervalInSecs != d.PollKeyStatusIntervalInSecs ||
		c.MaxConnectionsPerCaller != d.MaxConnectionsPerCaller || c.LogFolder != d.LogFolder || c.MaxConnections != 300 ||
		c.MaxHeaderBytes != d.MaxHeaderBytes {
		t.Errorf("got %+v", c)
	}
	if len(c.Warnings) != 5 || !strings.Contains(strings.Join(c.Warnings, "\n"), `key "MAXCONNECTIONSPERCALLER" is ignored`) {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestExpandEnv(t *testing.T) {
	t.Setenv("GPA_A", "a")
	for in, want := range map[string]string{
		"":                 "",
		"/plain":           "/plain",
		"%GPA_A%/x":        "a/x",
		"%GPA_NOPE%/x":     "%GPA_NOPE%/x",
		"%GPA_NOPE%GPA_A%": "%GPA_NOPEa",
		"100%":             "100%",
		"%%":               "%%",
	} {
		if got := ExpandEnv(in); got != want {
			t.Errorf("ExpandEnv(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestContainerKeys(t *testing.T) {
	c, err := Parse([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := c.Endpoints()
	if e.ContainerListener.String() != "169.254.100.254:3080" || c.AllowRootContainersToWireServer {
		t.Errorf("defaults: container listener %v, root containers %v", e.ContainerListener, c.AllowRootContainersToWireServer)
	}
	c, err = Parse([]byte(`{"containerListenAddress":"","allowRootContainersToWireServer":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := c.Endpoints(); e.ContainerListener.IsValid() || !c.AllowRootContainersToWireServer {
		t.Errorf("off: %v %v", e.ContainerListener, c.AllowRootContainersToWireServer)
	}
	for _, bad := range []string{`"127.0.0.1:3081"`, `"[fe80::1]:3080"`, `"169.254.169.254:3080"`, `"nonsense"`, `"0.0.0.0:3080"`, `"224.0.0.1:3080"`, `"239.1.2.3:3080"`, `"255.255.255.255:3080"`, `"240.0.0.1:3080"`, `"169.254.100.254:0"`, `7`} {
		if _, err := Parse([]byte(`{"containerListenAddress":` + bad + `}`)); err == nil {
			t.Errorf("containerListenAddress %s accepted", bad)
		}
	}
	if _, err := Parse([]byte(`{"allowRootContainersToWireServer":"yes"}`)); err == nil {
		t.Error("allowRootContainersToWireServer as a string accepted")
	}
}

// The config is /etc/azure/proxy-agent.json when it exists, else
// proxy-agent.json beside the executable (protocol.md §0), else the
// default path (whose absence Load then reports).
func TestLocate(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "etc", FileName)
	exe := filepath.Join(dir, "bin", "azure-proxy-agent")
	beside := filepath.Join(dir, "bin", FileName)
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := locate(def, exe); got != def {
		t.Errorf("neither exists: %s, want %s", got, def)
	}
	if err := os.WriteFile(beside, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := locate(def, exe); got != beside {
		t.Errorf("only beside the executable: %s, want %s", got, beside)
	}
	if got := locate(def, ""); got != def {
		t.Errorf("executable unknown: %s, want %s", got, def)
	}
	if err := os.MkdirAll(filepath.Dir(def), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(def, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := locate(def, exe); got != def {
		t.Errorf("both exist: %s, want %s", got, def)
	}
}

// consoleLog is /dev/console unless set; "" turns the console lines off
// and a relative path is refused.
func TestConsoleLog(t *testing.T) {
	for _, tc := range []struct {
		doc, want, err string
	}{
		{`{}`, "/dev/console", ""},
		{`{"consoleLog":""}`, "", ""},
		{`{"consoleLog":" /var/log/console.log "}`, "/var/log/console.log", ""},
		{`{"consoleLog":"console.log"}`, "", `key "consoleLog"`},
		{`{"consoleLog":1}`, "", "consoleLog"},
	} {
		c, err := Parse([]byte(tc.doc))
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.doc, err, tc.err)
			}
		case err != nil || c.ConsoleLog != tc.want:
			t.Errorf("%s: %q %v, want %q", tc.doc, c.ConsoleLog, err, tc.want)
		}
	}
	if Default().ConsoleLog != "/dev/console" {
		t.Error("default consoleLog")
	}
}

// maxConnectionsPerCaller is 64 unless set; 0 turns the limit off and a
// negative value is refused.
func TestMaxConnectionsPerCaller(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want int
		err  bool
	}{
		{`{}`, 64, false},
		{`{"maxConnectionsPerCaller":8}`, 8, false},
		{`{"maxConnectionsPerCaller":0}`, 0, false},
		{`{"maxConnectionsPerCaller":-1}`, 0, true},
	} {
		c, err := Parse([]byte(tc.doc))
		if (err != nil) != tc.err || (!tc.err && c.MaxConnectionsPerCaller != tc.want) {
			t.Errorf("%s: %d %v", tc.doc, c.MaxConnectionsPerCaller, err)
		}
	}
}
