package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func rulesOf(t testing.TB, ws, imds, hostga string) *msp.AuthorizationRules {
	r := &msp.AuthorizationRules{}
	if ws != "" {
		r.WireServer = wireItem(t, ws)
	}
	if imds != "" {
		r.IMDS = wireItem(t, imds)
	}
	if hostga != "" {
		r.HostGA = wireItem(t, hostga)
	}
	return r
}

func item3(id, access, mode string) string {
	return fmt.Sprintf(`{"defaultAccess":%q,"mode":%q,"id":%q}`, access, mode, id)
}

// update installs rules as the key keeper does; a snapshot-file error is
// ignored here (tests that care call Apply).
func update(s *Store, r *msp.AuthorizationRules) bool {
	changed, _ := s.Apply(r)
	return changed
}

func authorize(s *Store, svc msp.Service) Decision {
	return s.Authorize(Request{Service: svc, Method: "GET", Target: "/x", Caller: root()})
}

func TestStoreStartsWithoutRules(t *testing.T) {
	s := NewStore(StoreConfig{Logger: quietLogger()})
	if d := authorize(s, msp.WireServer); d.Result != Allow || d.Epoch != 0 || d.RuleID != "" {
		t.Fatalf("got %+v", d)
	}
	if _, ok := s.Mode(msp.WireServer); ok {
		t.Fatal("mode reported without rules")
	}
	// A v1 status has no rules: nothing changes.
	if update(s, nil) {
		t.Fatal("nil rules reported as a change")
	}
}

// Quirks 4 and 19: a rule set is recompiled only when its raw id changes.
func TestStoreRecompilesOnlyOnIDChange(t *testing.T) {
	s := NewStore(StoreConfig{Logger: quietLogger()})
	if !update(s, rulesOf(t, item3("A", "deny", "enforce"), item3("I", "allow", "audit"), "")) {
		t.Fatal("first rules not installed")
	}
	if d := authorize(s, msp.WireServer); d.Result != Deny || d.Epoch != 1 || d.RuleID != "A" {
		t.Fatalf("after install: %+v", d)
	}
	// Same id, new content and mode: ignored.
	if update(s, rulesOf(t, item3("A", "allow", "audit"), item3("I", "allow", "audit"), "")) {
		t.Fatal("same id reported as a change")
	}
	if d := authorize(s, msp.WireServer); d.Result != Deny || d.Mode != msp.ModeEnforce || d.Epoch != 1 {
		t.Fatalf("same id changed the decision: %+v", d)
	}
	if m, _ := s.Mode(msp.WireServer); m != msp.ModeEnforce {
		t.Fatalf("mode = %v, want the compiled enforce", m)
	}
	// New id: recompiled.
	if !update(s, rulesOf(t, item3("B", "allow", "audit"), item3("I", "allow", "audit"), "")) {
		t.Fatal("new id not installed")
	}
	if d := authorize(s, msp.WireServer); d.Result != Allow || d.Mode != msp.ModeAudit || d.Epoch != 2 {
		t.Fatalf("after id change: %+v", d)
	}
	if ids := s.ids; ids != (ruleIDs{WireServer: "B", IMDS: "I", HostGA: "B"}) {
		t.Fatalf("ids = %+v", ids)
	}
	// Rules removed: back to no rules.
	if !update(s, nil) {
		t.Fatal("removal not a change")
	}
	if d := authorize(s, msp.IMDS); d.RuleID != "" || d.Result != Allow {
		t.Fatalf("after removal: %+v", d)
	}
	if ids := s.ids; ids != (ruleIDs{}) {
		t.Fatalf("ids after removal = %+v", ids)
	}
}

// Quirk 3: HostGAPlugin uses the host's wireserver item as sent, never
// the hostga item and never local rules.
func TestStoreHostGAMirrorsWireServer(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, WireServerRulesFile), `{"defaultAccess":"allow","id":"loc"}`)
	s := NewStore(StoreConfig{RulesDir: dir, Logger: quietLogger()})
	ws := fmt.Sprintf(`{"defaultAccess":"deny","mode":"enforce","id":%q}`, descriptorID("ws", true))
	update(s, rulesOf(t, ws, "", item3("H", "allow", "disabled")))
	h := authorize(s, msp.HostGAPlugin)
	if h.Result != Deny || h.RuleID != descriptorID("ws", true) || h.Mode != msp.ModeEnforce {
		t.Fatalf("hostga: %+v", h)
	}
	w := authorize(s, msp.WireServer)
	if w.Result != Allow || w.RuleID != "ws-useLocalFileRules-true_loc" {
		t.Fatalf("wireserver: %+v", w)
	}
}

// §8 item 20 and the snapshot file shape.
func TestStoreSnapshotFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	s := NewStore(StoreConfig{SnapshotDir: dir, Logger: quietLogger(),
		Now: func() time.Time { now = now.Add(1500 * time.Microsecond); return now }})
	ws := `{"defaultAccess":"Allow","mode":"Audit","id":"%d","rules":{
	 "privileges":[{"name":"P","path":"/Machine","queryParameters":{"Comp":"GoalState"}}],
	 "roles":[{"name":"r","privileges":["P"]}],"identities":[{"name":"i","userName":"root"}],
	 "roleAssignments":[{"role":"r","identities":["i"]}]}}`
	for i := range 10 {
		if !update(s, rulesOf(t, fmt.Sprintf(ws, i), item3("imds", "deny", "enforce"), "")) {
			t.Fatalf("update %d not a change", i)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 5 {
		t.Fatalf("%d files, want 5", len(entries))
	}
	re := regexp.MustCompile(`^AuthorizationRules_\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d\.\d{3}-\d+\.json$`)
	for _, e := range entries {
		if !re.MatchString(e.Name()) {
			t.Errorf("bad name %q", e.Name())
		}
	}
	if got, want := SnapshotFileName(time.Date(2025, 4, 23, 12, 0, 0, 7_000_000, time.UTC)),
		"AuthorizationRules_2025-04-23T12.00.00.007-1745409600007000000.json"; got != want {
		t.Errorf("SnapshotFileName = %q, want %q", got, want)
	}
	// The newest file describes update 9.
	b, err := os.ReadFile(filepath.Join(dir, entries[len(entries)-1].Name()))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		InputRules    map[string]json.RawMessage `json:"inputRules"`
		ComputedRules map[string]struct {
			ID                   string                       `json:"id"`
			DefaultAllowed       bool                         `json:"defaultAllowed"`
			Mode                 string                       `json:"mode"`
			Privileges           map[string]map[string]any    `json:"privileges"`
			PrivilegeAssignments map[string][]string          `json:"privilegeAssignments"`
			Identities           map[string]map[string]string `json:"identities"`
		} `json:"computedRules"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.InputRules) != 3 || len(doc.ComputedRules) != 3 {
		t.Fatalf("keys: input %d computed %d\n%s", len(doc.InputRules), len(doc.ComputedRules), b)
	}
	var in struct {
		ID string `json:"id"`
	}
	json.Unmarshal(doc.InputRules["wireserver"], &in)
	c := doc.ComputedRules["wireserver"]
	if in.ID != "9" || c.ID != in.ID || !c.DefaultAllowed || c.Mode != "Audit" {
		t.Errorf("wireserver: input id %q, computed %+v", in.ID, c)
	}
	if p := c.Privileges["P"]; p["path"] != "/machine" || p["queryParameters"].(map[string]any)["comp"] != "goalstate" {
		t.Errorf("privilege not lower-cased: %v", p)
	}
	if a := c.PrivilegeAssignments["P"]; len(a) != 1 || a[0] != "i" {
		t.Errorf("assignments %v", a)
	}
	if id := c.Identities["i"]; id["name"] != "i" || id["userName"] != "root" || len(id) != 2 {
		t.Errorf("identity %v", id)
	}
	if h := doc.ComputedRules["hostga"]; h.ID != "9" || h.Mode != "Audit" {
		t.Errorf("hostga computed %+v", h)
	}
	if i := doc.ComputedRules["imds"]; i.Mode != "Enforce" || i.DefaultAllowed {
		t.Errorf("imds computed %+v", i)
	}
}

// Concurrent Authorize calls during updates always see one consistent
// snapshot: rule set "allow-N" allows and "deny-N" denies, the WireServer
// and IMDS rule sets of one epoch share N, and epochs never go back.
func TestStoreConsistentSnapshots(t *testing.T) {
	s := NewStore(StoreConfig{Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for ctx.Err() == nil {
				snap := s.Snapshot()
				w := snap.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: "/", Caller: root()})
				i := snap.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/", Caller: root()})
				d := s.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: "/", Caller: root()})
				bad := ""
				switch {
				case w.Epoch != i.Epoch || w.Epoch < last || d.Epoch < w.Epoch:
					bad = fmt.Sprintf("epochs %d %d %d after %d", w.Epoch, i.Epoch, d.Epoch, last)
				case w.RuleID != "" && (w.RuleID[:5] == "allow") != (w.Result == Allow):
					bad = fmt.Sprintf("rule %s gave %v", w.RuleID, w.Result)
				case w.RuleID != "" && i.RuleID != "imds-"+w.RuleID:
					bad = fmt.Sprintf("mixed snapshot: %s / %s", w.RuleID, i.RuleID)
				}
				if bad != "" {
					select {
					case errs <- bad:
					default:
					}
					return
				}
				last = w.Epoch
			}
		}()
	}
	for n := range 300 {
		access := "allow"
		if n%2 == 1 {
			access = "deny"
		}
		id := fmt.Sprintf("%s-%d", access, n)
		update(s, rulesOf(t,
			fmt.Sprintf(`{"defaultAccess":%q,"mode":"enforce","id":%q}`, access, descriptorID(id, false)),
			fmt.Sprintf(`{"defaultAccess":"allow","mode":"enforce","id":%q}`, descriptorID("imds-"+id, false)), ""))
	}
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := s.Snapshot().Epoch(); got != 300 {
		t.Errorf("epoch = %d, want 300", got)
	}
}

func TestStoreApplyReportsSnapshotError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	s := NewStore(StoreConfig{SnapshotDir: missing, Logger: quietLogger()})
	changed, err := s.Apply(rulesOf(t, item3("A", "deny", "enforce"), "", ""))
	if !changed || err == nil {
		t.Fatalf("changed=%v err=%v, want a change and the write error", changed, err)
	}
	if d := authorize(s, msp.WireServer); d.Result != Deny {
		t.Fatalf("rules not installed despite the write error: %+v", d)
	}
	if changed, err := s.Apply(rulesOf(t, item3("A", "deny", "enforce"), "", "")); changed || err != nil {
		t.Fatalf("unchanged poll: changed=%v err=%v", changed, err)
	}
}
