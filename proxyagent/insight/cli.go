package insight

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Exit codes of RunAudit and RunRules.
const (
	ExitOK       = 0 // success; rules test: nothing newly denied
	ExitFindings = 1 // rules test: something newly denied; rules suggest: an observed call is not allowed
	ExitBadInput = 2 // usage error or bad input (see InputError)
)

// maxWarnings bounds the warnings printed to stderr (JSON output has them all).
const maxWarnings = 20

// Program is the command name used in messages: the agent's name.
const Program = msp.ServiceName

// now is the clock for --since durations.
var now = time.Now

// RunAudit runs `azure-proxy-agent audit <args>`; args start after the
// word "audit" (e.g. ["report", "--json"]). It writes results to stdout,
// warnings and errors to stderr, and returns an exit code (ExitOK,
// ExitFindings, ExitBadInput). It never panics on bad input.
func RunAudit(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprintf(stderr, "usage: %s audit report|top [flags]\n\nSubcommands:\n  report   who called what, and what Enforce would deny\n%s\n", Program, topUsage)
		if len(args) == 0 {
			return ExitBadInput
		}
		return ExitOK
	}
	switch args[0] {
	case "report":
		return runReport(args[1:], stdout, stderr)
	case "top":
		return runTop(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "%s audit: unknown subcommand %q (want report or top)\n", Program, args[0])
	return ExitBadInput
}

// RunRules runs `azure-proxy-agent rules <args>`; args start after the
// word "rules" (e.g. ["suggest", "--service", "imds"] or ["test",
// "IMDS_Rules.json"]). Output and exit codes are as for RunAudit.
func RunRules(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprintf(stderr, "usage: %s rules suggest|test [flags]\n\nSubcommands:\n"+
			"  suggest      write least-privilege rules that allow the observed calls\n"+
			"  test RULES   replay the audit log against RULES and show changed decisions\n", Program)
		if len(args) == 0 {
			return ExitBadInput
		}
		return ExitOK
	}
	switch args[0] {
	case "suggest":
		return runSuggest(args[1:], stdout, stderr)
	case "test":
		return runTest(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "%s rules: unknown subcommand %q (want suggest or test)\n", Program, args[0])
	return ExitBadInput
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "help" }

// logFlags are the flags every command has for choosing the audit log.
type logFlags struct {
	log, dir, since string
	strict, json    bool
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.log, "log", "", "read this audit log file only (no rotated copies)")
	fs.StringVar(&l.dir, "dir", DefaultLogDir, "read ProxyAgent.Audit.jsonl and its rotated copies from this folder")
	fs.StringVar(&l.since, "since", "", "only records at or after this time: a duration back from now (24h) or an RFC 3339 time")
	fs.BoolVar(&l.strict, "strict", false, "fail (exit 2) on any corrupt, truncated or out-of-chain log line instead of skipping it")
	fs.BoolVar(&l.json, "json", false, "write JSON instead of text")
}

func (l *logFlags) source() (Source, error) {
	since, err := ParseSince(l.since, now())
	if err != nil {
		return Source{}, err
	}
	return Source{Path: l.log, Dir: l.dir, Since: since, Strict: l.strict}, nil
}

// newFlagSet returns a flag set that reports errors to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(Program+" "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseArgs parses flags that may come before or after positional
// arguments, and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// usageExit maps a flag parse error to an exit code.
func usageExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitBadInput
}

// fail prints err (and an InputError's warnings) and returns ExitBadInput.
func fail(stderr io.Writer, cmd string, err error) int {
	var ie *InputError
	if errors.As(err, &ie) {
		printWarnings(stderr, ie.Warnings)
	}
	fmt.Fprintf(stderr, "%s %s: %v\n", Program, cmd, err)
	return ExitBadInput
}

func printWarnings(stderr io.Writer, ws []Warning) {
	for i, w := range ws {
		if i == maxWarnings {
			fmt.Fprintf(stderr, "warning: ... and %d more\n", len(ws)-maxWarnings)
			break
		}
		fmt.Fprintf(stderr, "warning: %s\n", clean(w.String()))
	}
}

func runReport(args []string, stdout, stderr io.Writer) int {
	const cmd = "audit report"
	fs := newFlagSet(cmd, stderr)
	var lf logFlags
	lf.register(fs)
	rulesPath := fs.String("rules", "", "judge what Enforce would deny with this rules document (local file, authorization item or rules, profile) instead of the recorded decisions")
	service := fs.String("service", "", "service of a single-service --rules document: wireserver, imds or hostga")
	depth := fs.Int("path-depth", 0, "group request paths by their first N segments (0 = whole path)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return usageExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "%s %s: unexpected argument %q\n", Program, cmd, pos[0])
		return ExitBadInput
	}
	if *depth < 0 {
		return fail(stderr, cmd, errors.New("--path-depth must not be negative"))
	}
	src, err := lf.source()
	if err != nil {
		return fail(stderr, cmd, err)
	}
	opts := ReportOptions{PathDepth: *depth, Since: src.Since}
	if *rulesPath != "" {
		if opts.Rules, err = loadRules(stderr, *rulesPath, *service, RulesOptions{Mode: msp.ModeEnforce}); err != nil {
			return fail(stderr, cmd, err)
		}
	}
	b := NewReportBuilder(opts)
	st, err := Scan(src, func(e Entry) error { b.Add(e); return nil })
	if err != nil {
		return fail(stderr, cmd, err)
	}
	printWarnings(stderr, st.Warnings)
	rep := b.Report(st)
	return write(stdout, stderr, cmd, lf.json, rep.WriteJSON, rep.WriteTable)
}

func runSuggest(args []string, stdout, stderr io.Writer) int {
	const cmd = "rules suggest"
	fs := newFlagSet(cmd, stderr)
	var lf logFlags
	lf.register(fs)
	service := fs.String("service", "", "service to write rules for: wireserver or imds (required)")
	identity := fs.String("identity", ByExeUser, "how to name callers: exe, user, group (primary group) or exe+user")
	depth := fs.Int("path-depth", 0, "keep the first N segments of observed paths (0 = whole path)")
	query := fs.String("query", QueryNone, "query parameters in privileges: none or observed (require the observed values)")
	access := fs.String("default-access", "deny", "access for requests no privilege matches: deny or allow")
	format := fs.String("format", "local", "output: local (the agent's WireServer_Rules.json / IMDS_Rules.json) or profile (inVMAccessControlProfile version)")
	mode := fs.String("mode", "audit", "mode of a profile document: audit or enforce (local files have no mode)")
	includeDenied := fs.Bool("include-denied", false, "treat denied requests as legitimate too (default: only forwarded ones)")
	id := fs.String("id", "", `document id (default "least-privilege-<service>")`)
	out := fs.String("out", "", "write the document to this file instead of stdout")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return usageExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "%s %s: unexpected argument %q\n", Program, cmd, pos[0])
		return ExitBadInput
	}
	if *service == "" {
		return fail(stderr, cmd, errors.New("--service wireserver|imds is required (one document per service)"))
	}
	svc, err := ParseService(*service)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	pm, ok := msp.ParseMode(*mode)
	if !ok || pm == msp.ModeDisabled {
		return fail(stderr, cmd, fmt.Errorf("--mode %q: want audit or enforce", *mode))
	}
	if *format != "local" && *format != "profile" {
		return fail(stderr, cmd, fmt.Errorf("--format %q: want local or profile", *format))
	}
	src, err := lf.source()
	if err != nil {
		return fail(stderr, cmd, err)
	}
	sg, err := NewSuggester(SuggestOptions{Service: svc, IncludeHostGA: *format == "profile", Identity: *identity,
		PathDepth: *depth, Query: *query, DefaultAccess: *access, IncludeDenied: *includeDenied, ID: *id})
	if err != nil {
		return fail(stderr, cmd, err)
	}
	st, err := Scan(src, func(e Entry) error { sg.Add(e); return nil })
	if err != nil {
		return fail(stderr, cmd, err)
	}
	printWarnings(stderr, st.Warnings)
	sug, err := sg.Suggest()
	for _, n := range sug.Notes {
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	if err != nil {
		return fail(stderr, cmd, &InputError{Msg: err.Error()})
	}
	var doc []byte
	if *format == "profile" {
		doc, err = sug.ProfileJSON(pm)
	} else {
		doc, err = sug.LocalJSON()
	}
	if err == nil {
		if *out != "" {
			err = atomicfile.WriteFile(*out, doc, 0o644)
		} else {
			_, err = stdout.Write(doc)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", Program, cmd, err)
		return ExitBadInput
	}
	fmt.Fprintf(stderr, "%s: %d privilege(s), %d identit(ies), %d role(s) from %d request(s)\n", cmd,
		len(sug.Rules.Privileges), len(sug.Rules.Identities), len(sug.Rules.Roles), sug.Used)
	bad, err := sug.Verify()
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", Program, cmd, err)
		return ExitFindings
	}
	for _, b := range bad {
		fmt.Fprintf(stderr, "not allowed by the suggestion: %s\n", b)
	}
	if len(bad) > 0 {
		return ExitFindings
	}
	return ExitOK
}

func runTest(args []string, stdout, stderr io.Writer) int {
	const cmd = "rules test"
	fs := newFlagSet(cmd, stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s rules test RULES [flags]\n", Program)
		fs.PrintDefaults()
	}
	var lf logFlags
	lf.register(fs)
	service := fs.String("service", "", "service of a single-service RULES document: wireserver, imds or hostga (a local file named WireServer_Rules.json or IMDS_Rules.json needs none)")
	mode := fs.String("mode", "enforce", "judge with this mode: enforce, audit, or document (the document's own mode)")
	format := fs.String("format", "", "RULES format: local, item, authorizationRules or profile (default: detect)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return usageExit(err)
	}
	if len(pos) != 1 {
		fs.Usage()
		return ExitBadInput
	}
	ro := RulesOptions{Format: *format}
	switch *mode {
	case "document":
	case "enforce", "audit":
		ro.Mode = msp.Mode(*mode)
	default:
		return fail(stderr, cmd, fmt.Errorf("--mode %q: want enforce, audit or document", *mode))
	}
	src, err := lf.source()
	if err != nil {
		return fail(stderr, cmd, err)
	}
	rules, err := loadRules(stderr, pos[0], *service, ro)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	rp := NewReplayer(rules)
	st, err := Scan(src, func(e Entry) error { rp.Add(e); return nil })
	if err != nil {
		return fail(stderr, cmd, err)
	}
	printWarnings(stderr, st.Warnings)
	res := rp.Result(st)
	if code := write(stdout, stderr, cmd, lf.json, res.WriteJSON, res.WriteText); code != ExitOK {
		return code
	}
	if res.NewlyDenied > 0 {
		return ExitFindings
	}
	return ExitOK
}

// loadRules loads a rules document for a single service named by the
// --service flag (empty: from the document) and prints its warnings.
func loadRules(stderr io.Writer, path, service string, ro RulesOptions) (*Rules, error) {
	if service != "" {
		var err error
		if ro.Service, err = ParseService(service); err != nil {
			return nil, err
		}
	}
	rules, err := LoadRules(path, ro)
	if err != nil {
		return nil, err
	}
	printWarnings(stderr, rules.Warnings)
	return rules, nil
}

// write renders a result as JSON or as text for people; a failed write is
// reported and exits ExitBadInput.
func write(stdout, stderr io.Writer, cmd string, asJSON bool, toJSON, toText func(io.Writer) error) int {
	render := toText
	if asJSON {
		render = toJSON
	}
	if err := render(stdout); err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", Program, cmd, err)
		return ExitBadInput
	}
	return ExitOK
}
