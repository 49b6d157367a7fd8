// Package agent wires the proxy agent's parts into one running service: the
// eBPF redirector (kernel redirect and caller identity), the key keeper
// (secure channel with the WireServer), the authorizer, the signing proxy
// listener, the audit recorder, provisioning, the status writer and the
// telemetry pipeline.
//
// The data path reads top to bottom: redirector → identity record →
// listener → claims → authorizer → signer → upstream → audit record.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/opengpa/gpa/internal/pause"
	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/console"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/keykeeper"
	"github.com/opengpa/gpa/proxyagent/logfile"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/provision"
	"github.com/opengpa/gpa/proxyagent/proxy"
	"github.com/opengpa/gpa/proxyagent/redirector"
	"github.com/opengpa/gpa/proxyagent/status"
	"github.com/opengpa/gpa/proxyagent/telemetry"
)

// Options configure Run.
type Options struct {
	Config  config.Config
	Version string
	// Identity replaces the eBPF redirector as the identity source when set
	// (tests that run without the kernel hooks); the redirector is then not
	// loaded and ebpfProgramStatus reports it as replaced.
	Identity identity.Source
	// Stdout and Stderr receive the log lines at the system-events level
	// (fileLogLevelForSystemEvents): errors on Stderr, the others on Stdout
	// (§7.2); nil: os.Stdout, os.Stderr.
	Stdout, Stderr io.Writer
	// Ready, when set, is called once the listener is bound, with its
	// address.
	Ready func(addr string)
}

// Run starts the agent and blocks until ctx is cancelled, then shuts down.
// The pinned eBPF programs stay attached after Run returns, so while the
// agent is down redirected connections are refused rather than sent
// directly to the host unsigned.
func Run(ctx context.Context, opts Options) error {
	start := time.Now()
	cfg := opts.Config
	// Log lines queue as telemetry events from the start; they are sent
	// once the event threads start (provisioning finished).
	var events *telemetry.Queue
	if cfg.SendTelemetry {
		events = telemetry.NewQueue(opts.Version)
	}
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	log, closeLogs, err := openLogs(cfg, stdout, stderr, events)
	if err != nil {
		return err
	}
	defer closeLogs()
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w)
	}
	socketMark, listenerMark := marks(cfg, opts.Identity != nil)
	if socketMark != cfg.SocketMark {
		log.Warn("config", "warning", fmt.Sprintf("socketMark 0 would let the kernel hooks redirect the agent's own connections to itself; using %#x", socketMark))
		cfg.SocketMark = socketMark
	}
	log.Info("GuestProxyAgent is starting", "version", opts.Version, "pid", os.Getpid())
	con := console.New(cfg.ConsoleLog, opts.Version)
	machine := telemetry.LocalMachine() // read once: the start line and every telemetry event
	con.Line(console.StartMessage(opts.Version, machine.OSVersion, machine.Arch, time.Since(start)))
	tuneGC()

	dest, err := cfg.Endpoints()
	if err != nil {
		return err
	}
	for _, dir := range []string{cfg.StatusFolder, cfg.LogFolder} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
		}
	}

	reg := status.NewRegistry()
	store := authz.NewStore(authz.StoreConfig{RulesDir: cfg.RulesFolder(),
		RootContainersToWireServer: cfg.AllowRootContainersToWireServer,
		SnapshotDir:                cfg.StatusFolder, Logger: log.With("module", "authz")})
	if err := authz.PrepareRulesDir(cfg.RulesFolder()); err != nil {
		log.Error("rules folder", "error", err)
	}
	connLevel, _ := logfile.ParseLevel(cfg.FileLogLevel)
	sysw := openSyslog(cfg, log)
	defer sysw.Close()
	rec, err := audit.New(audit.Options{Dir: cfg.LogFolder, ConnLogLevel: connLevel, Logger: log.With("module", "audit"),
		Sink: sysw.sink(), OnNewSummary: summaryEvents(events), Mirror: connMirror(cfg, stdout, stderr, events)})
	if err != nil {
		return fmt.Errorf("agent: audit log: %w", err)
	}
	defer rec.Close()

	// The key keeper and provisioning refer to each other; kk is set
	// before either runs.
	var kk *keykeeper.KeyKeeper
	eventsStart := make(chan struct{}) // closed when provisioning first finishes
	prov := provision.New(provision.Options{
		Dir: cfg.LatchKeyFolder, Registry: reg,
		State:   func() string { return kk.State() },
		Notify:  func() { kk.Notify() },
		Console: func(msg string) { log.Info(msg, "module", "provision"); con.Line(msg) },
		OnFinished: func() {
			close(eventsStart)
			go releaseStartupMemory()
			setCPUQuota(log)
		},
		Logger: log.With("module", "provision"),
	})

	var (
		source  identity.Source
		redir   *redirector.Redirector
		policer keykeeper.Redirector
	)
	apart := containersApart() // the kernel tells containers apart: they get their own share of the slots
	var cgroupRoot string
	if opts.Identity != nil {
		source = opts.Identity
		// No kernel redirect, so no container listener either (and no
		// address added to the caller's namespace).
		dest.ContainerListener = netip.AddrPort{}
		reg.Set(status.EbpfProgram, status.Running, "Identity source supplied by the caller; eBPF redirector not loaded")
		prov.RedirectorReady()
	} else {
		containerNote := setUpContainerListener(&dest, apart, log)
		// A listen() without a bind must never be given a listener's port
		// while the agent is down (the bind guard cannot see it).
		if err := redirector.ReservePorts(dest.Listener.Port(), dest.ContainerListener.Port()); err != nil {
			log.Warn("listener ports could not be reserved (ip_local_reserved_ports)", "error", err)
		}
		redir, err = loadRedirector(cfg, dest, apart, start, log)
		if err != nil {
			// Without the kernel hooks nothing is redirected; the listener
			// still answers local endpoints and every other connection is
			// direct (421). The status says why.
			reg.Set(status.EbpfProgram, status.Stopped, redirectorFailure(err))
			log.Error("redirector", "error", err)
			source = identity.SourceFunc(func(_, _ netip.AddrPort) (identity.Record, bool) { return identity.Record{}, false })
		} else {
			defer redir.Close()
			source, policer = redir, redir
			st := redir.Status()
			reg.Set(status.EbpfProgram, status.ModuleState(st.State), st.Message+containerNote)
			if status.ModuleState(st.State) == status.Running {
				con.Line(st.Message)
			}
			prov.RedirectorReady()
			cgroupRoot, _ = redirector.Cgroup2Root()
		}
	}

	var srv *proxy.Server
	mx := newMetrics(cfg, opts.Version, &kk, &srv, store, rec, sysw, reg, redir)
	kk, err = keykeeper.New(keykeeper.Options{
		WireServer: cfg.WireServerAddress, KeyDir: cfg.LatchKeyFolder, Mark: cfg.SocketMark,
		PollInterval: cfg.PollInterval(), ProvisionTimeout: cfg.ProvisionTimeout(),
		RequestTimeout: cfg.HostRequestTimeout(),
		Rules:          store, Redirector: policer, Provisioning: prov,
		OnChange: mx.onChange(func(st *keykeeper.State) { reg.SetStatus(status.KeyLatch, st.ModuleStatus()) }),
		OnPoll:   mx.onPoll(), Start: start, Logger: log.With("module", "keykeeper"),
		Startup: func(msg string) { con.Line(msg) },
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	reg.SetStatus(status.KeyLatch, kk.Status())

	reporter := &status.Reporter{Registry: reg, Version: opts.Version, Summaries: rec}
	srv, err = proxy.New(proxy.Options{
		Addr: cfg.ListenAddress, Endpoints: dest, Identity: source, Claims: &claims.Resolver{CgroupRoot: cgroupRoot}, Authorizer: store, Keys: kk,
		Recorder: rec, Local: local{prov, reporter}, Metrics: mx.proxy(),
		Logger: log.With("module", "proxy"),
		ListenerStatus: func(running bool, msg string) {
			if running {
				reg.Set(status.ProxyListener, status.Running, msg)
				con.Line(msg)
				prov.ListenerReady()
				return
			}
			reg.Set(status.ProxyListener, status.Stopped, msg)
		},
		Start:             start,
		DialUpstream:      hostconn.DialContext(cfg.SocketMark, cfg.HostRequestTimeout()),
		ListenerMark:      listenerMark,
		ReadHeaderTimeout: cfg.HeaderReadTimeout(), IdleTimeout: cfg.IdleTimeout(),
		MaxHeaderBytes: cfg.MaxHeaderBytes, MaxConns: cfg.MaxConnections, MaxConnsPerCaller: cfg.MaxConnectionsPerCaller,
		OneConnectionPool: !apart,
		ResponseTimeout:   cfg.HostRequestTimeout(),
		BindRetryInterval: bindRetryInterval,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	reporter.ConnectionsCount = srv.RequestCount

	writer := &status.Writer{Reporter: reporter, Path: cfg.StatusFile(), Interval: cfg.StatusInterval(),
		Logger: log.With("module", "status")}
	var tel *telemetry.Telemetry
	if events != nil {
		tel = telemetry.New(telemetry.Options{Queue: events, Version: opts.Version,
			WireServer: cfg.WireServerAddress, IMDS: cfg.IMDSAddress, Mark: cfg.SocketMark,
			RequestTimeout: cfg.HostRequestTimeout(), Now: kk.Now, Key: kk.Key,
			EventFolder: cfg.EventFolder, MaxEventFiles: eventFileCap(cfg.MaxEventFileCount), Machine: &machine,
			Status: func() status.AgentStatus { return reporter.Aggregate().ProxyAgentStatus },
			Logger: log})
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(6)
	go func() { defer wg.Done(); runTelemetry(ctx, tel, eventsStart, reg) }()
	go func() { defer wg.Done(); mx.serve(ctx, cfg, log) }()
	go func() { defer wg.Done(); kk.Run(ctx) }()
	go func() { defer wg.Done(); releaseWhenIdle(ctx, srv.RequestCount, IdleRelease, debug.FreeOSMemory) }()
	// status.json is written from the start, not only once provisioning
	// finished as upstream does, so a reader never sees a stale file from an
	// earlier run (documented deviation).
	go func() { defer wg.Done(); writer.Run(ctx) }()
	go func() {
		defer wg.Done()
		// The listener opens after the key keeper's first poll: on a
		// restart the pinned programs still redirect, and a request
		// accepted before the rules and the latched key are reloaded would
		// be forwarded unsigned. Until then redirected connects are
		// refused (fail closed).
		select {
		case <-kk.FirstPoll():
		case <-ctx.Done():
			return
		}
		if err := serve(ctx, srv, opts.Ready, log); err != nil {
			log.Error("proxy listener stopped", "error", err)
			errc <- err
			cancel()
		}
	}()
	<-ctx.Done()
	wg.Wait()
	if redir != nil {
		reg.Set(status.EbpfProgram, status.Stopped, "Agent stopped; redirect programs stay pinned")
	} else {
		reg.SetState(status.EbpfProgram, status.Stopped)
	}
	_ = writer.WriteOnce()
	log.Info("GuestProxyAgent stopped")
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// openLogs returns the agent logger: ProxyAgent.log in the log folder at
// fileLogLevel, stdout (below Error) and stderr (Error) at
// fileLogLevelForSystemEvents (Error when absent), and telemetry events at
// fileLogLevelForEvents when it is set and events is not nil.
func openLogs(cfg config.Config, stdout, stderr io.Writer, events *telemetry.Queue) (*slog.Logger, func(), error) {
	sysLevel, eventLevel := logLevels(cfg)
	handlers := []slog.Handler{logfile.NewHandler(stderr, logfile.SlogLevel(logfile.Error))}
	if sysLevel != logfile.Error {
		handlers = append(handlers, belowLevel{logfile.NewHandler(stdout, logfile.SlogLevel(sysLevel)), logfile.SlogLevel(logfile.Error)})
	}
	if events != nil && eventLevel != 0 {
		handlers = append(handlers, telemetry.LogHandler(events, logfile.SlogLevel(eventLevel)))
	}
	closeFn := func() {}
	if cfg.LogFolder != "" {
		if err := os.MkdirAll(cfg.LogFolder, 0o755); err != nil {
			return nil, nil, fmt.Errorf("agent: log folder: %w", err)
		}
		w, err := logfile.Open(filepath.Join(cfg.LogFolder, "ProxyAgent.log"), logfile.Options{})
		if err != nil {
			return nil, nil, fmt.Errorf("agent: %w", err)
		}
		fileLevel, _ := logfile.ParseLevel(cfg.FileLogLevel)
		handlers = append(handlers, logfile.NewHandler(w, logfile.SlogLevel(fileLevel)))
		closeFn = func() { _ = w.Close() }
	}
	return slog.New(slog.NewMultiHandler(handlers...)), closeFn, nil
}

// logLevels returns the most verbose levels of the system log
// (fileLogLevelForSystemEvents; Error when absent or unknown) and of log
// events (fileLogLevelForEvents; 0, none, when absent or unknown).
func logLevels(cfg config.Config) (system, events logfile.Level) {
	system = logfile.Error
	if cfg.FileLogLevelForSystemEvents != "" {
		if l, err := logfile.ParseLevel(cfg.FileLogLevelForSystemEvents); err == nil {
			system = l
		}
	}
	if cfg.FileLogLevelForEvents != "" {
		if l, err := logfile.ParseLevel(cfg.FileLogLevelForEvents); err == nil {
			events = l
		}
	}
	return system, events
}

// connMirror returns where connection-log lines go besides their file, as
// the agent's own log lines go (§4.8): the system log at
// fileLogLevelForSystemEvents and telemetry at fileLogLevelForEvents (none
// when events is nil).
func connMirror(cfg config.Config, stdout, stderr io.Writer, events *telemetry.Queue) audit.Mirror {
	sysLevel, eventLevel := logLevels(cfg)
	m := audit.Mirror{Out: stdout, Err: stderr, OutLevel: sysLevel}
	if events != nil && eventLevel != 0 {
		m.Event, m.EventLevel = events.AddConnectionLine, eventLevel
	}
	return m
}

// runTelemetry runs the telemetry pipeline (nil when sendTelemetry is
// off) from the moment the event threads start — provisioning finished,
// as upstream starts them — until ctx ends. telemetryLoggerStatus gets
// upstream's message and keeps its UNKNOWN state (§5.1).
func runTelemetry(ctx context.Context, tel *telemetry.Telemetry, start <-chan struct{}, reg *status.Registry) {
	if tel == nil {
		return
	}
	select {
	case <-start:
	case <-ctx.Done():
		return
	}
	reg.SetMessage(status.TelemetryLogger, telemetry.StartedMessage)
	tel.Run(ctx)
}

// loadRedirector loads the eBPF programs, retrying briefly as upstream does
// (5 attempts, 10 ms apart).
func loadRedirector(cfg config.Config, d msp.Endpoints, apart bool, start time.Time, log *slog.Logger) (*redirector.Redirector, error) {
	rc := redirector.Config{
		CgroupPath: cgroupPath(cfg.CgroupRoot),
		PinDir:     cfg.BpfPinPath,
		Endpoints:  d,
		Mark:       cfg.SocketMark,
		// The kernel refuses connects beyond the limits before they cost
		// the agent anything; the listener enforces them too.
		MaxConnsPerCaller: cfg.MaxConnectionsPerCaller,
		MaxLimitedConns:   ownShare(cfg, apart),
		Logger:            log.With("module", "redirector"),
		Started:           start,
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var r *redirector.Redirector
		if r, err = redirector.Load(rc); err == nil {
			return r, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, err
}

// marks returns the SO_MARK of the agent's own sockets and of its
// listeners. The sockets carry socketMark from the config, except that
// with the kernel hooks 0 (unmarked) would let them redirect the agent's
// own connections to the host to the agent itself, and hostconn.Mark,
// which redirector.Config.Mark takes for 0, is used. The listeners carry
// the same mark, which the hooks require of the socket they send connects
// to, also when loading the redirector failed (hooks pinned by an earlier
// run still check it); none when the caller supplied the identity source
// (noHooks: no kernel hooks).
func marks(cfg config.Config, noHooks bool) (sockets, listener uint32) {
	if noHooks {
		return cfg.SocketMark, 0
	}
	if cfg.SocketMark == 0 {
		return hostconn.Mark, hostconn.Mark
	}
	return cfg.SocketMark, cfg.SocketMark
}

// setUpContainerListener adds the container listener's address to the
// loopback device of the agent's namespace. When that fails, or the kernel
// cannot tell namespaces apart (apart false), the listener is dropped from
// dest, so the kernel refuses connects from other namespaces instead of
// sending them anywhere, and the returned note (for ebpfProgramStatus)
// says why.
func setUpContainerListener(dest *msp.Endpoints, apart bool, log *slog.Logger) string {
	ca := dest.ContainerListener
	if !ca.IsValid() {
		return "; containers (other network namespaces) refused: no containerListenAddress"
	}
	if !apart {
		// The hooks cannot send anything there (they cannot tell a
		// container's socket from the VM's), so the listener would only
		// take direct connections: none is opened.
		dest.ContainerListener = netip.AddrPort{}
		return "; containers (other network namespaces) not served: this kernel cannot tell network namespaces apart (SO_NETNS_COOKIE, Linux 5.14)"
	}
	if err := redirector.AddLoopbackAddr(ca.Addr()); err != nil {
		dest.ContainerListener = netip.AddrPort{}
		log.Error("container listener address could not be set up; connects from containers are refused", "addr", ca.String(), "error", err)
		return fmt.Sprintf("; containers (other network namespaces) refused: cannot add %s to lo: %v", ca.Addr(), err)
	}
	return ""
}

// cgroupPath chooses where the programs attach: cgroupRoot from the config
// when it is a cgroup v2 directory, else the root of the cgroup v2 mount
// (redirector.Load finds it). On Azure images both are /sys/fs/cgroup.
func cgroupPath(configured string) string {
	if configured != "" && isCgroup2(configured) {
		return configured
	}
	return ""
}

// listenRetry is how long the agent waits to bind its listener again once
// a bind failed (after §4.1's own retries; proxyListenerStatus is STOPPED
// with the error meanwhile). Upstream leaves the listener stopped for the
// rest of the process's life; the agent, like upstream, keeps its other
// modules running (the key keeper polls, status.json is written), and
// unlike upstream binds again when the port is free. Until then redirected
// connects are refused: fail closed.
var listenRetry = 30 * time.Second

// bindRetryInterval is the pause between §4.1's bind retries (0: the
// proxy's default, 1 s); tests shorten it.
var bindRetryInterval time.Duration

// serve binds the listener (retrying as §4.1 says, then every listenRetry
// until it is bound or ctx ends), reports readiness, serves until ctx
// ends and then shuts down gracefully.
func serve(ctx context.Context, srv *proxy.Server, ready func(string), log *slog.Logger) error {
	for {
		err := srv.Listen()
		if err == nil {
			break
		}
		log.Error("proxy listener not bound; trying again later", "error", err, "retryIn", listenRetry.String())
		if !pause.For(ctx, listenRetry) {
			return nil
		}
	}
	if ready != nil {
		ready(srv.Addr().String())
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
		return nil
	}
}

// local answers the listener's own endpoints.
type local struct {
	prov     *provision.Provisioner
	reporter *status.Reporter
}

func (l local) Query(timeTick int64, notify bool) (bool, string) {
	return l.prov.Query(timeTick, notify)
}

func (l local) AggregateStatus() ([]byte, error) {
	return l.reporter.Aggregate().MarshalJSON()
}

// Telemetry names of a connection summary event (protocol.md §4.7).
const (
	summaryEventTask   = "log_connection_summary"
	summaryEventModule = "proxy_server"
)

// summaryEvents returns the recorder's OnNewSummary: each summary that
// opens a bucket becomes an Info telemetry event carrying its JSON, as
// upstream sends them; nil when telemetry is off.
func summaryEvents(q *telemetry.Queue) func(audit.Summary, bool) {
	if q == nil {
		return nil
	}
	return func(s audit.Summary, _ bool) { q.Add(summaryEvent(s)) }
}

func summaryEvent(s audit.Summary) telemetry.Event {
	b, _ := serdejson.Marshal(s) // a struct of strings, numbers and a string slice
	return telemetry.Event{EventLevel: logfile.Info.String(), Message: string(b), TaskName: summaryEventTask,
		OperationId: summaryEventModule}
}

// eventFileCap is telemetry.Options.MaxEventFiles for maxEventFileCount:
// the same, except that 0 (upstream: never store an overflow file) is
// telemetry's "none".
func eventFileCap(maxEventFileCount int) int {
	if maxEventFileCount == 0 {
		return -1
	}
	return maxEventFileCount
}

// belowLevel passes on only the records below a level (the rest go
// elsewhere).
type belowLevel struct {
	slog.Handler
	below slog.Level
}

func (h belowLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l < h.below && h.Handler.Enabled(ctx, l)
}

func (h belowLevel) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= h.below {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h belowLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return belowLevel{h.Handler.WithAttrs(attrs), h.below}
}

func (h belowLevel) WithGroup(name string) slog.Handler {
	return belowLevel{h.Handler.WithGroup(name), h.below}
}

// containersApart reports whether the kernel tells the agent's network
// namespace from containers' (a netns cookie, Linux 5.14 and later), so
// containers get their own share of the connection slots.
func containersApart() bool {
	_, err := redirector.NetnsCookie()
	return err == nil
}

// ownShare is the kernel's limit of the agent namespace's callers other
// than root together: their share of the connection slots (apart:
// containersApart).
func ownShare(cfg config.Config, apart bool) int {
	own, _ := proxy.ConnShares(cfg.MaxConnections, cfg.MaxConnectionsPerCaller, apart)
	return own
}
