package insight

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// FuzzScan feeds arbitrary log contents through every consumer: bad
// input must give warnings or errors, never a panic.
func FuzzScan(f *testing.F) {
	// One small record per seed, not a day of the agent's full ones: the
	// engine minimizes every input that finds new coverage by running it
	// again for each subset of its bytes. A candidate that breaks the only
	// record is cheap (Scan refuses it); one that leaves another record
	// intact runs every consumer, so a seed of several records, or of
	// kilobytes, would spend the fuzzing time there. TestScanRegressions
	// runs the real log.
	f.Add([]byte(`{"v":1,"time":"2026-11-20T10:00:00Z","seq":1,"caller":{"userId":1000,"userName":"alice",` +
		`"userGroups":["users"],"processName":"curl","processFullPath":"/usr/bin/curl"},"destination":{"service":"IMDS"},` +
		`"method":"GET","target":"/metadata/instance?api-version=2021-02-01","decision":"allow","status":200}` + "\n"))
	f.Add([]byte(`{"v":1,"time":"2026-11-20T11:00:00Z","seq":2,"caller":{"userName":"bob","userGroups":["data"],` +
		`"processFullPath":"/usr/bin/python3"},"destination":{"service":"WireServer"},"method":"GET",` +
		`"target":"/machine?comp=goalstate","decision":"audit-deny","status":200}` + "\n"))
	f.Add([]byte(`{"v":1,"time":"2026-11-20T10:00:00Z","seq":1,"caller":{"userName":"alice","processFullPath":"/us`))
	f.Add([]byte(`{"v":1,"caller":null,"destination":{"service":"IMDS"},"decision":"deny","target":"%zz/%3F?=&a=%"}` + "\n"))
	f.Add([]byte(`{"v":1,"caller":{"userGroups":null,"ancestry":[{}]},"destination":{"service":"WireServer"},"decision":"allow","target":"http://x"}` + "\n"))
	f.Add([]byte("\n\n{}\n\xff\xfe\n"))
	h := newScanHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) { h.run(t, data) })
}

// scanHarness is FuzzScan's body and what it needs, made once: the rules
// the report and replay use, and one input file, kept open and rewritten
// in place for each input (making and removing a directory, or truncating
// and closing a file, per input would cost more than everything Scan does).
type scanHarness struct {
	rules *Rules
	input *os.File
}

func newScanHarness(tb testing.TB) *scanHarness {
	tb.Helper()
	rules, err := ParseRules([]byte(aliceOnlyIMDS), authz.IMDSRulesFile, RulesOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	input, err := os.Create(filepath.Join(tb.TempDir(), "audit.jsonl"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { input.Close() })
	return &scanHarness{rules: rules, input: input}
}

// run writes data to the input file and sends it through Scan and every
// consumer.
func (h *scanHarness) run(t testing.TB, data []byte) {
	if _, err := h.input.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.input.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rules, path := h.rules, h.input.Name()
	rb := NewReportBuilder(ReportOptions{Rules: rules, PathDepth: 2})
	rp := NewReplayer(rules)
	var sgs []*Suggester
	for _, o := range []SuggestOptions{
		{Service: msp.IMDS, Query: QueryObserved},
		{Service: msp.WireServer, Identity: ByGroup, IncludeHostGA: true, IncludeDenied: true},
	} {
		sg, err := NewSuggester(o)
		if err != nil {
			t.Fatal(err)
		}
		sgs = append(sgs, sg)
	}
	st, err := Scan(Source{Path: path}, func(e Entry) error {
		rb.Add(e)
		rp.Add(e)
		for _, sg := range sgs {
			sg.Add(e)
		}
		return nil
	})
	if err != nil {
		if _, ok := err.(*InputError); !ok {
			t.Fatalf("Scan error of type %T: %v", err, err)
		}
		return
	}
	rep := rb.Report(st)
	if err := rep.WriteTable(io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := rp.Result(st).WriteText(io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, sg := range sgs {
		s, err := sg.Suggest()
		if err != nil {
			continue
		}
		doc, err := s.LocalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if err := authz.ValidateLocalRules(doc); err != nil {
			t.Fatalf("suggestion does not validate: %v\n%s", err, doc)
		}
		// Every observed legitimate request must be allowed.
		if bad, err := s.Verify(); err != nil || len(bad) > 0 {
			t.Fatalf("Verify: %v %q\n%s", err, bad, doc)
		}
	}
}

// TestScanRegressions runs FuzzScan's body on inputs too large for its
// seed corpus: a day of the agent's own records, and each input that once
// failed it (testdata/scan).
func TestScanRegressions(t *testing.T) {
	dir := t.TempDir()
	day, err := os.ReadFile(writeLog(t, dir, fixture, 0))
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string][]byte{"fixture": day, "fixture cut in half": day[:len(day)/2]}
	found, err := filepath.Glob(filepath.Join("testdata", "scan", "*.jsonl"))
	if err != nil || len(found) == 0 {
		t.Fatalf("no regression inputs in testdata/scan: %v", err)
	}
	for _, name := range found {
		if inputs[name], err = os.ReadFile(name); err != nil {
			t.Fatal(err)
		}
	}
	h := newScanHarness(t)
	for name, data := range inputs {
		t.Run(name, func(t *testing.T) { h.run(t, data) })
	}
}

// FuzzParseRules checks that no rules document crashes the loader.
func FuzzParseRules(f *testing.F) {
	f.Add([]byte(aliceOnlyIMDS))
	f.Add([]byte(`{"properties": {"mode": "Audit", "defaultAccess": "Deny", "rules": {"privileges": [{}]}}}`))
	f.Add([]byte(`{"authorizationRules": {"imds": {"mode": "x"}}}`))
	f.Add([]byte(`{"mode": "enforce", "id": "i", "defaultAccess": "allow", "rules": {"roles": [{"privileges": null}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, o := range []RulesOptions{{Service: msp.IMDS}, {Service: msp.WireServer, Mode: "enforce"}, {}} {
			r, err := ParseRules(data, "rules.json", o)
			if err != nil {
				if _, ok := err.(*InputError); !ok {
					t.Fatalf("error of type %T: %v", err, err)
				}
				continue
			}
			if r.Snapshot == nil || len(r.Services()) == 0 {
				t.Fatalf("document parsed without rules: %+v", r)
			}
		}
	})
}

// FuzzSuggestVerify checks the suggester's promise on arbitrary targets
// and callers: its document validates and allows the observed request.
func FuzzSuggestVerify(f *testing.F) {
	f.Add("/metadata/instance?api-version=2021-02-01&format=json", "/usr/bin/curl", "alice", "users", uint8(0), true)
	f.Add("/a%2Fb%3Fc=d?X=%41&x=2", "/usr/bin/./curl", "bob", "", uint8(1), true)
	f.Add("http://169.254.169.254/metadata/İnstance?Σ=Σ", "/opt/ΣΣ", "root", "root", uint8(3), true)
	f.Add("//x/%zz/?a=&=b&c", "relative/exe", "u", "g", uint8(2), false)
	f.Fuzz(func(t *testing.T, target, exe, user, group string, depth uint8, observed bool) {
		c := &claims.Claims{UserName: user, ProcessFullPath: exe, ProcessName: filepath.Base(exe)}
		if group != "" {
			c.UserGroups = []string{group}
		}
		rec := audit.Record{V: 1, Destination: audit.Destination{Service: string(msp.IMDS)}, Decision: "allow",
			Method: "GET", Target: target, Caller: c}
		q := QueryNone
		if observed {
			q = QueryObserved
		}
		for _, id := range []string{ByExe, ByUser, ByGroup, ByExeUser} {
			sg, err := NewSuggester(SuggestOptions{Service: msp.IMDS, Identity: id, Query: q, PathDepth: int(depth % 8)})
			if err != nil {
				t.Fatal(err)
			}
			sg.Add(Entry{File: "f", Line: 1, Record: rec})
			s, err := sg.Suggest()
			if err != nil {
				continue // the caller or target could not be named
			}
			doc, err := s.LocalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if err := authz.ValidateLocalRules(doc); err != nil {
				t.Fatalf("%s: invalid document: %v\n%s", id, err, doc)
			}
			if bad, err := s.Verify(); err != nil || len(bad) > 0 {
				t.Fatalf("%s: observed request not allowed: %v %q\n%s", id, err, bad, doc)
			}
		}
	})
}
