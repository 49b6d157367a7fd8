package insight

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/logfile"
)

// DefaultLogDir is the folder the agent writes its audit log to.
const DefaultLogDir = "/var/log/azure-proxy-agent"

// Source names the audit log files to read and which records to keep.
type Source struct {
	// Path is one audit log file; when set, Dir is ignored and rotated
	// copies are not read.
	Path string
	// Dir is a log folder: its rotated ProxyAgent.Audit.jsonl.* copies,
	// oldest first, then ProxyAgent.Audit.jsonl. "" means DefaultLogDir.
	Dir string
	// Since drops records older than this time (zero keeps all).
	Since time.Time
	// Strict makes any unreadable or suspicious line an error instead of a
	// warning.
	Strict bool
}

// Entry is one audit record with where it was read.
type Entry struct {
	File   string
	Line   int
	Record audit.Record
}

// Warning is one problem found in an input file: a corrupt, truncated or
// out-of-chain audit line, or an ignored field in a rules document.
type Warning struct {
	File string
	Line int // 0 when the problem has no line
	Msg  string
}

// String returns "file:line: msg" (or "file: msg").
func (w Warning) String() string {
	if w.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", w.File, w.Line, w.Msg)
	}
	return w.File + ": " + w.Msg
}

// ScanStats describes what a Scan read.
type ScanStats struct {
	Files    []string  // files read, in order
	Records  int       // records passed to the callback
	Filtered int       // valid records dropped by Since
	BadLines int       // lines skipped or flagged (see Warnings)
	Warnings []Warning // at most 1000 per file, as audit.ReadLog reports
	// First and Last are the earliest and latest record times passed on.
	First, Last time.Time
}

// InputError is bad input that stopped a command: a missing or unreadable
// log, a log with no readable record, a strict read with bad lines, or a
// rules document that cannot be used. The commands exit with ExitBadInput.
type InputError struct {
	Msg      string
	Warnings []Warning
}

// Error returns the message, which names the file (and line) at fault.
func (e *InputError) Error() string { return e.Msg }

func inputErrorf(format string, a ...any) *InputError {
	return &InputError{Msg: fmt.Sprintf(format, a...)}
}

// Files returns the audit log files src names, oldest first. A folder
// without any audit log is an *InputError.
func (src Source) Files() ([]string, error) {
	if src.Path != "" {
		return []string{src.Path}, nil
	}
	dir := src.Dir
	if dir == "" {
		dir = DefaultLogDir
	}
	current := filepath.Join(dir, audit.AuditLogName)
	files, err := logfile.RotatedFiles(current)
	if err != nil {
		return nil, inputErrorf("audit log folder %s: %v", dir, err)
	}
	if _, err := os.Stat(current); err == nil {
		files = append(files, current)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, inputErrorf("audit log %s: %v", current, err)
	}
	if len(files) == 0 {
		return nil, inputErrorf("no audit log (%s or rotated copies) in %s", audit.AuditLogName, dir)
	}
	return files, nil
}

// Scan reads the files of src in order and calls fn for every valid
// record at or after src.Since. Bad lines never stop it: each is recorded
// as a Warning "file:line: reason" and skipped (a record whose hash chain
// is broken is still passed on, with a warning). Scan fails with an
// *InputError when a file cannot be opened, when bad lines were found and
// no record at all could be read, or, with src.Strict, when any bad line
// was found. A rotated copy that disappears while Scan runs is a warning.
// An error returned by fn stops the scan and is returned as is.
func Scan(src Source, fn func(Entry) error) (ScanStats, error) {
	var st ScanStats
	files, err := src.Files()
	if err != nil {
		return st, err
	}
	valid := 0
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && src.Path == "" && name != filepath.Join(dirOf(src), audit.AuditLogName) {
				st.Warnings = append(st.Warnings, Warning{File: name, Msg: "rotated away while reading; skipped"})
				continue
			}
			return st, inputErrorf("audit log: %v", err)
		}
		st.Files = append(st.Files, name)
		rerr := audit.ReadLog(f, func(line int, rec audit.Record) error {
			valid++
			if !src.Since.IsZero() && rec.Time.Before(src.Since) {
				st.Filtered++
				return nil
			}
			st.Records++
			if st.First.IsZero() || rec.Time.Before(st.First) {
				st.First = rec.Time
			}
			if rec.Time.After(st.Last) {
				st.Last = rec.Time
			}
			if err := fn(Entry{File: name, Line: line, Record: rec}); err != nil {
				return callbackError{err}
			}
			return nil
		})
		f.Close()
		var ce *audit.CorruptError
		switch {
		case rerr == nil:
		case errors.As(rerr, &ce):
			st.BadLines += ce.Count
			for _, le := range ce.Lines {
				st.Warnings = append(st.Warnings, Warning{File: name, Line: le.Line, Msg: le.Reason})
			}
			if omitted := ce.Count - len(ce.Lines); omitted > 0 {
				st.Warnings = append(st.Warnings, Warning{File: name, Msg: fmt.Sprintf("%d more bad line(s) not listed", omitted)})
			}
		case isCallbackError(rerr):
			return st, unwrapCallback(rerr)
		default:
			return st, inputErrorf("audit log %s: %v", name, rerr)
		}
	}
	switch {
	case st.BadLines > 0 && valid == 0:
		return st, &InputError{Msg: fmt.Sprintf("no audit record could be read: %d bad line(s) in %s", st.BadLines, strings.Join(st.Files, ", ")), Warnings: st.Warnings}
	case st.BadLines > 0 && src.Strict:
		return st, &InputError{Msg: fmt.Sprintf("%d bad line(s) in the audit log (--strict)", st.BadLines), Warnings: st.Warnings}
	}
	return st, nil
}

func dirOf(src Source) string {
	if src.Dir == "" {
		return DefaultLogDir
	}
	return src.Dir
}

// callbackError marks an error that came from Scan's fn, so it is returned
// unchanged rather than reported as a read error.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

func isCallbackError(err error) bool {
	var ce callbackError
	return errors.As(err, &ce)
}

func unwrapCallback(err error) error {
	var ce callbackError
	errors.As(err, &ce)
	return ce.err
}

// ParseSince reads a --since value: a Go duration ("24h", "90m") counted
// back from now, an RFC 3339 time, or a date "2006-01-02" (UTC midnight).
// "" means no limit (zero time).
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: duration must not be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration (24h), an RFC 3339 time or a date (2006-01-02)", s)
}
