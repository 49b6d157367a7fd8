package audit

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/logfile"
)

// File names in the log folder.
const (
	ConnectionLogName = "ProxyAgent.Connection.log"
	AuditLogName      = "ProxyAgent.Audit.jsonl"
	// LoggerDropped ends the lines of one request in the connection log.
	LoggerDropped = "------------------------ ConnectionLogger is dropped ------------------------"
)

// Defaults for Options.
const (
	DefaultFlushInterval  = 50 * time.Millisecond
	DefaultBatchDelay     = 20 * time.Millisecond
	DefaultBatchSize      = 16
	DefaultQueueSize      = 4096
	DefaultMaxSummaryKeys = 2048
)

// Options configures a Recorder; zero fields take the defaults.
type Options struct {
	// Dir is the log folder. "" writes no files (summaries only).
	Dir string
	// MaxFileSize and MaxFiles bound each log (10 MiB, 5 files).
	MaxFileSize int64
	MaxFiles    int
	// ConnLogLevel is the most verbose level written to the connection
	// log (upstream's fileLogLevel); 0 means Trace (everything).
	ConnLogLevel logfile.Level
	// FlushInterval is the longest a written line waits in the buffer
	// before it reaches the file (50 ms): a reader sees a request's lines
	// about BatchDelay+FlushInterval after it, and a busy agent writes the
	// files about 20 times a second. An idle agent does not wake for it.
	FlushInterval time.Duration
	// BatchDelay is the longest a queued event waits before the writer
	// goroutine wakes for it (20 ms, at most FlushInterval). The writer
	// also wakes once BatchSize jobs are queued. Batching spares the
	// request path a goroutine wake-up per request; the size bound keeps
	// each burst of writing short.
	BatchDelay time.Duration
	// BatchSize is the queue length that wakes the writer at once (16,
	// at most half of QueueSize).
	BatchSize int
	// QueueSize bounds the events waiting to be written (4096); when it is
	// full, events are counted as dropped instead of blocking Record.
	QueueSize int
	// CallerBurst and CallerRate are each unprivileged caller's record
	// budget (DefaultCallerBurst records, then DefaultCallerRate a
	// second; see budget.go); negative: no budget.
	CallerBurst, CallerRate int
	// MaxSummaryKeys bounds each summary table (2048 keys); a new key in a
	// full table evicts the least recently counted one.
	MaxSummaryKeys int
	// BucketDuration and MaxSummaryAge default to upstream's 15 min and
	// 4 h; tests shorten them.
	BucketDuration time.Duration
	MaxSummaryAge  time.Duration
	// Now is the clock of summaries and of events without a Time.
	Now func() time.Time
	// OnNewSummary, when set, receives each summary that opened a new
	// bucket (upstream sends these as telemetry events). It runs on the
	// writer goroutine, or on the caller of Record when the queue is full
	// and the record is dropped; it must not block.
	OnNewSummary func(s Summary, failedTable bool)
	// Logger receives the recorder's own problems (write errors, drops).
	Logger *slog.Logger
	// Sink, when set, also receives every audit record (syslog). It runs
	// on the writer goroutine and must not block.
	Sink Sink
	// Mirror copies connection-log lines to the system log and to
	// telemetry, as upstream's connection logger does (§4.8).
	Mirror Mirror
}

// Mirror says where connection-log lines go besides the file: upstream's
// connection logger sends each line it writes to the system log (stdout,
// errors to stderr) at fileLogLevelForSystemEvents and to telemetry at
// fileLogLevelForEvents, whatever fileLogLevel lets into the file. A
// request's line is mirrored at upstream's level for it (mirrorLevel),
// not at its file level. A summary line goes to the system log only (it
// is its own telemetry event, Options.OnNewSummary); the closing
// "ConnectionLogger is dropped" line goes nowhere else. Lines of callers
// over their record budget are not mirrored either. A zero level sends
// nothing.
type Mirror struct {
	// Out and Err receive the lines at or above OutLevel as the file has
	// them (header and text): Error lines Err, the others Out. They are
	// written with the log files, in writes that end at a line's end and
	// hold at most MirrorChunk bytes unless one line is longer, so that a
	// pipe others also write to never gets their lines cut into ours. A
	// writer that stops taking lines stalls the log files with it, until
	// the queue is full and events are dropped (counted).
	Out, Err io.Writer
	OutLevel logfile.Level
	// Event receives the lines at or above EventLevel, without their
	// header ("{httpID}[{tcpID}] - {message}"; msg is valid only during
	// the call). It runs on the writer goroutine and must not block.
	Event      func(level logfile.Level, t time.Time, msg []byte)
	EventLevel logfile.Level
}

// MirrorChunk is the largest write of mirrored lines: PIPE_BUF, the most
// a pipe writes in one piece.
const MirrorChunk = 4096

// Recorder records request outcomes: it keeps the two summary tables and
// writes ProxyAgent.Connection.log and the JSON-lines audit log. Record
// never blocks on disk: it updates the tables and hands the event to a
// writer goroutine through a bounded queue, which the writer drains in
// batches. Safe for concurrent use.
type Recorder struct {
	opts Options

	mu      sync.Mutex // guards conn and failed
	conn    *table
	failed  *table
	dropped atomic.Uint64 // events not written since start
	written atomic.Uint64 // audit records written since start
	lost    atomic.Uint64 // events not written since the last audit record
	// suppressed counts records not written because their caller was over
	// its budget; budget is nil without one (owned by the writer).
	suppressed atomic.Uint64
	budget     *budget

	qmu     sync.Mutex // guards closed, pending and spare
	closed  bool
	pending []job       // queued for the writer, at most QueueSize
	spare   []job       // the writer's last drained batch, for reuse
	wakeAt  int         // pending length that wakes the writer at once
	timer   *time.Timer // wakes the writer BatchDelay after the first queued job
	wake    chan struct{}
	done    chan struct{}

	// Owned by the writer goroutine after New.
	connLog  *logfile.Writer
	auditLog *logfile.Writer
	outBuf   []byte // mirrored lines for Mirror.Out and Mirror.Err
	errBuf   []byte
	seq      uint64
	prev     string
	lineBuf  []byte
	msgBuf   []byte // the connection-log message being written
	recBuf   []byte // the audit line being written
	rec      Record // the audit record being written
	// caller's claims in JSON: a connection's requests share one
	// *claims.Claims, which is never modified once recorded.
	caller     *claims.Claims
	callerJSON []byte
	addrs      [2]addrCache // see addrText
	errLimit   time.Time
}

// addrCache is an address and its text.
type addrCache struct {
	ap   netip.AddrPort
	text string
}

// job is one unit of work for the writer goroutine.
type job struct {
	ev       Event
	hasEvent bool
	// newSummaries opened a new bucket; failedTable tells their table.
	newSummaries []*Summary
	failedTable  []bool
	// raw connection-log line (ConnLog).
	level   logfile.Level
	httpID  uint64
	tcpID   uint64
	message string
}

// New starts a Recorder. With opts.Dir set it opens (creating) both logs
// in that folder.
func New(opts Options) (*Recorder, error) {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.BatchDelay <= 0 {
		opts.BatchDelay = DefaultBatchDelay
	}
	if opts.BatchDelay > opts.FlushInterval {
		opts.BatchDelay = opts.FlushInterval
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.CallerBurst == 0 {
		opts.CallerBurst = DefaultCallerBurst
	}
	if opts.CallerRate == 0 {
		opts.CallerRate = DefaultCallerRate
	}
	if opts.MaxSummaryKeys <= 0 {
		opts.MaxSummaryKeys = DefaultMaxSummaryKeys
	}
	if opts.BucketDuration <= 0 {
		opts.BucketDuration = BucketDuration
	}
	if opts.MaxSummaryAge <= 0 {
		opts.MaxSummaryAge = MaxSummaryAge
	}
	if opts.ConnLogLevel == 0 {
		opts.ConnLogLevel = logfile.Trace
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Recorder{
		opts:   opts,
		conn:   newTable(opts.BucketDuration, opts.MaxSummaryAge, opts.MaxSummaryKeys),
		failed: newTable(opts.BucketDuration, opts.MaxSummaryAge, opts.MaxSummaryKeys),
		wakeAt: max(1, min(opts.BatchSize, opts.QueueSize/2)),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if opts.CallerBurst > 0 && opts.CallerRate > 0 {
		r.budget = newBudget(opts.CallerBurst, opts.CallerRate)
	}
	r.timer = time.AfterFunc(time.Hour, r.signal)
	r.timer.Stop()
	if opts.Dir != "" {
		lo := logfile.Options{MaxSize: opts.MaxFileSize, MaxFiles: opts.MaxFiles}
		auditPath := filepath.Join(opts.Dir, AuditLogName)
		prev, err := lastLine(auditPath)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			r.prev = chainHash(prev)
		}
		if r.connLog, err = logfile.Open(filepath.Join(opts.Dir, ConnectionLogName), lo); err != nil {
			return nil, err
		}
		if r.auditLog, err = logfile.Open(auditPath, lo); err != nil {
			r.connLog.Close()
			return nil, err
		}
	}
	go r.run()
	return r, nil
}

// Record counts ev in the summary tables and queues it for the logs. It
// does not block; if the queue is full the event is counted in Dropped
// (and in the next audit record's "dropped") instead of being written.
// ev.Caller must not be modified afterwards. Record after Close only
// updates the summaries.
func (r *Recorder) Record(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = r.opts.Now()
	}
	k := count(&ev)
	now := r.opts.Now()
	r.mu.Lock()
	newNormal := k.normal && r.conn.add(now, &ev, k.c, k.normalStatus)
	newFailed := k.failed && r.failed.add(now, &ev, k.c, k.failedStatus)
	r.mu.Unlock()
	j := job{ev: ev, hasEvent: true}
	if newNormal || newFailed {
		// Rare (once per key and bucket): the whole summaries.
		normal, failed := route(&ev)
		if newNormal {
			j.newSummaries, j.failedTable = append(j.newSummaries, normal), append(j.failedTable, false)
		}
		if newFailed {
			j.newSummaries, j.failedTable = append(j.newSummaries, failed), append(j.failedTable, true)
		}
	}
	r.enqueue(j)
}

// ConnLog queues one line for ProxyAgent.Connection.log in upstream's
// format "<header>{httpID}[{tcpID}] - {message}" (httpID 0 for TCP-level
// lines). Lines above Options.ConnLogLevel are discarded.
func (r *Recorder) ConnLog(level logfile.Level, httpID, tcpID uint64, message string) {
	if !r.toFile(level) && !r.mirrored(level, true) {
		return
	}
	r.enqueue(job{level: level, httpID: httpID, tcpID: tcpID, message: message})
}

func (r *Recorder) enqueue(j job) {
	r.qmu.Lock()
	if r.closed {
		r.qmu.Unlock()
		return
	}
	if len(r.pending) >= r.opts.QueueSize {
		r.qmu.Unlock()
		if j.hasEvent {
			r.lost.Add(1)
			if r.dropped.Add(1) == 1 {
				r.opts.Logger.Warn("audit queue full, dropping records", "queueSize", r.opts.QueueSize)
			}
		}
		// The table has opened these buckets: their one telemetry event
		// each goes out all the same (rare: once per key and bucket).
		if r.opts.OnNewSummary != nil {
			for i, s := range j.newSummaries {
				r.opts.OnNewSummary(*s, j.failedTable[i])
			}
		}
		return
	}
	r.pending = append(r.pending, j)
	n := len(r.pending)
	if n == 1 && n < r.wakeAt {
		r.timer.Reset(r.opts.BatchDelay)
	}
	r.qmu.Unlock()
	if n == r.wakeAt {
		r.signal()
	}
}

// maxKeptBatch is the largest queue slice (in jobs, about 400 bytes each)
// kept for reuse after a batch.
const maxKeptBatch = 256

// signal wakes the writer goroutine without blocking.
func (r *Recorder) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// queued returns how many jobs wait for the writer.
func (r *Recorder) queued() int {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return len(r.pending)
}

// takeBatch hands the writer every queued job (and gets back the slice of
// the previous batch for reuse); closed says Close has been called.
func (r *Recorder) takeBatch(prev []job) (batch []job, closed bool) {
	clear(prev)
	if cap(prev) > maxKeptBatch {
		prev = nil // a backlog's slice is not kept for the idle agent
	}
	r.qmu.Lock()
	batch, r.pending = r.pending, prev[:0]
	closed = r.closed
	r.qmu.Unlock()
	return batch, closed
}

// Summaries returns the live entries of proxyConnectionSummary (conn) and
// failedAuthenticateSummary (failed), pruned at the current time, most
// frequent first. Both are non-nil.
func (r *Recorder) Summaries() (conn, failed []SummaryEntry) {
	now := r.opts.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn.snapshot(now), r.failed.snapshot(now)
}

// Dropped returns how many events were not written to the logs because
// the queue was full.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Suppressed returns how many records were not written because their
// caller was over its record budget.
func (r *Recorder) Suppressed() uint64 { return r.suppressed.Load() }

// Close writes every queued event, flushes and closes the logs. It is
// safe to call more than once.
func (r *Recorder) Close() error {
	r.qmu.Lock()
	r.closed = true
	r.timer.Stop()
	r.qmu.Unlock()
	r.signal()
	<-r.done
	var err error
	if r.connLog != nil {
		err = errors.Join(r.connLog.Close(), r.auditLog.Close())
	}
	return err
}

// run is the writer goroutine.
func (r *Recorder) run() {
	defer close(r.done)
	flushT := time.NewTimer(time.Hour)
	flushT.Stop()
	defer flushT.Stop()
	armed := false // flushT runs: lines written since the last flush
	var batch []job
	for {
		flush := false
		select {
		case <-r.wake:
		case <-flushT.C:
			flush, armed = true, false
		}
		var closed bool
		batch, closed = r.takeBatch(batch)
		for i := range batch {
			r.handle(&batch[i])
		}
		if closed {
			// Close set closed before its wake-up, and nothing is queued
			// after closed; one more take collects what raced with it.
			batch, _ = r.takeBatch(batch)
			for i := range batch {
				r.handle(&batch[i])
			}
			r.flush()
			return
		}
		if flush {
			r.flush()
		} else if len(batch) > 0 && !armed {
			flushT.Reset(r.opts.FlushInterval)
			armed = true
		}
	}
}

func (r *Recorder) flush() {
	r.writeMirrored(r.opts.Mirror.Out, &r.outBuf, 0)
	r.writeMirrored(r.opts.Mirror.Err, &r.errBuf, 0)
	if r.connLog == nil {
		return
	}
	r.report(r.connLog.Flush())
	r.report(r.auditLog.Flush())
}

// toFile reports whether a connection-log line at level goes to the file.
func (r *Recorder) toFile(level logfile.Level) bool {
	return r.connLog != nil && level <= r.opts.ConnLogLevel
}

// mirrored reports whether a connection-log line at level goes to the
// system log, or (event) to telemetry.
func (r *Recorder) mirrored(level logfile.Level, event bool) bool {
	m := &r.opts.Mirror
	return level <= m.OutLevel && (m.Out != nil || m.Err != nil) ||
		event && m.Event != nil && level <= m.EventLevel
}

// mirror sends the connection-log line msg (without its header) where
// Options.Mirror asks; event false keeps it out of telemetry.
func (r *Recorder) mirror(level logfile.Level, t time.Time, msg []byte, event bool) {
	m := &r.opts.Mirror
	if event && m.Event != nil && level <= m.EventLevel {
		m.Event(level, t, msg)
	}
	if level > m.OutLevel {
		return
	}
	w, buf := m.Out, &r.outBuf
	if level == logfile.Error {
		w, buf = m.Err, &r.errBuf
	}
	if w == nil {
		return
	}
	line := logfile.AppendLine(r.lineBuf[:0], t, level, msg)
	r.writeMirrored(w, buf, len(line))
	*buf = append(*buf, line...)
	r.lineBuf = line
}

// writeMirrored writes the lines in buf to w unless another next bytes
// still fit in one MirrorChunk (next 0: write them now). A system log
// that fails is not reported: where would it go?
func (r *Recorder) writeMirrored(w io.Writer, buf *[]byte, next int) {
	if len(*buf) == 0 || next > 0 && len(*buf)+next <= MirrorChunk {
		return
	}
	_, _ = w.Write(*buf)
	*buf = (*buf)[:0]
}

// report logs a write error, at most once a minute.
func (r *Recorder) report(err error) {
	if err == nil {
		return
	}
	if now := time.Now(); now.After(r.errLimit) {
		r.errLimit = now.Add(time.Minute)
		r.opts.Logger.Error("writing audit logs", "err", err)
	}
}

func (r *Recorder) handle(j *job) {
	if !j.hasEvent {
		now := r.opts.Now()
		r.msgBuf = appendConnPrefix(r.msgBuf[:0], j.httpID, j.tcpID)
		r.msgBuf = append(r.msgBuf, j.message...)
		if r.toFile(j.level) {
			r.lineBuf = logfile.AppendLine(r.lineBuf[:0], now, j.level, r.msgBuf)
			_, err := r.connLog.Write(r.lineBuf)
			r.report(err)
		}
		r.mirror(j.level, now, r.msgBuf, true)
		return
	}
	ev := &j.ev
	logged := false // the request's connection logger has lines
	for i, s := range j.newSummaries {
		if r.opts.OnNewSummary != nil {
			r.opts.OnNewSummary(*s, j.failedTable[i])
		}
		toFile, toOut := r.toFile(logfile.Info), r.mirrored(logfile.Info, false)
		if !toFile && !toOut {
			continue
		}
		b, _ := serdejson.Marshal(s) // as upstream's serde_json writes it: '&' kept
		if toFile {
			r.lineBuf = logfile.AppendLine(r.lineBuf[:0], ev.Time, logfile.Info, b)
			_, err := r.connLog.Write(r.lineBuf)
			r.report(err)
			logged = true
		}
		r.mirror(logfile.Info, ev.Time, b, false)
	}
	lvl, mirrorLvl := eventLevel(ev), mirrorLevel(ev)
	toFile, mirrored := r.toFile(lvl), r.mirrored(mirrorLvl, true)
	if r.connLog == nil && r.opts.Sink == nil && !mirrored {
		return
	}
	var suppressed uint64
	if r.budget != nil {
		var ok bool
		if ok, suppressed = r.budget.take(ev.Caller, ev.Time); !ok {
			r.suppressed.Add(1)
			return
		}
	}
	if toFile || mirrored {
		r.msgBuf = appendEventMessage(appendConnPrefix(r.msgBuf[:0], ev.HTTPID, ev.TCPID), ev)
		if toFile {
			r.lineBuf = logfile.AppendLine(r.lineBuf[:0], ev.Time, lvl, r.msgBuf)
			_, err := r.connLog.Write(r.lineBuf)
			r.report(err)
			logged = true
		}
		if mirrored {
			r.mirror(mirrorLvl, ev.Time, r.msgBuf, true)
		}
	}
	if logged {
		// Upstream's connection logger ends its batch with this line, at
		// Info whatever the level (§4.8).
		r.msgBuf = append(appendConnPrefix(r.msgBuf[:0], ev.HTTPID, ev.TCPID), LoggerDropped...)
		r.lineBuf = logfile.AppendLine(r.lineBuf[:0], ev.Time, logfile.Info, r.msgBuf)
		_, err := r.connLog.Write(r.lineBuf)
		r.report(err)
	}
	if r.auditLog == nil && r.opts.Sink == nil {
		return // mirrored only: no record to build
	}
	r.seq++
	r.rec = newRecord(ev, r.addrText(ev.Client), r.addrText(ev.Dest))
	rec := &r.rec
	rec.Seq, rec.Prev, rec.Dropped, rec.Suppressed = r.seq, r.prev, r.lost.Swap(0), suppressed
	if rec.Caller != nil && rec.Caller != r.caller {
		r.caller, r.callerJSON = rec.Caller, appendClaimsJSON(r.callerJSON[:0], rec.Caller)
	}
	callerJSON := r.callerJSON
	if rec.Caller == nil {
		callerJSON = nil
	}
	r.recBuf = appendRecord(r.recBuf[:0], rec, callerJSON)
	b := r.recBuf
	r.prev = chainHash(b)
	if r.opts.Sink != nil {
		r.opts.Sink.WriteRecord(b, rec)
	}
	if r.auditLog == nil {
		return
	}
	r.recBuf = append(b, '\n')
	_, err := r.auditLog.Write(r.recBuf)
	r.report(err)
	if err == nil {
		r.written.Add(1)
	}
}

// newRecord returns the audit record for ev, without Seq, Prev and
// Dropped (the Recorder fills them in); client and dest are ev's
// addresses already in text (addrText).
func newRecord(ev *Event, client, dest string) Record {
	rec := Record{
		V: SchemaVersion, Time: ev.Time.UTC(), HTTPID: ev.HTTPID, TCPID: ev.TCPID,
		Caller: ev.Caller, Client: client, Method: ev.Method, Target: ev.Target,
		Decision: DecisionNone, Status: ev.Status, Error: ev.Error,
		LatencyMs: math.Round(float64(ev.Latency)/1e3) / 1e3,
	}
	if ev.Dest.IsValid() {
		rec.Destination = Destination{Service: string(ev.Service), Addr: dest}
	}
	if ev.Authorized {
		d := ev.Decision
		rec.Decision, rec.Mode, rec.RuleID, rec.Epoch = d.Result.String(), string(d.Mode), d.RuleID, d.Epoch
		rec.Privilege, rec.Identity, rec.Reason = d.Privilege, d.Identity, d.Reason
	}
	return rec
}

// addrText is ap as "ip:port", or "" when ap is not valid.
func addrText(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return ""
	}
	return ap.String()
}

// addrText is the package's addrText, reusing the text of the last two
// addresses: a connection's client and destination repeat for each of its
// requests.
func (r *Recorder) addrText(ap netip.AddrPort) string {
	for _, a := range r.addrs {
		if a.ap == ap && a.text != "" {
			return a.text
		}
	}
	text := addrText(ap)
	if text != "" {
		r.addrs[1], r.addrs[0] = r.addrs[0], addrCache{ap, text}
	}
	return text
}

// appendConnPrefix appends "{httpID}[{tcpID}] - ", which begins every
// connection-log message after the line's header.
func appendConnPrefix(dst []byte, httpID, tcpID uint64) []byte {
	dst = strconv.AppendUint(dst, httpID, 10)
	dst = append(dst, '[')
	dst = strconv.AppendUint(dst, tcpID, 10)
	return append(dst, "] - "...)
}

// eventLevel is Info for answered requests below 400, Warn otherwise.
func eventLevel(ev *Event) logfile.Level {
	if ev.Status == 0 || ev.Status >= 400 {
		return logfile.Warn
	}
	return logfile.Info
}

// mirrorLevel is the level at which a request's line is mirrored
// (Options.Mirror): where upstream's connection logger writes its lines
// about such a request. Info for one Audit mode would deny and lets
// through ("… denied in audit mode, continue forward the request"), Warn
// for one the agent failed itself (it answered 5xx, or the exchange broke
// before an answer), Trace for the rest: served, refused (upstream records
// those in the summaries only) or answered with an error by the host. So
// the journal and telemetry get a line per audited denial and per
// failure, as upstream's do, not one per request. The file keeps
// eventLevel.
func mirrorLevel(ev *Event) logfile.Level {
	switch {
	case ev.Authorized && ev.Decision.Result == authz.AllowAudited:
		return logfile.Info
	case ev.Error != "" && (ev.Status == 0 || ev.Status >= 500):
		return logfile.Warn
	}
	return logfile.Trace
}

// appendEventMessage appends the connection-log text of one request
// outcome.
func appendEventMessage(b []byte, ev *Event) []byte {
	b = append(b, ev.Method...)
	b = append(b, ' ')
	b = append(b, ev.Target...)
	if ev.Dest.IsValid() {
		b = append(b, " to "...)
		b = append(b, ev.Service...)
		b = append(b, ' ')
		b = ev.Dest.AppendTo(b)
	}
	if c := ev.Caller; c != nil && (c.OtherNetns || c.ContainerID != "") {
		b = append(b, " from container"...)
		if c.ContainerID != "" {
			b = append(b, ' ')
			b = append(b, c.ContainerID[:min(12, len(c.ContainerID))]...)
		}
		if c.PodUID != "" {
			b = append(b, " pod "...)
			b = append(b, c.PodUID...)
		}
		if c.CgroupPath != "" {
			b = append(b, " cgroup "...)
			b = append(b, c.CgroupPath...)
		}
	}
	b = append(b, " - "...)
	b = append(b, ResponseStatus(ev.Status)...)
	if ev.Authorized {
		b = append(b, " - decision "...)
		b = append(b, ev.Decision.Result.String()...)
		if ev.Decision.Reason != "" {
			b = append(b, " ("...)
			b = append(b, ev.Decision.Reason...)
			b = append(b, ')')
		}
	}
	b = append(b, " - "...)
	b = strconv.AppendInt(b, ev.Latency.Milliseconds(), 10)
	b = append(b, " ms"...)
	if ev.Error != "" {
		b = append(b, " - "...)
		b = append(b, ev.Error...)
	}
	return b
}

// BlockError is the error of a denied request: BlockPrefix and the caller's
// claims as upstream serialises them, without this project's additions
// (ancestors' command lines, group id, workload), which reach status.json
// and telemetry through the connection summaries.
func BlockError(c *claims.Claims) string {
	if c == nil {
		return BlockPrefix + "{}"
	}
	return BlockPrefix + upstreamClaimsJSON(c)
}

// upstreamClaimsJSON is c as upstream serialises claims (serde_json:
// only upstream's fields, '&', '<' and '>' kept).
func upstreamClaimsJSON(c *claims.Claims) string {
	u := *c
	// Only upstream's fields.
	u.Ancestry, u.GroupID, u.Workload, u.OtherNetns, u.OtherUserNS = nil, 0, claims.Workload{}, false, false
	if u.UserGroups == nil {
		u.UserGroups = []string{}
	}
	b, _ := serdejson.Marshal(u)
	return string(b)
}

// lastLine returns the last line of the file at path (without its line
// feed; a final partial line counts), or nil when the file is missing or
// empty. Only the last 256 KiB are read.
func lastLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return nil, err
	}
	const tail = 256 << 10
	off := max(fi.Size()-tail, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{'\n'})
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:], nil
	}
	if off > 0 {
		return nil, nil // line longer than the tail: start a new chain
	}
	return b, nil
}
