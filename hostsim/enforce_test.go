package hostsim

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

func TestModesPerService(t *testing.T) {
	key := mustSigningKey(t, vecGUID, vecKey)
	other := mustSigningKey(t, vecGUID, "00"+vecKey[2:])
	s := startSim(t, Config{PresetKey: vecKeyJSON(), IMDSRateLimit: -1})
	requests := map[Service]rawReq{
		WireServer: wsGet("/machine?comp=goalstate"),
		IMDS:       imdsGet("/metadata/instance?api-version=2021-02-01"),
		HostGA:     {method: "GET", target: "/health", headers: []msp.Field{{Name: "Host", Value: "168.63.129.16:32526"}}},
	}
	addrs := map[Service]string{WireServer: s.Addrs().WireServer, IMDS: s.Addrs().IMDS, HostGA: s.Addrs().HostGA}
	signings := []struct {
		name    string
		key     *msp.Key
		sign    bool
		verdict Verdict
	}{
		{"valid", key, true, VerdictValid},
		{"unsigned", nil, false, VerdictUnsigned},
		{"wrong secret", other, true, VerdictInvalid},
	}
	for _, mode := range []string{"Enforce", "Audit", "Disabled"} {
		ps := ProxyAgentSettings{Enabled: ptr(true), WireServer: &HostEndpointSettings{Mode: mode}, IMDS: &HostEndpointSettings{Mode: mode}}
		if err := s.SetSettings(ps); err != nil {
			t.Fatal(err)
		}
		for _, svc := range []Service{WireServer, IMDS, HostGA} {
			for _, sg := range signings {
				t.Run(fmt.Sprintf("%s/%s/%s", mode, svc, sg.name), func(t *testing.T) {
					q := requests[svc].signed(sg.key, vecDate)
					code, body := send(t, addrs[svc], q.bytes())
					want := http.StatusOK
					if mode == "Enforce" && sg.verdict != VerdictValid {
						want = http.StatusUnauthorized
					}
					if code != want {
						t.Fatalf("HTTP %d %s, want %d", code, body, want)
					}
					e := lastEntry(t, s)
					wantMode, _ := msp.ParseMode(mode)
					if e.Service != svc || e.Verdict != sg.verdict || e.Mode != wantMode || e.Status != want {
						t.Fatalf("journal %+v, want service %s verdict %s mode %s status %d", e, svc, sg.verdict, wantMode, want)
					}
				})
			}
		}
	}
}

func TestEnforceExemptions(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll()})
	tests := []struct {
		name    string
		req     rawReq
		want    int
		verdict Verdict
	}{
		{"agent log upload", rawReq{method: "PUT", target: "/vmAgentLog", body: "log", headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Length", Value: "3"}}}, 200, VerdictExempt},
		{"telemetry upload", rawReq{method: "POST", target: "/machine/?comp=telemetrydata", body: "<x/>", headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Length", Value: "4"}}}, 200, VerdictExempt},
		{"telemetry without slash is not exempt", rawReq{method: "POST", target: "/machine?comp=telemetrydata", body: "<x/>", headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Length", Value: "4"}}}, 401, VerdictUnsigned},
		{"health unsigned", rawReq{method: "POST", target: "/machine?comp=health", body: "<Health/>", headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Length", Value: "9"}}}, 401, VerdictUnsigned},
		{"status", rawReq{method: "GET", target: msp.StatusPath, headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Metadata", Value: "True "}}}, 200, VerdictNotRequired},
		{"key issue", rawReq{method: "POST", target: msp.KeyPath, body: msp.KeyRequestBody, headers: []msp.Field{
			{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Length", Value: "44"}}}, 200, VerdictNotRequired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := send(t, s.Addrs().WireServer, tc.req.bytes())
			if code != tc.want {
				t.Fatalf("HTTP %d %s, want %d", code, body, tc.want)
			}
			if e := lastEntry(t, s); e.Verdict != tc.verdict || e.BodyLen != int64(len(tc.req.body)) {
				t.Fatalf("journal %+v, want verdict %s body %d", e, tc.verdict, len(tc.req.body))
			}
		})
	}
	// The status and key calls are WireServer calls only.
	if code, _ := send(t, s.Addrs().IMDS, tests[4].req.bytes()); code != http.StatusUnauthorized {
		t.Fatalf("unsigned status call on IMDS in Enforce: HTTP %d, want 401", code)
	}
}

func TestDateSkew(t *testing.T) {
	key := mustSigningKey(t, vecGUID, vecKey)
	s := startSim(t, Config{Settings: enforceAll(), PresetKey: vecKeyJSON()})
	at := func(d time.Duration) string { return msp.FormatDate(vecTime.Add(d)) }
	noDate := wsGet("/machine?comp=goalstate")
	noDate.headers = append(noDate.headers, msp.Field{Name: msp.HeaderClaims, Value: msp.ClaimsValue(true)})
	sts := msp.StringToSign("GET", noDate.target, noDate.headers, nil)
	noDate.headers = append(noDate.headers, msp.Field{Name: msp.HeaderAuthorization, Value: key.Authorization(sts)})
	tests := []struct {
		name    string
		skew    time.Duration // 0: default
		req     rawReq
		want    int
		verdict Verdict
	}{
		{"4m59s behind", 0, wsGet("/machine?comp=goalstate").signed(key, at(-5*time.Minute+time.Second)), 200, VerdictValid},
		{"4m59s ahead", 0, wsGet("/machine?comp=goalstate").signed(key, at(5*time.Minute-time.Second)), 200, VerdictValid},
		{"6m behind", 0, wsGet("/machine?comp=goalstate").signed(key, at(-6*time.Minute)), 401, VerdictBadDate},
		{"6m ahead", 0, wsGet("/machine?comp=goalstate").signed(key, at(6*time.Minute)), 401, VerdictBadDate},
		{"unparsable date", 0, wsGet("/machine?comp=goalstate").signed(key, "yesterday"), 401, VerdictBadDate},
		{"no date header", 0, noDate, 401, VerdictBadDate},
		{"31s behind, skew 30s", 30 * time.Second, wsGet("/machine?comp=goalstate").signed(key, at(-31*time.Second)), 401, VerdictBadDate},
		{"29s behind, skew 30s", 30 * time.Second, wsGet("/machine?comp=goalstate").signed(key, at(-29*time.Second)), 200, VerdictValid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.SetDateSkew(tc.skew)
			code, body := send(t, s.Addrs().WireServer, tc.req.bytes())
			if code != tc.want || lastEntry(t, s).Verdict != tc.verdict {
				t.Fatalf("HTTP %d %s verdict %s, want %d %s", code, body, lastEntry(t, s).Verdict, tc.want, tc.verdict)
			}
		})
	}
}

// A request with two signature headers is refused, whichever is valid.
func TestDuplicateAuthorizationRefused(t *testing.T) {
	key := mustSigningKey(t, vecGUID, vecKey)
	s := startSim(t, Config{Settings: enforceAll(), PresetKey: vecKeyJSON()})
	q := wsGet("/machine?comp=goalstate").signed(key, vecDate)
	q.headers = append(q.headers, q.headers[len(q.headers)-1])
	if code, _ := send(t, s.Addrs().WireServer, q.bytes()); code != http.StatusUnauthorized {
		t.Fatalf("two authorization headers: HTTP %d, want 401", code)
	}
}

// Every WireServer endpoint the proxy carries answers plausibly when
// signed.
func TestWireServerEndpoints(t *testing.T) {
	key := mustSigningKey(t, vecGUID, vecKey)
	s := startSim(t, Config{Settings: enforceAll(), PresetKey: vecKeyJSON()})
	tests := []struct {
		req      rawReq
		want     int
		contains string
	}{
		{wsGet("/machine/?comp=goalstate"), 200, "<ContainerId>" + ContainerID + "</ContainerId>"},
		{wsGet("/machine?comp=goalstate"), 200, "<InstanceId>" + RoleInstanceID + "</InstanceId>"},
		{wsGet("/machine?comp=goalstate"), 200, "<SharedConfig>http://168.63.129.16/machine/" + ContainerID},
		{wsGet("/machine/" + ContainerID + "/" + RoleInstanceID + "?comp=config&type=sharedConfig&incarnation=1"), 200, "<SharedConfig"},
		{wsGet("/?comp=versions"), 200, "<Versions>"},
		{wsGet("/nothing"), 404, "<Error>"},
	}
	for _, tc := range tests {
		code, body := send(t, s.Addrs().WireServer, tc.req.signed(key, vecDate).bytes())
		if code != tc.want || !contains(string(body), tc.contains) {
			t.Errorf("%s %s: HTTP %d %s, want %d containing %q", tc.req.method, tc.req.target, code, body, tc.want, tc.contains)
		}
	}
	code, body := send(t, s.Addrs().HostGA, rawReq{method: "GET", target: "/status", headers: []msp.Field{
		{Name: "Host", Value: "168.63.129.16:32526"}}}.signed(key, vecDate).bytes())
	if code != 200 || !contains(string(body), "Ready") {
		t.Fatalf("hostga status: HTTP %d %s", code, body)
	}
}

// enabled:false turns the host's checks off for every service.
func TestSecureChannelDisabledServesAll(t *testing.T) {
	ps := enforceAll()
	ps.Enabled = ptr(false)
	s := startSim(t, Config{Settings: ps, IMDSRateLimit: -1})
	if code, _ := send(t, s.Addrs().WireServer, wsGet("/machine?comp=goalstate").bytes()); code != 200 {
		t.Fatalf("WireServer unsigned with enabled:false: HTTP %d", code)
	}
	if code, _ := send(t, s.Addrs().IMDS, imdsGet("/metadata/instance?api-version=2021-02-01").bytes()); code != 200 {
		t.Fatalf("IMDS unsigned with enabled:false: HTTP %d", code)
	}
	if e := lastEntry(t, s); e.Mode != msp.ModeDisabled || e.Verdict != VerdictUnsigned {
		t.Fatalf("journal %+v", e)
	}
}

func TestServedUnaccepted(t *testing.T) {
	tests := []struct {
		e    Entry
		want bool
	}{
		{Entry{Mode: msp.ModeEnforce, Verdict: VerdictUnsigned, Status: 200}, true},
		{Entry{Mode: msp.ModeEnforce, Verdict: VerdictBadDate, Status: 404}, false},
		{Entry{Mode: msp.ModeEnforce, Verdict: VerdictInvalid, Status: 401}, false},
		{Entry{Mode: msp.ModeEnforce, Verdict: VerdictExempt, Status: 200}, false},
		{Entry{Mode: msp.ModeAudit, Verdict: VerdictUnsigned, Status: 200}, false},
	}
	for _, tc := range tests {
		if got := tc.e.ServedUnaccepted(); got != tc.want {
			t.Errorf("%+v.ServedUnaccepted() = %v, want %v", tc.e, got, tc.want)
		}
	}
}
