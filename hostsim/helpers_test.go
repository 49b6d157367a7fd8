package hostsim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// The canonical key and date of protocol.md §1.4 and §2.8.
const (
	vecGUID = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf"
	vecKey  = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"
	vecDate = "Wed, 23 Apr 2025 12:00:00 GMT"
)

var vecTime = time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// enforceAll enables the secure channel with WireServer and IMDS in
// Enforce.
func enforceAll() ProxyAgentSettings {
	return ProxyAgentSettings{Enabled: ptr(true), KeyIncarnationID: ptr(1),
		WireServer: &HostEndpointSettings{Mode: "Enforce"}, IMDS: &HostEndpointSettings{Mode: "Enforce"}}
}

// startSim starts a Sim on loopback ephemeral ports with the vector clock
// and key unless cfg sets its own, and closes it when the test ends.
func startSim(t *testing.T, cfg Config) *Sim {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return vecTime }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func vecKeyJSON() *msp.IssuedKey {
	return &msp.IssuedKey{AuthorizationScheme: msp.Scheme, GUID: vecGUID, Issued: "x", Key: vecKey}
}

func mustSigningKey(t *testing.T, guid, hexKey string) *msp.Key {
	t.Helper()
	k, err := msp.NewKey(guid, hexKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rawReq is a request written byte for byte; nothing is added to it.
type rawReq struct {
	method, target string
	headers        []msp.Field
	body           string
}

// signed returns q with the protocol headers claims (isRoot) and date added
// and, when key is not nil, signed by key.
func (q rawReq) signed(key *msp.Key, date string) rawReq {
	out := q
	out.headers = append(append([]msp.Field{}, q.headers...),
		msp.Field{Name: msp.HeaderClaims, Value: msp.ClaimsValue(true)},
		msp.Field{Name: msp.HeaderDate, Value: date})
	if key != nil {
		req := q.request()
		req.Fields = out.headers
		req.Sign(key)
		out.headers = req.Fields
	}
	return out
}

func (q rawReq) request() msp.Request {
	return msp.Request{Method: q.method, Target: q.target, Fields: q.headers, Body: []byte(q.body)}
}

func (q rawReq) bytes() []byte {
	var b bytes.Buffer
	req := q.request()
	req.Write(bufio.NewWriter(&b))
	return b.Bytes()
}

// send writes raw to addr over a fresh TCP connection and reads one
// response.
func send(t *testing.T, addr string, raw []byte) (int, []byte) {
	t.Helper()
	return sendFrom(t, nil, addr, raw)
}

func sendFrom(t *testing.T, local net.Addr, addr string, raw []byte) (int, []byte) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLine(raw), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, body
}

func firstLine(raw []byte) string {
	l, _, _ := bytes.Cut(raw, []byte("\r\n"))
	return string(l)
}

// wsGet returns a plain request to the WireServer with the usual headers.
func wsGet(target string) rawReq {
	return rawReq{method: "GET", target: target, headers: []msp.Field{
		{Name: "Host", Value: "168.63.129.16"}, {Name: "x-ms-version", Value: "2012-11-30"}}}
}

// imdsGet returns a well-formed IMDS request.
func imdsGet(target string) rawReq {
	return rawReq{method: "GET", target: target, headers: []msp.Field{
		{Name: "Host", Value: "169.254.169.254"}, {Name: "Metadata", Value: "true"}}}
}

// getStatus fetches and parses GET /secure-channel/status.
func getStatus(t *testing.T, s *Sim) *msp.KeyStatus {
	t.Helper()
	q := rawReq{method: "GET", target: msp.StatusPath, headers: []msp.Field{
		{Name: "host", Value: "168.63.129.16"}, {Name: "Metadata", Value: msp.MetadataHeaderValue},
		{Name: "content-length", Value: "0"}}}
	code, body := send(t, s.Addrs().WireServer, q.bytes())
	if code != http.StatusOK {
		t.Fatalf("status: HTTP %d %s", code, body)
	}
	ks, err := msp.ParseKeyStatus(body)
	if err != nil {
		t.Fatalf("ParseKeyStatus(%s): %v", body, err)
	}
	if _, err := ks.Validate(); err != nil {
		t.Fatalf("Validate(%s): %v", body, err)
	}
	return ks
}

func lastEntry(t *testing.T, s *Sim) Entry {
	t.Helper()
	es := s.Journal().Entries()
	if len(es) == 0 {
		t.Fatal("journal is empty")
	}
	return es[len(es)-1]
}

func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
