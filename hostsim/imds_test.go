package hostsim

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// In Disabled mode these exercise IMDS's own request rules.
func TestIMDSRequestRules(t *testing.T) {
	s := startSim(t, Config{IMDSRateLimit: -1})
	noMeta := rawReq{method: "GET", target: "/metadata/instance?api-version=2021-02-01", headers: []msp.Field{{Name: "Host", Value: "169.254.169.254"}}}
	withHeader := func(q rawReq, name, value string) rawReq {
		q.headers = append(append([]msp.Field{}, q.headers...), msp.Field{Name: name, Value: value})
		return q
	}
	tests := []struct {
		name      string
		req       rawReq
		wantCode  int
		wantInErr string
	}{
		{"well formed", imdsGet("/metadata/instance?api-version=2021-02-01&format=json"), 200, ""},
		{"no Metadata header", noMeta, 400, "metadata header"},
		{"Metadata false", withHeader(noMeta, "Metadata", "false"), 400, "metadata header"},
		{"Metadata TRUE", withHeader(noMeta, "Metadata", "TRUE"), 200, ""},
		{"X-Forwarded-For", withHeader(imdsGet("/metadata/instance?api-version=2021-02-01"), "X-Forwarded-For", "10.0.0.9"), 400, "X-Forwarded-For"},
		{"duplicate query name", imdsGet("/metadata/instance?api-version=2021-02-01&api-version=2021-02-01"), 400, "more than once"},
		{"duplicate name differing in case", imdsGet("/metadata/instance?api-version=2021-02-01&format=json&Format=json"), 400, "more than once"},
		{"no api-version", imdsGet("/metadata/instance"), 400, "api-version"},
		{"unknown api-version", imdsGet("/metadata/instance?api-version=2099-01-01"), 400, "api-version"},
		{"format xml", imdsGet("/metadata/instance?api-version=2021-02-01&format=xml"), 400, "format"},
		{"text on non-leaf", imdsGet("/metadata/instance?api-version=2021-02-01&format=text"), 400, "non-leaf"},
		{"unknown path", imdsGet("/metadata/nothing?api-version=2021-02-01"), 404, "Not found"},
		{"token without resource", imdsGet("/metadata/identity/oauth2/token?api-version=2018-02-01"), 400, "resource"},
		{"POST", rawReq{method: "POST", target: "/metadata/instance?api-version=2021-02-01", headers: []msp.Field{
			{Name: "Host", Value: "x"}, {Name: "Metadata", Value: "true"}, {Name: "Content-Length", Value: "0"}}}, 405, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := send(t, s.Addrs().IMDS, tc.req.bytes())
			if code != tc.wantCode {
				t.Fatalf("HTTP %d %s, want %d", code, body, tc.wantCode)
			}
			if tc.wantInErr != "" {
				var e map[string]any
				decodeJSON(t, body, &e)
				text, _ := e["error"].(string)
				desc, _ := e["error_description"].(string)
				if !strings.Contains(strings.ToLower(text+" "+desc), strings.ToLower(tc.wantInErr)) {
					t.Fatalf("error JSON %s does not mention %q", body, tc.wantInErr)
				}
			}
		})
	}
}

func TestIMDSContent(t *testing.T) {
	s := startSim(t, Config{IMDSRateLimit: -1})
	code, body := send(t, s.Addrs().IMDS, imdsGet("/metadata/instance?api-version=2021-02-01&format=json").bytes())
	var doc struct {
		Compute map[string]any `json:"compute"`
		Network map[string]any `json:"network"`
	}
	decodeJSON(t, body, &doc)
	if code != 200 || doc.Compute["vmId"] != VMID || doc.Network["interface"] == nil || doc.Compute["securityProfile"] == nil {
		t.Fatalf("instance: HTTP %d %s", code, body)
	}
	if len(body) < 600 || len(body) > 2500 {
		t.Errorf("instance document is %d bytes, want about 1 KB", len(body))
	}
	// api-version is honoured: an old version does not see newer fields.
	_, old := send(t, s.Addrs().IMDS, imdsGet("/metadata/instance?api-version=2017-08-01").bytes())
	var oldDoc struct {
		Compute map[string]any `json:"compute"`
	}
	decodeJSON(t, old, &oldDoc)
	if _, ok := oldDoc.Compute["securityProfile"]; ok || oldDoc.Compute["vmId"] != VMID {
		t.Fatalf("api-version 2017-08-01 document: %s", old)
	}
	// A leaf is text by default.
	code, leaf := send(t, s.Addrs().IMDS, imdsGet("/metadata/instance/compute/vmId?api-version=2021-02-01").bytes())
	if code != 200 || string(leaf) != VMID {
		t.Fatalf("leaf: HTTP %d %q", code, leaf)
	}
	code, body = send(t, s.Addrs().IMDS, imdsGet("/metadata/instance/network/interface/0/macAddress?api-version=2021-02-01&format=json").bytes())
	if code != 200 || !strings.HasPrefix(string(body), `"`) {
		t.Fatalf("json leaf: HTTP %d %s", code, body)
	}
	code, body = send(t, s.Addrs().IMDS, imdsGet("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F").bytes())
	var tok map[string]string
	decodeJSON(t, body, &tok)
	if code != 200 || !strings.Contains(tok["access_token"], "FAKE") || tok["resource"] != "https://management.azure.com/" ||
		tok["token_type"] != "Bearer" || tok["expires_on"] == "" {
		t.Fatalf("token: HTTP %d %s", code, body)
	}
}

func TestIMDSRateLimit(t *testing.T) {
	clk := testsupport.NewClock(vecTime)
	s := startSim(t, Config{Now: clk.Now})
	req := imdsGet("/metadata/instance?api-version=2021-02-01").bytes()
	for i := range DefaultIMDSRateLimit {
		if code, body := send(t, s.Addrs().IMDS, req); code != 200 {
			t.Fatalf("request %d: HTTP %d %s", i+1, code, body)
		}
	}
	code, body := send(t, s.Addrs().IMDS, req)
	if code != http.StatusTooManyRequests || !strings.Contains(string(body), "error") {
		t.Fatalf("request %d in one second: HTTP %d %s, want 429", DefaultIMDSRateLimit+1, code, body)
	}
	// Another client IP has its own budget.
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	if ln, err := net.ListenTCP("tcp", local); err == nil {
		ln.Close()
		if code, _ := sendFrom(t, local, s.Addrs().IMDS, req); code != 200 {
			t.Fatalf("other client IP: HTTP %d, want 200", code)
		}
	}
	clk.Advance(time.Second)
	if code, _ := send(t, s.Addrs().IMDS, req); code != 200 {
		t.Fatalf("after one second: HTTP %d, want 200", code)
	}
	s.SetIMDSRateLimit(0)
	for i := range 3 * DefaultIMDSRateLimit {
		if code, _ := send(t, s.Addrs().IMDS, req); code != 200 {
			t.Fatalf("limit disabled, request %d: HTTP %d", i+1, code)
		}
	}
	s.SetIMDSRateLimit(2)
	send(t, s.Addrs().IMDS, req)
	send(t, s.Addrs().IMDS, req)
	if code, _ := send(t, s.Addrs().IMDS, req); code != http.StatusTooManyRequests {
		t.Fatalf("limit 2, third request: HTTP %d, want 429", code)
	}
}
