// Package installpath says where the agent is installed: upstream's paths
// under /usr, or, on a system whose /usr is read-only (Flatcar and other
// image-based distributions, where /usr is a verified read-only partition),
// their counterparts under /opt and /etc. The extension's setup installs
// there and doctor looks there.
package installpath

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// UnitName is the agent's systemd unit.
const UnitName = msp.ServiceName + ".service"

// Upstream's installed paths.
const (
	AgentBinary = "/usr/sbin/" + msp.ServiceName
	LibDir      = "/usr/lib/azure-proxy-agent"
	UnitDir     = "/usr/lib/systemd/system"
	UnitFile    = UnitDir + "/" + UnitName
	ManDir      = "/usr/share/man/man8"
)

// readOnlyUsr maps each upstream directory to where it goes when /usr is
// read-only: /opt/bin is on Flatcar's PATH, /etc/systemd/system is the
// administrator's unit directory.
var readOnlyUsr = []struct{ from, to string }{
	{"/usr/sbin", "/opt/bin"},
	{LibDir, "/opt/azure-proxy-agent"},
	{UnitDir, "/etc/systemd/system"},
	{ManDir, "/opt/azure-proxy-agent/man8"},
}

// Map returns where the production path abs is installed: abs itself, or
// with usrReadOnly its counterpart when it is in one of upstream's /usr
// directories above (other paths are unchanged).
func Map(abs string, usrReadOnly bool) string {
	if !usrReadOnly {
		return abs
	}
	c := filepath.Clean(abs)
	for _, m := range readOnlyUsr {
		if rest, ok := strings.CutPrefix(c, m.from); ok && (rest == "" || rest[0] == '/') {
			return m.to + rest
		}
	}
	return abs
}

// ReadOnlyLayout reports whether the agent under root ("" is /) is, or is
// to be, installed where a read-only /usr puts it: where its binary or
// unit already is (upstream's path, or its counterpart), that layout, so a
// /usr that turns read-only later (a root file system remounted read-only
// after disk errors) does not move an installation; else whether root's
// /usr is read-only.
func ReadOnlyLayout(root string) bool {
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return err == nil
	}
	for _, p := range []string{AgentBinary, UnitFile} {
		if exists(p) {
			return false
		}
		if exists(Map(p, true)) {
			return true
		}
	}
	return UsrReadOnly(root)
}

// UsrReadOnly reports whether root's /usr ("" is /) is on a read-only
// mount; false when it cannot tell (no such directory).
func UsrReadOnly(root string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Join(root, "/usr"), &st); err != nil {
		return false
	}
	return st.Flags&stRdonly != 0
}

// stRdonly is ST_RDONLY, statfs(2)'s read-only mount flag.
const stRdonly = 0x1
