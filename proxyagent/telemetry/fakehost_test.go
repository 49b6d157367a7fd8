package telemetry

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Fixture identity of the fake host's VM (made-up values).
const (
	fxContainerID  = "7a1b2c3d-0000-4e5f-8a9b-0123456789ab"
	fxSharedTarget = "/machine/" + fxContainerID + "/f00dcafe%2D1234.%5Ftest?comp=config&type=sharedConfig&incarnation=3"
	fxTenant       = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
	fxRole         = "TestRole"
	fxInstance     = "TestRole_IN_0"
	fxSubscription = "11111111-2222-3333-4444-555555555555"
	fxGroup        = "rg-telemetry"
	fxVMID         = "99999999-8888-7777-6666-555555555555"
)

// fxGoalState is a goal state in the WireServer's shape: indented, an
// XML declaration, the SharedConfig URL with an escaped path and &amp;
// between its query parameters, and a host that is not the one the
// agent is configured with (it must be ignored).
var fxGoalState = `<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>3</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState></Machine>
  <Container>
    <ContainerId>` + fxContainerID + `</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>f00dcafe-1234._test</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>http://192.0.2.1:80/machine/` + fxContainerID + `/f00dcafe%2D1234.%5Ftest?comp=config&amp;type=hostingEnvironmentConfig&amp;incarnation=3</HostingEnvironmentConfig>
          <SharedConfig>http://192.0.2.1:80` + strings.ReplaceAll(fxSharedTarget, "&", "&amp;") + `</SharedConfig>
          <ConfigName>f00dcafe-1234._test.3.xml</ConfigName>
        </Configuration>
      </RoleInstance>
      <RoleInstance>
        <InstanceId>second</InstanceId>
        <Configuration><SharedConfig>http://192.0.2.1/never</SharedConfig></Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
`

var fxSharedConfig = `<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="3">
  <Deployment name="` + fxTenant + `" guid="{00000000-0000-0000-0000-000000000001}" incarnation="1">
    <Service name="TestService" guid="{00000000-0000-0000-0000-000000000000}" />
  </Deployment>
  <Incarnation number="1" instance="` + fxInstance + `" guid="{00000000-0000-0000-0000-000000000002}" />
  <Role guid="{00000000-0000-0000-0000-000000000003}" name="` + fxRole + `" settleTimeSeconds="10" />
  <Instances>
    <Instance id="` + fxInstance + `" address="10.1.2.3"><InputEndpoints /></Instance>
    <Instance id="TestRole_IN_1" address="10.1.2.4" />
  </Instances>
</SharedConfig>
`

var fxInstanceJSON = `{"compute":{"location":"westeurope","name":"vm","offer":"0001-com-ubuntu-server-jammy",` +
	`"osType":"Linux","resourceGroupName":"` + fxGroup + `","subscriptionId":"` + fxSubscription + `",` +
	`"vmId":"` + fxVMID + `","vmSize":"Standard_B2s"},"network":{"interface":[]}}`

// fxMetadata is what the fixtures say.
var fxMetadata = Metadata{ContainerID: fxContainerID, TenantName: fxTenant, RoleName: fxRole, RoleInstanceName: fxInstance,
	SubscriptionID: fxSubscription, ResourceGroupName: fxGroup, VMID: fxVMID, ImageOrigin: 1}

// fakeHost plays the WireServer and IMDS as protocol.md §1.1 and §6.2
// describe them, and records protocol violations instead of answering
// them: every request must carry the common headers (a parsable
// x-ms-azure-host-date, host without port, root claims, content-length);
// the goal state and shared config need x-ms-version 2012-11-30, IMDS
// needs Metadata: true; with key set the three metadata calls must verify
// under it (msp.Request.Verify) and without it be unsigned; the telemetry
// upload must never be signed and carry x-ms-version and its Content-Type.
type fakeHost struct {
	mu  sync.Mutex
	key *msp.Key
	// Codes to answer with instead of 200 (0 = 200).
	goalStateCode, sharedConfigCode, imdsCode int
	// postCodes are the answers to successive uploads; 200 after them.
	postCodes []int
	// goalStateCT is the goal state's Content-Type ("" = text/xml; charset=utf-8)
	// and goalStateBody replaces fxGoalState when set.
	goalStateCT   string
	goalStateBody []byte

	posts    [][]byte // accepted uploads
	attempts []time.Time
	calls    []string // "<service> METHOD target"
	errs     []string
}

func (f *fakeHost) violation(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

func (f *fakeHost) checkCommon(r *http.Request, body []byte, signed bool) {
	if _, err := msp.ParseDate(r.Header.Get(msp.HeaderDate)); err != nil {
		f.violation("%s %s: x-ms-azure-host-date %q", r.Method, r.RequestURI, r.Header.Get(msp.HeaderDate))
	}
	if _, err := netip.ParseAddr(r.Host); err != nil {
		f.violation("%s %s: host %q, want the address without port", r.Method, r.RequestURI, r.Host)
	}
	if got := r.Header.Get(msp.HeaderClaims); got != msp.ClaimsValue(true) {
		f.violation("%s %s: claims %q", r.Method, r.RequestURI, got)
	}
	if got := r.Header.Get("Content-Length"); got != fmt.Sprint(len(body)) {
		f.violation("%s %s: content-length %q for %d bytes", r.Method, r.RequestURI, got, len(body))
	}
	auth := r.Header.Values(msp.HeaderAuthorization)
	switch {
	case !signed && len(auth) > 0:
		f.violation("%s %s: signed, must not be", r.Method, r.RequestURI)
	case signed && f.key == nil && len(auth) > 0:
		f.violation("%s %s: signed without a key", r.Method, r.RequestURI)
	case signed && f.key != nil:
		fields := []msp.Field{{Name: "host", Value: r.Host}}
		for name, vs := range r.Header {
			for _, v := range vs {
				fields = append(fields, msp.Field{Name: name, Value: v})
			}
		}
		req := msp.Request{Method: r.Method, Target: r.RequestURI, Fields: fields, Body: body}
		if _, err := req.Verify(f.key, time.Now(), 5*time.Minute); err != nil {
			f.violation("%s %s: signature: %v", r.Method, r.RequestURI, err)
		}
	}
}

func code(c int) int {
	if c == 0 {
		return http.StatusOK
	}
	return c
}

// wireServer is the WireServer handler.
func (f *fakeHost) wireServer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, "ws "+r.Method+" "+r.RequestURI)
		switch {
		case r.Method == http.MethodGet && r.RequestURI == msp.GoalStatePath:
			f.checkCommon(r, body, true)
			f.checkVersion(r)
			ct, gs := f.goalStateCT, f.goalStateBody
			if ct == "" {
				ct = "text/xml; charset=utf-8"
			}
			if gs == nil {
				gs = []byte(fxGoalState)
			}
			w.Header().Set("Content-Type", ct)
			w.WriteHeader(code(f.goalStateCode))
			w.Write(gs)
		case r.Method == http.MethodGet && r.RequestURI == fxSharedTarget:
			f.checkCommon(r, body, true)
			f.checkVersion(r)
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			w.WriteHeader(code(f.sharedConfigCode))
			io.WriteString(w, fxSharedConfig)
		case r.Method == http.MethodPost && r.RequestURI == msp.TelemetryDataPath:
			f.checkCommon(r, body, false)
			f.checkVersion(r)
			if got := r.Header.Get("Content-Type"); got != msp.TelemetryContentType {
				f.violation("telemetry content-type %q", got)
			}
			f.attempts = append(f.attempts, time.Now())
			c := http.StatusOK
			if len(f.postCodes) > 0 {
				c, f.postCodes = f.postCodes[0], f.postCodes[1:]
			}
			if c >= 200 && c <= 299 {
				f.posts = append(f.posts, body)
			}
			w.WriteHeader(c)
		default:
			f.violation("unexpected WireServer call %s %s", r.Method, r.RequestURI)
			w.WriteHeader(http.StatusNotFound)
		}
	})
}

func (f *fakeHost) checkVersion(r *http.Request) {
	if got := r.Header.Get(msp.HeaderVersion); got != msp.WireServerAPIVersion {
		f.violation("%s %s: x-ms-version %q", r.Method, r.RequestURI, got)
	}
}

// imds is the IMDS handler.
func (f *fakeHost) imds() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, "imds "+r.Method+" "+r.RequestURI)
		if r.Method != http.MethodGet || r.RequestURI != msp.IMDSInstancePath {
			f.violation("unexpected IMDS call %s %s", r.Method, r.RequestURI)
			w.WriteHeader(http.StatusNotFound)
			return
		}
		f.checkCommon(r, body, true)
		if r.Header.Get("Metadata") != "true" {
			w.WriteHeader(http.StatusBadRequest)
			f.violation("IMDS without Metadata: true")
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(code(f.imdsCode))
		io.WriteString(w, fxInstanceJSON)
	})
}

// set changes the host's behaviour under its lock.
func (f *fakeHost) set(edit func(*fakeHost)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	edit(f)
}

// snapshot returns copies of what the host saw.
func (f *fakeHost) snapshot() (posts [][]byte, attempts []time.Time, calls, errs []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.posts...), append([]time.Time(nil), f.attempts...),
		append([]string(nil), f.calls...), append([]string(nil), f.errs...)
}

// checkNoViolations fails the test for every protocol violation seen.
func (f *fakeHost) checkNoViolations(t *testing.T) {
	t.Helper()
	_, _, _, errs := f.snapshot()
	for _, e := range errs {
		t.Error("host: " + e)
	}
}

// Addresses the pipeline is configured with in pipe-connected tests; the
// dialer routes them to the two in-memory listeners.
const (
	pipeWS   = "127.0.0.1:80"
	pipeIMDS = "127.0.0.2:80"
)

// servePipes serves the fake host on in-memory listeners (usable inside a
// synctest bubble) and returns the dialer that reaches them.
func servePipes(t *testing.T, f *fakeHost) func(ctx context.Context, network, addr string) (net.Conn, error) {
	ws, imds := testsupport.NewPipeListener(), testsupport.NewPipeListener()
	for _, s := range []struct {
		l *testsupport.PipeListener
		h http.Handler
	}{{ws, f.wireServer()}, {imds, f.imds()}} {
		srv := &http.Server{Handler: s.h}
		go srv.Serve(s.l)
		t.Cleanup(func() { srv.Close() })
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		switch addr {
		case pipeWS:
			return ws.Dial(ctx, network, addr)
		case pipeIMDS:
			return imds.Dial(ctx, network, addr)
		}
		return nil, fmt.Errorf("no route to %s", addr)
	}
}
