// Package logfile writes the agent's text logs in upstream's format
// (shared/spec/protocol.md §4.8, §7.2): lines that start with a 34-character
// "YYYY-MM-DDTHH:MM:SS.mmm [LEVEL]" header, appended to a file that is
// rotated when it reaches a size limit, keeping a bounded number of files.
// It serves ProxyAgent.log (through NewHandler, a log/slog handler),
// ProxyAgent.Connection.log and the JSON-lines audit log.
package logfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Level is a log severity; a lower value is more severe (upstream order).
type Level int

// Levels, most severe first.
const (
	Error Level = iota + 1
	Warn
	Info
	Debug
	Trace
)

// String returns the upper-case name used in line headers ("ERROR"…"TRACE").
func (l Level) String() string {
	switch l {
	case Error:
		return "ERROR"
	case Warn:
		return "WARN"
	case Info:
		return "INFO"
	case Debug:
		return "DEBUG"
	case Trace:
		return "TRACE"
	}
	return "LEVEL(" + strconv.Itoa(int(l)) + ")"
}

// ParseLevel maps a configuration value ("Error", "warn", "INFO", …,
// case-insensitive) to a Level.
func ParseLevel(s string) (Level, error) {
	for l := Error; l <= Trace; l++ {
		if strings.EqualFold(strings.TrimSpace(s), l.String()) {
			return l, nil
		}
	}
	return 0, fmt.Errorf("unknown log level %q (want Error, Warn, Info, Debug or Trace)", s)
}

// HeaderWidth is the width of a line header.
const HeaderWidth = 34

// AppendHeader appends the header of a line at t (UTC, milliseconds) with
// level l, right-padded with spaces to HeaderWidth bytes.
func AppendHeader(dst []byte, t time.Time, l Level) []byte {
	start := len(dst)
	dst = t.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000")
	dst = append(dst, " ["...)
	dst = append(dst, l.String()...)
	dst = append(dst, ']')
	for len(dst)-start < HeaderWidth {
		dst = append(dst, ' ')
	}
	return dst
}

// AppendLine appends one complete line: header, msg and "\n". Carriage
// returns and line feeds inside msg are written as the two characters
// `\r` and `\n`, so that no message can forge further lines.
func AppendLine[S ~string | ~[]byte](dst []byte, t time.Time, l Level, msg S) []byte {
	dst = AppendHeader(dst, t, l)
	start := 0 // msg[start:i] is still to be copied
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c == '\n' || c == '\r' {
			dst = append(dst, msg[start:i]...)
			if c == '\n' {
				dst = append(dst, `\n`...)
			} else {
				dst = append(dst, `\r`...)
			}
			start = i + 1
		}
	}
	dst = append(dst, msg[start:]...)
	return append(dst, '\n')
}

// Defaults for Options.
const (
	DefaultMaxSize  = 10 << 20
	DefaultMaxFiles = 5
	DefaultPerm     = 0o640
	// bufferLimit is how much a Writer buffers before writing by itself.
	// Each such write is a blocking-path system call, which in a busy
	// agent wakes the runtime's monitor thread; at 256 KiB a busy proxy
	// writes its logs about four times a second per 1 MB/s of lines.
	bufferLimit = 256 << 10
)

// Options tunes a Writer; zero fields take the defaults.
type Options struct {
	// MaxSize is the size at which the file is rotated before the next
	// write (DefaultMaxSize, 10 MiB).
	MaxSize int64
	// MaxFiles bounds the current file plus its rotated copies
	// (DefaultMaxFiles, 5).
	MaxFiles int
	// Perm is the mode of a created file (DefaultPerm, 0640).
	Perm os.FileMode
	// Now is the clock used to name rotated files (time.Now).
	Now func() time.Time
}

// Writer appends complete lines to a file, buffering them until Flush (or
// until 256 KiB are pending). Before a line is added, if the file with the
// pending lines has reached MaxSize, the file is renamed to
// "<name>.<YYYY-MM-DDTHH.MM.SS.mmm>-<unixnanos><ext>" (ext being the
// extension of name, e.g. "ProxyAgent.Connection.log.2025-04-23T12.00.00.123-1745409600123000000.log")
// and the oldest rotated copies are deleted so that at most MaxFiles files
// remain, counting the new current one. Safe for concurrent use; mu
// guards all fields below it.
type Writer struct {
	path string
	opts Options

	mu     sync.Mutex
	f      *os.File // nil after a failed reopen; retried on the next flush
	closed bool
	ino    uint64
	size   int64 // bytes in the file
	buf    []byte
}

// Open opens (creating, with its directory) the log file at path for
// appending. The file is never opened through a symbolic link. If the file
// ends with a partial line (a crash mid-write), a line feed is added so
// that new lines start clean.
func Open(path string, opts Options) (*Writer, error) {
	if opts.MaxSize <= 0 {
		opts.MaxSize = DefaultMaxSize
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = DefaultMaxFiles
	}
	if opts.Perm == 0 {
		opts.Perm = DefaultPerm
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	w := &Writer{path: path, opts: opts}
	if err := w.open(); err != nil {
		return nil, err
	}
	if w.size > 0 {
		last := make([]byte, 1)
		if _, err := w.f.ReadAt(last, w.size-1); err == nil && last[0] != '\n' {
			w.buf = append(w.buf, '\n')
		}
	}
	return w, nil
}

// Path returns the current file's path.
func (w *Writer) Path() string { return w.path }

// open opens w.path and records its size and inode, closing the previous
// file only on success. Caller holds mu (or owns w exclusively).
func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_RDWR|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, w.opts.Perm)
	if err != nil {
		return fmt.Errorf("open log file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat log file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("log file %s is not a regular file", w.path)
	}
	if w.f != nil {
		w.f.Close()
	}
	w.f, w.size, w.ino = f, fi.Size(), inode(fi)
	return nil
}

// Write queues p, which must be one or more complete lines, rotating first
// if the file has reached its size limit. It reports errors of writes it
// made on the way (the lines stay queued for a later Flush only when the
// write failed before rotation).
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	var err error
	if w.f != nil && w.size+int64(len(w.buf)) >= w.opts.MaxSize {
		err = w.rotate()
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= bufferLimit {
		err = errors.Join(err, w.flush())
	}
	return len(p), err
}

// Flush writes all queued lines. If the file was removed or replaced
// behind the writer's back (external log rotation), it is reopened first.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return os.ErrClosed
	}
	var err error
	if fi, statErr := os.Lstat(w.path); w.f == nil || statErr != nil || inode(fi) != w.ino {
		// On failure keep writing to the file still open, if any.
		err = w.open()
	}
	return errors.Join(err, w.flush())
}

// Close flushes and closes the file. Later writes fail with os.ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.f == nil {
		w.buf = nil
		return errors.New("log file was not open; pending lines lost")
	}
	err := w.flush()
	err = errors.Join(err, w.f.Close())
	w.f = nil
	return err
}

// flush writes buf. Without an open file, the pending lines are kept up
// to 4×bufferLimit and dropped beyond. Caller holds mu.
func (w *Writer) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if w.f == nil {
		if len(w.buf) > 4*bufferLimit {
			w.buf = w.buf[:0]
			return errors.New("log file not open; pending lines dropped")
		}
		return errors.New("log file not open")
	}
	n, err := w.f.Write(w.buf)
	w.size += int64(n)
	if n == len(w.buf) {
		w.buf = w.buf[:0]
	} else {
		w.buf = append(w.buf[:0], w.buf[n:]...)
	}
	if cap(w.buf) > 4*bufferLimit {
		w.buf = append([]byte(nil), w.buf...)
	}
	return err
}

// rotate flushes, renames the current file, prunes old copies and opens a
// fresh file. Caller holds mu.
func (w *Writer) rotate() error {
	if err := w.flush(); err != nil {
		return err
	}
	now := w.opts.Now()
	dir, base := filepath.Split(w.path)
	ext := filepath.Ext(base)
	archive := w.path + "." + now.UTC().Format("2006-01-02T15.04.05.000") + "-" +
		strconv.FormatInt(now.UnixNano(), 10) + ext
	renameErr := os.Rename(w.path, archive)
	pruneErr := prune(dir, base, ext, w.opts.MaxFiles-1)
	if err := w.open(); err != nil {
		// The old descriptor now points at the archive; stop using it.
		w.f.Close()
		w.f = nil
		return errors.Join(renameErr, err)
	}
	return errors.Join(renameErr, pruneErr)
}

// prune deletes the oldest rotated copies of base in dir, keeping keep.
func prune(dir, base, ext string, keep int) error {
	old, err := rotated(dir, base, ext)
	if err != nil {
		return err
	}
	var errs []error
	for len(old) > keep {
		errs = append(errs, os.Remove(old[0]))
		old = old[1:]
	}
	return errors.Join(errs...)
}

// RotatedFiles returns the rotated copies of the log at path, oldest
// first (the current file not included).
func RotatedFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	return rotated(dir, base, filepath.Ext(base))
}

// rotated lists the regular files in dir named base + "." … + ext, oldest
// first: names carry the rotation time, so name order is age order.
func rotated(dir, base, ext string) ([]string, error) {
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		if e.Type().IsRegular() && n != base && strings.HasPrefix(n, base+".") && strings.HasSuffix(n, ext) {
			out = append(out, filepath.Join(dir, n))
		}
	}
	sort.Strings(out)
	return out, nil
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
