package claims

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/proxyagent/identity"
)

// ErrPIDReused reports that the process now holding the recorded pid is
// not the process that connected: its start time differs from the one the
// kernel recorded. The proxy must treat the connection as having no
// identity.
var ErrPIDReused = errors.New("pid reused: process start time differs from the connect-time record")

// Defaults for a zero Resolver.
const (
	DefaultProcRoot      = "/proc"
	DefaultPasswdFile    = "/etc/passwd"
	DefaultGroupFile     = "/etc/group"
	DefaultAncestryDepth = 4
	// DefaultMaxCmdLine bounds a command line kept in claims (bytes).
	DefaultMaxCmdLine = 4096
	// DefaultUserCacheTTL is how long a uid's name and groups are reused.
	DefaultUserCacheTTL = time.Minute
)

// Undefined is the user name of an unknown uid and the command line of a
// process whose command line cannot be read (upstream's spelling).
const Undefined = "undefined"

// Resolver turns the kernel's connect-time identity record into Claims by
// reading the user database and /proc. The zero value is ready to use
// with the defaults above; set fields before the first Resolve. Safe for
// concurrent use.
//
// PID reuse: when the record carries a start time, /proc/<pid>/stat is
// read after the executable link and the command line, and a different
// start time fails Resolve with ErrPIDReused. A single check after the
// reads suffices: a pid names one process from fork until it is reaped,
// so the recorded process held the pid at the check and therefore at the
// earlier reads.
//
// Image cache: a record from the kernel hook names a process image (pid,
// start time, execve count; see identity.Record). The executable, command
// line, ancestry and workload read for an image are kept in a bounded LRU
// and reused for the image's later connections while the process is
// alive: checked with one signal-0 call on a pidfd opened when the image
// was read (a handle on that process, which no later process with the
// pid can take over; Linux ≥ 5.3, the real /proc), else with one read of
// /proc/<pid>/stat showing the recorded start time. Otherwise the entry
// is dropped and the connection resolved afresh (so the rules below apply
// unchanged). Each cached image holds its pidfd, so the cache holds up to
// ImageCacheSize descriptors. An entry never serves another
// image: an execve changes the key, and so does a new process with the same
// pid. What is cached is what the first connection of the image saw: a
// command line the process rewrites later, or an ancestor that exits, is
// not re-read. The user (uid, gid, names) still comes from each
// connection's record, and a new executable without an execve
// (PR_SET_MM_MAP) makes another key too.
//
// User and mount namespaces: a caller in another user namespace than the
// agent's gets no ProcessFullPath or ProcessName (OtherUserNS,
// otherUserNS): there the executable is the caller's to choose. Nor does
// one whose namespace cannot be told (nor any caller while the agent's
// own cannot be read), or whose executable's path, resolved in its own
// root, is not the file it runs (exeAtPath).
//
// A process that has already exited (or whose stat cannot be read to
// verify it) keeps the kernel's uid and pid, with ProcessFullPath and
// ProcessName empty (never the kernel's comm, which the process sets
// itself), ProcessCmdLine "undefined" and no ancestry; so does one whose
// executable is not the file recorded at connect (an execve since). A record without a start time is not
// verified, as upstream.
type Resolver struct {
	// ProcRoot is the procfs mount; "" means /proc.
	ProcRoot string
	// PasswdFile and GroupFile are the user and group databases in
	// /etc/passwd and /etc/group format; "" means those files. A uid
	// they do not name is asked of the system's name service (NSS:
	// LDAP, sssd, Entra ID login) through NameService.
	PasswdFile, GroupFile string
	// NameService runs a name-service query (getent or id with args) and
	// returns its output; nil runs the commands (NameServiceTimeout
	// each). Tests replace it.
	NameService func(ctx context.Context, name string, args ...string) ([]byte, error)
	// AncestryDepth is how many parent processes to record; 0 means
	// DefaultAncestryDepth, negative means none.
	AncestryDepth int
	// MaxCmdLine bounds every command line kept (bytes); 0 means
	// DefaultMaxCmdLine.
	MaxCmdLine int
	// UserCacheTTL is how long a uid's name and groups are cached; 0
	// means DefaultUserCacheTTL.
	UserCacheTTL time.Duration
	// CgroupRoot is the cgroup v2 mount the caller's cgroup path is
	// checked against; "" leaves the path out.
	CgroupRoot string
	// ImageCacheSize is how many process images' claims are remembered;
	// 0 means DefaultImageCacheSize, negative means none.
	ImageCacheSize int

	users  userCache
	images imageCache

	selfNS atomic.Pointer[agentNS] // agentUserNS's
}

// Resolve derives the claims for the connection from client described by
// rec (protocol.md §4.4). It fails only with ErrPIDReused (wrapped).
func (r *Resolver) Resolve(rec identity.Record, client netip.AddrPort) (*Claims, error) {
	u := r.users.lookup(r, rec.UID)
	c := &Claims{
		UserID:        uint64(rec.UID),
		GroupID:       uint64(rec.GID),
		UserName:      u.name,
		UserGroups:    append([]string{}, u.groups...),
		ProcessID:     rec.PID,
		RunAsElevated: rec.UID == 0,
		ClientPort:    client.Port(),
		OtherNetns:    rec.OtherNetns,
	}
	if client.IsValid() {
		c.ClientIP = client.Addr().Unmap().String()
	}
	key, cacheable := imageKeyOf(rec)
	cacheable = cacheable && r.ImageCacheSize >= 0
	if cacheable {
		if img := r.images.get(key); img != nil {
			alive := img.pidfd >= 0 // checked on its pidfd by get
			if !alive {
				st, err := r.readStat(rec.PID)
				alive = err == nil && st.StartTime == rec.StartTime
			}
			if alive {
				c.ProcessFullPath, c.ProcessName, c.ProcessCmdLine = img.fullPath, img.name, img.cmdLine
				c.Ancestry, c.Workload, c.OtherUserNS = img.ancestry, img.workload, img.otherUserNS
				return c, nil
			}
			r.images.drop(key)
		}
	}
	exeLink := r.procPath(rec.PID, "exe")
	exe, exeErr := os.Readlink(exeLink)
	// The file it runs, examined once, after the link was read: an
	// execve between the two shows as a file that is not the recorded one.
	running, runningErr := statExecutable(exeLink)
	if exeErr == nil && rec.ExeIno != 0 && (runningErr != nil || !recorded(running, rec)) {
		// An execve since connect(): what /proc shows is a later program
		// (threats §1, TOCTOU): no executable, command line or image.
		exeErr = errExecSinceConnect
	}
	cmd, cmdErr := r.readCmdLine(rec.PID)
	if exeErr == errExecSinceConnect {
		cmdErr = exeErr
	}
	// Read before the start-time check below, which proves them the
	// recorded process's. The path is checked before the namespace: a
	// process can enter a user namespace of its own (and there a mount
	// namespace showing another file at the path) but never come back, so
	// one still in the agent's afterwards was in it when its root was
	// resolved.
	// A test's fake /proc has no roots to resolve in: its paths are taken
	// as they are.
	exeProven := exeErr == nil && (!r.realProc() || runningErr == nil && r.exeAtPath(rec.PID, exe, running))
	otherUserNS, nsKnown := r.otherUserNS(rec.PID)
	exeProven = exeProven && nsKnown && !otherUserNS
	cg := r.cgroupPath(rec.PID, rec.CgroupID)
	// The pidfd is opened before the start-time check, so a match proves it
	// names the recorded process.
	pidfd := -1
	if cacheable && r.realProc() {
		pidfd = openProcess(rec.PID)
	}
	st, stErr := r.readStat(rec.PID)
	if rec.StartTime != 0 {
		if stErr != nil {
			// Gone (or unverifiable): what was read may belong to a
			// later process with the same pid.
			exeErr, cmdErr, cg = stErr, stErr, ""
		} else if st.StartTime != rec.StartTime {
			if pidfd >= 0 {
				closeProcess(pidfd)
			}
			return nil, fmt.Errorf("%w: pid %d started at tick %d, record says %d",
				ErrPIDReused, rec.PID, st.StartTime, rec.StartTime)
		}
	}
	c.OtherUserNS = otherUserNS && stErr == nil
	if exeProven {
		c.ProcessFullPath = exe
		c.ProcessName = filepath.Base(exe)
	}
	// Without the executable the name stays empty (§4.4): the kernel's
	// comm is whatever the process set (prctl PR_SET_NAME), and a caller
	// kept a zombie by its parent would otherwise match processName rules
	// with a name of its choosing.
	if cmdErr == nil {
		c.ProcessCmdLine = cmd
	} else {
		c.ProcessCmdLine = Undefined
	}
	if stErr == nil {
		c.Ancestry = r.ancestry(st)
	}
	if cg != "" {
		c.Workload = r.workload(cg)
	}
	if cacheable && exeErr == nil && cmdErr == nil && stErr == nil {
		size := r.ImageCacheSize
		if size == 0 {
			size = DefaultImageCacheSize
		}
		r.images.put(key, &image{fullPath: c.ProcessFullPath, name: c.ProcessName, cmdLine: c.ProcessCmdLine,
			ancestry: c.Ancestry, workload: c.Workload, otherUserNS: c.OtherUserNS, pidfd: pidfd}, size)
	} else if pidfd >= 0 {
		closeProcess(pidfd)
	}
	return c, nil
}

// errExecSinceConnect marks a caller whose executable changed since the
// kernel recorded its connect.
var errExecSinceConnect = errors.New("the process executed another program since it connected")

// executableMask is what statExecutable asks of statx.
const executableMask = unix.STATX_INO | unix.STATX_MNT_ID

// statExecutable examines the file exe names (a /proc/<pid>/exe link: the
// file the process runs).
func statExecutable(exe string) (unix.Statx_t, error) {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, exe, 0, executableMask, &st)
	return st, err
}

// recorded reports whether running (statExecutable's) is the file the
// kernel recorded at connect in rec: its inode number, on its mount when
// the mount is known (an inode number alone can be had from a memfd or a
// FUSE mount).
func recorded(running unix.Statx_t, rec identity.Record) bool {
	if running.Ino != rec.ExeIno {
		return false
	}
	return !rec.ExeMntKnown || (running.Mask&unix.STATX_MNT_ID != 0 && running.Mnt_id == rec.ExeMnt)
}

// nsID names a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// nsOf returns the namespace that path (a /proc/<pid>/ns/ link) names.
func nsOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// otherUserNS reports whether the process pid is in another user
// namespace than the agent (other), and whether that could be told
// (known). Its executable proves nothing there: a user who makes a user
// namespace (unprivileged where the kernel allows it) owns a mount
// namespace in it, where any file can be bind-mounted over an allowed
// path, and may point the process's executable at any file (prctl
// PR_SET_MM_MAP). A process cannot leave its user namespace for an
// ancestor, so one found in another namespace after its connect was in
// one at connect, or moved to one since (and is then as untrusted). When
// the agent's own namespace does not exist (a kernel without user
// namespaces, a test's fake /proc) every process is in it; when it or the
// caller's cannot be read otherwise (the caller gone), nothing is known.
func (r *Resolver) otherUserNS(pid uint32) (other, known bool) {
	self, err := r.agentUserNS()
	if errors.Is(err, unix.ENOENT) {
		return false, true // no user namespaces (or a test's fake /proc)
	}
	if err != nil {
		return false, false
	}
	ns, err := nsOf(r.procPath(pid, "ns/user"))
	if err != nil {
		return false, false
	}
	return ns != self, true
}

// agentUserNS returns the agent's user namespace, read once it could be
// (or found not to exist); another failure is tried again next time.
func (r *Resolver) agentUserNS() (nsID, error) {
	if ns := r.selfNS.Load(); ns != nil {
		return ns.id, ns.err
	}
	id, err := nsOf(r.procRoot() + "/self/ns/user")
	if err == nil || errors.Is(err, unix.ENOENT) {
		r.selfNS.Store(&agentNS{id, err})
	}
	return id, err
}

// agentNS is what agentUserNS read.
type agentNS struct {
	id  nsID
	err error
}

// exeAtPath reports whether exe, the path /proc/<pid>/exe shows, names
// running, the file the process runs (statExecutable's, which Resolve
// compared with the kernel's record), when resolved in the process's own
// root (its mount namespace): the same device and inode. A path is what
// the mount namespace the executable was opened in showed, which need not
// be the caller's: a process may execute a file through a descriptor from
// a process in another mount namespace (/proc/<other>/fd/N), where a bind
// mount put another binary at an allowed path, or share its memory with
// one there that replaces its executable by such a file (PR_SET_MM_MAP;
// by a file of its own mount namespace it can read and execute, this is
// not caught: see README). The mount is not compared: in a process that
// entered another mount namespace after its execve, the path resolves
// through a copy of the mount its file was run from. A path that cannot
// be resolved, or not without leaving the root or following a /proc link,
// proves nothing.
func (r *Resolver) exeAtPath(pid uint32, exe string, running unix.Statx_t) bool {
	if !strings.HasPrefix(exe, "/") {
		return false
	}
	root, err := unix.Open(r.procPath(pid, "root"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(root)
	var at unix.Statx_t
	fd, err := openat2(root, exe, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	switch {
	case err == nil:
		defer unix.Close(fd)
		err = unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO, &at)
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
		// openat2 refused (Linux before 5.6, or a seccomp filter that
		// does not know it, as systemd-nspawn's): the path is resolved
		// through the /proc link instead, where an absolute symbolic
		// link on it resolves from the agent's root. Planting one needs a
		// directory on the path the caller can write, and a rule naming
		// such a path allows whatever the caller puts there anyway.
		err = unix.Statx(unix.AT_FDCWD, r.procPath(pid, "root")+exe, 0, unix.STATX_INO, &at)
	}
	return err == nil && at.Dev_major == running.Dev_major && at.Dev_minor == running.Dev_minor && at.Ino == running.Ino
}

// openat2 is unix.Openat2; tests make it fail as a seccomp filter does.
var openat2 = unix.Openat2

// realProc reports whether ProcRoot is the system's procfs, whose pids
// the kernel's pidfds name (a test's fake root is not).
func (r *Resolver) realProc() bool { return r.procRoot() == DefaultProcRoot }

// ancestry walks up from the process whose stat is child. Each ancestor's
// stat is read after its exe and cmdline and must show a start time no
// later than its child's; otherwise the parent has exited and its pid was
// reused, and the walk stops. The walk also stops at pid 1 (not included)
// and at the first unreadable stat.
func (r *Resolver) ancestry(child procStat) []Process {
	depth := r.AncestryDepth
	if depth == 0 {
		depth = DefaultAncestryDepth
	}
	var out []Process
	for len(out) < depth {
		pid := child.PPID
		if pid <= 1 {
			break
		}
		exe, _ := os.Readlink(r.procPath(pid, "exe"))
		cmd, cmdErr := r.readCmdLine(pid)
		st, err := r.readStat(pid)
		if err != nil || st.StartTime > child.StartTime {
			break
		}
		if cmdErr != nil {
			cmd = Undefined
		}
		out = append(out, Process{PID: pid, Exe: exe, CmdLine: cmd})
		child = st
	}
	return out
}

func (r *Resolver) procPath(pid uint32, file string) string {
	return r.procRoot() + "/" + strconv.FormatUint(uint64(pid), 10) + "/" + file
}

// procRoot is ProcRoot, or DefaultProcRoot when that is empty.
func (r *Resolver) procRoot() string {
	if r.ProcRoot == "" {
		return DefaultProcRoot
	}
	return r.ProcRoot
}

func (r *Resolver) maxCmdLine() int {
	if r.MaxCmdLine > 0 {
		return r.MaxCmdLine
	}
	return DefaultMaxCmdLine
}

// validUTF8 returns s with invalid UTF-8 replaced.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
