// Package doctor is `azure-proxy-agent doctor`: a read-only check of what
// the agent needs and of how it is installed and running — the machine's
// prerequisites (package prereq), owners and modes of the binary, unit,
// config, keys, rules and logs, the eBPF redirect pinned and attached to
// the cgroup root, the listener bound to loopback only, the key latched,
// status.json fresh and the log folder writable.
//
// Each Finding has a stable ID, a Severity and, unless it is OK, a fix. A
// non-root user gets every check it can make; what it cannot see (a 0700
// key folder, pinned links) is reported as Unknown, never as a failure.
// Doctor changes nothing.
package doctor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/installpath"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/prereq"
)

// Severity grades a Finding.
type Severity string

// Severities, from best to worst; Unknown is what could not be checked.
const (
	OK      Severity = "ok"
	Info    Severity = "info"
	Warn    Severity = "warn"
	Fail    Severity = "fail"
	Unknown Severity = "unknown"
)

// Finding is one check's result.
type Finding struct {
	// ID names the check, e.g. "prereq.cgroup2", "file.keys", "listener.loopback".
	ID       string   `json:"id"`
	Severity Severity `json:"severity"`
	// Message says what was found.
	Message string `json:"message"`
	// Fix says what to do; empty for OK and Info.
	Fix string `json:"fix,omitempty"`
}

// Default installed paths (the extension's layout; with a read-only /usr
// under InstallRoot, their installpath.Map counterparts).
const (
	DefaultBinary = installpath.AgentBinary
	DefaultUnit   = installpath.UnitFile
)

// Options say what to check. The zero value checks the running system's
// production installation, expecting root to own it.
type Options struct {
	// SystemRoot prefixes /proc, /sys, /boot and os-release ("" is /).
	SystemRoot string
	// InstallRoot prefixes the default binary, unit and config paths, as
	// $GPA_ROOT does for the extension ("" is /). Paths inside the config
	// are used as written.
	InstallRoot string
	// ConfigPath is the agent config; "" is InstallRoot + config.DefaultPath.
	ConfigPath string
	// Binary and Unit override the installed agent binary and unit file.
	Binary, Unit string
	// Owner is the uid that must own the installed files (0, root, unless
	// a test installs as another user).
	Owner int
	// UID is the uid doctor runs as; checks it lacks the permission for
	// are Unknown rather than failures. Zero value: root. The CLI passes
	// os.Geteuid().
	UID int
	// Now is the clock for status freshness; nil is time.Now.
	Now func() time.Time
	// Redirect inspects the pinned links (nil: the real kernel, see
	// redirect_linux.go). Tests of crafted roots leave it nil.
	Redirect func(pinDir string) []Attachment
}

// Attachment is a pinned link as doctor sees it (see redirector.Inspect).
type Attachment struct {
	Pin, Want, Got string
	CgroupID       uint64
	Err            error
}

// Report is the result of Run.
type Report struct {
	Version  string    `json:"version"`
	UID      int       `json:"uid"`
	Findings []Finding `json:"findings"`
	// Counts per severity.
	Counts map[Severity]int `json:"counts"`
}

// Failed reports whether any finding is a failure.
func (r Report) Failed() bool { return r.Counts[Fail] > 0 }

type checker struct {
	o   Options
	cfg config.Config
	out []Finding
}

func (c *checker) add(id string, sev Severity, msg, fix string) {
	if sev == OK || sev == Info {
		fix = ""
	}
	c.out = append(c.out, Finding{ID: id, Severity: sev, Message: msg, Fix: fix})
}

func (o Options) install(p string) string {
	if o.InstallRoot == "" {
		return p
	}
	return filepath.Join(o.InstallRoot, p)
}

func (o Options) sys(p string) string {
	if o.SystemRoot == "" {
		return p
	}
	return filepath.Join(o.SystemRoot, p)
}

// Run makes every check and returns the findings in a fixed order.
func Run(o Options, version string) Report {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ConfigPath == "" {
		o.ConfigPath = o.install(config.DefaultPath)
	}
	ro := installpath.ReadOnlyLayout(o.InstallRoot)
	if o.Binary == "" {
		o.Binary = o.install(installpath.Map(DefaultBinary, ro))
	}
	if o.Unit == "" {
		o.Unit = o.install(installpath.Map(DefaultUnit, ro))
	}
	if o.Redirect == nil {
		o.Redirect = inspectRedirect
	}
	c := &checker{o: o}
	c.prerequisites()
	c.loadConfig()
	c.files()
	c.redirect()
	c.listener()
	s := c.status()
	c.key(s)
	c.logFolders()
	r := Report{Version: version, UID: o.UID, Findings: c.out, Counts: map[Severity]int{}}
	for _, f := range c.out {
		r.Counts[f.Severity]++
	}
	return r
}

func (c *checker) prerequisites() {
	r := prereq.Check(prereq.Paths{Root: c.o.SystemRoot})
	byID := map[string][]prereq.Problem{}
	for _, p := range r.Problems {
		byID[p.ID] = append(byID[p.ID], p)
	}
	ok := map[string]string{
		prereq.IDKernel:   fmt.Sprintf("kernel %s (%s or newer needed)", r.Kernel, prereq.MinKernel),
		prereq.IDCgroup2:  "cgroup v2 is mounted",
		prereq.IDBTF:      "kernel BTF is present (/sys/kernel/btf/vmlinux)",
		prereq.IDLockdown: "kernel lockdown allows the eBPF programs",
		prereq.IDConfig:   "kernel config has what the eBPF programs need (or is not shipped in /boot)",
	}
	for _, id := range []string{prereq.IDKernel, prereq.IDCgroup2, prereq.IDBTF, prereq.IDLockdown, prereq.IDConfig} {
		ps := byID[id]
		if len(ps) == 0 {
			c.add("prereq."+id, OK, ok[id], "")
		}
		for _, p := range ps {
			c.add("prereq."+id, Fail, p.Summary, p.Fix)
		}
	}
	switch {
	case r.OSError != nil:
		c.add("prereq.distribution", Warn, "os-release cannot be read: "+r.OSError.Error(), "restore /etc/os-release")
	case r.Tested():
		c.add("prereq.distribution", OK, fmt.Sprintf("%s (tested: %s)", prettyOS(r.OS), r.Distribution), "")
	default:
		c.add("prereq.distribution", Warn, fmt.Sprintf("%s is not a tested distribution; it has every prerequisite above, so the agent is supported", prettyOS(r.OS)),
			"none needed; tested: "+strings.Join(prereq.TestedDistributions(), ", "))
	}
}

func prettyOS(o prereq.OSRelease) string {
	if o.PrettyName != "" {
		return o.PrettyName
	}
	return o.String()
}

// defaults is the default config with its folders under InstallRoot.
func (c *checker) defaults() config.Config {
	d := config.Default()
	for _, p := range []*string{&d.LogFolder, &d.LatchKeyFolder, &d.StatusFolder} {
		*p = c.o.install(*p)
	}
	return d
}

func (c *checker) loadConfig() {
	cfg, err := config.Load(c.o.ConfigPath)
	switch {
	case err == nil:
		c.cfg = cfg
		c.add("config", OK, "config "+c.o.ConfigPath+" is valid", "")
	case errors.Is(err, fs.ErrNotExist):
		c.cfg = c.defaults()
		c.add("config", Fail, "config "+c.o.ConfigPath+" does not exist; the checks below use the defaults",
			"reinstall the agent (enable the VM extension again) or pass --config")
	case errors.Is(err, fs.ErrPermission):
		c.cfg = c.defaults()
		c.add("config", Unknown, c.cannot("read "+c.o.ConfigPath, err)+"; the checks below use the defaults", "run doctor as root")
	default:
		c.cfg = c.defaults()
		c.add("config", Fail, err.Error(), "correct the config; the agent does not start with it")
	}
}

// cannot phrases what a non-root doctor could not see.
func (c *checker) cannot(what string, err error) string {
	return fmt.Sprintf("cannot %s as uid %d (%v)", what, c.o.UID, errors.Unwrap(err))
}

// fileRule is what an installed path must look like.
type fileRule struct {
	id, path, what string
	dir            bool
	// forbidden permission bits.
	forbidden fs.FileMode
	// missingOK: absence is only Info (e.g. no rules yet).
	missingOK bool
	fix       string // for a wrong owner or mode
	// missingFix is the fix where the path does not exist (fix when empty).
	missingFix string
}

func (c *checker) files() {
	cfg := c.cfg
	rules := []fileRule{
		{id: "file.binary", path: c.o.Binary, what: "agent binary", forbidden: 0o022, fix: "reinstall the agent: enable the VM extension again"},
		{id: "file.unit", path: c.o.Unit, what: "systemd unit", forbidden: 0o022, fix: "reinstall the agent: enable the VM extension again"},
		{id: "file.config", path: c.o.ConfigPath, what: "config", forbidden: 0o022, fix: "chown root:root and chmod 0644 the config",
			missingFix: "reinstall the agent: enable the VM extension again (it writes the default config)"},
		{id: "file.keys", path: cfg.LatchKeyFolder, what: "key folder", dir: true, forbidden: 0o077, fix: "chown root:root and chmod 0700 the key folder",
			missingFix: "start the agent (systemctl start azure-proxy-agent): it creates the key folder when it latches a key"},
		{id: "file.rules", path: cfg.RulesFolder(), what: "local rules folder", dir: true, forbidden: 0o022, missingOK: true, fix: "chown root and chmod go-w the rules folder"},
		{id: "file.logs", path: cfg.LogFolder, what: "log folder", dir: true, forbidden: 0o022, fix: "chown root and chmod 0755 the log folder",
			missingFix: "start the agent (systemctl start azure-proxy-agent): it creates the log folder"},
	}
	for _, r := range rules {
		c.checkFile(r)
	}
	c.checkInside("file.key", cfg.LatchKeyFolder, func(name string) bool { return strings.HasSuffix(name, ".key") }, "key file", 0o077,
		"chmod 0600 the key files (they hold the latched key)")
	c.checkInside("file.rules", cfg.RulesFolder(), func(string) bool { return true }, "rules file", 0o022, "chown root and chmod go-w the rules files")
	c.checkInside("file.log", cfg.LogFolder, func(name string) bool {
		return strings.Contains(name, ".log") || strings.Contains(name, ".jsonl") || name == "status.json"
	}, "log file", 0o026,
		"chmod 0640 the log files (they name callers and their command lines)")
}

func (c *checker) checkFile(r fileRule) {
	if r.path == "" {
		c.add(r.id, Info, r.what+" is not configured", "")
		return
	}
	fi, err := os.Lstat(r.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if r.missingOK {
			c.add(r.id, Info, r.what+" "+r.path+" does not exist", "")
		} else if r.missingFix != "" {
			c.add(r.id, Fail, r.what+" "+r.path+" does not exist", r.missingFix)
		} else {
			c.add(r.id, Fail, r.what+" "+r.path+" does not exist", r.fix)
		}
		return
	case errors.Is(err, fs.ErrPermission):
		c.add(r.id, Unknown, c.cannot("see "+r.path, err), "run doctor as root")
		return
	case err != nil:
		c.add(r.id, Fail, err.Error(), r.fix)
		return
	}
	c.judgeMode(r.id, r.what, r.path, fi, r.dir, r.forbidden, r.fix)
}

func (c *checker) judgeMode(id, what, path string, fi fs.FileInfo, dir bool, forbidden fs.FileMode, fix string) {
	uid := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid = int(st.Uid)
	}
	var bad []string
	if fi.Mode()&fs.ModeSymlink != 0 {
		bad = append(bad, "is a symbolic link")
	} else if dir != fi.IsDir() {
		if dir {
			bad = append(bad, "is not a directory")
		} else {
			bad = append(bad, "is not a regular file")
		}
	}
	if uid != c.o.Owner {
		bad = append(bad, fmt.Sprintf("is owned by uid %d, not %d", uid, c.o.Owner))
	}
	if p := fi.Mode().Perm() & forbidden; p != 0 {
		bad = append(bad, fmt.Sprintf("has mode %04o (%s must not be set)", fi.Mode().Perm(), permWords(p)))
	}
	if len(bad) > 0 {
		c.add(id, Fail, fmt.Sprintf("%s %s %s", what, path, strings.Join(bad, ", ")), fix)
		return
	}
	c.add(id, OK, fmt.Sprintf("%s %s: owner %d, mode %04o", what, path, uid, fi.Mode().Perm()), "")
}

func permWords(p fs.FileMode) string {
	var w []string
	if p&0o070 != 0 {
		w = append(w, "group "+rwx(p>>3&7))
	}
	if p&0o007 != 0 {
		w = append(w, "other "+rwx(p&7))
	}
	return strings.Join(w, ", ")
}

func rwx(b fs.FileMode) string {
	s := ""
	for i, ch := range "rwx" {
		if b&(4>>i) != 0 {
			s += string(ch)
		}
	}
	return s
}

// checkInside applies a mode rule to each matching file in dir; it adds
// nothing when dir is missing (checkFile reported that) and Unknown when
// dir cannot be listed.
func (c *checker) checkInside(id, dir string, match func(string) bool, what string, forbidden fs.FileMode, fix string) {
	if dir == "" {
		return
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		c.add(id, Unknown, c.cannot("list "+dir, err), "run doctor as root")
		return
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if !e.IsDir() && match(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		fi, err := os.Lstat(p)
		if err != nil {
			c.add(id, Unknown, c.cannot("see "+p, err), "run doctor as root")
			continue
		}
		c.judgeMode(id, what, p, fi, false, forbidden, fix)
	}
}

// PrintText writes the report for a person: one line per finding, its fix
// below it, and a summary line.
func PrintText(w io.Writer, r Report) {
	fmt.Fprintf(w, "azure-proxy-agent doctor %s (uid %d)\n", r.Version, r.UID)
	width := 0
	for _, f := range r.Findings {
		width = max(width, len(f.ID))
	}
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%-7s %-*s  %s\n", strings.ToUpper(string(f.Severity)), width, f.ID, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "%-7s %-*s  fix: %s\n", "", width, "", f.Fix)
		}
	}
	fmt.Fprintf(w, "%d checks: %d ok, %d info, %d warnings, %d failures, %d could not be checked\n",
		len(r.Findings), r.Counts[OK], r.Counts[Info], r.Counts[Warn], r.Counts[Fail], r.Counts[Unknown])
}

// PrintJSON writes the report as one JSON document.
func PrintJSON(w io.Writer, r Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
