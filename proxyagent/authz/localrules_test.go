package authz

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

func descriptorID(logical string, useLocal bool) string {
	return base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf(`{"id":%q,"useLocalFileRules":%t}`, logical, useLocal)))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// remoteWS is a host WireServer item that enables local rules; its own
// rules would let "alice" reach /remote.
func remoteWS(mode string) string {
	return fmt.Sprintf(`{"defaultAccess":"allow","mode":%q,"id":%q,"rules":{
	 "privileges":[{"name":"p","path":"/remote"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"i","userName":"root"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`,
		mode, descriptorID("decoded-id", true))
}

// validLocal grants /local to root.
const validLocal = `{"id":"local-effective-id","defaultAccess":"allow","mode":"disabled","rules":{
 "privileges":[{"name":"p","path":"/local"}],"roles":[{"name":"r","privileges":["p"]}],
 "identities":[{"name":"i","userName":"root"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`

func newLocalStore(t *testing.T, dir string, log *slog.Logger) *Store {
	if log == nil {
		log = quietLogger()
	}
	return NewStore(StoreConfig{RulesDir: dir, Logger: log, ParseRetryDelay: time.Millisecond})
}

// TestLocalRulesFailClosed is the fail-closed half of the local-rules
// matrix (§8 item 17): every unusable local file gives the host item with
// its id rewritten, defaultAccess deny and no rules, under the host mode.
func TestLocalRulesFailClosed(t *testing.T) {
	rules := func(body string) string { return `{"rules":{` + body + `}}` }
	for _, tc := range []struct {
		name, content string
		dir           bool // make the file a directory (read error)
		problem       string
	}{
		{name: "invalid JSON", content: "{ invalid json ", problem: "invalid JSON"},
		{name: "wrong type", content: `{"defaultAccess":5}`, problem: "defaultAccess must be string"},
		{name: "empty file", content: "", problem: "invalid JSON"},
		{name: "bad defaultAccess", content: `{"defaultAccess":"maybe"}`, problem: "defaultAccess must be"},
		{name: "blank id", content: `{"id":"  "}`, problem: "id is blank"},
		{name: "blank privilege name", content: rules(`"privileges":[{"name":"a","path":"/"},{"name":"","path":"/x"}]`), problem: "rules.privileges[1].name is blank"},
		{name: "blank path", content: rules(`"privileges":[{"name":"a","path":" "}]`), problem: "rules.privileges[0].path is blank"},
		{name: "duplicate privilege", content: rules(`"privileges":[{"name":"a","path":"/"},{"name":"a","path":"/x"}]`), problem: `duplicates privilege "a"`},
		{name: "blank query value", content: rules(`"privileges":[{"name":"a","path":"/","queryParameters":{"k":" "}}]`), problem: `queryParameters["k"] is blank`},
		{name: "blank query key", content: rules(`"privileges":[{"name":"a","path":"/","queryParameters":{"":"v"}}]`), problem: "blank key"},
		{name: "role without privileges", content: rules(`"roles":[{"name":"r","privileges":[]}]`), problem: "at least one privilege"},
		{name: "role unknown privilege", content: rules(`"privileges":[{"name":"a","path":"/"}],"roles":[{"name":"r","privileges":["b"]}]`), problem: `unknown privilege "b"`},
		{name: "role duplicate ref", content: rules(`"privileges":[{"name":"a","path":"/"}],"roles":[{"name":"r","privileges":["a","a"]}]`), problem: `repeats privilege "a"`},
		{name: "duplicate role", content: rules(`"privileges":[{"name":"a","path":"/"}],"roles":[{"name":"r","privileges":["a"]},{"name":"r","privileges":["a"]}]`), problem: "duplicates role"},
		{name: "identity without selector", content: rules(`"identities":[{"name":"i","userName":" "}]`), problem: "must set at least one"},
		{name: "duplicate identity", content: rules(`"identities":[{"name":"i","userName":"a"},{"name":"i","userName":"b"}]`), problem: "duplicates identity"},
		{name: "assignment unknown role", content: rules(`"identities":[{"name":"i","userName":"a"}],"roleAssignments":[{"role":"x","identities":["i"]}]`), problem: `unknown role "x"`},
		{name: "assignment unknown identity", content: rules(`"privileges":[{"name":"a","path":"/"}],"roles":[{"name":"r","privileges":["a"]}],"roleAssignments":[{"role":"r","identities":["j"]}]`), problem: `unknown identity "j"`},
		{name: "assignment without identities", content: rules(`"privileges":[{"name":"a","path":"/"}],"roles":[{"name":"r","privileges":["a"]}],"roleAssignments":[{"role":"r","identities":[]}]`), problem: "at least one identity"},
		{name: "file is a directory", dir: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, WireServerRulesFile)
			if tc.dir {
				os.Mkdir(path, 0o700)
			} else {
				writeFile(t, path, tc.content)
				err := ValidateLocalRules([]byte(tc.content))
				if err == nil || !strings.Contains(err.Error(), tc.problem) {
					t.Fatalf("ValidateLocalRules = %v, want mention of %q", err, tc.problem)
				}
			}
			for _, mode := range []string{"enforce", "audit"} {
				s := newLocalStore(t, dir, nil)
				if !update(s, rulesOf(t, remoteWS(mode), "", "")) {
					t.Fatal("no change")
				}
				d := s.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: "/remote", Caller: root()})
				want := Deny
				if mode == "audit" {
					want = AllowAudited // quirk 13: fail-closed keeps the host mode
				}
				if d.Result != want || d.RuleID != "decoded-id-useLocalFileRules-true" || d.Privilege != "" {
					t.Fatalf("%s: got %+v, want %v with rules removed", mode, d, want)
				}
			}
		})
	}
}

// Metadata that cannot be read (here: the rules "dir" is a file) is
// fail-closed too.
func TestLocalRulesMetadataErrorFailsClosed(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	writeFile(t, notDir, "x")
	s := newLocalStore(t, notDir, nil)
	update(s, rulesOf(t, remoteWS("enforce"), "", ""))
	if d := authorize(s, msp.WireServer); d.Result != Deny || d.RuleID != "decoded-id-useLocalFileRules-true" {
		t.Fatalf("got %+v", d)
	}
}

func TestLocalRulesApplied(t *testing.T) {
	for _, tc := range []struct {
		name, remote, file string
		wantID             string
		checks             map[string]Result // target -> result for root
		privilege          string            // privilege expected for /local
	}{
		{name: "merged with host rules (prefixed)", remote: remoteWS("enforce"), file: validLocal,
			wantID: "decoded-id-useLocalFileRules-true_local-effective-id",
			checks: map[string]Result{"/remote": Allow, "/local": Allow, "/other": Allow}, privilege: LocalRulePrefix + "p"},
		{name: "BOM accepted", remote: remoteWS("enforce"), file: "\xEF\xBB\xBF" + validLocal,
			wantID: "decoded-id-useLocalFileRules-true_local-effective-id", checks: map[string]Result{"/local": Allow},
			privilege: LocalRulePrefix + "p"},
		{name: "missing file: host rules", remote: remoteWS("enforce"), wantID: "decoded-id-useLocalFileRules-true",
			checks: map[string]Result{"/remote": Allow, "/local": Allow}},
		{name: "only local rules: not prefixed", file: validLocal,
			remote: fmt.Sprintf(`{"defaultAccess":"deny","mode":"enforce","id":%q}`, descriptorID("d", true)),
			wantID: "d-useLocalFileRules-true_local-effective-id", checks: map[string]Result{"/local": Allow, "/x": Allow},
			privilege: "p"},
		{name: "local defaultAccess overrides", file: `{"defaultAccess":"deny"}`,
			remote: fmt.Sprintf(`{"defaultAccess":"allow","mode":"enforce","id":%q}`, descriptorID("d", true)),
			wantID: "d-useLocalFileRules-true", checks: map[string]Result{"/x": Deny}},
		{name: "descriptor off: file ignored", file: `{"defaultAccess":"deny"}`,
			remote: fmt.Sprintf(`{"defaultAccess":"allow","mode":"enforce","id":%q}`, descriptorID("d", false)),
			wantID: "d-useLocalFileRules-false", checks: map[string]Result{"/x": Allow}},
		{name: "plain id: file ignored", file: `{"defaultAccess":"deny"}`,
			remote: `{"defaultAccess":"allow","mode":"enforce","id":"plain"}`,
			wantID: "plain", checks: map[string]Result{"/x": Allow}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.file != "" {
				writeFile(t, filepath.Join(dir, WireServerRulesFile), tc.file)
			}
			s := newLocalStore(t, dir, nil)
			update(s, rulesOf(t, tc.remote, "", ""))
			for target, want := range tc.checks {
				d := s.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: target, Caller: root()})
				if d.Result != want || d.RuleID != tc.wantID {
					t.Errorf("%s: got %v id %q (%s), want %v id %q", target, d.Result, d.RuleID, d.Reason, want, tc.wantID)
				}
				if target == "/local" && d.Privilege != tc.privilege {
					t.Errorf("/local privilege %q, want %q", d.Privilege, tc.privilege)
				}
			}
			// The local mode key is ignored: the host mode stays.
			if m, _ := s.Mode(msp.WireServer); m != msp.ModeEnforce {
				t.Errorf("mode %v", m)
			}
		})
	}
}

// Local names are prefixed even when they already carry the prefix, and
// local rules cannot reach host names.
func TestMergePrefixesLocalNames(t *testing.T) {
	remote := (wireItem(t, `{"defaultAccess":"deny","mode":"audit","id":"r","rules":{
	 "privileges":[{"name":"p","path":"/a"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"i","userName":"u"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`))
	lf, err := parseLocal([]byte(`{"rules":{"privileges":[{"name":"LocalFileRules_p","path":"/b"}],
	 "roles":[{"name":"r","privileges":["LocalFileRules_p"]}],"identities":[{"name":"i","userName":"v"}],
	 "roleAssignments":[{"role":"r","identities":["i"]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	m := merge(remote, lf, descriptor{logicalID: "x", useLocal: true})
	r := m.Rules
	if m.ID != "x-useLocalFileRules-true" || len(r.Privileges) != 2 || r.Privileges[0].Name != "p" ||
		r.Privileges[1].Name != "LocalFileRules_LocalFileRules_p" || r.Roles[1].Privileges[0] != "LocalFileRules_LocalFileRules_p" ||
		r.Identities[1].Name != "LocalFileRules_i" || r.RoleAssignments[1].Role != "LocalFileRules_r" ||
		r.RoleAssignments[1].Identities[0] != "LocalFileRules_i" || r.Identities[1].UserName != "v" {
		t.Fatalf("merged: %+v", r)
	}
	if remote.Rules.Privileges[0].Name != "p" || len(remote.Rules.Privileges) != 1 {
		t.Fatal("merge changed its input")
	}
	// No host item: {deny, disabled} base; fail-closed base is {deny, enforce}.
	if m := merge(nil, lf, descriptor{}); m.ID != "unknown" || m.Mode != "disabled" || m.DefaultAccess != "deny" {
		t.Errorf("merge(nil) = %+v", m)
	}
	if fc := failClosed(nil, descriptor{}); fc.Mode != "enforce" || fc.DefaultAccess != "deny" || fc.Rules != nil {
		t.Errorf("failClosed(nil) = %+v", fc)
	}
}

// An explicitly empty selector in a local file is kept: it matches only an
// empty claim, as upstream's Some("") does, instead of matching everyone.
func TestLocalEmptySelectorIsNotWildcard(t *testing.T) {
	rs, err := CompileDocument([]byte(`{"rules":{"privileges":[{"name":"p","path":"/"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"i","userName":"","processName":"curl"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`), msp.ModeEnforce)
	if err != nil {
		t.Fatal(err)
	}
	if m := rs.Match("/", user()); m.Allowed {
		t.Fatalf("empty userName matched %q: %+v", user().UserName, m)
	}
}

// The same holds for a host item: an empty selector the host sent is
// specified, not a wildcard.
func TestHostEmptySelectorIsNotWildcard(t *testing.T) {
	var it msp.AuthorizationItem
	if err := json.Unmarshal([]byte(`{"defaultAccess":"allow","mode":"enforce","id":"h","rules":{
	 "privileges":[{"name":"p","path":"/"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"i","userName":"","processName":"curl"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`), &it); err != nil {
		t.Fatal(err)
	}
	if m := Compile(&it).Match("/", user()); m.Allowed {
		t.Fatalf("empty userName from the host matched %q: %+v", user().UserName, m)
	}
}

func TestParseDescriptor(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		raw  string
		want descriptor
	}{
		{"", descriptor{}},
		{"  ", descriptor{}},
		{"legacy-id", descriptor{logicalID: "legacy-id"}},
		{" legacy-id ", descriptor{logicalID: "legacy-id"}},
		{enc(`{"id":"sig-resource-id","useLocalFileRules":true}`), descriptor{"sig-resource-id", true, true}},
		{enc(`{"id":"a","extra":1}`), descriptor{logicalID: "a", decoded: true}},
		{enc(`{"useLocalFileRules":true}`), descriptor{useLocal: true, decoded: true}},
		{enc(`{"id":null}`), descriptor{logicalID: enc(`{"id":null}`)}},
		{enc(`{"id":"a","id":"b"}`), descriptor{logicalID: enc(`{"id":"a","id":"b"}`)}},
		{enc(`{"id":"a"} x`), descriptor{logicalID: enc(`{"id":"a"} x`)}},
		{enc(`"str"`), descriptor{logicalID: enc(`"str"`)}},
		{enc(`null`), descriptor{logicalID: enc(`null`)}},
		{strings.TrimRight(enc(`{"id":"a"}`), "="), descriptor{logicalID: strings.TrimRight(enc(`{"id":"a"}`), "=")}},
	} {
		if got := parseDescriptor(tc.raw); got != tc.want {
			t.Errorf("parseDescriptor(%q) = %+v, want %+v", tc.raw, got, tc.want)
		}
	}
}

// Change detection (§3.7): re-evaluated when the file appears, changes,
// disappears, the descriptor flips, or the previous attempt failed.
func TestLocalRulesChangeDetection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, WireServerRulesFile)
	s := newLocalStore(t, dir, nil)
	remote := rulesOf(t, remoteWS("enforce"), "", "")
	step := func(name string, wantChange bool, wantID string) {
		t.Helper()
		if got := update(s, remote); got != wantChange {
			t.Fatalf("%s: changed = %v, want %v", name, got, wantChange)
		}
		if d := authorize(s, msp.WireServer); d.RuleID != wantID {
			t.Fatalf("%s: rule id %q, want %q", name, d.RuleID, wantID)
		}
	}
	base := "decoded-id-useLocalFileRules-true"
	step("first poll, no file", true, base)
	step("unchanged", false, base)
	writeFile(t, path, `{"id":"v1"}`)
	step("file appears", true, base+"_v1")
	step("unchanged", false, base+"_v1")
	writeFile(t, path, `{"id":"v2"}`)
	later := time.Now().Add(time.Hour)
	os.Chtimes(path, later, later)
	step("mtime changes", true, base+"_v2")
	writeFile(t, path, `{"id":`)
	os.Chtimes(path, later.Add(time.Hour), later.Add(time.Hour))
	step("becomes invalid", true, base)
	step("still invalid: re-read, no change", false, base)
	writeFile(t, path, `{"id":"v3"}`)
	os.Chtimes(path, later.Add(time.Hour), later.Add(time.Hour)) // same mtime as the failed read
	step("fixed after failure", true, base+"_v3")
	os.Remove(path)
	step("file removed", true, base)
	off := rulesOf(t, fmt.Sprintf(`{"defaultAccess":"allow","mode":"enforce","id":%q}`, descriptorID("decoded-id", false)), "", "")
	if !update(s, off) {
		t.Fatal("descriptor flip not a change")
	}
}

// A key given twice counts with its last value, the whole value: an object
// or map given twice is not merged with the first (as encoding/json alone
// would).
func TestLocalRulesRepeatedKeyLastWins(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		check     func(lf *localFile) string
	}{
		{"defaultAccess", `{"defaultAccess":"deny","defaultAccess":"allow"}`, func(lf *localFile) string {
			return *lf.DefaultAccess
		}},
		{"rules object", `{"rules":{"privileges":[{"name":"a","path":"/a"}]},"rules":{"identities":[{"name":"i","userName":"u"}]}}`,
			func(lf *localFile) string {
				return fmt.Sprintf("%d privileges, %d identities", len(lf.Rules.Privileges), len(lf.Rules.Identities))
			}},
		{"query map", `{"rules":{"privileges":[{"name":"a","path":"/a","queryParameters":{"x":"1"},"queryParameters":{"y":"2"}}]}}`,
			func(lf *localFile) string { return fmt.Sprint(lf.Rules.Privileges[0].QueryParameters) }},
		{"nested", `{"rules":{"privileges":[{"name":"a","path":"/a","path":"/b"}]}}`,
			func(lf *localFile) string { return lf.Rules.Privileges[0].Path }},
	} {
		want := map[string]string{"defaultAccess": "allow", "rules object": "0 privileges, 1 identities",
			"query map": "map[y:2]", "nested": "/b"}[tc.name]
		lf, err := parseLocal([]byte(tc.doc))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := tc.check(lf); got != want {
			t.Errorf("%s: got %s, want %s", tc.name, got, want)
		}
	}
}

// A type error in a file with a repeated key names the field but no
// position: the decoder read a re-encoded copy, whose lines are not the
// file's.
func TestLocalRulesRepeatedKeyTypeError(t *testing.T) {
	_, err := parseLocal([]byte("{\n \"id\": \"a\",\n \"id\": \"b\",\n \"rules\": 5\n}"))
	var se *SyntaxError
	if !errors.As(err, &se) || se.Line != 0 || !strings.Contains(se.Msg, "rules") {
		t.Fatalf("got %#v", err)
	}
}

// JSON errors are retried (3 attempts by default); validation errors are
// not.
func TestLocalRulesRetry(t *testing.T) {
	for _, tc := range []struct {
		content  string
		attempts int
	}{
		{`{"id":`, 3},
		{`{"defaultAccess":"maybe"}`, 0},
	} {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, WireServerRulesFile), tc.content)
		rec := &recorder{}
		s := newLocalStore(t, dir, slog.New(rec))
		update(s, rulesOf(t, remoteWS("enforce"), "", ""))
		if got := rec.count("local rules file parse attempt failed"); got != tc.attempts {
			t.Errorf("%s: %d failed attempts, want %d", tc.content, got, tc.attempts)
		}
		if rec.count("local rules file unusable; applying fail-closed rules") != 1 {
			t.Errorf("%s: fail-closed not logged", tc.content)
		}
	}
}

func TestValidateLocalRulesAcceptsValid(t *testing.T) {
	if err := ValidateLocalRules([]byte(validLocal)); err != nil {
		t.Fatal(err)
	}
	err := ValidateLocalRules([]byte("{\n  \"rules\": {\"privileges\": [{\"name\": 1}]}\n}"))
	var se *SyntaxError
	if !errors.As(err, &se) || se.Line != 2 || !strings.Contains(se.Msg, "rules.privileges.name") {
		t.Fatalf("got %v", err)
	}
	err = ValidateLocalRules([]byte(`{"rules":{"privileges":[{"name":"","path":""}]}}`))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 2 {
		t.Fatalf("got %v, want two problems", err)
	}
}

func TestPrepareRulesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "rules")
	if err := PrepareRulesDir(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	if err := PrepareRulesDir(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("mode %v, err %v", fi.Mode(), err)
	}
}

// recorder is a slog.Handler that counts messages.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }
func (r *recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// What upstream's deserializer rejects and encoding/json would accept
// (not an object, invalid UTF-8) is rejected too, so such a file fails
// closed instead of being half-read. A repeated key is not ambiguous: its
// last value counts (threats-and-benchmarks.md §2.6).
func TestLocalRulesStrictJSON(t *testing.T) {
	for _, tc := range []struct {
		doc string
		ok  bool
	}{
		{`null`, false},
		{`[]`, false},
		{"{\"id\":\"\xff\"}", false},
		{`{"id":"a","id":"b"}`, true},
		{`{"id":"","id":"b"}`, true},  // the blank first id is gone
		{`{"id":"b","id":""}`, false}, // the blank last one counts
		{`{"rules":{"privileges":[{"name":"a","name":"b","path":"/"}]}}`, true},
		{`{"rules":{"privileges":[{"name":"a","path":"/","queryParameters":{"k":"1","k":"2"}}]}}`, true},
		{`{"unknown":1,"unknown":2}`, true},
		{` {"mode":"enforce"}`, true},
	} {
		err := ValidateLocalRules([]byte(tc.doc))
		if (err == nil) != tc.ok {
			t.Errorf("%q: err = %v, want ok=%v", tc.doc, err, tc.ok)
		}
	}
}
