package telemetry

import (
	"bytes"
	"context"
	"log/slog"
	"sync"

	"github.com/opengpa/gpa/proxyagent/logfile"
)

// LogHandler returns a slog.Handler that turns each record at or above
// level into a generic event on q (§6.1): level name as EventLevel, the
// record's time as TimeStamp, task CommonLogger, module ProxyAgent, and as
// message the text ProxyAgent.log shows for the record (message, then the
// attributes). The agent adds it beside its file and stderr handlers. The
// pipeline's own lines (a logger with module=telemetry) never become
// events, as upstream's: a host refusing the posts would otherwise get the
// warnings about it posted, again and again.
func LogHandler(q *Queue, level slog.Leveler) slog.Handler {
	s := &lineState{}
	return &logHandler{q: q, state: s, inner: logfile.NewHandler(&s.buf, level)}
}

// lineState is shared by a handler and its WithAttrs/WithGroup
// derivatives: mu serialises the formatting into buf.
type lineState struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

type logHandler struct {
	q     *Queue
	state *lineState
	inner slog.Handler // formats the line into state.buf
}

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.q.dropIfFull() {
		return nil // counted; a storm of log lines costs no formatting
	}
	s := h.state
	s.mu.Lock()
	s.buf.Reset()
	err := h.inner.Handle(ctx, r)
	line := s.buf.Bytes()
	var msg string
	if len(line) >= logfile.HeaderWidth {
		msg = string(bytes.TrimSuffix(line[logfile.HeaderWidth:], []byte{'\n'}))
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	h.q.Add(Event{
		EventLevel:  logfile.LevelOf(r.Level).String(),
		Message:     msg,
		TaskName:    TaskCommonLogger,
		OperationId: ModuleProxyAgent,
		TimeStamp:   timestamp(r.Time),
	})
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == moduleKey && a.Value.String() == pipelineModule {
			return dropAll{}
		}
	}
	return &logHandler{q: h.q, state: h.state, inner: h.inner.WithAttrs(as)}
}

// moduleKey and pipelineModule name the pipeline's own logger.
const (
	moduleKey      = "module"
	pipelineModule = "telemetry"
)

// dropAll drops every record.
type dropAll struct{}

func (dropAll) Enabled(context.Context, slog.Level) bool  { return false }
func (dropAll) Handle(context.Context, slog.Record) error { return nil }
func (d dropAll) WithAttrs([]slog.Attr) slog.Handler      { return d }
func (d dropAll) WithGroup(string) slog.Handler           { return d }

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{q: h.q, state: h.state, inner: h.inner.WithGroup(name)}
}
