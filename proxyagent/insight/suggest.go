package insight

import (
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Identity groupings for SuggestOptions.Identity.
const (
	ByExe     = "exe"      // one identity per executable path
	ByUser    = "user"     // one identity per user name
	ByGroup   = "group"    // one identity per primary (first) group
	ByExeUser = "exe+user" // one identity per executable and user
)

// Query handling for SuggestOptions.Query.
const (
	QueryNone     = "none"     // privileges name paths only
	QueryObserved = "observed" // privileges also require the observed query values
)

// SuggestOptions configures a Suggester.
type SuggestOptions struct {
	// Service is WireServer or IMDS: one document per service.
	Service msp.Service
	// IncludeHostGA also uses HostGAPlugin requests for a WireServer
	// document (the host applies a WireServer profile to both; a local
	// WireServer file does not apply to HostGAPlugin).
	IncludeHostGA bool
	// Identity is ByExe, ByUser, ByGroup or ByExeUser ("" = ByExeUser).
	Identity string
	// PathDepth keeps the first PathDepth path segments of each observed
	// path (0 = the whole path). The agent matches paths as plain string
	// prefixes, so a privilege for /a/b also allows /a/bc and /a/b/c.
	PathDepth int
	// Query is QueryNone or QueryObserved ("" = QueryNone).
	Query string
	// DefaultAccess is "deny" (default) or "allow" for requests no
	// privilege matches.
	DefaultAccess string
	// IncludeDenied also treats requests the agent denied as legitimate
	// (by default only forwarded ones, allow and audit-deny, count).
	IncludeDenied bool
	// ID is the document id ("" = "least-privilege-<service>").
	ID string
}

func (o *SuggestOptions) normalize() error {
	switch o.Service {
	case msp.WireServer, msp.IMDS:
	default:
		return fmt.Errorf("suggest: service must be wireserver or imds, not %q", o.Service)
	}
	if o.Identity == "" {
		o.Identity = ByExeUser
	}
	switch o.Identity {
	case ByExe, ByUser, ByGroup, ByExeUser:
	default:
		return fmt.Errorf("suggest: identity grouping %q: want exe, user, group or exe+user", o.Identity)
	}
	if o.Query == "" {
		o.Query = QueryNone
	}
	if o.Query != QueryNone && o.Query != QueryObserved {
		return fmt.Errorf("suggest: query %q: want none or observed", o.Query)
	}
	if o.PathDepth < 0 {
		return fmt.Errorf("suggest: path depth %d is negative", o.PathDepth)
	}
	o.DefaultAccess = strings.ToLower(o.DefaultAccess)
	if o.DefaultAccess == "" {
		o.DefaultAccess = "deny"
	}
	if o.DefaultAccess != "deny" && o.DefaultAccess != "allow" {
		return fmt.Errorf("suggest: default access %q: want deny or allow", o.DefaultAccess)
	}
	if o.ID == "" {
		o.ID = "least-privilege-" + strings.ToLower(string(o.Service))
	}
	return nil
}

// Suggester collects the legitimate requests of one service and builds
// the least-privilege rules that allow them. Not safe for concurrent use.
type Suggester struct {
	opts    SuggestOptions
	idents  map[string]msp.Identity // by selector key; Name unset
	privs   map[string]msp.Privilege
	grants  map[string]map[string]bool // ident key → priv keys
	samples map[string]authz.Request   // distinct requests, for Verify
	notes   map[string]int
	used    int
}

// NewSuggester checks opts and returns an empty Suggester.
func NewSuggester(opts SuggestOptions) (*Suggester, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	return &Suggester{opts: opts, idents: map[string]msp.Identity{}, privs: map[string]msp.Privilege{},
		grants: map[string]map[string]bool{}, samples: map[string]authz.Request{}, notes: map[string]int{}}, nil
}

// Add uses one record if it is a legitimate request to the service: it
// reached authorization and was forwarded (or denied, with
// IncludeDenied), it has a caller identity, and the caller can be named
// by the chosen grouping. WireServer and HostGAPlugin requests from
// non-root callers are left out (the agent denies them whatever the
// rules), and so are exempt uploads from root (always allowed).
func (s *Suggester) Add(e Entry) {
	rec := &e.Record
	svc := ServiceOf(rec)
	if svc != s.opts.Service && !(svc == msp.HostGAPlugin && s.opts.Service == msp.WireServer && s.opts.IncludeHostGA) {
		return
	}
	switch {
	case rec.Decision == "allow" || rec.Decision == "audit-deny":
	case rec.Decision == "deny" && s.opts.IncludeDenied:
	case rec.Decision == "deny":
		s.notes["denied requests left out (use --include-denied to keep them)"]++
		return
	default:
		return // never reached authorization
	}
	c := rec.Caller
	if c == nil {
		s.notes["requests without caller identity left out"]++
		return
	}
	if (svc == msp.WireServer || svc == msp.HostGAPlugin) && !c.RunAsElevated {
		s.notes[string(svc)+" requests from non-root callers left out (always denied)"]++
		return
	}
	if c.RunAsElevated && msp.Exempt(rec.Method, rec.Target) {
		return
	}
	if !utf8.ValidString(rec.Target) {
		s.notes["requests whose target is not valid UTF-8 left out"]++
		return
	}
	id, why := s.identityOf(c)
	if why != "" {
		s.notes[why]++
		return
	}
	p := s.privilegeOf(rec.Target)
	if strings.TrimSpace(p.Path) == "" {
		s.notes["requests with an empty path left out (no valid privilege can name them)"]++
		return
	}
	ik, pk := identKey(id), privKey(p)
	s.idents[ik] = id
	s.privs[pk] = p
	if s.grants[ik] == nil {
		s.grants[ik] = map[string]bool{}
	}
	s.grants[ik][pk] = true
	s.used++
	req := RequestOf(rec)
	sk := strings.Join([]string{string(svc), req.Method, req.Target, c.UserName, c.ProcessName, c.ProcessFullPath,
		strings.Join(c.UserGroups, ","), strconv.FormatBool(c.RunAsElevated)}, "\x00")
	if _, ok := s.samples[sk]; !ok {
		s.samples[sk] = req
	}
}

// unnamed are claim values that do not name anyone.
func unnamed(v string) bool {
	return strings.TrimSpace(v) == "" || v == claims.Undefined || v == "empty"
}

func (s *Suggester) identityOf(c *claims.Claims) (msp.Identity, string) {
	var id msp.Identity
	if s.opts.Identity == ByExe || s.opts.Identity == ByExeUser {
		if c.OtherUserNS {
			return id, "requests from callers in another user namespace left out (their executable proves nothing: allow them by user or group)"
		}
		if unnamed(c.ProcessFullPath) {
			return id, "requests from callers with an unknown executable left out (exited before they were identified, or their path did not name the file they ran)"
		}
		id.ExePath = c.ProcessFullPath
	}
	if s.opts.Identity == ByUser || s.opts.Identity == ByExeUser {
		if unnamed(c.UserName) {
			return id, "requests from callers with an unknown user name left out"
		}
		id.UserName = c.UserName
	}
	if s.opts.Identity == ByGroup {
		if len(c.UserGroups) == 0 || unnamed(c.UserGroups[0]) {
			return id, "requests from callers without a group left out"
		}
		id.GroupName = c.UserGroups[0]
	}
	for _, v := range []string{id.ExePath, id.UserName, id.GroupName} {
		if !utf8.ValidString(v) || strings.ContainsRune(v, utf8.RuneError) {
			// The log holds U+FFFD where the caller's name had invalid
			// UTF-8, so no selector written from it would match.
			return id, "requests from callers whose names are not valid UTF-8 left out"
		}
	}
	return id, ""
}

func (s *Suggester) privilegeOf(target string) msp.Privilege {
	p, pairs := splitTarget(target)
	priv := msp.Privilege{Path: truncatePath(p, s.opts.PathDepth)}
	if s.opts.Query == QueryObserved {
		for _, q := range pairs {
			if strings.TrimSpace(q.Key) == "" || strings.TrimSpace(q.Value) == "" {
				continue // a blank value cannot be required in a valid document
			}
			if priv.QueryParameters == nil {
				priv.QueryParameters = map[string]string{}
			}
			priv.QueryParameters[q.Key] = q.Value
		}
	}
	return priv
}

func identKey(id msp.Identity) string {
	return id.ExePath + "\x00" + id.UserName + "\x00" + id.GroupName
}

func privKey(p msp.Privilege) string {
	keys := make([]string, 0, len(p.QueryParameters))
	for k := range p.QueryParameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(p.Path)
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + p.QueryParameters[k])
	}
	return b.String()
}

// Suggestion is a least-privilege rules document for one service.
type Suggestion struct {
	Service       msp.Service
	ID            string
	DefaultAccess string
	Rules         msp.Rules
	// Used is how many requests the rules were built from.
	Used int
	// Notes say which requests were left out and why, with counts.
	Notes []string
	// covers are the services the requests came from.
	covers  []msp.Service
	samples []authz.Request
}

// Suggest builds the document. Names are derived from paths and
// callers and made unique; identities with the same privileges share a
// role. It fails when no legitimate request was seen; the Suggestion is
// returned even then, so its Notes can say what was left out.
func (s *Suggester) Suggest() (*Suggestion, error) {
	out := &Suggestion{Service: s.opts.Service, ID: s.opts.ID, DefaultAccess: s.opts.DefaultAccess, Used: s.used,
		covers: []msp.Service{s.opts.Service}}
	if s.opts.IncludeHostGA && s.opts.Service == msp.WireServer {
		out.covers = append(out.covers, msp.HostGAPlugin)
	}
	for msg, n := range s.notes {
		out.Notes = append(out.Notes, fmt.Sprintf("%s: %d", msg, n))
	}
	sort.Strings(out.Notes)
	if s.used == 0 {
		return out, fmt.Errorf("no legitimate %s request found in the audit log to build rules from", s.opts.Service)
	}
	// Privileges, sorted by path then query, named after the path.
	pkeys := sortedMapKeys(s.privs)
	privName := map[string]string{}
	used := map[string]bool{}
	for _, pk := range pkeys {
		p := s.privs[pk]
		p.Name = uniqueName(used, pathSlug(p.Path))
		privName[pk] = p.Name
		out.Rules.Privileges = append(out.Rules.Privileges, p)
	}
	// Identities, named after executable, user or group.
	ikeys := sortedMapKeys(s.idents)
	idName := map[string]string{}
	used = map[string]bool{}
	for _, ik := range ikeys {
		id := s.idents[ik]
		id.Name = uniqueName(used, identSlug(id))
		idName[ik] = id.Name
		out.Rules.Identities = append(out.Rules.Identities, id)
	}
	sort.Slice(out.Rules.Identities, func(i, j int) bool { return out.Rules.Identities[i].Name < out.Rules.Identities[j].Name })
	// One role per distinct privilege set.
	type roleAgg struct {
		privs []string
		ids   []string
	}
	roles := map[string]*roleAgg{}
	for _, ik := range ikeys {
		var names []string
		for pk := range s.grants[ik] {
			names = append(names, privName[pk])
		}
		sort.Strings(names)
		k := strings.Join(names, "\x00")
		if roles[k] == nil {
			roles[k] = &roleAgg{privs: names}
		}
		roles[k].ids = append(roles[k].ids, idName[ik])
	}
	for _, ra := range roles {
		sort.Strings(ra.ids)
		name := ra.ids[0] + "-role"
		out.Rules.Roles = append(out.Rules.Roles, msp.Role{Name: name, Privileges: ra.privs})
		out.Rules.RoleAssignments = append(out.Rules.RoleAssignments, msp.RoleAssignment{Role: name, Identities: ra.ids})
	}
	sort.Slice(out.Rules.Roles, func(i, j int) bool { return out.Rules.Roles[i].Name < out.Rules.Roles[j].Name })
	sort.Slice(out.Rules.RoleAssignments, func(i, j int) bool {
		return out.Rules.RoleAssignments[i].Role < out.Rules.RoleAssignments[j].Role
	})
	for _, k := range sortedMapKeys(s.samples) {
		out.samples = append(out.samples, s.samples[k])
	}
	return out, nil
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// uniqueName returns base, or base-2, base-3, … when taken.
func uniqueName(used map[string]bool, base string) string {
	name := base
	for n := 2; used[name]; n++ {
		name = base + "-" + strconv.Itoa(n)
	}
	used[name] = true
	return name
}

// slug keeps [a-z0-9._] and turns runs of anything else into '-'.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '.' || r == '_' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.TrimRight(b.String(), "-")
	if len(out) > 48 {
		out = strings.TrimRight(out[:48], "-")
	}
	return out
}

func pathSlug(p string) string {
	if s := slug(p); s != "" {
		return s
	}
	return "root"
}

func identSlug(id msp.Identity) string {
	var parts []string
	if id.ExePath != "" {
		parts = append(parts, slug(path.Base(id.ExePath)))
	}
	if id.UserName != "" {
		parts = append(parts, slug(id.UserName))
	}
	if id.GroupName != "" {
		parts = append(parts, "group-"+slug(id.GroupName))
	}
	s := strings.Trim(strings.Join(parts, "-"), "-")
	if s == "" {
		return "caller"
	}
	return s
}

// localDoc is the agent's local rules file.
type localDoc struct {
	ID            string     `json:"id,omitempty"`
	DefaultAccess string     `json:"defaultAccess"`
	Rules         *msp.Rules `json:"rules"`
}

// LocalJSON returns the document as the agent's local rules file
// (WireServer_Rules.json or IMDS_Rules.json), indented, with a final
// line feed. It passes authz.ValidateLocalRules.
func (s *Suggestion) LocalJSON() ([]byte, error) {
	b, err := json.MarshalIndent(localDoc{ID: s.ID, DefaultAccess: s.DefaultAccess, Rules: &s.Rules}, "", "  ")
	return append(b, '\n'), err
}

// profileDoc is an inVMAccessControlProfile version resource.
type profileDoc struct {
	Properties profileProps `json:"properties"`
}

type profileProps struct {
	Mode          string     `json:"mode"`
	DefaultAccess string     `json:"defaultAccess"`
	Rules         *msp.Rules `json:"rules"`
}

// ProfileJSON returns the document as an inVMAccessControlProfile
// version ({"properties": {mode, defaultAccess, rules}}) with the given
// mode, indented, with a final line feed.
func (s *Suggestion) ProfileJSON(mode msp.Mode) ([]byte, error) {
	access := "Deny"
	if s.DefaultAccess == "allow" {
		access = "Allow"
	}
	b, err := json.MarshalIndent(profileDoc{Properties: profileProps{Mode: mode.Title(), DefaultAccess: access, Rules: &s.Rules}}, "", "  ")
	return append(b, '\n'), err
}

// Verify compiles the document with the agent's authorizer in Enforce
// and replays one of each distinct observed request; it returns a line
// for every one that would not be allowed (none is expected).
func (s *Suggestion) Verify() ([]string, error) {
	doc, err := s.LocalJSON()
	if err != nil {
		return nil, err
	}
	rs, err := authz.CompileDocument(doc, msp.ModeEnforce)
	if err != nil {
		return nil, fmt.Errorf("suggested document does not compile: %w", err)
	}
	var ws, imds, hga *authz.RuleSet
	for _, svc := range s.covers {
		switch svc {
		case msp.WireServer:
			ws = rs
		case msp.IMDS:
			imds = rs
		case msp.HostGAPlugin:
			hga = rs
		}
	}
	snap := authz.NewSnapshot(ws, imds, hga)
	var bad []string
	for _, req := range s.samples {
		if d := snap.Authorize(req); d.Result != authz.Allow {
			bad = append(bad, fmt.Sprintf("%s %s %s by %s: %s", d.Service, clean(req.Method), clean(req.Target), CallerOf(req.Caller), clean(d.Reason)))
		}
	}
	return bad, nil
}
