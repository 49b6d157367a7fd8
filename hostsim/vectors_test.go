package hostsim

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// vector is one worked example of protocol.md §2.8 with the signature the
// spec gives for it (computed there by an independent implementation).
type vector struct {
	name      string
	service   Service
	req       rawReq
	signature string
	// mutations are (from, to) replacements of one byte each, applied to
	// the first occurrence in the raw request.
	mutations [][2]string
}

func authField(sig string) msp.Field {
	return msp.Field{Name: "x-ms-azure-host-authorization", Value: "Azure-HMAC-SHA256 " + vecGUID + " " + sig}
}

func specVectors() []vector {
	claimsRoot := msp.Field{Name: "x-ms-azure-host-claims", Value: `{ "isRoot": "true"}`}
	date := msp.Field{Name: "x-ms-azure-host-date", Value: vecDate}
	with := func(v vector) vector {
		v.req.headers = append(v.req.headers, authField(v.signature))
		return v
	}
	return []vector{
		with(vector{name: "A proxied goalstate", service: WireServer, signature: "7c28efe8da50f19c9c38ab150b0cf9c71d09673f2bd6e061fd426044a5ca212c",
			req: rawReq{method: "GET", target: "/machine?comp=goalstate", headers: []msp.Field{
				{Name: "Host", Value: "168.63.129.16"}, {Name: "x-ms-version", Value: "2012-11-30"}, claimsRoot, date}},
			mutations: [][2]string{{"GET", "GEX"}, {"GET /m", "GET /n"}, {"comp=goalstate", "comp=goalstatf"},
				{"2012-11-30", "2012-11-31"}, {"168.63.129.16", "168.63.129.17"}, {"12:00:00", "12:00:01"},
				{`"true"}`, `"True"}`}, {"212c", "212d"}}}),
		with(vector{name: "B proxied health", service: WireServer, signature: "5e8c28bac8d082349e86b50aed1cd114444872f33a9da85d352779e5f75f7647",
			req: rawReq{method: "POST", target: "/machine?comp=health", body: "<Health/>", headers: []msp.Field{
				{Name: "Host", Value: "168.63.129.16"}, {Name: "Content-Type", Value: "text/xml; charset=utf-8"},
				{Name: "Content-Length", Value: "9"}, {Name: "x-ms-version", Value: "2012-11-30"}, claimsRoot, date}},
			mutations: [][2]string{{"POST", "PUST"}, {"/machine", "/machinE"}, {"comp=health", "comp=hea1th"},
				{"charset=utf-8", "charset=utf-9"}, {"<Health/>", "<Health/?"}, {"<Health/>", "<health/>"}}}),
		with(vector{name: "C key attestation", service: WireServer, signature: "71a091e6c9e21a0e3972a3b5a481c4d7a578f4d4f28c810636f7e43387bfb8e0",
			req: rawReq{method: "POST", target: "/secure-channel/key/" + vecGUID + "/key-attestation", headers: []msp.Field{
				{Name: "content-length", Value: "0"}, {Name: "host", Value: "168.63.129.16"},
				{Name: "metadata", Value: "True "}, claimsRoot, date}},
			mutations: [][2]string{{"POST", "POSU"}, {"key-attestation", "key-attestatioN"},
				{"True ", "Trug "}, {"Apr", "Apq"}}}),
		with(vector{name: "D proxied non-root IMDS", service: IMDS, signature: "b53e2a207592e9e9a3b19fa45076a2b68edd6a4f4ad99f9733115d2a609e6e91",
			req: rawReq{method: "GET", target: "/metadata/instance?api-version=2021-02-01&Format=json", headers: []msp.Field{
				{Name: "Host", Value: "169.254.169.254"}, {Name: "Metadata", Value: "true"},
				{Name: "x-ms-azure-host-claims", Value: `{ "isRoot": "false"}`}, date}},
			mutations: [][2]string{{"GET", "GEt"}, {"/instance", "/instancf"}, {"2021-02-01", "2021-02-02"},
				{"Format=json", "Format=jsoN"}, {"Metadata: true", "Metadata: trUe"}, {`"false"`, `"fals3"`}}}),
		with(vector{name: "E own goalstate", service: WireServer, signature: "8a4b79cb72d928837789e4693ad6376ec9c6bff071f59df7745888cbfb725e7d",
			req: rawReq{method: "GET", target: "/machine/?comp=goalstate&incarnation=16", headers: []msp.Field{
				{Name: "content-length", Value: "0"}, {Name: "host", Value: "168.63.129.16"}, claimsRoot, date,
				{Name: "x-ms-version", Value: "2012-11-30"}}},
			mutations: [][2]string{{"GET", "PET"}, {"/machine/", "/machine-"}, {"incarnation=16", "incarnation=17"},
				{"&incarnation", "?incarnation"}, {"host: 168", "host: 169"},
				{"2012-11-30", "2013-11-30"}}}),
	}
}

func oneByteMutation(t *testing.T, raw []byte, from, to string) []byte {
	t.Helper()
	if len(from) != len(to) {
		t.Fatalf("mutation %q→%q changes the length", from, to)
	}
	i := bytes.Index(raw, []byte(from))
	if i < 0 {
		t.Fatalf("mutation source %q not in request", from)
	}
	out := append([]byte{}, raw...)
	copy(out[i:], to)
	diff := 0
	for j := range raw {
		if raw[j] != out[j] {
			diff++
		}
	}
	if diff != 1 {
		t.Fatalf("mutation %q→%q changes %d bytes, want 1", from, to, diff)
	}
	return out
}

// The host accepts the spec's independently computed signatures, sent as
// exact bytes, and rejects every one-byte change of method, path, query, a
// header value or the body: it recomputes the signature over what it
// received instead of trusting anything the sender computed.
func TestSpecVectorsAcceptedAndMutationsRejected(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll(), PresetKey: vecKeyJSON(), IMDSRateLimit: -1})
	addr := map[Service]string{WireServer: s.Addrs().WireServer, IMDS: s.Addrs().IMDS}
	for _, v := range specVectors() {
		t.Run(v.name, func(t *testing.T) {
			raw := v.req.bytes()
			code, body := send(t, addr[v.service], raw)
			if code != http.StatusOK {
				t.Fatalf("vector rejected: HTTP %d %s", code, body)
			}
			if e := lastEntry(t, s); e.Verdict != VerdictValid || e.KeyGUID != vecGUID || e.Target != v.req.target {
				t.Fatalf("journal entry = %+v, want valid under %s", e, vecGUID)
			}
			for _, m := range v.mutations {
				code, body := send(t, addr[v.service], oneByteMutation(t, raw, m[0], m[1]))
				if code != http.StatusUnauthorized {
					t.Errorf("mutation %q→%q: HTTP %d %s, want 401", m[0], m[1], code, body)
				}
				if e := lastEntry(t, s); e.Verdict != VerdictInvalid || e.Status != http.StatusUnauthorized {
					t.Errorf("mutation %q→%q journaled as %s/%d", m[0], m[1], e.Verdict, e.Status)
				}
			}
		})
	}
	if g, ok := s.LatchedKeyGUID(); !ok || g != vecGUID {
		t.Fatalf("latched key = %q %v after re-attesting it", g, ok)
	}
}
