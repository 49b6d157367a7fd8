package authz

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Local rule file names inside the rules directory (protocol.md §3.7).
// HostGAPlugin has no local file.
const (
	WireServerRulesFile = "WireServer_Rules.json"
	IMDSRulesFile       = "IMDS_Rules.json"
)

// DefaultRulesDir is the production local rules directory.
const DefaultRulesDir = "/var/lib/azure-proxy-agent/rules"

// LocalRulePrefix is prepended to every local name and reference when a
// local file is merged with host rules.
const LocalRulePrefix = "LocalFileRules_"

// descriptor is the rule id descriptor of §3.7.
type descriptor struct {
	logicalID string
	useLocal  bool
	// decoded is set when the raw id was a base64 JSON descriptor; only
	// then is the item's id rewritten to the display id.
	decoded bool
}

func (d descriptor) empty() bool { return d.logicalID == "" }

// displayID is "<logicalId>-useLocalFileRules-<bool>", or "unknown".
func (d descriptor) displayID() string {
	if d.logicalID == "" {
		return "unknown"
	}
	return fmt.Sprintf("%s-useLocalFileRules-%t", d.logicalID, d.useLocal)
}

// parseDescriptor reads a raw host rule id. An id that is standard
// base64 (padded, no whitespace) of a JSON object yields its "id" and
// "useLocalFileRules"; any other non-blank id is its own logical id with
// local rules off.
func parseDescriptor(raw string) descriptor {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return descriptor{}
	}
	if !strings.ContainsAny(raw, "\r\n") {
		if dec, err := base64.StdEncoding.Strict().DecodeString(raw); err == nil {
			if d, ok := decodeDescriptor(dec); ok {
				d.decoded = true
				return d
			}
		}
	}
	return descriptor{logicalID: raw}
}

// decodeDescriptor reads the decoded JSON as serde does for upstream's
// struct: a JSON object whose optional "id" is a string and optional
// "useLocalFileRules" a bool (null, other types, a repeated field or
// trailing data fail); other keys are ignored.
func decodeDescriptor(b []byte) (descriptor, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return descriptor{}, false
	}
	var d descriptor
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return descriptor{}, false
		}
		key, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return descriptor{}, false
		}
		switch key {
		case "id", "useLocalFileRules":
			if seen[key] || string(raw) == "null" {
				return descriptor{}, false
			}
			seen[key] = true
			var err error
			if key == "id" {
				err = json.Unmarshal(raw, &d.logicalID)
			} else {
				err = json.Unmarshal(raw, &d.useLocal)
			}
			if err != nil {
				return descriptor{}, false
			}
		}
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return descriptor{}, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return descriptor{}, false
	}
	return d, true
}

// normalize rewrites the item's id to the descriptor's display id when
// the id was a descriptor that names a logical id. A plain id (or bad
// base64 or JSON) is used as-is, as protocol.md §3.7 states. Upstream's
// code rewrites a plain "abc" to "abc-useLocalFileRules-false" too; we
// follow the spec (README, deviations).
func normalize(it *msp.AuthorizationItem, d descriptor) *msp.AuthorizationItem {
	if it == nil {
		return nil
	}
	out := it.Clone()
	if d.decoded && !d.empty() {
		out.ID = d.displayID()
	}
	return out
}

// localFile is the schema of a local rules file. There is no mode: the
// mode always comes from the host item, and a "mode" key is ignored.
type localFile struct {
	DefaultAccess *string    `json:"defaultAccess"`
	ID            *string    `json:"id"`
	Rules         *msp.Rules `json:"rules"`
}

// Problem is one validation failure: where (a JSON path such as
// "rules.privileges[2].name") and what.
type Problem struct {
	Path string
	Msg  string
}

// String returns "<path> <message>", e.g. "rules.privileges[2].name is
// blank".
func (p Problem) String() string {
	if p.Path == "" {
		return p.Msg
	}
	return p.Path + " " + p.Msg
}

// ValidationError lists every problem found in a local rules document.
type ValidationError struct {
	Problems []Problem
}

// Error joins the problems with "; ".
func (e *ValidationError) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return "invalid local rules: " + strings.Join(s, "; ")
}

// SyntaxError is a local rules document that is not valid JSON or whose
// values have the wrong types. Upstream retries these (the file may be
// half-written); validation errors are final.
type SyntaxError struct {
	Line, Column int
	Msg          string
}

// Error names the position and the problem.
func (e *SyntaxError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("local rules: invalid JSON at line %d, column %d: %s", e.Line, e.Column, e.Msg)
	}
	return "local rules: invalid JSON: " + e.Msg
}

// parseLocal decodes a local rules document (a leading UTF-8 BOM is
// accepted) and validates it. A key given twice in one object counts
// with its last value (threats-and-benchmarks.md §2.6). Errors are
// *SyntaxError or *ValidationError.
func parseLocal(data []byte) (*localFile, error) {
	data = serdejson.TrimBOM(data)
	if err := strictJSON(data); err != nil {
		return nil, err
	}
	last, repeated := lastWins(data)
	var lf localFile
	if err := json.Unmarshal(last, &lf); err != nil {
		err = syntaxError(last, err)
		if se := (*SyntaxError)(nil); repeated && errors.As(err, &se) {
			// A position in the re-encoded copy means nothing in the
			// file; the message names the field.
			se.Line, se.Column = 0, 0
		}
		return nil, err
	}
	if err := validateLocal(&lf); err != nil {
		return nil, err
	}
	return &lf, nil
}

// strictJSON applies what upstream's deserializer rejects and
// encoding/json accepts: invalid UTF-8, and a top-level value that is not
// an object (null included). Upstream's also rejects a repeated field;
// here its last value counts (lastWins), as threats-and-benchmarks.md §2.6
// asks.
func strictJSON(data []byte) error {
	if !utf8.Valid(data) {
		return &SyntaxError{Msg: "document is not valid UTF-8"}
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] != '{' {
		return &SyntaxError{Line: 1, Column: 1, Msg: "document must be a JSON object"}
	}
	return nil
}

// lastWins returns data re-encoded with every key that an object repeats
// kept once, with its last value, and reports whether any was repeated.
// encoding/json alone would merge the two values of an object key (the
// first one's fields or map entries stay where the last lacks them) rather
// than take the last. Invalid JSON is returned unchanged, for the decoder
// to report with its position; so is a document without repeated keys.
func lastWins(data []byte) ([]byte, bool) {
	if !repeatsKey(data) {
		return data, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any // maps decode each key's value afresh: the last one stays
	if err := dec.Decode(&v); err != nil {
		return data, false
	}
	out, err := json.Marshal(v)
	if err != nil {
		return data, false
	}
	return out, true
}

// repeatsKey reports whether an object in the JSON document data gives a
// key twice (before any syntax error).
func repeatsKey(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func() (bool, error)
	walk = func() (bool, error) {
		tok, err := dec.Token()
		if err != nil {
			return false, err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return false, err
				}
				key, _ := kt.(string)
				if seen[key] {
					return true, nil
				}
				seen[key] = true
				if rep, err := walk(); rep || err != nil {
					return rep, err
				}
			}
			_, err = dec.Token()
			return false, err
		case json.Delim('['):
			for dec.More() {
				if rep, err := walk(); rep || err != nil {
					return rep, err
				}
			}
			_, err = dec.Token()
			return false, err
		}
		return false, nil
	}
	rep, _ := walk()
	return rep
}

func syntaxError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		l, c := lineCol(data, se.Offset)
		return &SyntaxError{Line: l, Column: c, Msg: se.Error()}
	case errors.As(err, &te):
		l, c := lineCol(data, te.Offset)
		where := te.Field
		if where == "" {
			where = "document"
		}
		return &SyntaxError{Line: l, Column: c, Msg: fmt.Sprintf("%s must be %s, not %s", where, te.Type, te.Value)}
	}
	return &SyntaxError{Msg: err.Error()}
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line, col := 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// ValidateLocalRules checks a local rules document as the agent does
// before using it (protocol.md §3.7): valid JSON (BOM accepted);
// defaultAccess allow or deny; id, if present, non-blank; privilege names
// non-blank and unique with non-blank paths and no blank query keys or
// values; role names non-blank and unique, each with at least one
// privilege and no blank, duplicate or unknown privilege reference;
// identity names non-blank and unique, each with a non-blank selector;
// role assignments naming a known role and at least one identity, with
// no blank, duplicate or unknown identity reference. It returns nil, a
// *SyntaxError, or a *ValidationError listing every problem with its
// location (e.g. "rules.privileges[2].name is blank").
func ValidateLocalRules(data []byte) error {
	_, err := parseLocal(data)
	return err
}

func validateLocal(lf *localFile) error {
	var ps []Problem
	add := func(path, format string, a ...any) { ps = append(ps, Problem{path, fmt.Sprintf(format, a...)}) }
	if lf.DefaultAccess != nil {
		switch strings.ToLower(strings.TrimSpace(*lf.DefaultAccess)) {
		case "allow", "deny":
		default:
			add("defaultAccess", "must be \"allow\" or \"deny\", got %q", *lf.DefaultAccess)
		}
	}
	if lf.ID != nil && strings.TrimSpace(*lf.ID) == "" {
		add("id", "is blank")
	}
	if r := lf.Rules; r != nil {
		privNames := map[string]bool{}
		for i, p := range r.Privileges {
			at := fmt.Sprintf("rules.privileges[%d]", i)
			checkName(add, at, "privilege", p.Name, privNames)
			if strings.TrimSpace(p.Path) == "" {
				add(at+".path", "is blank")
			}
			for _, k := range sortedKeys(p.QueryParameters) {
				if strings.TrimSpace(k) == "" {
					add(at+".queryParameters", "has a blank key")
				} else if strings.TrimSpace(p.QueryParameters[k]) == "" {
					add(fmt.Sprintf("%s.queryParameters[%q]", at, k), "is blank")
				}
			}
		}
		roleNames := map[string]bool{}
		for i, ro := range r.Roles {
			at := fmt.Sprintf("rules.roles[%d]", i)
			checkName(add, at, "role", ro.Name, roleNames)
			checkRefs(add, at+".privileges", "privilege", ro.Privileges, privNames)
		}
		idNames := map[string]bool{}
		for i, id := range r.Identities {
			at := fmt.Sprintf("rules.identities[%d]", i)
			checkName(add, at, "identity", id.Name, idNames)
			if blank(id.UserName) && blank(id.GroupName) && blank(id.ExePath) && blank(id.ProcessName) &&
				blank(id.CgroupPath) && blank(id.ContainerID) {
				add(at, "must set at least one of userName, groupName, exePath, processName")
			}
		}
		for i, ra := range r.RoleAssignments {
			at := fmt.Sprintf("rules.roleAssignments[%d]", i)
			switch {
			case strings.TrimSpace(ra.Role) == "":
				add(at+".role", "is blank")
			case !roleNames[ra.Role]:
				add(at+".role", "names unknown role %q", ra.Role)
			}
			checkRefs(add, at+".identities", "identity", ra.Identities, idNames)
		}
	}
	if len(ps) > 0 {
		return &ValidationError{Problems: ps}
	}
	return nil
}

func blank(s string) bool { return strings.TrimSpace(s) == "" }

// CompileDocument validates a standalone local-rules-format document
// (as ValidateLocalRules does) and compiles it as a rule set with the
// given mode, as if it were the only rules for a service: defaultAccess
// defaults to deny and names are not prefixed. Use NewSnapshot to
// authorize requests with the result.
func CompileDocument(data []byte, mode msp.Mode) (*RuleSet, error) {
	lf, err := parseLocal(data)
	if err != nil {
		return nil, err
	}
	it := &msp.AuthorizationItem{DefaultAccess: "deny", Mode: string(mode), Rules: lf.Rules}
	if lf.ID != nil {
		it.ID = *lf.ID
	}
	if lf.DefaultAccess != nil {
		it.DefaultAccess = *lf.DefaultAccess
	}
	return Compile(it), nil
}

// merge combines the (normalized) host item with a valid local file
// (§3.7): the base is the host item, or {deny, disabled} when there is
// none; the id gains "_<local id>"; the file's defaultAccess overrides;
// when both sides have rules, local names and references are prefixed
// with LocalRulePrefix (even if already prefixed) and each list is the
// host list followed by the local one.
func merge(remote *msp.AuthorizationItem, lf *localFile, d descriptor) *msp.AuthorizationItem {
	out := remote.Clone()
	if out == nil {
		out = &msp.AuthorizationItem{DefaultAccess: "deny", Mode: string(msp.ModeDisabled), ID: d.displayID()}
	}
	if !d.empty() {
		out.ID = d.displayID()
	}
	if lf.ID != nil {
		out.ID += "_" + *lf.ID
	}
	if lf.DefaultAccess != nil {
		out.DefaultAccess = *lf.DefaultAccess
	}
	local := (&msp.AuthorizationItem{Rules: lf.Rules}).Clone().Rules
	switch {
	case out.Rules == nil:
		out.Rules = local
	case local != nil:
		prefixLocal(local)
		out.Rules.Privileges = mergeList(out.Rules.Privileges, local.Privileges)
		out.Rules.Roles = mergeList(out.Rules.Roles, local.Roles)
		out.Rules.Identities = mergeList(out.Rules.Identities, local.Identities)
		out.Rules.RoleAssignments = mergeList(out.Rules.RoleAssignments, local.RoleAssignments)
	}
	return out
}

func prefixLocal(r *msp.Rules) {
	for i := range r.Privileges {
		r.Privileges[i].Name = LocalRulePrefix + r.Privileges[i].Name
	}
	for i := range r.Roles {
		r.Roles[i].Name = LocalRulePrefix + r.Roles[i].Name
		for j := range r.Roles[i].Privileges {
			r.Roles[i].Privileges[j] = LocalRulePrefix + r.Roles[i].Privileges[j]
		}
	}
	for i := range r.Identities {
		r.Identities[i].Name = LocalRulePrefix + r.Identities[i].Name
	}
	for i := range r.RoleAssignments {
		r.RoleAssignments[i].Role = LocalRulePrefix + r.RoleAssignments[i].Role
		for j := range r.RoleAssignments[i].Identities {
			r.RoleAssignments[i].Identities[j] = LocalRulePrefix + r.RoleAssignments[i].Identities[j]
		}
	}
}

// mergeList keeps absent (nil) apart from empty, as upstream's Option does.
func mergeList[T any](remote, local []T) []T {
	switch {
	case remote == nil:
		return local
	case local == nil:
		return remote
	}
	return append(append(make([]T, 0, len(remote)+len(local)), remote...), local...)
}

// failClosed builds the rules used when a local file cannot be used
// (§3.7): the host item (or {deny, enforce} when there is none) with
// defaultAccess forced to deny and its rules removed. Quirk 13: the host
// mode is kept, so under Audit a broken local file is only audited.
func failClosed(remote *msp.AuthorizationItem, d descriptor) *msp.AuthorizationItem {
	out := remote.Clone()
	if out == nil {
		out = &msp.AuthorizationItem{DefaultAccess: "deny", Mode: string(msp.ModeEnforce), ID: d.displayID()}
	}
	if !d.empty() {
		out.ID = d.displayID()
	}
	out.DefaultAccess = "deny"
	out.Rules = nil
	return out
}

// fileState is what a poll saw of a local rules file.
type fileState struct {
	kind  fileKind
	mtime time.Time
	err   string
}

type fileKind int

const (
	fileUnknown fileKind = iota
	fileMissing
	filePresent
	fileError
)

func (a fileState) equal(b fileState) bool {
	return a.kind == b.kind && a.mtime.Equal(b.mtime) && a.err == b.err
}

func statFile(path string) fileState {
	fi, err := os.Stat(path)
	switch {
	case err == nil:
		return fileState{kind: filePresent, mtime: fi.ModTime()}
	case errors.Is(err, fs.ErrNotExist):
		return fileState{kind: fileMissing}
	}
	return fileState{kind: fileError, err: err.Error()}
}

// localTracker is the per-service local-rules state kept between polls.
type localTracker struct {
	useLocal    bool
	state       fileState
	parseFailed bool
	effective   *msp.AuthorizationItem
}

// target is a service that can have a local rules file.
type target struct {
	module string // "WireServer" or "IMDS"
	file   string
}

var (
	wsTarget   = target{"WireServer", WireServerRulesFile}
	imdsTarget = target{"IMDS", IMDSRulesFile}
)

// PrepareRulesDir creates the local rules directory if needed and makes it
// 0700 (and root-owned when running as root), so only root can write the
// rules that the agent trusts.
func PrepareRulesDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("rules dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("rules dir: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 0, 0); err != nil {
			return fmt.Errorf("rules dir: %w", err)
		}
	}
	return nil
}

func rulesFilePath(dir string, t target) string { return filepath.Join(dir, t.file) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkName validates the name of a defined thing (privilege, role,
// identity): not blank and not already defined; it records the name in seen.
func checkName(add func(path, format string, a ...any), at, kind, name string, seen map[string]bool) {
	if strings.TrimSpace(name) == "" {
		add(at+".name", "is blank")
	} else if seen[name] {
		add(at+".name", "duplicates %s %q", kind, name)
	}
	seen[name] = true
}

// checkRefs validates a list of references to named things (a role's
// privileges, an assignment's identities): at least one, none blank, none
// repeated, each one known.
func checkRefs(add func(path, format string, a ...any), at, kind string, refs []string, known map[string]bool) {
	if len(refs) == 0 {
		add(at, "must name at least one %s", kind)
	}
	seen := map[string]bool{}
	for j, ref := range refs {
		rat := fmt.Sprintf("%s[%d]", at, j)
		switch {
		case strings.TrimSpace(ref) == "":
			add(rat, "is blank")
		case seen[ref]:
			add(rat, "repeats %s %q", kind, ref)
		case !known[ref]:
			add(rat, "names unknown %s %q", kind, ref)
		}
		seen[ref] = true
	}
}
