package insight

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Change is a group of identical replayed requests (same service, caller,
// method, target) whose decision differs between the log and the rules.
type Change struct {
	Service string `json:"service"`
	Caller  Caller `json:"caller"`
	Method  string `json:"method"`
	Target  string `json:"target"`
	// Old is the recorded decision, New the replayed one ("allow",
	// "audit-deny" or "deny").
	Old string `json:"old"`
	New string `json:"new"`
	// NewlyDenied: New is deny and Old was not (the request was forwarded
	// and would now get 403).
	NewlyDenied bool `json:"newlyDenied"`
	// Reason, Privilege and Identity explain the new decision.
	Reason    string    `json:"reason"`
	Privilege string    `json:"privilege,omitempty"`
	Identity  string    `json:"identity,omitempty"`
	Count     int       `json:"count"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
	// FirstAt is "file:line" of the first such record.
	FirstAt string `json:"firstAt"`
}

// ReplayResult is the outcome of rules test.
type ReplayResult struct {
	Rules    string   `json:"rules"`
	Format   string   `json:"format"`
	Services []string `json:"services"`
	Files    []string `json:"files"`
	// Replayed requests reached authorization and went to a covered
	// service; NotCovered went to another service; NotAuthorized never
	// reached authorization (both are not judged).
	Replayed      int `json:"replayed"`
	NotCovered    int `json:"notCovered"`
	NotAuthorized int `json:"notAuthorized"`
	Unchanged     int `json:"unchanged"`
	// Changed counts requests (not groups) whose decision differs;
	// NewlyDenied and NewlyAllowed are subsets of it.
	Changed      int      `json:"changed"`
	NewlyDenied  int      `json:"newlyDenied"`
	NewlyAllowed int      `json:"newlyAllowed"`
	Changes      []Change `json:"changes"`
	Warnings     []string `json:"warnings,omitempty"`
}

// Replayer judges audit records again with a rules document and collects
// the decisions that change. Not safe for concurrent use.
type Replayer struct {
	rules   *Rules
	res     ReplayResult
	changes map[string]*Change
}

// NewReplayer returns a Replayer for r.
func NewReplayer(r *Rules) *Replayer {
	return &Replayer{rules: r, changes: map[string]*Change{}}
}

// Add replays one record.
func (p *Replayer) Add(e Entry) {
	rec := &e.Record
	switch {
	case !replayable(rec):
		p.res.NotAuthorized++
		return
	case !p.rules.Covers(ServiceOf(rec)):
		p.res.NotCovered++
		return
	}
	p.res.Replayed++
	d := p.rules.Snapshot.Authorize(RequestOf(rec))
	nd := d.Result.String()
	if nd == rec.Decision {
		p.res.Unchanged++
		return
	}
	p.res.Changed++
	newlyDenied := nd == "deny"
	if newlyDenied {
		p.res.NewlyDenied++
	}
	if nd == "allow" {
		p.res.NewlyAllowed++
	}
	caller := CallerOf(rec.Caller)
	key := strings.Join([]string{string(ServiceOf(rec)), caller.key(), rec.Method, rec.Target, rec.Decision, nd}, "\x02")
	c := p.changes[key]
	if c == nil {
		c = &Change{Service: string(ServiceOf(rec)), Caller: caller, Method: rec.Method, Target: rec.Target,
			Old: rec.Decision, New: nd, NewlyDenied: newlyDenied, Reason: d.Reason, Privilege: d.Privilege,
			Identity: d.Identity, FirstSeen: rec.Time, LastSeen: rec.Time, FirstAt: fmt.Sprintf("%s:%d", e.File, e.Line)}
		p.changes[key] = c
	}
	c.Count++
	if rec.Time.Before(c.FirstSeen) {
		c.FirstSeen = rec.Time
	}
	if rec.Time.After(c.LastSeen) {
		c.LastSeen = rec.Time
	}
}

// Result returns the replay outcome; changes are sorted newly denied
// first, then by count (highest first), service and target.
func (p *Replayer) Result(st ScanStats) *ReplayResult {
	res := p.res
	res.Rules, res.Format, res.Files = p.rules.Path, p.rules.Format, st.Files
	if res.Files == nil {
		res.Files = []string{}
	}
	for _, s := range p.rules.Services() {
		res.Services = append(res.Services, string(s))
	}
	for _, w := range p.rules.Warnings {
		res.Warnings = append(res.Warnings, w.String())
	}
	for _, w := range st.Warnings {
		res.Warnings = append(res.Warnings, w.String())
	}
	res.Changes = make([]Change, 0, len(p.changes))
	for _, c := range p.changes {
		res.Changes = append(res.Changes, *c)
	}
	sort.Slice(res.Changes, func(i, j int) bool {
		a, b := res.Changes[i], res.Changes[j]
		switch {
		case a.NewlyDenied != b.NewlyDenied:
			return a.NewlyDenied
		case a.Count != b.Count:
			return a.Count > b.Count
		case a.Service != b.Service:
			return a.Service < b.Service
		case a.Target != b.Target:
			return a.Target < b.Target
		}
		return a.FirstAt < b.FirstAt
	})
	return &res
}

// WriteJSON writes the result as indented JSON.
func (r *ReplayResult) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the result for people, one block per change.
func (r *ReplayResult) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("Rules:    %s (%s; %s)\n", clean(r.Rules), r.Format, strings.Join(r.Services, ", "))
	ew.printf("Replayed: %d request(s): %d unchanged, %d changed (%d newly denied, %d newly allowed)\n",
		r.Replayed, r.Unchanged, r.Changed, r.NewlyDenied, r.NewlyAllowed)
	if r.NotCovered+r.NotAuthorized > 0 {
		ew.printf("Skipped:  %d to services the rules do not cover, %d that never reached authorization\n", r.NotCovered, r.NotAuthorized)
	}
	for _, c := range r.Changes {
		mark := "changed"
		if c.NewlyDenied {
			mark = "NEWLY DENIED"
		}
		ew.printf("\n%s: %s -> %s  x%d  %s %s %s\n", mark, c.Old, c.New, c.Count, c.Service, clean(c.Method), clean(c.Target))
		ew.printf("    caller: %s\n", c.Caller.String())
		ew.printf("    seen:   %s .. %s (first at %s)\n", fmtTime(c.FirstSeen), fmtTime(c.LastSeen), clean(c.FirstAt))
		ew.printf("    reason: %s\n", clean(c.Reason))
	}
	if r.Changed == 0 {
		ew.printf("\nNo decision would change.\n")
	}
	return ew.err
}
