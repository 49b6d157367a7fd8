package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// bins are the binaries under test; buildErr is why they are missing.
var (
	bins     e2eenv.Binaries
	buildErr error
)

// TestMain builds the agent and the host simulator once, when the tests can
// run at all (root, not -short).
func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() || os.Geteuid() != 0 {
			return m.Run() // every test skips (or fails under CI) in e2eenv.New
		}
		dir, err := os.MkdirTemp("", "gpa-e2e-bin-")
		if err != nil {
			buildErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		root, err := e2eenv.ModuleRoot(".")
		if err == nil {
			bins, err = e2eenv.Build(ctx, root, dir)
		}
		buildErr = err
		return m.Run()
	}()
	os.Exit(code)
}

// newEnv starts an environment with the given host settings ("" =
// Enforce) and requires `azure-proxy-agent --status --wait 30` to exit 0.
func newEnv(t *testing.T, settings string) *e2eenv.Env {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: settings})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	start := time.Now()
	code, out, err := e.WaitProvisioned(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("azure-proxy-agent --status --wait 30 exited %d, want 0 (provisioned): %s", code, out)
	}
	t.Logf("provisioned %v after start", time.Since(start).Round(time.Millisecond))
	return e
}

// URLs the clients call.
const (
	imdsURL       = "http://169.254.169.254/metadata/instance?api-version=2021-02-01"
	goalStateURL  = "http://168.63.129.16/machine?comp=goalstate"
	gpaStatusURL  = "http://168.63.129.16/gpa-aggregated-status"
	metadataTrue  = "Metadata: true"
	wsVersion     = "x-ms-version: 2012-11-30"
	correlationID = "X-E2E-Id"
)

var idSeq int

// newID returns a value for the X-E2E-Id header that finds one request in
// the host's journal.
func newID(t *testing.T) string {
	idSeq++
	return fmt.Sprintf("%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "."), time.Now().UnixNano(), idSeq)
}

// idHeader is the -H argument carrying id.
func idHeader(id string) string { return correlationID + ": " + id }

// headerValues returns the values of name (any case) among fields.
func headerValues(fields []msp.Field, name string) []string {
	var out []string
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			out = append(out, f.Value)
		}
	}
	return out
}

// entriesWithID returns the host's journal entries that carry the id.
func entriesWithID(t *testing.T, e *e2eenv.Env, id string) []hostsim.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, err := e.Journal(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []hostsim.Entry
	for _, en := range all {
		for _, v := range headerValues(en.Headers, correlationID) {
			if v == id {
				out = append(out, en)
				break
			}
		}
	}
	return out
}

// oneEntry returns the single journal entry carrying id, failing the test
// when there is not exactly one.
func oneEntry(t *testing.T, e *e2eenv.Env, id string) hostsim.Entry {
	t.Helper()
	got := entriesWithID(t, e, id)
	if len(got) != 1 {
		t.Fatalf("host journal has %d entries for request %s, want 1: %+v", len(got), id, got)
	}
	return got[0]
}

// latchedKey returns the key GUID the host has latched.
func latchedKey(t *testing.T, e *e2eenv.Env) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.HostState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LatchedKeyGUID == nil {
		t.Fatal("host has no latched key")
	}
	return *st.LatchedKeyGUID
}

// checkSigned asserts that en is a request the agent endorsed: a valid
// signature under the latched key, in Enforce, with the given isRoot claim.
func checkSigned(t *testing.T, e *e2eenv.Env, en hostsim.Entry, isRoot bool) {
	t.Helper()
	if en.Verdict != hostsim.VerdictValid {
		t.Errorf("host verdict %q, want valid (entry %+v)", en.Verdict, en)
	}
	if en.Mode != "enforce" {
		t.Errorf("host mode %q, want enforce", en.Mode)
	}
	if key := latchedKey(t, e); en.KeyGUID != key {
		t.Errorf("request signed with key %q, host latched %q", en.KeyGUID, key)
	}
	claims := headerValues(en.Headers, msp.HeaderClaims)
	if want := msp.ClaimsValue(isRoot); len(claims) != 1 || claims[0] != want {
		t.Errorf("host received claims %q, want exactly [%q]", claims, want)
	}
}

// lookPath finds a command as the clients' PATH would.
func lookPath(name string) (string, error) { return exec.LookPath(name) }
