package nspawn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
)

// Available reports what is missing to boot a machine: root, a cgroup v2
// mount and the systemd-nspawn, debootstrap and nsenter programs
// (scripts/deps.sh installs them: systemd-container, debootstrap,
// util-linux).
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("nspawn: needs root (euid %d)", os.Geteuid())
	}
	if _, err := testenv.Cgroup2Mount(); err != nil {
		return fmt.Errorf("nspawn: needs cgroup v2: %w", err)
	}
	for _, p := range []string{"systemd-nspawn", "debootstrap", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("nspawn: %s not installed (scripts/deps.sh installs it): %w", p, err)
		}
	}
	return nil
}

// Config describes one machine.
type Config struct {
	// Binds are host directories bound into the machine at the same path,
	// so a path means the same file inside and outside (binaries, configs,
	// logs the test reads).
	Binds []string
	// Logf, when not nil, receives progress (a root file system build).
	Logf func(string, ...any)
}

// Machine is a booted Debian system with systemd as PID 1.
type Machine struct {
	// Name is the machine (host) name.
	Name string
	// Leader is the host pid of the machine's PID 1 (systemd).
	Leader int
	// Cgroup is the group the test created for the machine; systemd-nspawn
	// runs in it and the machine's systemd manages the subtree at Root.
	Cgroup *testenv.Cgroup
	// Root is the host path of the machine's cgroup namespace root (what
	// the machine sees as its cgroup v2 mount).
	Root string

	lock    *rootfsLock
	nspawn  *exec.Cmd
	done    chan struct{}
	logPath string
	logFile *os.File
	tmpDir  string
}

var seq atomic.Uint64

// Boot starts systemd-nspawn on the cached root file system (building it
// first if needed) and returns once the machine's systemd reports
// "running" (or "degraded") and a private bpffs is mounted on
// /sys/fs/bpf inside. The machine has its own network namespace with only
// a loopback device (--private-network), a throw-away overlay over the
// cached tree (--volatile=overlay), the bpf() system call allowed
// (--system-call-filter=bpf), and runs in a cgroup the test created
// (--keep-unit --register=no), never the machine's cgroup2 root. On error
// everything created is removed.
func Boot(ctx context.Context, cfg Config) (_ *Machine, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	sweepStale()
	m := &Machine{Name: fmt.Sprintf("%s%d-%d", namePrefix, os.Getpid(), seq.Add(1)), done: make(chan struct{})}
	defer func() {
		if err != nil {
			if cerr := m.Close(); cerr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
			}
		}
	}()
	if m.lock, err = rootfs(ctx, cfg.Logf); err != nil {
		return nil, err
	}
	if m.Cgroup, err = testenv.CreateCgroup(m.Name); err != nil {
		return nil, err
	}
	if m.tmpDir, err = os.MkdirTemp("", m.Name+"-"); err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	m.logPath = filepath.Join(m.tmpDir, "console.log")
	if m.logFile, err = os.Create(m.logPath); err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	args := []string{"--quiet", "--directory=" + CacheDir, "--volatile=overlay", "--machine=" + m.Name,
		"--keep-unit", "--register=no", "--private-network", "--system-call-filter=bpf", "--console=passive"}
	for _, b := range cfg.Binds {
		args = append(args, "--bind="+b)
	}
	args = append(args, "--boot")
	m.nspawn = exec.Command("systemd-nspawn", args...)
	m.nspawn.Stdout, m.nspawn.Stderr = m.logFile, m.logFile
	m.nspawn.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	// A test process that dies without Close (killed, timed out) takes
	// the machine down with it: SIGTERM makes systemd-nspawn power it
	// off. What is left then (the empty group) the next Boot sweeps.
	m.nspawn.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err = testenv.Start(m.nspawn, testenv.Options{Cgroup: m.Cgroup}); err != nil {
		return nil, fmt.Errorf("nspawn: start systemd-nspawn: %w", err)
	}
	go func() { m.nspawn.Wait(); close(m.done) }()
	if err = m.findLeader(ctx); err != nil {
		return nil, err
	}
	if err = m.waitRunning(ctx); err != nil {
		return nil, err
	}
	// systemd-nspawn's /sys is a read-only tmpfs without fs/bpf: make the
	// mount point, then mount a bpffs of the machine's own.
	if _, err = m.Run(ctx, "sh", "-c", "mount -o remount,rw /sys && mkdir -p /sys/fs/bpf && mount -o remount,ro /sys && mount -t bpf -o mode=0700 bpf /sys/fs/bpf"); err != nil {
		return nil, err
	}
	return m, nil
}

// findLeader waits for the machine's PID 1 (the process in the group whose
// innermost pid is 1) and derives Root from its cgroup.
func (m *Machine) findLeader(ctx context.Context) error {
	for {
		if pid := findInit(m.Cgroup.Path); pid != 0 {
			cg, err := cgroupOf(pid)
			if err == nil {
				mnt, _ := testenv.Cgroup2Mount()
				// The leader's cgroup as the host sees it, minus what it sees
				// inside (/init.scope), is the namespace root.
				inside, err := m.insideCgroup(ctx, pid)
				if err == nil && strings.HasSuffix(cg, inside) {
					m.Leader = pid
					m.Root = filepath.Join(mnt, strings.TrimSuffix(cg, inside))
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nspawn: machine's PID 1 not found: %w\n%s", ctx.Err(), m.Console(20))
		case <-m.done:
			return fmt.Errorf("nspawn: systemd-nspawn exited: %v\n%s", m.nspawn.ProcessState, m.Console(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *Machine) insideCgroup(ctx context.Context, leader int) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(leader), "-C", "-p", "-m", "cat", "/proc/1/cgroup").Output()
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok && p != "/" {
			return p, nil
		}
	}
	return "", errors.New("nspawn: PID 1 has no cgroup v2 path yet")
}

// findInit returns the host pid of a process in the cgroup tree under dir
// whose innermost namespace pid is 1, or 0.
func findInit(dir string) int {
	pid := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || pid != 0 || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			if nsPID(n) == 1 {
				pid = n
				return filepath.SkipAll
			}
		}
		return nil
	})
	return pid
}

// nsPID returns the pid of host pid n in its innermost pid namespace (the
// last NSpid field of /proc/n/status), or 0.
func nsPID(n int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) < 2 {
				return 0 // not in a child pid namespace
			}
			x, _ := strconv.Atoi(f[len(f)-1])
			return x
		}
	}
	return 0
}

// cgroupOf returns the cgroup v2 path of pid relative to the mount.
func cgroupOf(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("nspawn: pid %d has no cgroup v2 path", pid)
}

func (m *Machine) waitRunning(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		// Until systemd has its bus socket, systemctl fails at once.
		out, err := m.Run(cctx, "systemctl", "is-system-running", "--wait")
		switch state := strings.TrimSpace(string(out)); state {
		case "running", "degraded": // degraded: a unit that does not fit a container failed
			return nil
		case "", "offline", "initializing", "starting":
		default:
			return fmt.Errorf("nspawn: machine is %q: %v\n%s", state, err, m.Console(30))
		}
		select {
		case <-cctx.Done():
			return fmt.Errorf("nspawn: machine not running: %v\n%s", err, m.Console(30))
		case <-m.done:
			return fmt.Errorf("nspawn: systemd-nspawn exited: %v\n%s", m.nspawn.ProcessState, m.Console(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Command returns a command that runs name with args inside the machine
// (every namespace of its PID 1, entered with nsenter -a), from the
// machine's cgroup namespace root, with a minimal environment plus env.
// Processes it starts are inside the machine's cgroup tree, so the eBPF
// programs attached at the machine's cgroup v2 root see their connects,
// and Close kills whatever they leave behind.
func (m *Machine) Command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(m.Leader), "-a", "--", name}, args...)...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}, env...)
	return cmd
}

// Start starts cmd, a command for the machine (see Command or Wrap), with
// its process placed in the machine's cgroup namespace root from its first
// instruction.
func (m *Machine) Start(cmd *exec.Cmd) error {
	dir, err := os.Open(m.Root)
	if err != nil {
		return fmt.Errorf("nspawn: %w", err)
	}
	defer dir.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	return cmd.Start()
}

// Wrap turns cmd, prepared to run on the host, into one that runs inside
// the machine: its path and arguments follow nsenter -a, its working
// directory is entered inside (--wd), its environment is kept. Start it
// with Start.
func (m *Machine) Wrap(cmd *exec.Cmd) {
	args := []string{"nsenter", "-t", strconv.Itoa(m.Leader), "-a"}
	if cmd.Dir != "" {
		args = append(args, "--wd="+cmd.Dir)
	}
	args = append(append(args, "--", cmd.Path), cmd.Args[1:]...)
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		nsenter = "/usr/bin/nsenter"
	}
	cmd.Path, cmd.Args = nsenter, args
	cmd.Dir = ""
}

// Run runs name with args inside the machine (see Command) and returns its
// standard output; a non-zero exit is an error quoting standard error.
func (m *Machine) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := m.Command(ctx, nil, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := m.Start(cmd); err != nil {
		return nil, fmt.Errorf("nspawn: start %s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("nspawn: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Console returns the last n lines systemd-nspawn and the machine's
// console printed.
func (m *Machine) Console(n int) string {
	b, _ := os.ReadFile(m.logPath)
	return tail(string(b), n)
}

// Close kills the machine and everything in its group, removes the group
// tree, the temporary directory and releases the root file system. The
// volatile overlay, the bpffs and every mount inside vanish with the
// machine's mount namespace.
func (m *Machine) Close() error {
	var errs []error
	if m.Cgroup != nil {
		errs = append(errs, removeTree(m.Cgroup.Path))
		if m.nspawn != nil && m.nspawn.Process != nil {
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
				errs = append(errs, errors.New("nspawn: systemd-nspawn did not exit"))
			}
		}
	}
	if m.logFile != nil {
		m.logFile.Close()
	}
	if m.tmpDir != "" {
		errs = append(errs, os.RemoveAll(m.tmpDir))
	}
	m.lock.release()
	return errors.Join(errs...)
}

// namePrefix starts every machine's name: namePrefix<test pid>-<n>, also
// the name of its cgroup and the start of its temporary directory's.
const namePrefix = "gpa-nspawn-"

// sweepStale removes what machines of test processes that ended without
// closing them left behind: their cgroup trees (any process still in them
// killed) and their temporary directories. A machine whose test process
// still runs is left alone.
func sweepStale() {
	stale := func(name string) bool {
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			return false
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			return false
		}
		err = syscall.Kill(pid, 0)
		return errors.Is(err, syscall.ESRCH)
	}
	if root, err := testenv.Cgroup2Mount(); err == nil {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.IsDir() && stale(e.Name()) {
				_ = removeTree(filepath.Join(root, e.Name()))
			}
		}
	}
	entries, _ := os.ReadDir(os.TempDir())
	for _, e := range entries {
		if e.IsDir() && stale(e.Name()) {
			_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// removeTree kills every process in the cgroup tree at dir (cgroup.kill
// is recursive) and removes its groups, deepest first.
func removeTree(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
			return fmt.Errorf("nspawn: kill %s: %w", dir, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return fmt.Errorf("nspawn: %w", err)
		}
		if strings.Contains(string(b), "populated 0") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nspawn: processes in %s do not exit", dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		for {
			err := os.Remove(dirs[i])
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("nspawn: remove %s: %w", dirs[i], err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
