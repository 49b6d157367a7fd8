package insight

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

var t0 = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

// call is one request to put in a test audit log.
type call struct {
	at     time.Duration // after t0
	svc    msp.Service
	who    *claims.Claims
	method string
	target string
	result authz.Result
	// unauthorized marks a request that never reached authorization.
	unauthorized bool
}

func person(user string, uid uint64, exe string, groups ...string) *claims.Claims {
	return &claims.Claims{UserID: uid, UserName: user, UserGroups: groups, ProcessID: 4242,
		ProcessName: filepath.Base(exe), ProcessFullPath: exe, ProcessCmdLine: exe + " --flag",
		RunAsElevated: uid == 0, ClientIP: "10.0.0.4", ClientPort: 50000,
		Ancestry: []claims.Process{{PID: 100, Exe: "/bin/bash", CmdLine: "bash"}, {PID: 1, Exe: "/usr/lib/systemd/systemd", CmdLine: "systemd"}}}
}

var (
	alice   = person("alice", 1000, "/usr/bin/curl", "alice", "users")
	bob     = person("bob", 1001, "/usr/bin/python3", "bob", "data")
	carol   = person("carol", 1002, "/opt/app/bin/agent", "carol")
	waagent = person("root", 0, "/usr/bin/python3", "root")
	mallory = person("mallory", 1003, "/usr/bin/curl", "mallory")
)

func destOf(svc msp.Service) netip.AddrPort {
	if a := msp.DefaultEndpoints().Addr(svc); a.IsValid() {
		return a
	}
	return netip.MustParseAddrPort("10.1.1.1:443")
}

// fixture is a realistic day of audit-mode traffic.
var fixture = []call{
	{at: 0, svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/instance?api-version=2021-02-01"},
	{at: time.Hour, svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/instance?api-version=2021-02-01"},
	{at: 2 * time.Hour, svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/instance?api-version=2021-02-01&format=json"},
	{at: 30 * time.Minute, svc: msp.IMDS, who: bob, method: "GET", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", result: authz.AllowAudited},
	{at: 3 * time.Hour, svc: msp.IMDS, who: bob, method: "GET", target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", result: authz.AllowAudited},
	{at: 4 * time.Hour, svc: msp.IMDS, who: carol, method: "GET", target: "/metadata/instance/compute?api-version=2021-02-01&format=json"},
	{at: 5 * time.Hour, svc: msp.IMDS, who: nil, method: "GET", target: "/metadata/instance", unauthorized: true},
	{at: 10 * time.Minute, svc: msp.WireServer, who: waagent, method: "GET", target: "/machine/?comp=goalstate"},
	{at: 70 * time.Minute, svc: msp.WireServer, who: waagent, method: "GET", target: "/machine/?comp=goalstate"},
	{at: 80 * time.Minute, svc: msp.WireServer, who: waagent, method: "POST", target: "/machine/?comp=telemetrydata"},
	{at: 90 * time.Minute, svc: msp.HostGAPlugin, who: waagent, method: "GET", target: "/vmSettings"},
	{at: 6 * time.Hour, svc: msp.WireServer, who: mallory, method: "GET", target: "/machine/?comp=goalstate", result: authz.Deny},
}

// eventOf turns a call into the event the proxy would record.
func eventOf(c call) audit.Event {
	ev := audit.Event{Time: t0.Add(c.at), HTTPID: 1, TCPID: 1, Caller: c.who,
		Client: netip.MustParseAddrPort("10.0.0.4:50000"), Dest: destOf(c.svc), Service: c.svc, Method: c.method, Target: c.target,
		Status: 200, Latency: 3 * time.Millisecond}
	if c.unauthorized {
		ev.Status = 421
		return ev
	}
	ev.Authorized = true
	ev.Decision = authz.Decision{Result: c.result, Service: c.svc, Mode: msp.ModeAudit, RuleID: "audit-rules", Reason: "test"}
	if c.result == authz.Deny {
		ev.Status = 403
	}
	return ev
}

// writeLog records calls with the real audit Recorder into dir and
// returns the current audit log's path.
func writeLog(t testing.TB, dir string, calls []call, maxSize int64) string {
	t.Helper()
	r, err := audit.New(audit.Options{Dir: dir, MaxFileSize: maxSize, MaxFiles: 100, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range calls {
		r.Record(eventOf(c))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, audit.AuditLogName)
}

// run calls a command entry point and returns exit code, stdout, stderr.
func run(fn func([]string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := fn(args, &out, &errb)
	return code, out.String(), errb.String()
}

func putFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func decodeJSON[T any](t testing.TB, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	return v
}
