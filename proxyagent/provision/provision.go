// Package provision tracks the agent's provisioning (shared/spec/protocol.md
// §5.3–§5.6): the REDIRECTOR_READY, KEY_LATCH_READY and LISTENER_READY
// flags, the finish time, the timeout, the provisioned.tag and status.tag
// files, the answer of the local GET /provision endpoint, and the
// `--status [--wait N]` command-line client.
//
// Deliberate deviation (upstream quirk 14): on ALL_READY upstream recomputes
// the redirect policy from the compiled rule sets, which removes the
// redirects of a v1 host (no rules). Here provisioning only observes the
// key keeper's state; the key keeper alone installs the redirect policy of
// its current modes, so v1 hosts keep their redirects.
package provision

import (
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"

	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Flags is the set of provisioning steps done.
type Flags uint8

// The provisioning flags.
const (
	RedirectorReady Flags = 1
	KeyLatchReady   Flags = 2
	ListenerReady   Flags = 4
	AllReady        Flags = 7
)

// Tag file names inside the key directory.
const (
	ProvisionedTag = "provisioned.tag"
	StatusTag      = "status.tag"
)

// SuccessConsoleMessage is written to the console when provisioning
// finishes without error.
const SuccessConsoleMessage = "Provision finished successfully"

// Options configure a Provisioner. All fields are optional except Dir.
type Options struct {
	// Dir receives provisioned.tag and status.tag (the key directory).
	Dir string
	// Registry supplies the module messages of the error text.
	Registry *status.Registry
	// State returns the key keeper's secure-channel state string.
	State func() string
	// Notify wakes the key keeper (a /provision query with notify).
	Notify func()
	// OnFinished is called once, the first time provisioning finishes
	// (ALL_READY or timeout): the agent starts its status writer there.
	OnFinished func()
	// Console receives the provisioning result line (/dev/console).
	Console func(msg string)
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Provisioner holds the provisioning state. It is safe for concurrent use;
// its mutex owns the flags and the finish time.
type Provisioner struct {
	opts     Options
	log      *slog.Logger
	once     sync.Once
	mu       sync.Mutex
	flags    Flags
	finished int64 // Unix nanoseconds; 0 = not finished
	// fileMu serialises tag-file writes.
	fileMu sync.Mutex
}

// New returns a Provisioner with no flag set and nothing finished.
func New(opts Options) *Provisioner {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Provisioner{opts: opts, log: opts.Logger.With("module", "provision")}
}

// RedirectorReady records that the eBPF redirector is loaded and attached.
func (p *Provisioner) RedirectorReady() { p.set(RedirectorReady) }

// KeyLatched records that a key is latched or the channel is disabled.
// While ALL_READY it refreshes the finish time (and tags) on every call.
func (p *Provisioner) KeyLatched() { p.set(KeyLatchReady) }

// ListenerReady records that the proxy listener accepts connections.
func (p *Provisioner) ListenerReady() { p.set(ListenerReady) }

func (p *Provisioner) set(f Flags) {
	p.mu.Lock()
	p.flags |= f
	all := p.flags == AllReady
	if all {
		p.finished = p.opts.Now().UnixNano()
	}
	p.mu.Unlock()
	if !all {
		return
	}
	p.finish()
}

// KeyLatchReset clears KEY_LATCH_READY and the finish time (a notify while
// the channel is disabled or Unknown).
func (p *Provisioner) KeyLatchReset() {
	p.mu.Lock()
	p.flags &^= KeyLatchReady
	p.finished = 0
	p.mu.Unlock()
}

// ProvisionTimeout finishes provisioning with an error when not ALL_READY:
// the finish time is set and the tag files carry the missing steps.
func (p *Provisioner) ProvisionTimeout() {
	p.mu.Lock()
	if p.flags == AllReady {
		p.mu.Unlock()
		return
	}
	p.finished = p.opts.Now().UnixNano()
	p.mu.Unlock()
	p.log.Warn("provisioning timed out", "missing", p.ErrorMessage())
	p.finish()
}

func (p *Provisioner) finish() {
	if err := p.writeTags(); err != nil {
		p.log.Error("failed to write provisioning tag files", "dir", p.opts.Dir, "err", err)
	}
	p.StartEvents()
}

// StartEvents runs OnFinished if it has not run yet. Provisioning calls it
// when it finishes; the agent also calls it after one minute of uptime
// (§1.6), whichever comes first.
func (p *Provisioner) StartEvents() {
	if p.opts.OnFinished != nil {
		p.once.Do(p.opts.OnFinished)
	}
}

// Flags returns the steps done.
func (p *Provisioner) Flags() Flags {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flags
}

// FinishedTimeTick returns the finish time in Unix nanoseconds, 0 when
// provisioning has not finished.
func (p *Provisioner) FinishedTimeTick() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.finished
}

// ErrorMessage returns, for each step still missing, the line
// "<module> - <module message>\r\n" (ebpfProgramStatus, keyLatchStatus,
// proxyListenerStatus); "" when all steps are done.
func (p *Provisioner) ErrorMessage() string {
	flags := p.Flags()
	var b strings.Builder
	for _, s := range []struct {
		flag Flags
		mod  status.Module
	}{
		{RedirectorReady, status.EbpfProgram},
		{KeyLatchReady, status.KeyLatch},
		{ListenerReady, status.ProxyListener},
	} {
		if flags&s.flag != 0 {
			continue
		}
		msg := status.InitialMessage
		if p.opts.Registry != nil {
			msg = p.opts.Registry.Get(s.mod).Message
		}
		b.WriteString(s.mod.String() + " - " + msg + "\r\n")
	}
	return b.String()
}

// Query answers GET /provision (§5.4) for a caller whose query started at
// timeTick (Unix nanoseconds; 0 when the header was missing or invalid):
// finished when the finish time is not older than timeTick, or when the
// channel is latched (state neither disabled nor Unknown) and provisioning
// has finished at all. As upstream (quirk 10), timeTick 0 always reports
// finished. With notify and not finished, the key keeper is woken.
// errorMessage is the current ErrorMessage, unescaped.
func (p *Provisioner) Query(timeTick int64, notify bool) (finished bool, errorMessage string) {
	fin := p.FinishedTimeTick()
	state := msp.StateUnknown
	if p.opts.State != nil {
		state = p.opts.State()
	}
	latched := state != msp.StateDisabled && state != msp.StateUnknown
	finished = fin >= timeTick || (latched && fin > 0)
	if notify && !finished && p.opts.Notify != nil {
		p.opts.Notify()
	}
	return finished, p.ErrorMessage()
}

// ParseTimeTick reads an x-ms-azure-time-tick header value (a decimal
// integer, i128 upstream). Invalid or empty text gives 0; values beyond
// int64 are clamped, so their comparison keeps upstream's outcome.
func ParseTimeTick(s string) int64 {
	s = strings.TrimSpace(s)
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return 0
	}
	switch {
	case n.IsInt64():
		return n.Int64()
	case n.Sign() > 0:
		return math.MaxInt64
	}
	return math.MinInt64
}

// XMLEscape escapes & ' " < > as upstream does for status.tag.
func XMLEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "'", "&apos;", `"`, "&quot;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// writeTags writes provisioned.tag (the finish timestamp) and status.tag
// (the XML-escaped error text, empty on success, via status.tag.tmp and a
// rename), both 0600, and reports the result on the console.
func (p *Provisioner) writeTags() error {
	p.fileMu.Lock()
	defer p.fileMu.Unlock()
	msg := p.ErrorMessage()
	if p.opts.Console != nil {
		if msg == "" {
			p.opts.Console(SuccessConsoleMessage)
		} else {
			p.opts.Console(msg)
		}
	}
	if msg == "" {
		p.log.Info("provisioning finished")
	} else {
		p.log.Error("provisioning finished with errors", "error", msg)
	}
	dir := p.opts.Dir
	if dir == "" {
		return fmt.Errorf("provision: no tag directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	stamp := status.FormatTimestamp(p.opts.Now())
	if err := atomicfile.WriteFile(filepath.Join(dir, ProvisionedTag), []byte(stamp), 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, StatusTag), []byte(XMLEscape(msg)), 0o600)
}
