package claims

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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
	st := procStat{Comm: string(b[open+1 : end])}
	// Fields 3.. follow ") ".
	rest := strings.Fields(string(b[end+1:]))
	const ppidIdx, startIdx = 4 - 3, 22 - 3
	if len(rest) <= startIdx {
		return procStat{}, fmt.Errorf("stat: %d fields after the command name, want at least %d", len(rest), startIdx+1)
	}
	ppid, err := strconv.ParseUint(rest[ppidIdx], 10, 32)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: parent pid: %w", err)
	}
	start, err := strconv.ParseUint(rest[startIdx], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: start time: %w", err)
	}
	st.PPID = uint32(ppid)
	st.StartTime = start
	return st, nil
}

// readLimited returns the first (at most limit) bytes of the file at
// path with a single read, which for procfs files returns everything that
// fits. It uses raw system calls: os.File would also try to register the
// descriptor with the network poller, one more system call per file.
func readLimited(path string, limit int) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	for err == syscall.EINTR {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	buf := make([]byte, limit)
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
	b, err := readLimited(r.procPath(pid, "stat"), maxStatBytes)
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
	b, err := readLimited(r.procPath(pid, "cmdline"), 2*limit+1)
	if err != nil {
		return "", err
	}
	return redact.String(formatCmdLine(b, limit)), nil
}

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
