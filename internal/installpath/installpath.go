// Package installpath says where the agent is installed: upstream's paths
// under /usr, or, on a system whose /usr is read-only (Flatcar and other
// image-based distributions, where /usr is a verified read-only partition),
// their counterparts under /opt and /etc. The extension's setup installs
// there and doctor looks there.
package installpath

import (
	"path/filepath"
	"strings"
	"syscall"
)

// Upstream's installed paths.
const (
	AgentBinary = "/usr/sbin/azure-proxy-agent"
	LibDir      = "/usr/lib/azure-proxy-agent"
	UnitDir     = "/usr/lib/systemd/system"
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
