// Package handler implements the Guest Proxy Agent VM extension handler:
// the waagent commands (install, enable, update, disable, uninstall,
// reset) as one table, the long-running monitor that reports the agent's
// health to waagent, and the setup that installs, upgrades, backs up,
// restores and removes the agent service (systemd, or a small supervisor
// where systemd is not running).
//
// Every absolute path the handler touches moves under $GPA_ROOT when that
// variable is set (see Layout), so the real handler can run hermetically
// in tests and demos.
package handler

import (
	"os"
	"path/filepath"

	"github.com/opengpa/gpa/internal/installpath"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Names shared with upstream tooling.
const (
	HandlerName      = "Microsoft.CPlat.ProxyAgent.ProxyAgentLinux"
	StatusName       = "ProxyAgentVMExtension"
	OperationEnable  = "Enable"
	OperationOSCheck = "CheckOSVersionSupport"
	ExtBinaryName    = "ProxyAgentExt"
	AgentBinaryName  = msp.ServiceName
	ServiceName      = msp.ServiceName
	UnitName         = installpath.UnitName
	MonitorUnitName  = "azure-proxy-agent-extension-monitor.service"
	SupervisorName   = "azure-proxy-agent-supervisor"
	SeqFileName      = "current_seq_no.txt"
	UpdateTagName    = "update.tag"
	HandlerLogName   = "ProxyAgentExtension.log"
	MonitorLogName   = "ProxyAgentExtensionService.log"
)

// Paths of the agent payload inside the extension directory (the zip
// layout upstream's e2e scripts rely on).
const (
	BundleDir        = "ProxyAgent"
	BundledAgent     = "ProxyAgent/ProxyAgent/azure-proxy-agent"
	BundledConfig    = "ProxyAgent/ProxyAgent/proxy-agent.json"
	BundledEBPF      = "ProxyAgent/ProxyAgent/ebpf_cgroup.o"
	BundledUnit      = "ProxyAgent/azure-proxy-agent.service"
	BundledManPage   = "ProxyAgent/azure-proxy-agent.8"
	BackupDir        = "ProxyAgent/ProxyAgent/Backup"
	BackupPackageDir = "ProxyAgent/ProxyAgent/Backup/Package"
)

// EnvRoot names the variable whose value, when set, prefixes every
// absolute path in a Layout.
const EnvRoot = "GPA_ROOT"

// Layout maps the fixed production paths onto the file system. With Root
// empty every path is the production path; otherwise each is Root joined
// with it. With UsrReadOnly, what upstream installs under /usr goes to
// /opt and /etc instead (installpath.Map).
type Layout struct {
	Root string
	// UsrReadOnly: install where a read-only /usr (Flatcar) puts the
	// agent; see NewLayout.
	UsrReadOnly bool
}

// LayoutFromEnv returns the Layout for $GPA_ROOT (NewLayout).
func LayoutFromEnv(getenv func(string) string) Layout {
	return NewLayout(getenv(EnvRoot))
}

// NewLayout returns the Layout under root ("" is /): the read-only-/usr
// one where the agent is installed that way, or is to be
// (installpath.ReadOnlyLayout).
func NewLayout(root string) Layout {
	return Layout{Root: root, UsrReadOnly: installpath.ReadOnlyLayout(root)}
}

// Path relocates an absolute production path.
func (l Layout) Path(abs string) string {
	abs = installpath.Map(abs, l.UsrReadOnly)
	if l.Root == "" {
		return abs
	}
	return filepath.Join(l.Root, abs)
}

// AgentBinary is /usr/sbin/azure-proxy-agent (/opt/bin/azure-proxy-agent
// with a read-only /usr).
func (l Layout) AgentBinary() string { return l.Path(installpath.AgentBinary) }

// AgentConfig is /etc/azure/proxy-agent.json.
func (l Layout) AgentConfig() string { return l.Path("/etc/azure/proxy-agent.json") }

// StateDir is /var/lib/azure-proxy-agent.
func (l Layout) StateDir() string { return l.Path("/var/lib/azure-proxy-agent") }

// LogDir is /var/log/azure-proxy-agent, where the agent writes status.json.
func (l Layout) LogDir() string { return l.Path("/var/log/azure-proxy-agent") }

// LibDir is /usr/lib/azure-proxy-agent (/opt/azure-proxy-agent with a
// read-only /usr).
func (l Layout) LibDir() string { return l.Path(installpath.LibDir) }

// EBPFObject is ebpf_cgroup.o in LibDir.
func (l Layout) EBPFObject() string { return filepath.Join(l.LibDir(), "ebpf_cgroup.o") }

// SupervisorBinary is the installed copy of the supervisor used where
// systemd is not running.
func (l Layout) SupervisorBinary() string { return filepath.Join(l.LibDir(), SupervisorName) }

// UnitDir is /usr/lib/systemd/system (/etc/systemd/system with a
// read-only /usr).
func (l Layout) UnitDir() string { return l.Path(installpath.UnitDir) }

// UnitFile is the installed azure-proxy-agent.service.
func (l Layout) UnitFile() string { return filepath.Join(l.UnitDir(), UnitName) }

// ManPage is /usr/share/man/man8/azure-proxy-agent.8 (under
// /opt/azure-proxy-agent with a read-only /usr).
func (l Layout) ManPage() string { return l.Path(installpath.ManDir + "/azure-proxy-agent.8") }

// WaagentDir is /var/lib/waagent.
func (l Layout) WaagentDir() string { return l.Path("/var/lib/waagent") }

// OSRelease is $GPA_ROOT/etc/os-release when Root is set and that file
// exists, else /etc/os-release.
func (l Layout) OSRelease() string {
	if l.Root != "" {
		p := l.Path("/etc/os-release")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/etc/os-release"
}

// relocatedPrefixes are the production directories a Layout moves; agent
// config values under them are rewritten by setup.
var relocatedPrefixes = []string{
	"/usr/sbin",
	"/etc/azure",
	"/var/lib/azure-proxy-agent",
	"/var/log/azure-proxy-agent",
	installpath.LibDir,
	installpath.UnitDir,
	"/var/lib/waagent",
}

// Relocate moves p under Root when p is one of the relocated production
// directories or inside one; any other path is returned unchanged.
func (l Layout) Relocate(p string) string {
	if l.Root == "" && !l.UsrReadOnly || !filepath.IsAbs(p) {
		return p
	}
	c := filepath.Clean(p)
	for _, pre := range relocatedPrefixes {
		if c == pre || len(c) > len(pre) && c[:len(pre)] == pre && c[len(pre)] == '/' {
			return l.Path(c)
		}
	}
	return p
}
