// Package syslog sends the agent's audit records to the local syslog
// daemon or journald: one datagram per decision on a unix datagram socket
// (/dev/log; where that is a stream socket, as syslog-ng's unix-stream
// source serves, one newline-terminated line per decision), in the format
// the C library's syslog(3) uses there (RFC 3164 without hostname):
//
//	<PRI>Mmm dd hh:mm:ss azure-proxy-agent[PID]: {"v":1,...}
//
// The message is the audit record's JSON line, byte for byte the line of
// ProxyAgent.Audit.jsonl, so it carries the same fields and the same
// redaction (command lines are redacted when the caller's claims are
// resolved; see proxyagent/redact). journald stores it with
// SYSLOG_IDENTIFIER=azure-proxy-agent, rsyslog and syslog-ng parse it
// as any local program's message, and a SIEM parses the JSON.
//
// Why not log/syslog: it is frozen, a write to a stalled daemon blocks,
// and it offers neither a queue nor a drop count. Why not RFC 5424:
// journald parses only this form on /dev/log (it would keep a 5424 header
// inside MESSAGE), and the JSON body already is the structured data.
//
// Writing never blocks the audit writer: records go through a bounded
// queue to a goroutine that owns the socket; when the queue is full, the
// socket is missing or a write times out, the record is counted in
// Dropped. A lost connection (the daemon restarted) is redialled at most
// once a second.
package syslog

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Facility and severity values of RFC 3164 §4.1.1.
const (
	FacilityAuthPriv = 10 // security/authorization messages (private)
	SeverityWarning  = 4
	SeverityNotice   = 5
	SeverityInfo     = 6
)

// Tag is the program name in every message: the agent's name.
const Tag = msp.ServiceName

// Defaults for Options.
const (
	DefaultQueueSize      = 1024
	DefaultWriteTimeout   = time.Second
	DefaultRedialInterval = time.Second
)

// Options configure a Writer. Path is required.
type Options struct {
	// Path is the unix datagram (or stream) socket, e.g. /dev/log.
	Path string
	// Facility defaults to FacilityAuthPriv.
	Facility int
	// QueueSize bounds the records waiting to be sent (DefaultQueueSize).
	QueueSize int
	// WriteTimeout bounds one send (DefaultWriteTimeout).
	WriteTimeout time.Duration
	// RedialInterval is the least time between two connection attempts
	// (DefaultRedialInterval).
	RedialInterval time.Duration
	// Now stamps messages; nil is time.Now.
	Now func() time.Time
	// Logger receives connection problems, at most one per outage.
	Logger *slog.Logger
}

// Writer sends audit records to syslog. It implements audit.Sink. Safe
// for concurrent use; its goroutine owns the connection.
type Writer struct {
	opts    Options
	pid     string
	done    chan struct{}
	written atomic.Uint64
	dropped atomic.Uint64

	mu     sync.RWMutex // guards closed and sending on queue
	closed bool
	queue  chan []byte
}

var _ audit.Sink = (*Writer)(nil)

// New starts a Writer. It does not fail when the socket is missing: the
// daemon may start later, and records are counted as dropped until then.
func New(opts Options) *Writer {
	if opts.Facility == 0 {
		opts.Facility = FacilityAuthPriv
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.RedialInterval <= 0 {
		opts.RedialInterval = DefaultRedialInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	w := &Writer{opts: opts, pid: strconv.Itoa(os.Getpid()),
		queue: make(chan []byte, opts.QueueSize), done: make(chan struct{})}
	go w.run()
	return w
}

// WriteRecord formats one message for rec (line is its JSON) and queues
// it; it never blocks.
func (w *Writer) WriteRecord(line []byte, rec *audit.Record) {
	msg := w.format(make([]byte, 0, len(line)+64), severity(rec), line)
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.dropped.Add(1)
		return
	}
	select {
	case w.queue <- msg:
	default:
		w.dropped.Add(1)
	}
}

// Written returns how many messages the socket accepted.
func (w *Writer) Written() uint64 { return w.written.Load() }

// Dropped returns how many messages were lost (queue full, no socket,
// write failed).
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Close sends what is queued (each send bounded by WriteTimeout), then
// stops. Records written after Close are dropped. Safe to call twice.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	<-w.done
	return nil
}

// severity maps a decision to a syslog severity: deny is a warning,
// audit-deny (what Enforce would deny) a notice, everything else info.
func severity(rec *audit.Record) int {
	switch rec.Decision {
	case "deny":
		return SeverityWarning
	case "audit-deny":
		return SeverityNotice
	}
	return SeverityInfo
}

// format appends "<PRI>Mmm dd hh:mm:ss TAG[PID]: line" to dst.
func (w *Writer) format(dst []byte, sev int, line []byte) []byte {
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(w.opts.Facility*8+sev), 10)
	dst = append(dst, '>')
	dst = w.opts.Now().AppendFormat(dst, time.Stamp)
	dst = append(dst, ' ')
	dst = append(dst, Tag...)
	dst = append(dst, '[')
	dst = append(dst, w.pid...)
	dst = append(dst, "]: "...)
	return append(dst, line...)
}

// maxBatch bounds the messages sent with one system call.
const maxBatch = 64

// run owns the connection: it sends the queued messages, as many at once
// as are waiting (up to maxBatch).
func (w *Writer) run() {
	defer close(w.done)
	s := sender{w: w}
	defer s.close()
	buf := make([][]byte, 0, maxBatch)
	for msg := range w.queue {
		batch := append(buf[:0], msg)
	drain:
		for len(batch) < maxBatch {
			select {
			case m, ok := <-w.queue:
				if !ok {
					break drain
				}
				batch = append(batch, m)
			default:
				break drain
			}
		}
		s.send(batch)
		clear(batch) // sent or dropped: garbage now
	}
}

// sender is the run goroutine's connection to the daemon.
type sender struct {
	w        *Writer
	conn     *net.UnixConn
	stream   bool   // conn is a stream socket (syslog-ng's unix-stream source): one line per message
	lines    []byte // the batch as lines, reused (stream only)
	nextDial time.Time
	down     bool // an outage has been logged
}

// dial connects to the daemon's socket: a datagram socket as journald's
// and rsyslog's /dev/log, or, where the socket is a stream socket (what
// syslog-ng's unix-stream source serves, and syslog(3) falls back to), a
// stream connection.
func (s *sender) dial() (*net.UnixConn, error) {
	path := s.w.opts.Path
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if errors.Is(err, syscall.EPROTOTYPE) {
		s.stream = true
		return net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	}
	s.stream = false
	return c, err
}

// sendLines writes batch on the stream connection as newline-terminated
// lines in one write (a message has no newline of its own: the audit line
// is JSON). It returns how many whole messages were written.
func (s *sender) sendLines(batch [][]byte) (int, error) {
	s.lines = s.lines[:0]
	for _, m := range batch {
		s.lines = append(append(s.lines, m...), '\n')
	}
	n, err := s.conn.Write(s.lines)
	if err == nil {
		return len(batch), nil
	}
	sent := 0
	for _, m := range batch {
		if n < len(m)+1 {
			break
		}
		n -= len(m) + 1
		sent++
	}
	return sent, err
}

func (s *sender) close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// send sends batch in order, counting each message as written or
// dropped; a lost socket is redialled at most once per RedialInterval.
func (s *sender) send(batch [][]byte) {
	w := s.w
	for len(batch) > 0 {
		if s.conn == nil && !time.Now().Before(s.nextDial) {
			c, err := s.dial()
			if err != nil {
				s.nextDial = time.Now().Add(w.opts.RedialInterval)
				if !s.down {
					s.down = true
					w.opts.Logger.Warn("syslog socket unavailable; audit records are not sent to syslog until it is back",
						"path", w.opts.Path, "err", err)
				}
			} else {
				s.conn = c
			}
		}
		if s.conn == nil {
			w.dropped.Add(uint64(len(batch)))
			return
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(w.opts.WriteTimeout))
		var n int
		var err error
		if s.stream {
			n, err = s.sendLines(batch)
		} else {
			n, err = sendBatch(s.conn, batch)
		}
		w.written.Add(uint64(n))
		batch = batch[n:]
		if err == nil {
			if s.down {
				s.down = false
				w.opts.Logger.Info("syslog audit output restored", "path", w.opts.Path)
			}
			return
		}
		// The first unsent message is dropped; the rest are tried again.
		w.dropped.Add(1)
		batch = batch[1:]
		if !errors.Is(err, os.ErrDeadlineExceeded) || s.stream {
			// The daemon went away (ECONNREFUSED, ENOENT), or a stream
			// may hold half a line: redial.
			s.conn.Close()
			s.conn = nil
			if s.stream {
				// Not at once: a daemon that stopped reading would get a
				// new connection, and its buffer, every write timeout.
				s.nextDial = time.Now().Add(w.opts.RedialInterval)
			}
		}
		if !s.down {
			s.down = true
			w.opts.Logger.Warn("syslog write failed; dropping audit records until it works again",
				"path", w.opts.Path, "err", err)
		}
	}
}
