package insight

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
)

// ReportOptions configures a ReportBuilder.
type ReportOptions struct {
	// Rules, when set, judges which requests Enforce would deny (compile
	// it with Mode enforce); records of services it does not cover, and
	// all records when it is nil, use the recorded decision (audit-deny
	// and deny count as denied under Enforce).
	Rules *Rules
	// PathDepth groups targets by their first PathDepth path segments;
	// 0 keeps the whole path.
	PathDepth int
	// Since is echoed in the report (the Source does the filtering).
	Since time.Time
}

// Counts are the request counts of one group of records.
type Counts struct {
	Requests int `json:"requests"`
	// Recorded decisions.
	Allow     int `json:"allow"`
	AuditDeny int `json:"auditDeny"`
	Deny      int `json:"deny"`
	// NotAuthorized requests never reached authorization (decision
	// "none": no identity, bad method, ...).
	NotAuthorized int `json:"notAuthorized"`
	// WouldDeny requests would be denied under Enforce with the judging
	// rules (see ReportOptions.Rules).
	WouldDeny int       `json:"wouldDeny"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

func (c *Counts) add(rec *audit.Record, wouldDeny bool) {
	c.Requests++
	switch rec.Decision {
	case "allow":
		c.Allow++
	case "audit-deny":
		c.AuditDeny++
	case "deny":
		c.Deny++
	default:
		c.NotAuthorized++
	}
	if wouldDeny {
		c.WouldDeny++
	}
	if c.FirstSeen.IsZero() || rec.Time.Before(c.FirstSeen) {
		c.FirstSeen = rec.Time
	}
	if rec.Time.After(c.LastSeen) {
		c.LastSeen = rec.Time
	}
}

// Report is the result of audit report: per service, per caller, per
// request shape (method, path prefix, query parameter names).
type Report struct {
	Files []string `json:"files"`
	// Since is the --since limit (omitted when none).
	Since *time.Time `json:"since,omitempty"`
	// JudgedBy is "recorded decisions" or the rules file that judged
	// WouldDeny.
	JudgedBy string `json:"judgedBy"`
	// Filtered counts valid records left out by Since.
	Filtered int `json:"filtered,omitempty"`
	Counts
	Services []ServiceReport `json:"services"`
	// Warnings are the bad lines and rules problems found ("file:line: …").
	Warnings []string `json:"warnings,omitempty"`
}

// ServiceReport groups the requests to one service.
type ServiceReport struct {
	Service string `json:"service"`
	Counts
	Callers []CallerReport `json:"callers"`
}

// CallerReport groups one caller's requests to a service.
type CallerReport struct {
	Caller Caller `json:"caller"`
	Counts
	Targets []RequestReport `json:"targets"`
}

// RequestReport groups requests with the same method, path (prefix) and
// set of query parameter names.
type RequestReport struct {
	Method string   `json:"method"`
	Path   string   `json:"path"`
	Query  []string `json:"query,omitempty"`
	Counts
	// DenyReason is why the first would-be-denied request was denied.
	DenyReason string `json:"denyReason,omitempty"`
}

// ReportBuilder aggregates records into a Report. Not safe for
// concurrent use.
type ReportBuilder struct {
	opts     ReportOptions
	total    Counts
	services map[string]*serviceAgg
}

type serviceAgg struct {
	counts  Counts
	callers map[string]*callerAgg
}

type callerAgg struct {
	caller  Caller
	counts  Counts
	targets map[string]*RequestReport
}

// NewReportBuilder returns an empty builder.
func NewReportBuilder(opts ReportOptions) *ReportBuilder {
	return &ReportBuilder{opts: opts, services: map[string]*serviceAgg{}}
}

// Add counts one record.
func (b *ReportBuilder) Add(e Entry) {
	rec := &e.Record
	wouldDeny, reason := b.judge(rec)
	svcName := string(ServiceOf(rec))
	if svcName == "" {
		svcName = "(direct)"
	}
	s := b.services[svcName]
	if s == nil {
		s = &serviceAgg{callers: map[string]*callerAgg{}}
		b.services[svcName] = s
	}
	caller := CallerOf(rec.Caller)
	c := s.callers[caller.key()]
	if c == nil {
		c = &callerAgg{caller: caller, targets: map[string]*RequestReport{}}
		s.callers[caller.key()] = c
	}
	path, pairs := splitTarget(rec.Target)
	path = truncatePath(path, b.opts.PathDepth)
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.Key
	}
	tk := rec.Method + " " + path + "?" + strings.Join(names, "&")
	t := c.targets[tk]
	if t == nil {
		t = &RequestReport{Method: rec.Method, Path: path, Query: names}
		c.targets[tk] = t
	}
	if wouldDeny && t.DenyReason == "" {
		t.DenyReason = reason
	}
	b.total.add(rec, wouldDeny)
	s.counts.add(rec, wouldDeny)
	c.counts.add(rec, wouldDeny)
	t.Counts.add(rec, wouldDeny)
}

// judge says whether Enforce would deny the record's request.
func (b *ReportBuilder) judge(rec *audit.Record) (bool, string) {
	if !replayable(rec) {
		return false, ""
	}
	if r := b.opts.Rules; r != nil && r.Covers(ServiceOf(rec)) {
		d := r.Snapshot.Authorize(RequestOf(rec))
		return d.Result != authz.Allow, d.Reason
	}
	return rec.Decision != "allow", rec.Reason
}

// Report returns the aggregated report, with the files and warnings of
// the scan that fed the builder.
func (b *ReportBuilder) Report(st ScanStats) *Report {
	r := &Report{Files: st.Files, Counts: b.total, JudgedBy: "recorded decisions", Filtered: st.Filtered, Services: []ServiceReport{}}
	if r.Files == nil {
		r.Files = []string{}
	}
	if !b.opts.Since.IsZero() {
		s := b.opts.Since.UTC()
		r.Since = &s
	}
	if b.opts.Rules != nil {
		r.JudgedBy = b.opts.Rules.Path
		for _, w := range b.opts.Rules.Warnings {
			r.Warnings = append(r.Warnings, w.String())
		}
	}
	for _, w := range st.Warnings {
		r.Warnings = append(r.Warnings, w.String())
	}
	for name, s := range b.services {
		sr := ServiceReport{Service: name, Counts: s.counts}
		for _, c := range s.callers {
			cr := CallerReport{Caller: c.caller, Counts: c.counts}
			for _, t := range c.targets {
				cr.Targets = append(cr.Targets, *t)
			}
			sort.Slice(cr.Targets, func(i, j int) bool {
				a, b := cr.Targets[i], cr.Targets[j]
				if a.Counts.Requests != b.Counts.Requests {
					return a.Counts.Requests > b.Counts.Requests
				}
				if a.Path != b.Path {
					return a.Path < b.Path
				}
				return a.Method+strings.Join(a.Query, "&") < b.Method+strings.Join(b.Query, "&")
			})
			sr.Callers = append(sr.Callers, cr)
		}
		sort.Slice(sr.Callers, func(i, j int) bool {
			a, b := sr.Callers[i], sr.Callers[j]
			if a.Counts.Requests != b.Counts.Requests {
				return a.Counts.Requests > b.Counts.Requests
			}
			return a.Caller.key() < b.Caller.key()
		})
		r.Services = append(r.Services, sr)
	}
	sort.Slice(r.Services, func(i, j int) bool { return r.Services[i].Service < r.Services[j].Service })
	return r
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

const timeFmt = "2006-01-02T15:04:05Z07:00"

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeFmt)
}

// WriteTable writes the report for people: a header, then per service a
// summary line and per caller a table of its requests. Caller-controlled
// text is escaped.
func (r *Report) WriteTable(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("Audit log: %s\n", strings.Join(r.Files, ", "))
	if r.Since != nil {
		ew.printf("Since:     %s (%d older record(s) left out)\n", fmtTime(*r.Since), r.Filtered)
	}
	ew.printf("Records:   %d, %s .. %s\n", r.Counts.Requests, fmtTime(r.FirstSeen), fmtTime(r.LastSeen))
	ew.printf("Enforce judged by: %s\n", clean(r.JudgedBy))
	if r.Counts.Requests == 0 {
		ew.printf("\nNo requests recorded.\n")
	}
	for _, s := range r.Services {
		ew.printf("\n== %s: %d request(s), would deny under Enforce: %d  (recorded: allow %d, audit-deny %d, deny %d, not authorized %d)\n",
			s.Service, s.Counts.Requests, s.WouldDeny, s.Allow, s.AuditDeny, s.Deny, s.NotAuthorized)
		for _, c := range s.Callers {
			ew.printf("\n  %s\n", c.Caller.String())
			tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "    REQUESTS\tWOULD-DENY\tFIRST SEEN\tLAST SEEN\tREQUEST\n")
			for _, t := range c.Targets {
				req := clean(t.Method) + " " + clean(t.Path)
				if len(t.Query) > 0 {
					req += " ?" + clean(strings.Join(t.Query, "&"))
				}
				if t.DenyReason != "" {
					req += "  [" + clean(t.DenyReason) + "]"
				}
				fmt.Fprintf(tw, "    %d\t%d\t%s\t%s\t%s\n", t.Counts.Requests, t.WouldDeny, fmtTime(t.FirstSeen), fmtTime(t.LastSeen), req)
			}
			tw.Flush()
		}
	}
	return ew.err
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, a ...any) { fmt.Fprintf(e, format, a...) }
