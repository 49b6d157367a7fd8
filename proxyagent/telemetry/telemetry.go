package telemetry

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/opengpa/gpa/internal/pause"
	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/logfile"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Timing and sizes of the pipeline (§5.2, §6.1).
const (
	// QueueSize bounds each of the two queues.
	QueueSize = 1000
	// DrainInterval is how often queued events move to the sender.
	DrainInterval = 60 * time.Second
	// GenericFileEvery is how many drains pass between two reads of the
	// generic overflow files (the first read comes with the first drain):
	// every 300 s after 60 s. Extension-status files are read every drain.
	GenericFileEvery = 5
	// StatusInterval is how often the proxyAgentStatus event is made; the
	// first comes one interval after Run starts.
	StatusInterval = 15 * time.Minute
	// SendAttempts and RetryDelay: a batch is posted up to SendAttempts
	// times, RetryDelay apart, then dropped.
	SendAttempts = 5
	RetryDelay   = 15 * time.Second
	// DefaultRequestTimeout bounds each host call when Options gives none.
	DefaultRequestTimeout = 10 * time.Second
)

// StartedMessage is telemetryLoggerStatus' message once Run has started
// (§5.1); the module's state stays UNKNOWN, as upstream never sets it.
const StartedMessage = "Telemetry event logger thread started."

// Options configure a Telemetry. Queue is required, and WireServer and
// IMDS for Run.
type Options struct {
	// Queue is where producers put events (NewQueue).
	Queue *Queue
	// Version is the agent's version: the status event's Version and
	// GAVersion.
	Version string
	// WireServer and IMDS are the host:port of the two services.
	WireServer, IMDS string
	// Mark is the SO_MARK of the sockets (0 = unmarked), as hostconn.Dialer.
	Mark uint32
	// RequestTimeout bounds each host call (DefaultRequestTimeout when 0).
	RequestTimeout time.Duration
	// Dial overrides the dialer (tests); nil uses hostconn.Dialer(Mark).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the host-synced clock of x-ms-azure-host-date (the key
	// keeper's); nil means time.Now. Event timestamps use the local clock.
	Now func() time.Time
	// Key returns the latched key, nil when there is none; it signs the
	// metadata calls. Nil means never sign.
	Key func() *msp.Key
	// EventFolder receives overflow files; "" drops overflow.
	EventFolder string
	// MaxEventFiles caps generic overflow files (DefaultMaxEventFiles when
	// 0; none when negative: overflow events are dropped, status events
	// still kept up to their own cap).
	MaxEventFiles int
	// Machine is the local facts every event carries; nil reads them with
	// LocalMachine when Run starts.
	Machine *Machine
	// Status returns the proxyAgentStatus object for the status event;
	// nil sends no status events.
	Status func() status.AgentStatus
	// Logger receives the pipeline's own messages; slog.Default() when nil.
	Logger *slog.Logger
}

// Counts are the pipeline's totals since New.
type Counts struct {
	// Sent: events in batches the host accepted.
	Sent uint64
	// Dropped: events lost before a send was tried — the producer queue
	// was full, overflow found no room in the event folder, or an event
	// was too large for a batch.
	Dropped uint64
	// Failed: events in batches the host refused SendAttempts times.
	Failed uint64
	// Queued: events waiting now, in memory, in both queues.
	Queued int
}

// Queue is the producers' queue (QueueSize events): Add, AddStatus and
// LogHandler put events in from any goroutine, a Telemetry's Run takes
// them out. When it is full the newest event is dropped and counted. Its
// mutex owns the events and the count.
type Queue struct {
	version string

	mu      sync.Mutex
	items   []item
	dropped uint64
}

// NewQueue returns an empty queue; version is the agent's version, the
// Version of events that name none.
func NewQueue(version string) *Queue { return &Queue{version: version} }

// Add queues a generic event. Empty Version, EventPid, EventTid and
// TimeStamp are filled in; the message is cleaned (CleanMessage).
func (q *Queue) Add(e Event) {
	q.fill(&e.Version, &e.EventPid, &e.EventTid, &e.TimeStamp)
	e.clean()
	q.put(item{generic: &e})
}

// AddConnectionLine queues a connection-log line (msg, the text after its
// header) as upstream's connection logger does: an event at the line's
// level, task ConnectionLogger, module ProxyAgent (§4.8, §6.1). When the
// queue is full it is counted as dropped before anything is made of it.
// It fits audit.Mirror's Event.
func (q *Queue) AddConnectionLine(l logfile.Level, t time.Time, msg []byte) {
	if q.dropIfFull() {
		return
	}
	q.Add(Event{EventLevel: l.String(), Message: string(msg), TaskName: TaskConnectionLogger,
		OperationId: ModuleProxyAgent, TimeStamp: timestamp(t)})
}

// AddStatus queues an extension-status event, filling in as Add does; its
// message is redacted.
func (q *Queue) AddStatus(e StatusEvent) {
	q.fill(&e.Version, &e.EventPid, &e.EventTid, &e.TimeStamp)
	e.clean()
	q.put(item{status: &e})
}

// fill sets the fields every event carries that the producer left empty:
// the agent's version, this process's pid, the calling thread's id and now.
func (q *Queue) fill(version, eventPid, eventTid, timeStamp *string) {
	if *version == "" {
		*version = q.version
	}
	if *eventPid == "" {
		*eventPid = pid
	}
	if *eventTid == "" {
		*eventTid = tid()
	}
	if *timeStamp == "" {
		*timeStamp = timestamp(time.Now())
	}
}

// put queues it, or drops a generic event when QueueSize events wait. A
// status event is always queued, so a storm of log lines cannot crowd out
// the 15-minute health report; there is one per 15 minutes, so this does
// not let the queue grow without bound.
func (q *Queue) put(it item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= QueueSize && it.status == nil {
		q.dropped++
		return
	}
	q.items = append(q.items, it)
}

// dropIfFull counts a generic event as dropped and reports true when
// QueueSize events wait, before the event is made.
func (q *Queue) dropIfFull() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) < QueueSize {
		return false
	}
	q.dropped++
	return true
}

// take removes and returns every queued event.
func (q *Queue) take() []item {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}

// counts returns the queue's length and drops.
func (q *Queue) counts() (queued int, dropped uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items), q.dropped
}

// Telemetry is the rest of the pipeline: Run drains the Queue into the
// sender's queue, spills and re-ingests overflow, and sends. Its mutex
// owns the sender's queue, the last metadata and the counts.
type Telemetry struct {
	opts     Options
	log      *slog.Logger
	ws, imds hostCaller
	dir      eventDir
	wake     chan struct{}

	mu       sync.Mutex
	pending  []item // the sender's queue
	metadata *Metadata
	counts   Counts
}

// New returns the pipeline for opts.Queue; nothing is sent before Run.
func New(opts Options) *Telemetry {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	switch {
	case opts.MaxEventFiles == 0:
		opts.MaxEventFiles = DefaultMaxEventFiles
	case opts.MaxEventFiles < 0:
		opts.MaxEventFiles = 0 // none (maxEventFileCount 0)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	dial := opts.Dial
	if dial == nil {
		dial = hostconn.Dialer(opts.Mark, opts.RequestTimeout).DialContext
	}
	client := func(addr string) *hostconn.Client {
		return &hostconn.Client{Addr: addr, Timeout: opts.RequestTimeout, Dial: dial, Now: opts.Now}
	}
	return &Telemetry{
		opts: opts,
		log:  opts.Logger.With(moduleKey, pipelineModule),
		ws:   client(opts.WireServer),
		imds: client(opts.IMDS),
		dir:  eventDir{path: opts.EventFolder, maxFiles: opts.MaxEventFiles},
		wake: make(chan struct{}, 1),
	}
}

// Counts returns the totals so far.
func (t *Telemetry) Counts() Counts {
	queued, dropped := t.opts.Queue.counts()
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts
	c.Queued = queued + len(t.pending)
	c.Dropped += dropped
	return c
}

// Run drains, re-ingests and sends until ctx ends, and makes the status
// event every StatusInterval when Options.Status is set.
func (t *Telemetry) Run(ctx context.Context) {
	if t.opts.Machine == nil {
		m := LocalMachine()
		t.opts.Machine = &m
	}
	t.log.Info(StartedMessage)
	var wg sync.WaitGroup
	wg.Go(func() { t.drainLoop(ctx) })
	wg.Go(func() { t.sendLoop(ctx) })
	if t.opts.Status != nil {
		wg.Go(func() { t.statusLoop(ctx) })
	}
	wg.Wait()
}

// drainLoop moves events to the sender every DrainInterval: first what
// the overflow files hold (oldest first, as room allows), then the
// producers' queue; what does not fit goes to a new overflow file.
func (t *Telemetry) drainLoop(ctx context.Context) {
	tick := time.NewTicker(DrainInterval)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.reingest(statusFiles)
		if n%GenericFileEvery == 0 {
			t.reingest(genericFiles)
		}
		t.drain()
		t.mu.Lock()
		work := len(t.pending) > 0
		t.mu.Unlock()
		if work {
			select {
			case t.wake <- struct{}{}:
			default:
			}
		}
	}
}

// reingest reads overflow files of kind k into the sender's queue.
func (t *Telemetry) reingest(k fileKind) {
	t.mu.Lock()
	room := QueueSize - len(t.pending)
	t.mu.Unlock()
	if room <= 0 {
		return
	}
	var got []item
	_, bad := t.dir.readInto(k, room, func(it item) { got = append(got, it) })
	if bad > 0 {
		t.log.Warn("unreadable telemetry event files deleted", "count", bad, "folder", t.dir.path)
	}
	t.mu.Lock()
	t.pending = append(t.pending, got...)
	t.mu.Unlock()
}

// drain moves the producers' queue into the sender's; the overflow is
// written to the event folder, one file per kind, or dropped.
func (t *Telemetry) drain() {
	in := t.opts.Queue.take()
	t.mu.Lock()
	room := max(QueueSize-len(t.pending), 0)
	take := min(room, len(in))
	t.pending = append(t.pending, in[:take]...)
	t.mu.Unlock()
	var generic []Event
	var stat []StatusEvent
	for _, it := range in[take:] {
		if it.generic != nil {
			generic = append(generic, *it.generic)
		} else {
			stat = append(stat, *it.status)
		}
	}
	lost := 0
	if len(generic) > 0 {
		lost += t.spill(genericFiles, generic, len(generic))
	}
	if len(stat) > 0 {
		lost += t.spill(statusFiles, stat, len(stat))
	}
	if lost > 0 {
		t.mu.Lock()
		t.counts.Dropped += uint64(lost)
		t.mu.Unlock()
	}
}

// spill writes n events to an overflow file and returns how many were
// lost.
func (t *Telemetry) spill(k fileKind, events any, n int) int {
	kept, err := t.dir.write(k, events, time.Now())
	if err != nil {
		t.log.Warn("telemetry overflow not written", "error", err)
	}
	if kept {
		return 0
	}
	return n
}

// sendLoop sends whenever the drain loop finds work.
func (t *Telemetry) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		}
		t.sendRound(ctx)
	}
}

// sendRound refreshes the metadata, then sends the sender's queue in
// batches until it is empty. Without metadata, now or from an earlier
// round, nothing is sent and the events stay queued.
func (t *Telemetry) sendRound(ctx context.Context) {
	var key *msp.Key
	if t.opts.Key != nil {
		key = t.opts.Key()
	}
	md, err := fetchMetadata(ctx, t.ws, t.imds, key)
	t.mu.Lock()
	if err == nil {
		t.metadata = &md
	}
	have := t.metadata
	t.mu.Unlock()
	if err != nil {
		t.log.Warn("VM metadata not refreshed for telemetry", "error", err)
	}
	if have == nil {
		return
	}
	vm := &VMData{Metadata: *have, Machine: *t.opts.Machine}
	for ctx.Err() == nil {
		t.mu.Lock()
		items := t.pending
		t.pending = nil
		t.mu.Unlock()
		if len(items) == 0 {
			return
		}
		batches, tooLarge := encodeBatches(items, vm, t.opts.Version)
		if tooLarge > 0 {
			t.log.Warn("telemetry events too large for a batch dropped", "count", tooLarge)
		}
		var sent, failed uint64
		for _, b := range batches {
			if t.post(ctx, b.xml) {
				sent += uint64(b.events)
			} else {
				failed += uint64(b.events)
			}
		}
		t.mu.Lock()
		t.counts.Sent += sent
		t.counts.Failed += failed
		t.counts.Dropped += uint64(tooLarge)
		t.mu.Unlock()
		if failed > 0 {
			t.log.Warn("telemetry events dropped after failed sends", "events", failed, "attempts", SendAttempts)
		}
		t.log.Debug("telemetry sent", "events", sent, "batches", len(batches))
	}
}

// post sends one batch, up to SendAttempts times RetryDelay apart; any 2xx
// is success. The upload is never signed.
func (t *Telemetry) post(ctx context.Context, doc []byte) bool {
	fields := []msp.Field{
		{Name: msp.HeaderVersion, Value: msp.WireServerAPIVersion},
		{Name: "content-type", Value: msp.TelemetryContentType},
	}
	for attempt := 1; ; attempt++ {
		r, err := t.ws.Do(ctx, http.MethodPost, msp.TelemetryDataPath, fields, doc, nil)
		if err == nil && r.OK() {
			return true
		}
		if err == nil {
			t.log.Debug("telemetry upload refused", "attempt", attempt, "status", r.Code)
		} else {
			t.log.Debug("telemetry upload failed", "attempt", attempt, "error", err)
		}
		if attempt == SendAttempts {
			return false
		}
		if !pause.For(ctx, RetryDelay) {
			return false
		}
	}
}

// statusLoop makes the proxyAgentStatus event every StatusInterval
// (§5.2): the object's JSON as the message, success when the overall
// status is SUCCESS, the duration the time since the previous one.
func (t *Telemetry) statusLoop(ctx context.Context) {
	tick := time.NewTicker(StatusInterval)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st := t.opts.Status()
		msg, err := serdejson.Marshal(st) // as upstream's serde_json: '&' kept, so redaction sees it
		if err != nil {
			t.log.Warn("proxyAgentStatus not encoded", "error", err)
			continue
		}
		now := time.Now()
		t.opts.Queue.AddStatus(StatusEvent{
			Name: msp.ServiceName, Version: t.opts.Version, ExtensionType: StatusExtensionType, IsInternal: true,
			Operation: StatusOperation, TaskName: StatusTaskName, OperationSuccess: st.Status == status.Success,
			Message: string(msg), DurationMS: uint64(now.Sub(last).Milliseconds()),
		})
		last = now
	}
}
