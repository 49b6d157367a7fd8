package authz

import (
	"fmt"
	"sort"
	"strings"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// RuleSet is one service's compiled ("effective") rule set
// (protocol.md §3.2). It is immutable once built and safe for concurrent
// use.
type RuleSet struct {
	id             string
	defaultAllowed bool
	mode           msp.Mode
	privs          []*compiledPrivilege // sorted by name
	byPath         pathIndex            // privs by path prefix
	identities     map[string]*selector
	warnings       []string
}

type compiledPrivilege struct {
	msp.Privilege // path, query keys and values lower-cased
	query         []queryRule
	// assigned is nil when no role assignment reached this privilege and
	// empty when one did but named no known identity.
	assigned []*selector // sorted by name
}

// selector is a compiled identity: a nil (or, for the workload
// selectors, empty) selector is a wildcard.
type selector struct {
	def                                    msp.Identity // as defined, for snapshots
	userName, groupName, exePath, procName *string
	cgroupPath, containerID                string
}

func newSelector(id msp.Identity) *selector {
	u, g, e, p := id.Selectors()
	return &selector{def: id, userName: u, groupName: g, exePath: e, procName: p,
		cgroupPath: strings.TrimSuffix(id.CgroupPath, "/"), containerID: id.ContainerID}
}

type queryRule struct{ key, value string }

// Compile builds the effective rule set of a host authorization item
// exactly as upstream does; nil yields nil (no rule set installed).
// Compilation never fails: unknown roles, privileges and identities are
// skipped and reported by Warnings.
func Compile(it *msp.AuthorizationItem) *RuleSet {
	if it == nil {
		return nil
	}
	rs := &RuleSet{id: it.ID, identities: map[string]*selector{}}
	// defaultAccess is lower-cased but not trimmed: " allow" is deny.
	rs.defaultAllowed = msp.Lower(it.DefaultAccess) == "allow"
	// Quirk 20: a mode that is not one of the three names compiles to
	// Disabled (allow all; the root check of WireServer and HostGAPlugin
	// still applies). Upstream lower-cases without trimming.
	switch msp.Mode(msp.Lower(it.Mode)) {
	case msp.ModeAudit:
		rs.mode = msp.ModeAudit
	case msp.ModeEnforce:
		rs.mode = msp.ModeEnforce
	case msp.ModeDisabled:
		rs.mode = msp.ModeDisabled
	default:
		rs.mode = msp.ModeDisabled
		rs.warnings = append(rs.warnings, fmt.Sprintf("invalid authorization mode %q, using disabled", it.Mode))
	}
	r := it.Rules
	// Quirk 5: privileges, identities and assignments are compiled only
	// when all four lists are present; otherwise every request gets the
	// default access.
	if r == nil || r.Privileges == nil || r.Roles == nil || r.Identities == nil || r.RoleAssignments == nil {
		return rs
	}
	// Duplicate names: the last definition wins.
	roles := make(map[string]msp.Role, len(r.Roles))
	for _, ro := range r.Roles {
		roles[ro.Name] = ro
	}
	for _, id := range r.Identities {
		rs.identities[id.Name] = newSelector(id)
	}
	privs := make(map[string]*compiledPrivilege, len(r.Privileges))
	for _, p := range r.Privileges {
		cp := &compiledPrivilege{Privilege: msp.Privilege{Name: p.Name, Path: msp.Lower(p.Path)}}
		if p.QueryParameters != nil {
			cp.QueryParameters = make(map[string]string, len(p.QueryParameters))
			for k, v := range p.QueryParameters {
				cp.QueryParameters[msp.Lower(k)] = msp.Lower(v)
			}
			for k, v := range cp.QueryParameters {
				cp.query = append(cp.query, queryRule{k, v})
			}
			sort.Slice(cp.query, func(i, j int) bool { return cp.query[i].key < cp.query[j].key })
		}
		privs[p.Name] = cp
	}
	assigned := make(map[string]map[string]bool)
	for _, ra := range r.RoleAssignments {
		ro, ok := roles[ra.Role]
		if !ok {
			rs.warnings = append(rs.warnings, fmt.Sprintf("role %q is not defined, skip the role assignment", ra.Role))
			continue
		}
		for _, pn := range ro.Privileges {
			if _, ok := privs[pn]; !ok {
				continue
			}
			set := assigned[pn]
			if set == nil {
				set = map[string]bool{}
				assigned[pn] = set
			}
			for _, in := range ra.Identities {
				if _, ok := rs.identities[in]; ok {
					set[in] = true
				}
			}
		}
	}
	for name, cp := range privs {
		if set, ok := assigned[name]; ok {
			cp.assigned = make([]*selector, 0, len(set))
			for in := range set {
				cp.assigned = append(cp.assigned, rs.identities[in])
			}
			sort.Slice(cp.assigned, func(i, j int) bool { return cp.assigned[i].def.Name < cp.assigned[j].def.Name })
		}
		rs.privs = append(rs.privs, cp)
	}
	sort.Slice(rs.privs, func(i, j int) bool { return rs.privs[i].Name < rs.privs[j].Name })
	for i, p := range rs.privs {
		rs.byPath.add(p.Path, i)
	}
	return rs
}

// ID returns the rule-set id (after local-rule rewriting, §3.7).
func (rs *RuleSet) ID() string { return rs.id }

// Mode returns the compiled mode: Disabled, Audit or Enforce.
func (rs *RuleSet) Mode() msp.Mode { return rs.mode }

// DefaultAllowed reports the access given to requests no privilege matches.
func (rs *RuleSet) DefaultAllowed() bool { return rs.defaultAllowed }

// Privileges returns the number of compiled privileges.
func (rs *RuleSet) Privileges() int { return len(rs.privs) }

// Warnings lists what compilation skipped (unknown roles, an unknown
// mode); empty for a clean document.
func (rs *RuleSet) Warnings() []string { return append([]string(nil), rs.warnings...) }

// Match is the outcome of matching one request against a rule set,
// ignoring the mode.
type Match struct {
	// Allowed is upstream's is_allowed result for a non-disabled mode.
	Allowed bool
	// PrivilegeMatched is true when the path and query matched at least
	// one privilege (then the default access no longer applies).
	PrivilegeMatched bool
	// Privilege is the privilege that allowed the request, or (when
	// denied) the first privilege, by name, that matched; "" when none.
	Privilege string
	// Identity is the identity that allowed the request; "" otherwise.
	Identity string
	// Reason explains the outcome in a few words.
	Reason string
}

// Match applies upstream's legacy matcher (protocol.md §3.3) to a raw
// request-target (origin or absolute form) and the caller's claims. A nil
// caller is matched as claims.Empty; a nil rule set allows. The result does not depend on the
// order of privileges in the document.
//
// Kept upstream behaviour:
//   - Quirk 6: the path match is a plain string prefix of the
//     percent-decoded, lower-cased path, not segment-aware: rule "/test"
//     matches "/TEST/x", "/test-evil" and "/testing". "%2F" is decoded
//     before matching; "+" is not.
//   - A "?" that appears only after decoding ("%3F") ends the path; what
//     follows is read as extra query pairs, after the real ones, and its
//     keys and values are percent-decoded a second time when compared.
//   - Quirk 7: for each required query key only the first pair whose
//     decoded, lower-cased key equals it is considered; a later pair with
//     the same key cannot satisfy (or spoil) the rule. Extra parameters
//     are ignored; a required value "" matches only an empty value. (The
//     proxy refuses a target with a repeated key before authorizing it,
//     msp.CheckTarget, so this only decides for other callers.)
//   - Identity selectors are ANDed; an absent selector is a wildcard and
//     comparisons are exact and case-sensitive; exePath is compared
//     component-wise (see samePath).
func (rs *RuleSet) Match(target string, c *claims.Claims) Match {
	if rs == nil {
		return Match{Allowed: true, Reason: "no rules installed"}
	}
	if c == nil {
		e := claims.Empty("", 0)
		c = &e
	}
	rawPath, rawQuery := msp.SplitTarget(target)
	decoded := msp.Lower(msp.PercentDecode(rawPath))
	path, embedded, hasEmbedded := strings.Cut(decoded, "?")
	var pairs []queryPair
	pairsDone := false
	var first *compiledPrivilege
	var scratch [16]int
	for _, i := range rs.byPath.prefixesOf(path, scratch[:0]) {
		p := rs.privs[i]
		if p.QueryParameters != nil {
			if !pairsDone {
				pairs = parsePairs(rawQuery, nil)
				if hasEmbedded {
					pairs = parsePairs(embedded, pairs)
				}
				pairsDone = true
			}
			if !queryMatches(p.query, pairs) {
				continue
			}
		}
		if first == nil {
			first = p
		}
		for _, id := range p.assigned {
			if id.matches(c) {
				return Match{Allowed: true, PrivilegeMatched: true, Privilege: p.Name, Identity: id.def.Name,
					Reason: fmt.Sprintf("privilege %q granted to identity %q", p.Name, id.def.Name)}
			}
		}
	}
	if first != nil {
		reason := fmt.Sprintf("privilege %q matched but no assigned identity matched the caller", first.Name)
		if first.assigned == nil {
			reason = fmt.Sprintf("privilege %q matched but no identity is assigned to it", first.Name)
		}
		return Match{PrivilegeMatched: true, Privilege: first.Name, Reason: reason}
	}
	if rs.defaultAllowed {
		return Match{Allowed: true, Reason: "no privilege matched; default access allow"}
	}
	return Match{Reason: "no privilege matched; default access deny"}
}

// queryPair is one query pair; key is already decoded and lower-cased.
type queryPair struct{ key, rawValue string }

// parsePairs splits on '&' and the first '=', skipping empty keys, as
// upstream's query_pairs does.
func parsePairs(q string, pairs []queryPair) []queryPair {
	if q == "" {
		return pairs
	}
	for piece := range strings.SplitSeq(q, "&") {
		k, v, _ := strings.Cut(piece, "=")
		if k == "" {
			continue
		}
		pairs = append(pairs, queryPair{key: msp.Lower(msp.PercentDecode(k)), rawValue: v})
	}
	return pairs
}

func queryMatches(rules []queryRule, pairs []queryPair) bool {
	for _, qr := range rules {
		found := false
		for _, p := range pairs {
			if p.key != qr.key {
				continue
			}
			if msp.Lower(msp.PercentDecode(p.rawValue)) != qr.value {
				return false
			}
			found = true
			break
		}
		if !found {
			return false
		}
	}
	return true
}

func (id *selector) matches(c *claims.Claims) bool {
	if id.userName != nil && *id.userName != c.UserName {
		return false
	}
	if id.procName != nil && *id.procName != c.ProcessName {
		return false
	}
	if id.exePath != nil && !samePath(*id.exePath, c.ProcessFullPath) {
		return false
	}
	if id.def.CgroupPath != "" && !underCgroup(c.CgroupPath, id.cgroupPath) {
		return false
	}
	if id.containerID != "" && !sameContainer(c.ContainerID, id.containerID) {
		return false
	}
	if id.groupName != nil {
		for _, g := range c.UserGroups {
			if g == *id.groupName {
				return true
			}
		}
		return false
	}
	return true
}

// underCgroup reports whether path is prefix or below it, whole segments
// compared ("/a" covers "/a" and "/a/b", not "/ab"; "/" covers every
// known path). An unknown path ("") is under nothing.
func underCgroup(path, prefix string) bool {
	if path == "" {
		return false
	}
	return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
}

// sameContainer matches a full id, or an abbreviated one of at least 12
// digits (as docker ps shows them).
func sameContainer(id, sel string) bool {
	return id != "" && (id == sel || len(sel) >= 12 && strings.HasPrefix(id, sel))
}
