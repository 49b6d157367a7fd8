package claims

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/redact"
)

// procStat is what the resolver needs from /proc/<pid>/stat.
type procStat struct {
	Comm      string
	PPID      uint32
	StartTime uint64 // field 22, clock ticks since boot
}

// parseStat parses the contents of /proc/<pid>/stat. The command name
// (field 2) is the text between the first '(' and the last ')', so it may
// itself contain spaces and parentheses.
func parseStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("stat: no command name in parentheses")
	}
	// Fields 3.. follow ") ", separated by spaces.
	const ppidIdx, startIdx = 4 - 3, 22 - 3
	var ppidField, startField []byte
	n := 0
	for rest := b[end+1:]; n <= startIdx; n++ {
		f := nextField(&rest)
		if f == nil {
			return procStat{}, fmt.Errorf("stat: %d fields after the command name, want at least %d", n, startIdx+1)
		}
		switch n {
		case ppidIdx:
			ppidField = f
		case startIdx:
			startField = f
		}
	}
	ppid, ok := parseUint(ppidField, 32)
	if !ok {
		return procStat{}, fmt.Errorf("stat: parent pid: invalid %q", string(ppidField))
	}
	start, ok := parseUint(startField, 64)
	if !ok {
		return procStat{}, fmt.Errorf("stat: start time: invalid %q", string(startField))
	}
	return procStat{Comm: string(b[open+1 : end]), PPID: uint32(ppid), StartTime: start}, nil
}

// nextField returns the next field of *rest separated by ASCII whitespace
// and advances *rest past it, or nil when none is left.
func nextField(rest *[]byte) []byte {
	b := *rest
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	*rest = b[j:]
	if i == j {
		return nil
	}
	return b[i:j]
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// parseUint parses a decimal number that fits in bits bits, without
// allocating.
func parseUint(b []byte, bits int) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	limit := uint64(1)<<bits - 1
	if bits == 64 {
		limit = ^uint64(0)
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (limit-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// readLimited reads the file at path into buf with a single read, which
// for procfs files returns everything that fits, and returns the bytes
// read. It uses raw system calls: os.File would also try to register the
// descriptor with the network poller, one more system call per file.
func readLimited(path string, buf []byte) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	for err == syscall.EINTR {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n, err := syscall.Read(fd, buf)
	for err == syscall.EINTR {
		n, err = syscall.Read(fd, buf)
	}
	if err != nil {
		return nil, &os.PathError{Op: "read", Path: path, Err: err}
	}
	return buf[:n], nil
}

// maxStatBytes bounds a stat read; real lines are a few hundred bytes
// (the command name is at most 64 bytes).
const maxStatBytes = 1024

func (r *Resolver) readStat(pid uint32) (procStat, error) {
	var buf [maxStatBytes]byte
	b, err := readLimited(r.procPath(pid, "stat"), buf[:])
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// readCmdLine returns the first four non-empty NUL-separated arguments of
// /proc/<pid>/cmdline joined by single spaces, as valid UTF-8, cut to at
// most r.maxCmdLine() bytes at a space and then secret-redacted.
func (r *Resolver) readCmdLine(pid uint32) (string, error) {
	limit := r.maxCmdLine()
	// Reading twice the output limit leaves room for empty arguments.
	bp := cmdBufs.Get().(*[]byte)
	defer cmdBufs.Put(bp)
	if cap(*bp) < 2*limit+1 {
		*bp = make([]byte, 2*limit+1)
	}
	b, err := readLimited(r.procPath(pid, "cmdline"), (*bp)[:2*limit+1])
	if err != nil {
		return "", err
	}
	return redact.String(formatCmdLine(b, limit)), nil
}

// cmdBufs holds command-line read buffers; formatCmdLine copies what it
// keeps, so a buffer is reused as soon as it is formatted.
var cmdBufs = sync.Pool{New: func() any { return new([]byte) }}

// TruncatedSuffix ends a command line that was cut to the length limit.
const TruncatedSuffix = " ...[truncated]"

// formatCmdLine joins the first four non-empty NUL-separated arguments of
// raw with single spaces, replacing invalid UTF-8, and cuts the result to
// at most limit bytes (plus TruncatedSuffix). The cut is made at the last
// whitespace before the limit so that no partial word, which might be
// part of a secret the redactor no longer recognises, is kept.
func formatCmdLine(raw []byte, limit int) string {
	var sb strings.Builder
	n := 0
	for arg := range bytes.SplitSeq(raw, []byte{0}) {
		if len(arg) == 0 {
			continue
		}
		if n > 0 {
			sb.WriteByte(' ')
		}
		sb.Write(arg)
		n++
		if n == 4 || sb.Len() > limit {
			break
		}
	}
	s := sb.String()
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= limit {
		return s
	}
	cut := strings.LastIndexAny(s[:limit+1], " \t\n\r\v\f")
	if cut < 0 {
		cut = 0
	}
	return strings.TrimRight(s[:cut], " \t\n\r\v\f") + TruncatedSuffix
}
