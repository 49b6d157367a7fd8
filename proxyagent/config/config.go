// Package config reads the proxy agent's JSON configuration file
// (/etc/azure/proxy-agent.json, shared/spec/protocol.md §7.1): upstream's
// keys with upstream's meaning, plus the keys this project adds for its own
// needs (listener and host addresses, limits, status folder, socket mark,
// BPF pin path). A file upstream accepts loads here too; a file that cannot
// be read, is not JSON, or holds a wrong type or an out-of-range value is a
// clear error from Load, never a panic.
//
// Keys (every key is optional here; upstream requires the first six and
// panics without them, this package falls back to the shipped values):
//
//	Key                            Type    Default                              Use
//	logFolder                      string  /var/log/azure-proxy-agent           ProxyAgent.log, Connection.log ("" = no file logs); %VAR% expanded
//	latchKeyFolder                 string  /var/lib/azure-proxy-agent/keys      <guid>.key, lastKeyStatus.json, provisioned.tag, status.tag; rules dir = sibling "rules"; %VAR% expanded
//	monitorIntervalInSeconds       number  60                                   status.json write interval (upstream parses it but hard-codes 60 s)
//	pollKeyStatusIntervalInSeconds number  15                                   key keeper poll interval
//	cgroupRoot                     string  /sys/fs/cgroup                       fallback cgroup2 attach point
//	fileLogLevel                   string  Info                                 Error|Warn|Info|Debug|Trace (unknown ⇒ Info, as upstream)
//	fileLogLevelForSystemEvents    string  "" (Error only)                      log→stdout (errors: stderr) level
//	fileLogLevelForEvents          string  "" (no log events)                   log lines at or above it become telemetry events (§6.1)
//	eventFolder                    string  /var/log/azure-proxy-agent/events    telemetry overflow files ("" = overflow dropped); %VAR% expanded
//	maxEventFileCount              int     30                                   most generic overflow files kept in eventFolder
//	--- keys added by this project ---
//	listenAddress                  string  127.0.0.1:3080                       proxy listener address
//	wireServerAddress              string  168.63.129.16:80                     WireServer (secure-channel calls, forwarding)
//	imdsAddress                    string  169.254.169.254:80                   IMDS
//	hostGAPluginAddress            string  168.63.129.16:32526                  HostGAPlugin
//	statusFolder                   string  /var/log/azure-proxy-agent          status.json, AuthorizationRules_*.json (upstream hard-codes it); %VAR% expanded
//	hostRequestTimeoutInSeconds    number  10                                   timeout of every call the agent makes to the host
//	provisionTimeoutInSeconds      number  120                                  provisioning timeout (§5.3)
//	socketMark                     uint32  0x677061 (hostconn.Mark)             SO_MARK on the agent's own sockets (and its listeners); 0 = unmarked, only without the kernel hooks (with them 0x677061 is used)
//	headerReadTimeoutInSeconds     number  10                                   listener: time to read a request's headers
//	idleTimeoutInSeconds           number  120                                  listener: keep-alive idle timeout
//	maxHeaderBytes                 int     409600                               listener: request header size limit
//	maxConnections                 int     500                                  listener: concurrent connections (alias: upstream's maxActiveTcpConnections); with the per-caller limit on, the kernel refuses (EPERM) a connect of a caller other than root in the agent's namespace once the callers in that namespace hold their share (proxy.ConnShares: half of all but the sixteenth kept for root; containers the other half, at accept)
//	maxConnectionsPerCaller        int     64                                   concurrent connections of one caller (a user in a network namespace; direct connections together); root in the agent's namespace unlimited; 0 = no limit. The kernel refuses (EPERM) a connect to a service or the listener beyond it, the listener closes any connection beyond it
//	bpfPinPath                     string  /sys/fs/bpf/azure-proxy-agent        bpffs directory for pinned maps and links
//	containerListenAddress         string  169.254.100.254:3080                 listener for containers (other network namespaces), added to lo; "" = containers refused
//	allowRootContainersToWireServer bool   false                                let uid 0 in containers reach WireServer and HostGAPlugin
//	metricsListen                  string  unix:<statusFolder>/metrics.sock     Prometheus /metrics: unix:PATH (root-only socket), loopback IP:PORT, or "" (off)
//	auditSyslog                    string  "" (off)                             also send each audit record to this syslog socket (datagram, or stream as syslog-ng unix-stream), e.g. /dev/log (journald)
//	sendTelemetry                  bool    true                                 false: no telemetry events are made, stored or sent (upstream has no switch)
//	consoleLog                     string  /dev/console                         where the start line, start-up milestones and provisioning result go (§7.2); "" = nowhere
//
// Accepted and ignored (any JSON value): upstream's ebpfProgramName and
// ebpfFileFullPath (the eBPF
// programs are built into the binary), enableHttpProxyTrace (requests are
// logged at Debug level through fileLogLevel), canonicalRequestMode (the
// request-target checks of msp.CheckTarget always apply) and
// hostGAPluginSupport (ignored upstream too).
//
// Durations are JSON numbers of seconds; fractions are allowed (tests use
// short intervals) and must be positive; 0, which upstream reads, keeps the
// default with a warning. maxEventFileCount 0 stores no generic overflow
// file, as upstream.
// Keys are case-sensitive as upstream's: a key in other letter case
// ("LogFolder") is ignored with a warning.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/console"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/telemetry"
)

// DefaultPath is where the service reads its configuration.
const DefaultPath = "/etc/azure/proxy-agent.json"

// FileName is the config file's base name, also looked for next to the
// executable when DefaultPath does not exist.
const FileName = "proxy-agent.json"

// Config is the loaded configuration with defaults applied and %VAR%
// references expanded. Field comments name the JSON key.
type Config struct {
	LogFolder                   string  // logFolder
	LatchKeyFolder              string  // latchKeyFolder
	MonitorIntervalInSeconds    float64 // monitorIntervalInSeconds
	PollKeyStatusIntervalInSecs float64 // pollKeyStatusIntervalInSeconds
	CgroupRoot                  string  // cgroupRoot
	FileLogLevel                string  // fileLogLevel, normalised: Error|Warn|Info|Debug|Trace
	FileLogLevelForSystemEvents string  // fileLogLevelForSystemEvents, "" when absent
	FileLogLevelForEvents       string  // fileLogLevelForEvents, "" when absent (no log events)
	EventFolder                 string  // eventFolder, "" = telemetry overflow is dropped
	MaxEventFileCount           int     // maxEventFileCount

	ListenAddress               string  // listenAddress
	WireServerAddress           string  // wireServerAddress
	IMDSAddress                 string  // imdsAddress
	HostGAPluginAddress         string  // hostGAPluginAddress
	StatusFolder                string  // statusFolder
	HostRequestTimeoutInSeconds float64 // hostRequestTimeoutInSeconds
	ProvisionTimeoutInSeconds   float64 // provisionTimeoutInSeconds
	SocketMark                  uint32  // socketMark
	HeaderReadTimeoutInSeconds  float64 // headerReadTimeoutInSeconds
	IdleTimeoutInSeconds        float64 // idleTimeoutInSeconds
	MaxHeaderBytes              int     // maxHeaderBytes
	MaxConnections              int     // maxConnections (or maxActiveTcpConnections)
	MaxConnectionsPerCaller     int     // maxConnectionsPerCaller, 0: no limit
	BpfPinPath                  string  // bpfPinPath
	// ContainerListenAddress is containerListenAddress; "" turns the
	// container listener off (connects from containers are refused).
	ContainerListenAddress          string
	AllowRootContainersToWireServer bool   // allowRootContainersToWireServer
	MetricsListen                   string // metricsListen, "" when off (see MetricsEndpoint)
	AuditSyslog                     string // auditSyslog, "" when off
	SendTelemetry                   bool   // sendTelemetry
	ConsoleLog                      string // consoleLog, "" when off

	// Warnings lists tolerated oddities (unknown log level or canonical
	// mode) that upstream also tolerates; callers log them.
	Warnings []string
}

// Default returns the configuration of a file that sets nothing: the
// shipped Linux values and this project's defaults.
func Default() Config {
	return Config{
		LogFolder:                   "/var/log/azure-proxy-agent",
		LatchKeyFolder:              "/var/lib/azure-proxy-agent/keys",
		MonitorIntervalInSeconds:    60,
		PollKeyStatusIntervalInSecs: 15,
		CgroupRoot:                  "/sys/fs/cgroup",
		FileLogLevel:                "Info",
		EventFolder:                 "/var/log/azure-proxy-agent/events",
		MaxEventFileCount:           telemetry.DefaultMaxEventFiles,
		ListenAddress:               msp.ListenerAddr.String(),
		WireServerAddress:           msp.WireServerAddr.String(),
		IMDSAddress:                 msp.IMDSAddr.String(),
		HostGAPluginAddress:         msp.HostGAPluginAddr.String(),
		StatusFolder:                "/var/log/azure-proxy-agent",
		HostRequestTimeoutInSeconds: 10,
		ProvisionTimeoutInSeconds:   120,
		SocketMark:                  hostconn.Mark,
		HeaderReadTimeoutInSeconds:  10,
		IdleTimeoutInSeconds:        120,
		MaxHeaderBytes:              400 * 1024,
		MaxConnections:              500,
		MaxConnectionsPerCaller:     64,
		BpfPinPath:                  "/sys/fs/bpf/azure-proxy-agent",
		ContainerListenAddress:      msp.ContainerListenerAddr.String(),
		MetricsListen:               "unix:/var/log/azure-proxy-agent/" + MetricsSocketName,
		SendTelemetry:               true,
		ConsoleLog:                  console.DefaultPath,
	}
}

// file is the on-disk shape; pointers tell absent from zero.
type file struct {
	LogFolder                   *string  `json:"logFolder"`
	LatchKeyFolder              *string  `json:"latchKeyFolder"`
	MonitorIntervalInSeconds    *float64 `json:"monitorIntervalInSeconds"`
	PollKeyStatusInterval       *float64 `json:"pollKeyStatusIntervalInSeconds"`
	CgroupRoot                  *string  `json:"cgroupRoot"`
	FileLogLevel                *string  `json:"fileLogLevel"`
	FileLogLevelForSystemEvents *string  `json:"fileLogLevelForSystemEvents"`
	FileLogLevelForEvents       *string  `json:"fileLogLevelForEvents"`
	EventFolder                 *string  `json:"eventFolder"`
	MaxEventFileCount           *int     `json:"maxEventFileCount"`
	MaxActiveTCPConnections     *int     `json:"maxActiveTcpConnections"`

	ListenAddress               *string  `json:"listenAddress"`
	WireServerAddress           *string  `json:"wireServerAddress"`
	IMDSAddress                 *string  `json:"imdsAddress"`
	HostGAPluginAddress         *string  `json:"hostGAPluginAddress"`
	StatusFolder                *string  `json:"statusFolder"`
	HostRequestTimeoutInSeconds *float64 `json:"hostRequestTimeoutInSeconds"`
	ProvisionTimeoutInSeconds   *float64 `json:"provisionTimeoutInSeconds"`
	SocketMark                  *uint32  `json:"socketMark"`
	HeaderReadTimeoutInSeconds  *float64 `json:"headerReadTimeoutInSeconds"`
	IdleTimeoutInSeconds        *float64 `json:"idleTimeoutInSeconds"`
	MaxHeaderBytes              *int     `json:"maxHeaderBytes"`
	MaxConnections              *int     `json:"maxConnections"`
	MaxConnectionsPerCaller     *int     `json:"maxConnectionsPerCaller"`
	BpfPinPath                  *string  `json:"bpfPinPath"`
	ContainerListenAddress      *string  `json:"containerListenAddress"`
	AllowRootContainersToWS     *bool    `json:"allowRootContainersToWireServer"`
	MetricsListen               *string  `json:"metricsListen"`
	AuditSyslog                 *string  `json:"auditSyslog"`
	SendTelemetry               *bool    `json:"sendTelemetry"`
	ConsoleLog                  *string  `json:"consoleLog"`
}

// Locate returns DefaultPath when it exists, else FileName next to the
// running executable (upstream's fallback), else DefaultPath.
func Locate() string {
	exe, _ := os.Executable()
	return locate(DefaultPath, exe)
}

// locate is Locate for a given default path and executable ("" when
// unknown).
func locate(defaultPath, exe string) string {
	if _, err := os.Stat(defaultPath); err == nil || exe == "" {
		return defaultPath
	}
	p := filepath.Join(filepath.Dir(exe), FileName)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return defaultPath
}

// Load reads and validates the config file at path. Every error names the
// file and, where it applies, the key at fault.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: read %s: %w", path, err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a config document (a leading UTF-8 BOM is accepted),
// applies defaults, expands %VAR% in the folder keys and validates values.
// Unknown keys are ignored, as upstream does.
func Parse(data []byte) (Config, error) {
	data = bytes.TrimPrefix(data, []byte("\xEF\xBB\xBF"))
	data, misspelt := fileKeys.DropMiscased(data)
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field == "":
			return Config{}, fmt.Errorf("invalid JSON: the document must be an object, found %s", te.Value)
		case errors.As(err, &te):
			return Config{}, fmt.Errorf("key %q: expected %s, found JSON %s", te.Field, te.Type, te.Value)
		case errors.As(err, &se):
			return Config{}, fmt.Errorf("invalid JSON at offset %d: %v", se.Offset, se)
		}
		return Config{}, fmt.Errorf("invalid JSON: %v", err)
	}
	c := Default()
	for _, k := range misspelt {
		c.Warnings = append(c.Warnings, fmt.Sprintf("key %q is ignored: keys are case-sensitive (%q)", k, fileKeys.Like(k)))
	}
	str := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	str(&c.LogFolder, f.LogFolder)
	str(&c.EventFolder, f.EventFolder)
	str(&c.LatchKeyFolder, f.LatchKeyFolder)
	str(&c.CgroupRoot, f.CgroupRoot)
	str(&c.ListenAddress, f.ListenAddress)
	str(&c.WireServerAddress, f.WireServerAddress)
	str(&c.IMDSAddress, f.IMDSAddress)
	str(&c.HostGAPluginAddress, f.HostGAPluginAddress)
	str(&c.StatusFolder, f.StatusFolder)
	str(&c.BpfPinPath, f.BpfPinPath)
	str(&c.ContainerListenAddress, f.ContainerListenAddress)
	if f.AllowRootContainersToWS != nil {
		c.AllowRootContainersToWireServer = *f.AllowRootContainersToWS
	}
	if f.SendTelemetry != nil {
		c.SendTelemetry = *f.SendTelemetry
	}
	if f.ConsoleLog != nil {
		if p := strings.TrimSpace(*f.ConsoleLog); p != "" && !filepath.IsAbs(p) {
			return Config{}, fmt.Errorf("key %q: %q is not an absolute path", "consoleLog", p)
		}
		c.ConsoleLog = strings.TrimSpace(*f.ConsoleLog)
	}
	if f.SocketMark != nil {
		c.SocketMark = *f.SocketMark
	}

	c.LogFolder = ExpandEnv(c.LogFolder)
	c.EventFolder = ExpandEnv(c.EventFolder)
	c.LatchKeyFolder = ExpandEnv(c.LatchKeyFolder)
	c.StatusFolder = ExpandEnv(c.StatusFolder)

	for _, d := range []struct {
		key string
		dst *float64
		src *float64
	}{
		{"monitorIntervalInSeconds", &c.MonitorIntervalInSeconds, f.MonitorIntervalInSeconds},
		{"pollKeyStatusIntervalInSeconds", &c.PollKeyStatusIntervalInSecs, f.PollKeyStatusInterval},
		{"hostRequestTimeoutInSeconds", &c.HostRequestTimeoutInSeconds, f.HostRequestTimeoutInSeconds},
		{"provisionTimeoutInSeconds", &c.ProvisionTimeoutInSeconds, f.ProvisionTimeoutInSeconds},
		{"headerReadTimeoutInSeconds", &c.HeaderReadTimeoutInSeconds, f.HeaderReadTimeoutInSeconds},
		{"idleTimeoutInSeconds", &c.IdleTimeoutInSeconds, f.IdleTimeoutInSeconds},
	} {
		if d.src == nil {
			continue
		}
		v := *d.src
		if v == 0 {
			// Upstream reads 0 (it would then loop without pausing); the
			// default keeps the agent sane.
			c.Warnings = append(c.Warnings, fmt.Sprintf("key %q: 0 seconds; using the default %v", d.key, *d.dst))
			continue
		}
		// At most ~292 years fits a time.Duration.
		if !(v > 0) || math.IsInf(v, 0) || v > float64(math.MaxInt64/int64(time.Second)) {
			return Config{}, fmt.Errorf("key %q: %v is not a positive number of seconds", d.key, v)
		}
		*d.dst = v
	}

	for _, n := range []struct {
		key string
		dst *int
		src *int
		min int
	}{
		{"maxActiveTcpConnections", &c.MaxConnections, f.MaxActiveTCPConnections, 1},
		{"maxConnections", &c.MaxConnections, f.MaxConnections, 1},
		{"maxConnectionsPerCaller", &c.MaxConnectionsPerCaller, f.MaxConnectionsPerCaller, 0},
		{"maxHeaderBytes", &c.MaxHeaderBytes, f.MaxHeaderBytes, 1024},
		{"maxEventFileCount", &c.MaxEventFileCount, f.MaxEventFileCount, 0},
	} {
		if n.src == nil {
			continue
		}
		if *n.src < n.min {
			return Config{}, fmt.Errorf("key %q: %d is below the minimum %d", n.key, *n.src, n.min)
		}
		*n.dst = *n.src
	}

	for _, a := range []struct {
		key string
		val string
	}{
		{"listenAddress", c.ListenAddress},
		{"wireServerAddress", c.WireServerAddress},
		{"imdsAddress", c.IMDSAddress},
		{"hostGAPluginAddress", c.HostGAPluginAddress},
	} {
		if err := checkAddress(a.val); err != nil {
			return Config{}, fmt.Errorf("key %q: %w", a.key, err)
		}
	}
	if _, err := c.Endpoints(); err != nil {
		return Config{}, err
	}
	for _, p := range []struct {
		key string
		val string
	}{
		{"latchKeyFolder", c.LatchKeyFolder},
		{"statusFolder", c.StatusFolder},
	} {
		if p.val == "" {
			return Config{}, fmt.Errorf("key %q: must not be empty", p.key)
		}
	}

	if err := c.setObservability(f.MetricsListen, f.AuditSyslog); err != nil {
		return Config{}, err
	}

	if f.FileLogLevel != nil {
		if lvl, ok := normalLevel(*f.FileLogLevel); ok {
			c.FileLogLevel = lvl
		} else {
			c.Warnings = append(c.Warnings, fmt.Sprintf("fileLogLevel %q is unknown; using Info", *f.FileLogLevel))
		}
	}
	for _, l := range []struct {
		key string
		dst *string
		src *string
	}{
		{"fileLogLevelForSystemEvents", &c.FileLogLevelForSystemEvents, f.FileLogLevelForSystemEvents},
		{"fileLogLevelForEvents", &c.FileLogLevelForEvents, f.FileLogLevelForEvents},
	} {
		if l.src == nil {
			continue
		}
		lvl, ok := normalLevel(*l.src)
		if !ok {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s %q is unknown; using Info", l.key, *l.src))
			lvl = "Info"
		}
		*l.dst = lvl
	}
	return c, nil
}

// Endpoints returns the four address keys as msp.Endpoints. Each must be
// a literal ip:port (the kernel redirect compares addresses, not names).
func (c Config) Endpoints() (msp.Endpoints, error) {
	var e msp.Endpoints
	for _, f := range []struct {
		dst       *netip.AddrPort
		key, addr string
	}{{&e.WireServer, "wireServerAddress", c.WireServerAddress}, {&e.IMDS, "imdsAddress", c.IMDSAddress},
		{&e.HostGAPlugin, "hostGAPluginAddress", c.HostGAPluginAddress}, {&e.Listener, "listenAddress", c.ListenAddress}} {
		ap, err := netip.ParseAddrPort(f.addr)
		if err != nil {
			return e, fmt.Errorf("config: %s %q is not ip:port: %w", f.key, f.addr, err)
		}
		*f.dst = ap
	}
	if c.ContainerListenAddress != "" {
		ap, err := netip.ParseAddrPort(c.ContainerListenAddress)
		if err != nil || !ap.Addr().Is4() || ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() || !unicast4(ap.Addr()) || ap.Port() == 0 {
			return e, fmt.Errorf("config: containerListenAddress %q is not a non-loopback unicast IPv4 ip:port", c.ContainerListenAddress)
		}
		for _, svc := range []netip.AddrPort{e.WireServer, e.IMDS, e.HostGAPlugin} {
			if ap.Addr() == svc.Addr() {
				return e, fmt.Errorf("config: containerListenAddress %q is a metadata service's address", c.ContainerListenAddress)
			}
		}
		e.ContainerListener = ap
	}
	return e, nil
}

// unicast4 reports whether a is an IPv4 address one host can listen on:
// not multicast (224.0.0.0/4), the reserved 240.0.0.0/4 or the limited
// broadcast 255.255.255.255.
func unicast4(a netip.Addr) bool {
	return !a.IsMulticast() && a.As4()[0] < 240
}

func checkAddress(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", s, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q has an invalid port", s)
	}
	return nil
}

func normalLevel(s string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "error":
		return "Error", true
	case "warn", "warning":
		return "Warn", true
	case "info":
		return "Info", true
	case "debug":
		return "Debug", true
	case "trace":
		return "Trace", true
	}
	return "", false
}

// ExpandEnv replaces every %NAME% in s with the value of environment
// variable NAME. A reference to an unset variable, and a lone %, are kept
// as written.
func ExpandEnv(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		j := strings.IndexByte(s[i+1:], '%')
		if j < 0 {
			b.WriteString(s)
			return b.String()
		}
		name := s[i+1 : i+1+j]
		b.WriteString(s[:i])
		if v, ok := os.LookupEnv(name); ok && name != "" {
			b.WriteString(v)
			s = s[i+j+2:]
		} else {
			// Keep the first % literally and rescan from the second, so
			// "%UNSET%HOME%" still expands HOME.
			b.WriteString(s[i : i+1+j])
			s = s[i+1+j:]
		}
	}
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// PollInterval is pollKeyStatusIntervalInSeconds as a duration.
func (c Config) PollInterval() time.Duration { return seconds(c.PollKeyStatusIntervalInSecs) }

// StatusInterval is monitorIntervalInSeconds as a duration: how often
// status.json is rewritten.
func (c Config) StatusInterval() time.Duration { return seconds(c.MonitorIntervalInSeconds) }

// HostRequestTimeout bounds every call the agent makes to the host.
func (c Config) HostRequestTimeout() time.Duration { return seconds(c.HostRequestTimeoutInSeconds) }

// ProvisionTimeout is how long provisioning may take before it finishes
// with an error (§5.3).
func (c Config) ProvisionTimeout() time.Duration { return seconds(c.ProvisionTimeoutInSeconds) }

// HeaderReadTimeout bounds reading one request's headers on the listener.
func (c Config) HeaderReadTimeout() time.Duration { return seconds(c.HeaderReadTimeoutInSeconds) }

// IdleTimeout closes listener keep-alive connections idle this long.
func (c Config) IdleTimeout() time.Duration { return seconds(c.IdleTimeoutInSeconds) }

// RulesFolder is the local rules directory: the sibling "rules" of
// latchKeyFolder (protocol.md §3.7).
func (c Config) RulesFolder() string {
	return filepath.Join(filepath.Dir(filepath.Clean(c.LatchKeyFolder)), "rules")
}

// StatusFile is the path of status.json inside statusFolder.
func (c Config) StatusFile() string { return filepath.Join(c.StatusFolder, "status.json") }

// fileKeys are the JSON names of file's fields.
var fileKeys = serdejson.Of[file]()
