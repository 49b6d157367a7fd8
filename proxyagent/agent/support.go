package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
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

// fanout sends every record to each handler that is enabled for it.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
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
	out, err := exec.CommandContext(ctx, "systemctl", "set-property", "azure-proxy-agent.service", "CPUQuota="+CPUQuota).CombinedOutput()
	if err != nil {
		log.Warn("setting CPU quota", "error", err, "output", string(out))
		return
	}
	log.Info("CPU quota set", "quota", CPUQuota)
}
