// Package console writes the agent's few lines for the machine's console
// (/dev/console, the serial log that Azure's boot diagnostics show): the
// start line, the start-up milestones and the provisioning result, in
// upstream's format (protocol.md §7.2):
//
//	<YYYY-MM-DDTHH:MM:SS.mmm> azure-proxy-agent_<version>(<pid>) - <message>
//
// A console that cannot be opened or written is not an error the agent
// acts on: the same messages are in its log.
package console

import (
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// DefaultPath is the machine's console.
const DefaultPath = "/dev/console"

// Writer writes lines to the console; a nil Writer writes nothing. Use
// New. It is safe for concurrent use.
type Writer struct {
	path   string
	prefix string // " azure-proxy-agent_<version>(<pid>) - "
	now    func() time.Time
	mu     sync.Mutex // one line at a time
}

// New returns a Writer for the console at path (normally DefaultPath)
// that names the agent's version and this process's pid; for "" it
// returns nil, a Writer that writes nothing.
func New(path, version string) *Writer {
	if path == "" {
		return nil
	}
	return &Writer{path: path, prefix: " " + msp.ServiceName + "_" + version + "(" + strconv.Itoa(os.Getpid()) + ") - ",
		now: time.Now}
}

// Line writes msg as one console line and reports whether it was written.
// The console is opened for each line (as upstream does), without
// becoming the process's controlling terminal and without blocking on a
// console that cannot take the line; a path other than DefaultPath that
// names no file yet (a test's or a demo's stand-in for the console) is
// created, mode 0600.
func (w *Writer) Line(msg string) bool {
	if w == nil {
		return false
	}
	line := make([]byte, 0, len(status.TimestampLayout)+len(w.prefix)+len(msg)+1)
	line = w.now().UTC().AppendFormat(line, status.TimestampLayout)
	line = append(line, w.prefix...)
	line = append(line, msg...)
	line = append(line, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	flags := os.O_WRONLY | os.O_APPEND | syscall.O_NOCTTY | syscall.O_NONBLOCK
	if w.path != DefaultPath {
		flags |= os.O_CREATE // never a regular file where the console is missing
	}
	f, err := os.OpenFile(w.path, flags, 0o600)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.Write(line)
	return err == nil
}

// StartMessage is the agent's first console line: its version, the
// operating system and architecture, and the milliseconds since the
// process started.
func StartMessage(version, osName, arch string, elapsed time.Duration) string {
	return "============== GuestProxyAgent (" + version + ") is starting on " + osName + "(" + arch + "), elapsed: " +
		strconv.FormatInt(elapsed.Milliseconds(), 10)
}
