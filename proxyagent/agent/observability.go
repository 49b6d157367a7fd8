package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/keykeeper"
	"github.com/opengpa/gpa/proxyagent/metrics"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/proxy"
	"github.com/opengpa/gpa/proxyagent/redirector"
	"github.com/opengpa/gpa/proxyagent/status"
	"github.com/opengpa/gpa/proxyagent/syslog"
)

// syslogOut is the audit syslog writer, nil when auditSyslog is off; its
// methods accept a nil receiver.
type syslogOut struct{ w *syslog.Writer }

// openSyslog starts the audit syslog writer when auditSyslog is set.
func openSyslog(cfg config.Config, log *slog.Logger) *syslogOut {
	if cfg.AuditSyslog == "" {
		return nil
	}
	log.Info("audit records also go to syslog", "socket", cfg.AuditSyslog)
	return &syslogOut{syslog.New(syslog.Options{Path: cfg.AuditSyslog, Logger: log.With("module", "syslog")})}
}

func (s *syslogOut) sink() audit.Sink {
	if s == nil {
		return nil
	}
	return s.w
}

func (s *syslogOut) Close() {
	if s != nil {
		_ = s.w.Close()
	}
}

// agentMetrics is the metrics endpoint, nil when metricsListen is off; its
// methods accept a nil receiver.
type agentMetrics struct{ m *metrics.Metrics }

// newMetrics builds the metrics when metricsListen is set. kk and srv are
// read at scrape time (they are set once the key keeper and the proxy
// exist); redir is nil without the eBPF redirector.
func newMetrics(cfg config.Config, version string, kk **keykeeper.KeyKeeper, srv **proxy.Server, store *authz.Store,
	rec *audit.Recorder, sysw *syslogOut, reg *status.Registry, redir *redirector.Redirector) *agentMetrics {
	if network, _ := cfg.MetricsEndpoint(); network == "" {
		return nil
	}
	src := metrics.Sources{
		Version:    version,
		KeyLatched: func() bool { return *kk != nil && (*kk).Key() != nil },
		SecureChannel: func() (string, map[string]string) {
			if *kk == nil {
				return "Unknown", nil
			}
			m := (*kk).Modes()
			return m.State, map[string]string{string(msp.WireServer): string(m.WireServer),
				string(msp.IMDS): string(m.IMDS), string(msp.HostGAPlugin): string(m.HostGA)}
		},
		RuleEpoch:       func() uint64 { return store.Snapshot().Epoch() },
		AuditSuppressed: rec.Suppressed,
		Audit: func() []metrics.SinkCount {
			out := []metrics.SinkCount{{Sink: "file", Written: rec.Written(), Dropped: rec.Dropped()}}
			if sysw != nil {
				out = append(out, metrics.SinkCount{Sink: "syslog", Written: sysw.w.Written(), Dropped: sysw.w.Dropped()})
			}
			return out
		},
		Modules: func() map[string]string {
			out := map[string]string{}
			for _, m := range []status.Module{status.KeyLatch, status.EbpfProgram, status.ProxyListener} {
				out[m.String()] = string(reg.Get(m).Status)
			}
			return out
		},
	}
	src.ConnectionsRefused = func() map[string]uint64 {
		out := map[string]uint64{}
		if *srv != nil {
			out["caller_limit"], out["max_connections"] = (*srv).Refused()
		}
		if redir != nil {
			if n, all, err := redir.LimitRefusals(); err == nil {
				out["caller_limit_connect"], out["max_connections_connect"] = n, all
			}
		}
		return out
	}
	if redir != nil {
		src.IdentityMap = redir.IdentityMapUsage
	}
	return &agentMetrics{metrics.New(src)}
}

// proxy returns the proxy's metrics hook (nil when off).
func (a *agentMetrics) proxy() proxy.Metrics {
	if a == nil {
		return nil
	}
	return a.m
}

// onChange wraps the key keeper's change callback to follow the key latch.
func (a *agentMetrics) onChange(next func(*keykeeper.State)) func(*keykeeper.State) {
	if a == nil {
		return next
	}
	return func(st *keykeeper.State) {
		next(st)
		a.m.KeyLatched(st.Key != nil)
	}
}

// onPoll returns the key keeper's poll callback (nil when off).
func (a *agentMetrics) onPoll() func(error) {
	if a == nil {
		return nil
	}
	return func(err error) { a.m.Polled(err == nil, time.Now()) }
}

// serve runs the metrics endpoint until ctx ends. A listener that cannot
// be opened is logged and the agent runs on without metrics: metrics are
// for watching the agent, not part of what it enforces.
func (a *agentMetrics) serve(ctx context.Context, cfg config.Config, log *slog.Logger) {
	if a == nil {
		return
	}
	network, address := cfg.MetricsEndpoint()
	ln, err := metrics.Listen(network, address)
	if err != nil {
		log.Error("metrics endpoint not started", "listen", cfg.MetricsListen, "error", err)
		return
	}
	log.Info("metrics endpoint listening", "listen", network+":"+address)
	if err := a.m.Serve(ctx, ln); err != nil {
		log.Error("metrics endpoint stopped", "error", err)
	}
}
