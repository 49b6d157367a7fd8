package agent

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/opengpa/gpa/manifest"

	"golang.org/x/sys/unix"
)

// isCgroup2 reports whether dir is a directory of a cgroup v2 hierarchy.
func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC
}

// CPUQuota is the CPU quota the agent puts on its own systemd unit once
// provisioning finishes, as upstream does. It is the value
// HandlerManifest.json asks waagent for, so the two never fight.
var CPUQuota = strconv.Itoa(manifest.AgentCPUQuotaPercentage) + "%"

// setCPUQuota applies CPUQuota to azure-proxy-agent.service when the agent
// runs as that systemd unit (systemd is PID 1 and set INVOCATION_ID);
// elsewhere, e.g. under the extension's supervisor, it does nothing.
func setCPUQuota(log *slog.Logger) {
	if _, err := os.Stat("/run/systemd/system"); err != nil || os.Getenv("INVOCATION_ID") == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// --runtime: the drop-in goes to /run, so nothing of it outlives the
	// unit (uninstall removes the unit; the agent sets it at every start).
	out, err := exec.CommandContext(ctx, "systemctl", "set-property", "--runtime", manifest.ServiceUnit, "CPUQuota="+CPUQuota).CombinedOutput()
	if err != nil {
		log.Warn("setting CPU quota", "error", err, "output", string(out))
		return
	}
	log.Info("CPU quota set", "quota", CPUQuota)
}

// releaseStartupMemory returns the heap that start-up needed only once
// (loading and verifying the eBPF collection, BTF, the first rules) to
// the operating system, so idle RSS is what the agent keeps using. It
// waits a moment for start-up garbage to become unreachable; the first
// collection also runs cleanups such as unmapping kernel BTF.
func releaseStartupMemory() {
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	time.Sleep(50 * time.Millisecond) // let cleanups queued by that cycle run
	debug.FreeOSMemory()
}

// GCPercent is the garbage collector's GOGC value the agent uses when its
// environment sets none. Each request allocates a few kilobytes (HTTP
// parsing, signing, audit); with Go's default of 100 and a live heap of a
// few megabytes the collector ran every few tens of milliseconds under
// load, and its mark phase, competing for the VM's CPUs, showed in p99
// latency and CPU per request. 200 halves the collections for about
// 4 MiB more RSS under load (400 measured no better and cost 13 MiB);
// releaseWhenIdle returns the memory once requests stop.
const GCPercent = 200

// IdleRelease is how long the listener must serve no request, after
// serving some, before the agent returns freed memory to the system.
const IdleRelease = 30 * time.Second

// tuneGC sets GCPercent unless GOGC is set in the environment.
func tuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(GCPercent)
	}
}

// releaseWhenIdle calls release (debug.FreeOSMemory in the agent) once
// each time the request count, read every interval, has stopped changing
// after it changed, so memory grown under load goes back to the system
// when the load ends. It returns when ctx ends.
func releaseWhenIdle(ctx context.Context, count func() uint64, interval time.Duration, release func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := count()
	released := last
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := count()
		if n == last && n != released {
			release()
			released = n
		}
		last = n
	}
}
