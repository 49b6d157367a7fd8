package insight

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Rules document formats LoadRules accepts.
const (
	// FormatLocal is the agent's local rules file ({id?, defaultAccess?,
	// rules?}); it applies to one service (WireServer or IMDS).
	FormatLocal = "local"
	// FormatItem is one host authorizationRules item ({defaultAccess,
	// mode, id, rules?}).
	FormatItem = "item"
	// FormatAuthorizationRules is {imds?, wireserver?, hostga?} of items,
	// bare or inside a secure-channel status document.
	FormatAuthorizationRules = "authorizationRules"
	// FormatProfile is an inVMAccessControlProfile version: the ARM
	// resource {properties: {mode, defaultAccess, rules}} or its bare
	// properties.
	FormatProfile = "profile"
)

// RulesOptions says how to apply a rules document.
type RulesOptions struct {
	// Service is the service a single-service document (local, item,
	// profile) is for. "" infers it from a local file's name
	// (WireServer_Rules.json, IMDS_Rules.json). For an authorizationRules
	// document it restricts the replay to that service.
	Service msp.Service
	// Mode overrides the document's mode; "" keeps it (a local file,
	// which has no mode, then compiles as Enforce).
	Mode msp.Mode
	// Format forces one of the Format* shapes; "" detects it: a file named
	// WireServer_Rules.json or IMDS_Rules.json is local; otherwise
	// "authorizationRules" or service keys mean authorizationRules,
	// "properties" a profile, "mode" with "id" an item, "mode" without
	// "id" a profile's properties, and anything else a local file.
	Format string
}

// Rules is a compiled rules document, ready to authorize replayed
// requests with the agent's own authorizer.
type Rules struct {
	Path   string
	Format string
	// Snapshot authorizes requests for the covered services; uncovered
	// services have no rule set in it.
	Snapshot *authz.Snapshot
	// Warnings are problems that do not stop the document from compiling
	// (unknown fields, references the agent skips).
	Warnings []Warning
	covered  map[msp.Service]bool
}

// Covers reports whether the document has rules for svc, so that a
// replayed request to svc is judged by it.
func (r *Rules) Covers(svc msp.Service) bool { return r.covered[svc] }

// Services lists the covered services, sorted.
func (r *Rules) Services() []msp.Service {
	out := make([]msp.Service, 0, len(r.covered))
	for s := range r.covered {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// ParseService reads a --service value: wireserver, imds or hostga (any
// case; "hostgaplugin" also works).
func ParseService(s string) (msp.Service, error) {
	switch strings.ToLower(s) {
	case "wireserver":
		return msp.WireServer, nil
	case "imds":
		return msp.IMDS, nil
	case "hostga", "hostgaplugin":
		return msp.HostGAPlugin, nil
	}
	return "", fmt.Errorf("unknown service %q: want wireserver, imds or hostga", s)
}

// LoadRules reads and compiles the rules document at path (see
// ParseRules). Every failure is an *InputError naming the file.
func LoadRules(path string, opts RulesOptions) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, inputErrorf("rules: %v", err)
	}
	return ParseRules(data, path, opts)
}

// ParseRules compiles a rules document in any of the Format* shapes
// (detected from its keys) with the agent's authz package: a local file
// exactly as authz.CompileDocument validates and compiles it, host items
// and profiles as authz.Compile does. name is used in messages. A
// document that is not JSON, fails local-rules validation, has an invalid
// mode or defaultAccess, or whose service is unknown gives an *InputError
// with the file and, for syntax errors, line and column.
func ParseRules(data []byte, name string, opts RulesOptions) (*Rules, error) {
	data = serdejson.TrimBOM(data)
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonInputError(name, data, err)
	}
	if top == nil {
		return nil, inputErrorf("%s: rules document must be a JSON object", name)
	}
	r := &Rules{Path: name, covered: map[msp.Service]bool{}}
	has := func(k string) bool { _, ok := top[k]; return ok }
	var ws, imds, hga *authz.RuleSet
	format := opts.Format
	if format == "" {
		base := strings.ToLower(filepath.Base(name))
		switch {
		case base == strings.ToLower(authz.WireServerRulesFile) || base == strings.ToLower(authz.IMDSRulesFile):
			format = FormatLocal
		case has("authorizationRules") || ((has("imds") || has("wireserver") || has("hostga")) && !has("rules") && !has("defaultAccess")):
			format = FormatAuthorizationRules
		case has("properties") || has("mode"):
			format = FormatProfile
			if !has("properties") && has("id") {
				format = FormatItem
			}
		default:
			format = FormatLocal
		}
	}
	switch format {
	case FormatAuthorizationRules:
		r.Format = FormatAuthorizationRules
		raw := data
		kind := "authorizationRules"
		if has("authorizationRules") {
			raw, kind = top["authorizationRules"], "keystatus"
		}
		r.Warnings = append(r.Warnings, unknownFields(data, name, kind)...)
		var ar struct {
			IMDS       *json.RawMessage `json:"imds"`
			WireServer *json.RawMessage `json:"wireserver"`
			HostGA     *json.RawMessage `json:"hostga"`
		}
		if err := json.Unmarshal(raw, &ar); err != nil {
			return nil, jsonInputError(name, data, err)
		}
		for _, e := range []struct {
			svc msp.Service
			raw *json.RawMessage
			out **authz.RuleSet
		}{{msp.WireServer, ar.WireServer, &ws}, {msp.IMDS, ar.IMDS, &imds}, {msp.HostGAPlugin, ar.HostGA, &hga}} {
			if e.raw == nil || (opts.Service != "" && opts.Service != e.svc) {
				continue
			}
			rs, warns, err := compileHost(*e.raw, name, string(e.svc), true, opts.Mode)
			if err != nil {
				return nil, err
			}
			*e.out = rs
			r.Warnings = append(r.Warnings, warns...)
			r.covered[e.svc] = true
		}
		if len(r.covered) == 0 {
			return nil, inputErrorf("%s: no authorization item for %s", name, serviceList(opts.Service))
		}
	case FormatProfile, FormatItem:
		r.Format = format
		raw, kind, needID := data, "profileProps", false
		switch {
		case format == FormatItem:
			kind, needID = "item", true
		case has("properties"):
			raw, kind = top["properties"], "profile"
		}
		svc, err := singleService(opts.Service, name, r.Format)
		if err != nil {
			return nil, err
		}
		r.Warnings = append(r.Warnings, unknownFields(data, name, kind)...)
		rs, warns, err := compileHost(raw, name, r.Format, needID, opts.Mode)
		if err != nil {
			return nil, err
		}
		r.Warnings = append(r.Warnings, warns...)
		switch svc {
		case msp.WireServer: // the host applies WireServer rules to HostGAPlugin too
			ws, hga = rs, rs
			r.covered[msp.WireServer], r.covered[msp.HostGAPlugin] = true, true
		case msp.IMDS:
			imds = rs
			r.covered[msp.IMDS] = true
		case msp.HostGAPlugin:
			hga = rs
			r.covered[msp.HostGAPlugin] = true
		}
	case FormatLocal:
		r.Format = FormatLocal
		svc := opts.Service
		if svc == "" {
			switch strings.ToLower(filepath.Base(name)) {
			case strings.ToLower(authz.WireServerRulesFile):
				svc = msp.WireServer
			case strings.ToLower(authz.IMDSRulesFile):
				svc = msp.IMDS
			}
		}
		if svc == "" {
			return nil, inputErrorf("%s: a local rules file is for one service; name it with --service wireserver|imds", name)
		}
		if svc != msp.WireServer && svc != msp.IMDS {
			return nil, inputErrorf("%s: %s has no local rules file; use a profile or authorization item", name, svc)
		}
		r.Warnings = append(r.Warnings, unknownFields(data, name, "local")...)
		mode := opts.Mode
		if mode == "" {
			mode = msp.ModeEnforce
		}
		rs, err := authz.CompileDocument(data, mode)
		if err != nil {
			return nil, rulesInputError(name, err)
		}
		if svc == msp.WireServer {
			ws = rs
		} else {
			imds = rs
		}
		r.covered[svc] = true
	default:
		return nil, inputErrorf("%s: unknown rules format %q: want local, item, authorizationRules or profile", name, format)
	}
	r.Snapshot = authz.NewSnapshot(ws, imds, hga)
	return r, nil
}

func serviceList(svc msp.Service) string {
	if svc != "" {
		return string(svc)
	}
	return "any service"
}

func singleService(svc msp.Service, name, format string) (msp.Service, error) {
	if svc == "" {
		return "", inputErrorf("%s: a %s document is for one service; name it with --service wireserver|imds|hostga", name, format)
	}
	return svc, nil
}

// hostDoc is an authorization item or a profile's properties.
type hostDoc struct {
	DefaultAccess *string    `json:"defaultAccess"`
	Mode          *string    `json:"mode"`
	ID            *string    `json:"id"`
	Rules         *msp.Rules `json:"rules"`
}

// compileHost compiles an item or profile properties as the agent
// compiles a host item. what names it in messages.
func compileHost(raw []byte, name, what string, needID bool, mode msp.Mode) (*authz.RuleSet, []Warning, error) {
	var d hostDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, nil, jsonInputError(name, raw, err)
	}
	switch {
	case d.DefaultAccess == nil:
		return nil, nil, inputErrorf("%s: %s: missing field defaultAccess (for a local rules file use --format local)", name, what)
	case d.Mode == nil:
		return nil, nil, inputErrorf("%s: %s: missing field mode", name, what)
	case needID && d.ID == nil:
		return nil, nil, inputErrorf("%s: %s: missing field id", name, what)
	}
	switch strings.ToLower(*d.DefaultAccess) {
	case "allow", "deny":
	default:
		return nil, nil, inputErrorf("%s: %s: defaultAccess %q: want allow or deny", name, what, *d.DefaultAccess)
	}
	m, ok := msp.ParseMode(*d.Mode)
	if !ok {
		return nil, nil, inputErrorf("%s: %s: mode %q: want disabled, audit or enforce", name, what, *d.Mode)
	}
	if mode != "" {
		m = mode
	}
	it := &msp.AuthorizationItem{DefaultAccess: *d.DefaultAccess, Mode: string(m), ID: "replay", Rules: d.Rules}
	if d.ID != nil {
		it.ID = *d.ID
	}
	var warns []Warning
	// The host's rules are compiled leniently; the local-file checks show
	// what the agent would silently skip.
	if d.Rules != nil {
		doc, _ := json.Marshal(struct {
			DefaultAccess string     `json:"defaultAccess"`
			Rules         *msp.Rules `json:"rules"`
		}{strings.ToLower(*d.DefaultAccess), d.Rules})
		var ve *authz.ValidationError
		if err := authz.ValidateLocalRules(doc); errors.As(err, &ve) {
			for _, p := range ve.Problems {
				warns = append(warns, Warning{File: name, Msg: what + ": " + p.String()})
			}
		}
		if d.Rules.Privileges == nil || d.Rules.Roles == nil || d.Rules.Identities == nil || d.Rules.RoleAssignments == nil {
			warns = append(warns, Warning{File: name, Msg: what + ": rules lack one of privileges, roles, identities, roleAssignments; the agent ignores them all and applies defaultAccess"})
		}
	}
	rs := authz.Compile(it)
	for _, w := range rs.Warnings() {
		warns = append(warns, Warning{File: name, Msg: what + ": " + w})
	}
	return rs, warns, nil
}

// rulesInputError turns authz's errors into an *InputError with the file
// (and line and column for syntax errors).
func rulesInputError(name string, err error) error {
	var se *authz.SyntaxError
	var ve *authz.ValidationError
	switch {
	case errors.As(err, &se):
		if se.Line > 0 {
			return inputErrorf("%s:%d:%d: %s", name, se.Line, se.Column, se.Msg)
		}
		return inputErrorf("%s: %s", name, se.Msg)
	case errors.As(err, &ve):
		lines := make([]string, len(ve.Problems))
		for i, p := range ve.Problems {
			lines[i] = "  " + p.String()
		}
		return inputErrorf("%s: invalid rules document:\n%s", name, strings.Join(lines, "\n"))
	}
	return inputErrorf("%s: %v", name, err)
}

// jsonInputError reports a JSON decoding error with line and column.
func jsonInputError(name string, data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		l, c := lineCol(data, se.Offset)
		return inputErrorf("%s:%d:%d: invalid JSON: %v", name, l, c, se)
	case errors.As(err, &te):
		l, c := lineCol(data, te.Offset)
		where := te.Field
		if where == "" {
			where = "value"
		}
		return inputErrorf("%s:%d:%d: %s must be %s, not %s", name, l, c, where, te.Type, te.Value)
	}
	return inputErrorf("%s: invalid JSON: %v", name, err)
}

func lineCol(data []byte, off int64) (int, int) {
	off = max(0, min(off, int64(len(data))))
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

// schemas lists the known keys of each object kind in a rules document
// and the kind of each key's value ("" = not checked; a "[]" suffix = an
// array of that kind). A "*" key allows any other key.
var schemas = map[string]map[string]string{
	"local":              {"id": "", "defaultAccess": "", "rules": "rules"},
	"item":               {"id": "", "defaultAccess": "", "mode": "", "rules": "rules"},
	"profile":            {"*": "", "properties": "profileProps"},
	"profileProps":       {"*": "", "mode": "", "defaultAccess": "", "rules": "rules"},
	"keystatus":          {"*": "", "authorizationRules": "authorizationRules"},
	"authorizationRules": {"imds": "item", "wireserver": "item", "hostga": "item"},
	"rules":              {"privileges": "privilege[]", "roles": "role[]", "identities": "identity[]", "roleAssignments": "assignment[]"},
	"privilege":          {"name": "", "path": "", "queryParameters": ""},
	"role":               {"name": "", "privileges": ""},
	"identity":           {"name": "", "userName": "", "groupName": "", "exePath": "", "processName": ""},
	"assignment":         {"role": "", "identities": ""},
}

// unknownFields lists keys of data that the agent ignores (usually a
// misspelling, which silently widens or narrows a rule), with the line
// where each appears. A "mode" in a local file is reported as ignored.
// Syntax errors are left to the real parse.
func unknownFields(data []byte, name, kind string) []Warning {
	dec := json.NewDecoder(bytes.NewReader(data))
	var out []Warning
	var walk func(kind, path string) error
	walk = func(kind, path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			schema := schemas[kind]
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := kt.(string)
				child, known := schema[key]
				at := path + "." + key
				if path == "" {
					at = key
				}
				if schema != nil && !known && !hasStar(schema) {
					l, _ := lineCol(data, dec.InputOffset())
					msg := fmt.Sprintf("unknown field %q (ignored by the agent)", at)
					if kind == "local" && key == "mode" {
						msg = `"mode" is ignored in a local rules file: the mode comes from the host`
					}
					out = append(out, Warning{File: name, Line: l, Msg: msg})
				}
				if err := walk(child, at); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			elem := strings.TrimSuffix(kind, "[]")
			if elem == kind {
				elem = ""
			}
			for i := 0; dec.More(); i++ {
				if err := walk(elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	_ = walk(kind, "")
	return out
}

func hasStar(schema map[string]string) bool {
	_, ok := schema["*"]
	return ok
}
