package insight

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func TestCorruptLinesAreWarnings(t *testing.T) {
	dir := t.TempDir()
	log := writeLog(t, dir, fixture, 0)
	n := countLines(t, log)
	appendTo(t, log, "{this is not json\n")
	// A record cut short by a crash: no line feed at the end.
	appendTo(t, log, `{"v":1,"time":"2026-11-20T18:00:00Z","seq":99,"caller":{"userName":"ali`)

	code, out, errs := run(RunAudit, "report", "--log", log, "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		fmt.Sprintf("warning: %s:%d: invalid JSON", log, n+1),
		fmt.Sprintf("warning: %s:%d: truncated", log, n+2),
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	r := decodeJSON[Report](t, out)
	if r.Counts.Requests != len(fixture) || len(r.Warnings) != 2 {
		t.Errorf("report %d requests, warnings %v", r.Counts.Requests, r.Warnings)
	}
	// --strict refuses the same log.
	code, _, errs = run(RunAudit, "report", "--log", log, "--strict")
	if code != ExitBadInput || !strings.Contains(errs, "--strict") || !strings.Contains(errs, fmt.Sprintf("%s:%d", log, n+1)) {
		t.Errorf("strict: exit %d, stderr %s", code, errs)
	}
	// rules suggest and rules test warn the same way.
	code, _, errs = run(RunRules, "suggest", "--log", log, "--service", "imds")
	if code != ExitOK || !strings.Contains(errs, fmt.Sprintf("%s:%d: invalid JSON", log, n+1)) {
		t.Errorf("suggest: exit %d, stderr %s", code, errs)
	}
}

func TestTamperedLineIsFlagged(t *testing.T) {
	dir := t.TempDir()
	log := writeLog(t, dir, fixture, 0)
	b, _ := os.ReadFile(log)
	// Change who made the third request; the next line's chain breaks.
	lines := strings.SplitAfter(string(b), "\n")
	lines[2] = strings.Replace(lines[2], `"userName":"alice"`, `"userName":"alicf"`, 1)
	if err := os.WriteFile(log, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(RunAudit, "report", "--log", log)
	if code != ExitOK || !strings.Contains(errs, fmt.Sprintf("%s:4: hash chain broken", log)) {
		t.Errorf("exit %d, stderr %s", code, errs)
	}
}

func TestNothingReadable(t *testing.T) {
	dir := t.TempDir()
	log := putFile(t, dir, audit.AuditLogName, "garbage\n{\"v\": 7}\n")
	code, _, errs := run(RunAudit, "report", "--log", log)
	if code != ExitBadInput || !strings.Contains(errs, "no audit record could be read") || !strings.Contains(errs, log+":1:") {
		t.Errorf("exit %d, stderr %s", code, errs)
	}
	// An empty log is not an error: there is just nothing to report.
	empty := putFile(t, t.TempDir(), audit.AuditLogName, "")
	if code, out, errs := run(RunAudit, "report", "--log", empty); code != ExitOK || !strings.Contains(out, "No requests") {
		t.Errorf("empty log: exit %d %s %s", code, out, errs)
	}
	// Missing inputs.
	if code, _, errs := run(RunAudit, "report", "--dir", t.TempDir()); code != ExitBadInput || !strings.Contains(errs, "no audit log") {
		t.Errorf("empty dir: exit %d %s", code, errs)
	}
	if code, _, errs := run(RunAudit, "report", "--log", filepath.Join(dir, "nope.jsonl")); code != ExitBadInput || !strings.Contains(errs, "nope.jsonl") {
		t.Errorf("missing file: exit %d %s", code, errs)
	}
}

func TestBadRulesDocuments(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	rdir := t.TempDir()
	tests := []struct {
		name, file, content string
		args                []string
		want                []string
	}{
		{"syntax", "IMDS_Rules.json", "{\n  \"defaultAccess\": \"deny\",\n  \"rules\": {,}\n}", nil, []string{"IMDS_Rules.json:3:"}},
		{"validation", "IMDS_Rules.json", `{"rules": {"privileges": [{"name": "p", "path": "/x"}], "roles": [{"name": "r", "privileges": ["q"]}]}}`, nil,
			[]string{"invalid rules document", `rules.roles[0].privileges[0] names unknown privilege "q"`}},
		{"wrong type", "item.json", "{\"mode\": \"enforce\", \"id\": \"x\",\n \"defaultAccess\": 5}", []string{"--service", "imds"}, []string{"item.json:2:"}},
		{"bad mode", "item.json", `{"mode": "strict", "id": "x", "defaultAccess": "deny"}`, []string{"--service", "imds"}, []string{`mode "strict"`}},
		{"no service", "mine.json", `{"defaultAccess": "deny"}`, nil, []string{"--service"}},
		{"hostga local", "mine.json", `{"defaultAccess": "deny"}`, []string{"--service", "hostga"}, []string{"no local rules file"}},
		{"not an object", "IMDS_Rules.json", `[1]`, nil, []string{"IMDS_Rules.json"}},
		{"missing", "", "", nil, []string{"no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(rdir, "absent.json")
			if tt.file != "" {
				path = putFile(t, rdir, tt.file, tt.content)
			}
			args := append([]string{"test", path, "--dir", dir}, tt.args...)
			code, _, errs := run(RunRules, args...)
			if code != ExitBadInput {
				t.Errorf("exit %d, want %d", code, ExitBadInput)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			// audit report --rules rejects it the same way.
			args = append([]string{"report", "--dir", dir, "--rules", path}, tt.args...)
			if code, _, _ := run(RunAudit, args...); code != ExitBadInput {
				t.Errorf("report --rules: exit %d", code)
			}
		})
	}
}

func TestUnknownRulesFieldsAreWarnings(t *testing.T) {
	doc := "{\"defaultAccess\": \"deny\", \"mode\": \"enforce\",\n \"rules\": {\"privileges\": [\n  {\"name\": \"p\", \"path\": \"/metadata\", \"queryParameter\": {\"a\": \"b\"}}],\n \"roles\": [], \"identities\": [], \"roleAssignments\": []}}"
	r, err := ParseRules([]byte(doc), "IMDS_Rules.json", RulesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range r.Warnings {
		got = append(got, w.String())
	}
	joined := strings.Join(got, "\n")
	if !strings.Contains(joined, `IMDS_Rules.json:3: unknown field "rules.privileges[0].queryParameter"`) ||
		!strings.Contains(joined, `IMDS_Rules.json:1: "mode" is ignored in a local rules file`) {
		t.Errorf("warnings:\n%s", joined)
	}
	// The same keys in a profile's free-form ARM envelope are fine.
	prof := `{"id": "/x", "location": "westus", "properties": {"provisioningState": "Succeeded", "mode": "Audit", "defaultAccess": "Deny"}}`
	r, err = ParseRules([]byte(prof), "p.json", RulesOptions{Service: msp.IMDS})
	if err != nil || len(r.Warnings) != 0 || r.Format != FormatProfile {
		t.Errorf("profile: %v %v %q", err, r.Warnings, r.Format)
	}
}

func TestUsage(t *testing.T) {
	for _, tt := range []struct {
		fn   func([]string, io.Writer, io.Writer) int
		args []string
		code int
	}{
		{RunAudit, nil, ExitBadInput},
		{RunAudit, []string{"--help"}, ExitOK},
		{RunAudit, []string{"summarize"}, ExitBadInput},
		{RunAudit, []string{"report", "-h"}, ExitOK},
		{RunAudit, []string{"top", "-h"}, ExitOK},
		{RunAudit, []string{"report", "extra"}, ExitBadInput},
		{RunAudit, []string{"report", "--since", "yesterday"}, ExitBadInput},
		{RunAudit, []string{"report", "--since", "-5h"}, ExitBadInput},
		{RunRules, nil, ExitBadInput},
		{RunRules, []string{"apply"}, ExitBadInput},
		{RunRules, []string{"test"}, ExitBadInput},
		{RunRules, []string{"test", "a.json", "b.json"}, ExitBadInput},
		{RunRules, []string{"test", "a.json", "--mode", "strict"}, ExitBadInput},
	} {
		if code, _, _ := run(tt.fn, tt.args...); code != tt.code {
			t.Errorf("%v: exit %d, want %d", tt.args, code, tt.code)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := t0.Add(48 * time.Hour)
	for in, want := range map[string]time.Time{
		"":                     {},
		"24h":                  t0.Add(24 * time.Hour),
		"2026-11-20T10:00:00Z": t0,
		"2026-11-20":           time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC),
	} {
		got, err := ParseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	stop := errors.New("stop")
	n := 0
	_, err := Scan(Source{Dir: dir}, func(Entry) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("err %v after %d records", err, n)
	}
}
