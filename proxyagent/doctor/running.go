package doctor

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/internal/mountinfo"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/redirector"
	"github.com/opengpa/gpa/proxyagent/status"
)

// inspectRedirect is the production Options.Redirect.
func inspectRedirect(pinDir string) []Attachment {
	var out []Attachment
	for _, a := range redirector.Inspect(pinDir) {
		out = append(out, Attachment{Pin: a.Pin, Want: a.Want, Got: a.Got, CgroupID: a.CgroupID, Err: a.Err})
	}
	return out
}

// cgroupRoot is where the agent attaches: cgroupRoot from the config when
// it is a cgroup v2 directory, else the root of the cgroup v2 mount.
func (c *checker) cgroupRoot() (string, error) {
	if p := c.cfg.CgroupRoot; p != "" {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	p, err := mountinfo.FindIn(c.o.sys("/proc/self/mounts"), "cgroup2")
	if errors.Is(err, fs.ErrNotExist) {
		p, err = mountinfo.FindIn(c.o.sys("/proc/mounts"), "cgroup2")
	}
	return p, err
}

func (c *checker) redirect() {
	pinDir := c.cfg.BpfPinPath
	fix := "restart the agent (systemctl restart azure-proxy-agent); it pins the redirect under " + pinDir
	if _, err := os.Stat(pinDir); errors.Is(err, fs.ErrPermission) {
		c.add("redirect.pinned", Unknown, c.cannot("see "+pinDir, err), "run doctor as root")
		c.add("redirect.attached", Unknown, "not checked: the pins cannot be seen", "run doctor as root")
		return
	}
	atts := c.o.Redirect(pinDir)
	var pinned, missing, denied []string
	var errs []string
	for _, a := range atts {
		switch {
		case a.Err == nil:
			pinned = append(pinned, filepath.Base(a.Pin))
		case errors.Is(a.Err, fs.ErrNotExist):
			missing = append(missing, filepath.Base(a.Pin))
		case errors.Is(a.Err, fs.ErrPermission):
			denied = append(denied, filepath.Base(a.Pin))
		default:
			errs = append(errs, fmt.Sprintf("%s: %v", filepath.Base(a.Pin), a.Err))
		}
	}
	switch {
	case len(denied) > 0 && len(missing) == 0 && len(errs) == 0:
		c.add("redirect.pinned", Unknown, fmt.Sprintf("cannot open the pinned links as uid %d (needs CAP_BPF)", c.o.UID), "run doctor as root")
		c.add("redirect.attached", Unknown, "not checked: the pinned links cannot be opened", "run doctor as root")
		return
	case len(missing) > 0 || len(errs) > 0 || len(denied) > 0:
		var parts []string
		if len(missing) > 0 {
			parts = append(parts, "missing "+strings.Join(missing, ", "))
		}
		parts = append(parts, errs...)
		if len(denied) > 0 {
			parts = append(parts, "not readable "+strings.Join(denied, ", "))
		}
		c.add("redirect.pinned", Fail, fmt.Sprintf("the redirect is not fully pinned under %s: %s; connections to the metadata services may bypass the agent", pinDir, strings.Join(parts, "; ")), fix)
	default:
		c.add("redirect.pinned", OK, fmt.Sprintf("%s pinned under %s", strings.Join(pinned, ", "), pinDir), "")
	}
	root, err := c.cgroupRoot()
	if err != nil {
		c.add("redirect.attached", Fail, "the cgroup v2 root cannot be found: "+err.Error(), "mount cgroup2 (boot with systemd.unified_cgroup_hierarchy=1)")
		return
	}
	want, err := redirector.CgroupID(root)
	if err != nil {
		c.add("redirect.attached", Fail, err.Error(), "set cgroupRoot in the config to the cgroup v2 root")
		return
	}
	var wrong []string
	n := 0
	for _, a := range atts {
		if a.Err != nil {
			continue
		}
		n++
		if a.Got != a.Want || a.CgroupID != want {
			wrong = append(wrong, fmt.Sprintf("%s is %s on cgroup %d", filepath.Base(a.Pin), a.Got, a.CgroupID))
		}
	}
	switch {
	case n == 0:
		c.add("redirect.attached", Fail, "no redirect program is attached (nothing pinned)", fix)
	case len(wrong) > 0:
		c.add("redirect.attached", Fail, fmt.Sprintf("want every link on %s (cgroup %d): %s", root, want, strings.Join(wrong, "; ")), fix)
	default:
		c.add("redirect.attached", OK, fmt.Sprintf("%d links attached to %s (cgroup %d), the cgroup the agent attaches to", n, root, want), "")
	}
}

// listeners parses the LISTEN sockets of /proc/<self>/net/tcp and tcp6
// (thread-self first, so a doctor in another network namespace's thread
// reads that namespace).
func (c *checker) listeners() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	read := 0
	for _, name := range []string{"tcp", "tcp6"} {
		var f *os.File
		var err error
		for _, dir := range []string{"/proc/thread-self/net/", "/proc/net/"} {
			if f, err = os.Open(c.o.sys(dir + name)); err == nil {
				break
			}
		}
		if err != nil {
			continue
		}
		read++
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" {
				continue
			}
			if ap, ok := parseProcAddr(fields[1]); ok {
				out = append(out, ap)
			}
		}
		f.Close()
	}
	if read == 0 {
		return nil, errors.New("neither /proc/net/tcp nor /proc/net/tcp6 can be read")
	}
	return out, nil
}

// parseProcAddr decodes "0100007F:0C08": the address as the kernel's
// 32-bit words printed in host byte order, the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	var port uint16
	if _, err := fmt.Sscanf(p, "%X", &port); err != nil {
		return netip.AddrPort{}, false
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), port), true
}

func (c *checker) listener() {
	want, err := netip.ParseAddrPort(c.cfg.ListenAddress)
	if err != nil {
		c.add("listener.loopback", Fail, "listenAddress "+c.cfg.ListenAddress+" is not an address:port", "set listenAddress to 127.0.0.1:3080")
		return
	}
	if !want.Addr().IsLoopback() {
		c.add("listener.loopback", Fail, "listenAddress "+want.String()+" is not a loopback address: other machines could use the agent's signing",
			"set listenAddress to 127.0.0.1:3080")
		return
	}
	ls, err := c.listeners()
	if err != nil {
		c.add("listener.loopback", Unknown, err.Error(), "run doctor where /proc is mounted")
		return
	}
	// The container listener (containerListenAddress) is the agent's too:
	// a link-local address on lo that only the VM's containers reach, and
	// it answers nothing but redirected connections.
	var container netip.AddrPort
	if e, err := c.cfg.Endpoints(); err == nil {
		container = e.ContainerListener
	}
	var found, exposed []string
	for _, l := range ls {
		if l.Port() != want.Port() && l != container {
			continue
		}
		if l.Addr().IsLoopback() || (container.IsValid() && l == container) {
			found = append(found, l.String())
		} else {
			exposed = append(exposed, l.String())
		}
	}
	switch {
	case len(exposed) > 0:
		c.add("listener.loopback", Fail, fmt.Sprintf("port %d listens on %s, not only on loopback", want.Port(), strings.Join(exposed, ", ")),
			"find the process (ss -ltnp) and bind it to 127.0.0.1 only; the agent binds listenAddress")
	case len(found) == 0:
		c.add("listener.loopback", Fail, "nothing listens on "+want.String()+" in this network namespace; the agent is not serving",
			"start the agent: systemctl start azure-proxy-agent (journalctl -u azure-proxy-agent says why it stopped)")
	default:
		c.add("listener.loopback", OK, "listening on "+strings.Join(found, ", ")+" only (loopback and the container listener)", "")
	}
}

// status reads status.json and checks its freshness and overall state; it
// returns the parsed document (nil when unreadable) for the key check.
func (c *checker) status() *status.Aggregate {
	path := c.cfg.StatusFile()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrPermission):
		c.add("status.fresh", Unknown, c.cannot("read "+path, err), "run doctor as root")
		return nil
	case errors.Is(err, fs.ErrNotExist):
		c.add("status.fresh", Fail, path+" does not exist: the agent has not run", "start the agent: systemctl start azure-proxy-agent")
		return nil
	case err != nil:
		c.add("status.fresh", Fail, err.Error(), "check the status folder")
		return nil
	}
	var a status.Aggregate
	if err := json.Unmarshal(data, &a); err != nil {
		c.add("status.fresh", Fail, path+" is not valid JSON: "+err.Error(), "restart the agent; it rewrites the file")
		return nil
	}
	ts, err := time.ParseInLocation(status.TimestampLayout, a.Timestamp, time.UTC)
	if err != nil {
		c.add("status.fresh", Fail, fmt.Sprintf("%s has timestamp %q", path, a.Timestamp), "restart the agent; it rewrites the file")
		return &a
	}
	// The agent rewrites the file every monitorIntervalInSeconds.
	limit := 3 * c.cfg.StatusInterval()
	if limit < time.Minute {
		limit = time.Minute
	}
	age := c.o.Now().Sub(ts).Round(time.Second)
	if age > limit || -age > limit {
		c.add("status.fresh", Fail, fmt.Sprintf("%s was written %s ago (limit %s): the agent is not running or is stuck", path, age, limit),
			"restart the agent: systemctl restart azure-proxy-agent")
	} else {
		c.add("status.fresh", OK, fmt.Sprintf("%s written %s ago", path, age), "")
	}
	s := a.ProxyAgentStatus
	if s.Status == status.Success {
		c.add("status.agent", OK, "agent reports SUCCESS (version "+s.Version+")", "")
	} else {
		var bad []string
		for _, m := range []struct {
			name string
			ms   status.ModuleStatus
		}{{"keyLatchStatus", s.KeyLatchStatus}, {"ebpfProgramStatus", s.EbpfProgramStatus}, {"proxyListenerStatus", s.ProxyListenerStatus}} {
			if m.ms.Status != status.Running {
				bad = append(bad, fmt.Sprintf("%s %s: %s", m.name, m.ms.Status, m.ms.Message))
			}
		}
		c.add("status.agent", Fail, fmt.Sprintf("agent reports %s: %s", s.Status, strings.Join(bad, "; ")), "fix what the module messages name, then restart the agent")
	}
	return &a
}

func (c *checker) key(a *status.Aggregate) {
	if a == nil {
		c.add("key.latched", Unknown, "not checked: status.json could not be read (see status.fresh)", "run doctor as root once the agent runs")
		return
	}
	k := a.ProxyAgentStatus.KeyLatchStatus
	guid, state := k.States["keyGuid"], k.States["secureChannelState"]
	switch {
	case guid != "":
		msg := "key " + guid + " latched; secure channel: " + state
		p := filepath.Join(c.cfg.LatchKeyFolder, guid+".key")
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			c.add("key.latched", Fail, msg+", but "+p+" is missing", "restart the agent; it fetches and latches the key again")
			return
		}
		c.add("key.latched", OK, msg, "")
	case state == msp.StateDisabled:
		c.add("key.latched", Info, "the host has the secure channel disabled; no key is needed", "")
	default:
		c.add("key.latched", Fail, fmt.Sprintf("no key latched (secure channel state %q): %s", state, k.Message),
			"check that WireServer (168.63.129.16) is reachable from the VM and the agent log (ProxyAgent.log) for key errors")
	}
}

// logFolders checks that the log folder can be written by its owner
// (root, the agent) on a writable file system.
func (c *checker) logFolders() {
	const id = "logs.writable"
	dir := c.cfg.LogFolder
	if dir == "" {
		c.add(id, Info, "logFolder is not configured: the agent writes no log files", "")
		return
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrPermission):
		c.add(id, Unknown, c.cannot("see "+dir, err), "run doctor as root")
		return
	case errors.Is(err, fs.ErrNotExist):
		c.add(id, Fail, dir+" does not exist", "create it: install -d -m 0755 -o root "+dir)
		return
	case err != nil:
		c.add(id, Fail, err.Error(), "check "+dir)
		return
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Flags&unix.ST_RDONLY != 0 {
		c.add(id, Fail, dir+" is on a read-only file system", "mount it read-write (or set logFolder to a writable folder)")
		return
	}
	if !fi.IsDir() || fi.Mode().Perm()&0o300 != 0o300 {
		c.add(id, Fail, fmt.Sprintf("%s is not a directory its owner can write (mode %04o)", dir, fi.Mode().Perm()), "chmod u+wx "+dir)
		return
	}
	if c.o.UID == 0 {
		if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			c.add(id, Fail, dir+" is not writable: "+err.Error(), "make it writable by root")
			return
		}
	}
	c.add(id, OK, dir+" is writable", "")
}
