package logfile

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
)

// LevelTrace is the slog level written as TRACE (anything below Debug).
const LevelTrace = slog.LevelDebug - 4

// LevelOf maps a slog level to a line-header level.
func LevelOf(l slog.Level) Level {
	switch {
	case l >= slog.LevelError:
		return Error
	case l >= slog.LevelWarn:
		return Warn
	case l >= slog.LevelInfo:
		return Info
	case l >= slog.LevelDebug:
		return Debug
	}
	return Trace
}

// SlogLevel maps a line-header level to the lowest slog level written with
// it (for configuring a Handler from upstream's fileLogLevel).
func SlogLevel(l Level) slog.Level {
	switch l {
	case Error:
		return slog.LevelError
	case Warn:
		return slog.LevelWarn
	case Info:
		return slog.LevelInfo
	case Debug:
		return slog.LevelDebug
	}
	return LevelTrace
}

// NewHandler returns a slog.Handler that writes each record to w as one
// upstream-format line: header, message, then the attributes in
// slog's text form (key=value, quoted when needed). Records below level
// are discarded. w is typically a *Writer (ProxyAgent.log).
func NewHandler(w io.Writer, level slog.Leveler) slog.Handler {
	s := &handlerState{w: w}
	inner := slog.NewTextHandler(&s.attrs, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	return &handler{state: s, inner: inner}
}

// handlerState is shared by a handler and its WithAttrs/WithGroup
// derivatives; mu guards attrs and line and serialises writes to w.
type handlerState struct {
	mu    sync.Mutex
	w     io.Writer
	attrs bytes.Buffer
	line  []byte
}

type handler struct {
	state *handlerState
	inner slog.Handler
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	s := h.state
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attrs.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	msg := r.Message
	if attrs := bytes.TrimSuffix(s.attrs.Bytes(), []byte{'\n'}); len(attrs) > 0 {
		msg += " " + string(attrs)
	}
	s.line = AppendLine(s.line[:0], r.Time, LevelOf(r.Level), msg)
	_, err := s.w.Write(s.line)
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{state: h.state, inner: h.inner.WithAttrs(as)}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{state: h.state, inner: h.inner.WithGroup(name)}
}
