package insight

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
)

// Defaults of `audit top`.
const (
	DefaultTopWindow = time.Minute
	// MaxTopWindow is the longest window.
	MaxTopWindow   = time.Hour
	DefaultTopRows = 20
	// clearScreen moves the cursor home and clears the terminal.
	clearScreen = "\x1b[H\x1b[2J"
)

// TopOptions configure a Top view.
type TopOptions struct {
	// Path is the live audit log (ProxyAgent.Audit.jsonl), followed across
	// rotations.
	Path string
	// Window is how far back the counts reach (DefaultTopWindow; outside
	// 1s to MaxTopWindow, DefaultTopWindow).
	Window time.Duration
	// Rows bounds the caller rows shown (DefaultTopRows).
	Rows int
	// Out receives one frame per Refresh.
	Out io.Writer
	// NoClear leaves out the clear-screen sequence before each frame.
	NoClear bool
}

// Top is a live view of callers and decisions: it follows the audit log
// and, at every Refresh, shows per service and caller how many requests
// were allowed, audit-denied (what Enforce would deny) and denied within
// the window. It is what someone at the VM's console watches while moving
// a service from Audit to Enforce. Not safe for concurrent use.
type Top struct {
	opts TopOptions

	f       *os.File // the followed file, nil until it exists
	partial []byte   // an incomplete last line, kept for the next read
	bad     int      // unreadable lines seen

	rows map[string]*topRow
}

// topRow is one service and caller: a ring of counts over the window, per
// second (per few seconds for a window over a minute).
type topRow struct {
	service  string
	caller   Caller
	slots    []topSlot
	total    topSlot // every record read: the live log from its first line, then across rotations
	last     time.Time
	lastDesc string // decision and status of the latest request
}

type topSlot struct {
	sec                           int64 // the slot's start in seconds, divided by Top.slotSeconds
	allow, auditDeny, deny, other int
}

func (s *topSlot) add(o topSlot) {
	s.allow += o.allow
	s.auditDeny += o.auditDeny
	s.deny += o.deny
	s.other += o.other
}

// NewTop returns a view of the log at opts.Path; the file need not exist
// yet.
func NewTop(opts TopOptions) *Top {
	if opts.Window < time.Second || opts.Window > MaxTopWindow {
		opts.Window = DefaultTopWindow
	}
	if opts.Rows <= 0 {
		opts.Rows = DefaultTopRows
	}
	return &Top{opts: opts, rows: map[string]*topRow{}}
}

// Close releases the followed file.
func (t *Top) Close() error {
	if t.f == nil {
		return nil
	}
	return t.f.Close()
}

// Run refreshes the view at every tick until ctx ends.
func (t *Top) Run(ctx context.Context, tick <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick:
			if err := t.Refresh(now); err != nil {
				return err
			}
		}
	}
}

// Refresh reads what the log gained since the last call and writes one
// frame for the time now.
func (t *Top) Refresh(now time.Time) error {
	if err := t.follow(); err != nil {
		return err
	}
	return t.render(now)
}

// follow reads new complete lines, switching to the new file when the log
// was rotated (after draining the old one) and starting over when it was
// truncated.
func (t *Top) follow() error {
	for {
		if t.f == nil {
			f, err := os.Open(t.opts.Path)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			t.f, t.partial = f, nil
		}
		if err := t.drain(); err != nil {
			return err
		}
		cur, err := os.Stat(t.opts.Path)
		open, ferr := t.f.Stat()
		if ferr != nil {
			return ferr
		}
		switch {
		case err == nil && !os.SameFile(cur, open):
			// Rotated: the old file is drained; continue with the new one.
			t.f.Close()
			t.f = nil
			continue
		case err == nil && cur.Size() < t.offset():
			// Truncated in place: read it again from the start.
			if _, err := t.f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			t.partial = nil
			continue
		}
		return nil
	}
}

// offset is how far the followed file has been read.
func (t *Top) offset() int64 {
	off, err := t.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0
	}
	return off
}

// drain reads the followed file to its current end.
func (t *Top) drain() error {
	buf := make([]byte, 64<<10)
	for {
		n, err := t.f.Read(buf)
		if n > 0 {
			data := append(t.partial, buf[:n]...)
			for {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					break
				}
				t.add(data[:i])
				data = data[i+1:]
			}
			if len(data) > audit.MaxLineBytes {
				t.bad++
				data = nil
			}
			t.partial = append([]byte(nil), data...)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// add counts one audit line.
func (t *Top) add(line []byte) {
	var rec audit.Record
	if err := json.Unmarshal(line, &rec); err != nil || rec.V != audit.SchemaVersion {
		t.bad++
		return
	}
	svc := string(ServiceOf(&rec))
	if svc == "" {
		svc = "(direct)"
	}
	caller := CallerOf(rec.Caller)
	key := svc + "\x00" + caller.key()
	r := t.rows[key]
	if r == nil {
		r = &topRow{service: svc, caller: caller, slots: make([]topSlot, t.slotCount())}
		t.rows[key] = r
	}
	var one topSlot
	switch rec.Decision {
	case "allow":
		one.allow = 1
	case "audit-deny":
		one.auditDeny = 1
	case "deny":
		one.deny = 1
	default:
		one.other = 1
	}
	b := rec.Time.Unix() / t.slotSeconds()
	s := &r.slots[int(b%int64(len(r.slots)))]
	if s.sec != b {
		*s = topSlot{sec: b}
	}
	s.add(one)
	r.total.add(one)
	if !rec.Time.Before(r.last) {
		r.last = rec.Time
		r.lastDesc = fmt.Sprintf("%s %d", rec.Decision, rec.Status)
	}
}

// topLine is one rendered row.
type topLine struct {
	row    *topRow
	window topSlot
}

// maxTopSlots bounds the counts a row keeps: a window longer than
// maxTopSlots seconds is counted in slots of several seconds, so a row
// costs the same whatever the window.
const maxTopSlots = 60

// slotSeconds is how many seconds one slot of a row counts.
func (t *Top) slotSeconds() int64 {
	w := int64(t.opts.Window / time.Second)
	return (w + maxTopSlots - 1) / maxTopSlots
}

// slotCount is how many slots a row keeps to cover the window.
func (t *Top) slotCount() int {
	w, per := int64(t.opts.Window/time.Second), t.slotSeconds()
	return int((w + per - 1) / per)
}

func (t *Top) render(now time.Time) error {
	per := t.slotSeconds()
	from, to := now.Add(-t.opts.Window).Unix()/per, now.Unix()/per
	var lines []topLine
	var sum topSlot
	for _, r := range t.rows {
		l := topLine{row: r}
		for _, s := range r.slots {
			if s.sec > from && s.sec <= to {
				l.window.add(s)
			}
		}
		sum.add(l.window)
		lines = append(lines, l)
	}
	n := func(s topSlot) int { return s.allow + s.auditDeny + s.deny + s.other }
	sort.Slice(lines, func(i, j int) bool {
		a, b := lines[i], lines[j]
		if n(a.window) != n(b.window) {
			return n(a.window) > n(b.window)
		}
		if !a.row.last.Equal(b.row.last) {
			return a.row.last.After(b.row.last)
		}
		return a.row.service+a.row.caller.key() < b.row.service+b.row.caller.key()
	})

	var b bytes.Buffer
	if !t.opts.NoClear {
		b.WriteString(clearScreen)
	}
	fmt.Fprintf(&b, "%s audit top — %s — %s (Ctrl-C ends)\n", Program, t.opts.Path, now.Format("15:04:05"))
	fmt.Fprintf(&b, "last %s: %d requests, %d allowed, %d audit-denied (Enforce would deny), %d denied, %d other\n",
		t.opts.Window, n(sum), sum.allow, sum.auditDeny, sum.deny, sum.other)
	if t.bad > 0 {
		fmt.Fprintf(&b, "%d unreadable line(s) skipped\n", t.bad)
	}
	b.WriteByte('\n')
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tALLOW\tAUDIT-DENY\tDENY\tOTHER\tTOTAL\tLAST\tLAST DECISION\tCALLER")
	shown := 0
	for _, l := range lines {
		if shown == t.opts.Rows {
			break
		}
		shown++
		w := l.window
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s ago\t%s\t%s\n", l.row.service, w.allow, w.auditDeny, w.deny, w.other,
			n(l.row.total), age(now, l.row.last), l.row.lastDesc, l.row.caller)
	}
	tw.Flush()
	if len(lines) > shown {
		fmt.Fprintf(&b, "… %d more caller(s)\n", len(lines)-shown)
	}
	if len(lines) == 0 {
		b.WriteString("(no requests yet)\n")
	}
	_, err := t.opts.Out.Write(b.Bytes())
	return err
}

// age is now-then rounded for a column: "3s", "2m", "1h".
func age(now, then time.Time) string {
	d := now.Sub(then)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d/time.Second)))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	}
	return fmt.Sprintf("%dh", int(d/time.Hour))
}

// runTop runs `audit top`: the live view, refreshed every second, until
// SIGINT or SIGTERM.
func runTop(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit top", stderr)
	dir := fs.String("dir", DefaultLogDir, "follow ProxyAgent.Audit.jsonl in this folder")
	log := fs.String("log", "", "follow this audit log file instead")
	window := fs.Duration("window", DefaultTopWindow, "count the requests of this last stretch of time")
	rows := fs.Int("rows", DefaultTopRows, "show at most this many callers")
	if _, err := parseArgs(fs, args); err != nil {
		return usageExit(err)
	}
	if *window < time.Second || *window > MaxTopWindow {
		fmt.Fprintf(stderr, "%s audit top: --window %v: want 1s to %v\n", Program, *window, MaxTopWindow)
		return ExitBadInput
	}
	path := *log
	if path == "" {
		path = filepath.Join(*dir, audit.AuditLogName)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	top := NewTop(TopOptions{Path: path, Window: *window, Rows: *rows, Out: stdout})
	defer top.Close()
	if err := top.Refresh(time.Now()); err != nil {
		fmt.Fprintf(stderr, "%s audit top: %v\n", Program, err)
		return ExitBadInput
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	if err := top.Run(ctx, tick.C); err != nil {
		fmt.Fprintf(stderr, "%s audit top: %v\n", Program, err)
		return ExitBadInput
	}
	return ExitOK
}

// topUsage is the line RunAudit's help shows for top.
var topUsage = strings.TrimSpace(`
  top      live view of callers and decisions, refreshed every second`)
