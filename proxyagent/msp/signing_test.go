package msp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The canonical key of the upstream tests (protocol.md §1.4).
const (
	testGUID = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf"
	testKey  = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"
	testDate = "Wed, 23 Apr 2025 12:00:00 GMT"
)

func mustKey(t testing.TB) *Key {
	t.Helper()
	k, err := NewKey(testGUID, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// §8 item 1: the HMAC primitive.
func TestHMACPrimitive(t *testing.T) {
	k := mustKey(t)
	const want = "a15b46f621193876a6d3121b836dc2af4180e2786642e55235ef916fc5b082a3"
	if got := k.Sign([]byte("Hello world")); got != want {
		t.Fatalf("Sign(Hello world) = %s, want %s", got, want)
	}
	if !k.Verify([]byte("Hello world"), want) {
		t.Fatal("Verify rejected the upstream vector")
	}
	if k.Verify([]byte("Hello world!"), want) {
		t.Fatal("Verify accepted a signature over another message")
	}
	// Lower-case hex of the same key signs identically.
	lk, err := NewKey(testGUID, strings.ToLower(testKey))
	if err != nil || lk.Sign([]byte("Hello world")) != want {
		t.Fatal("lower-case hex key does not sign like the upper-case one")
	}
	if _, err := NewKey(testGUID, "YA404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"); err == nil {
		t.Fatal("invalid hex key accepted")
	}
}

func TestKeyNeverPrintsSecret(t *testing.T) {
	k := mustKey(t)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v", k, *k, k), fmt.Sprintf("%s", *k)} {
		if strings.Contains(strings.ToLower(s), "4a404e") || strings.Contains(s, "74 64 78") {
			t.Fatalf("key formatting leaks the secret: %q", s)
		}
		if !strings.Contains(s, testGUID) {
			t.Fatalf("key formatting lost the GUID: %q", s)
		}
	}
	if _, err := NewKey("g", "zz"+testKey); err == nil || strings.Contains(err.Error(), testKey) {
		t.Fatalf("error %v leaks key text or is nil", err)
	}
}

// §8 item 2 and the derived vectors of §2.4.
func TestCanonicalQuery(t *testing.T) {
	tests := []struct{ in, want string }{
		{"comp=config&keyOnly&comp=again&type=hostingEnvironmentConfig&incarnation=1&resource=https%3a%2f%2fstorage.azure.com%2f",
			"comp=again&comp=config&incarnation=1&keyonly&resource=https%3a%2f%2fstorage.azure.com%2f&type=hostingEnvironmentConfig"},
		{"a=b&ab", "ab"},
		{"b=1&a=2&A=1&c", "a=1&a=2&b=1&c"},
		{"x=&x&y=%2F&Z=Q", "x&y=%2F&z=Q"},
		{"", ""},
		{"&&=x", ""},
		{"api-version=2021-02-01&Format=json", "api-version=2021-02-01&format=json"},
	}
	for _, tt := range tests {
		if got := CanonicalQuery(tt.in); got != tt.want {
			t.Errorf("CanonicalQuery(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSplitTargetKeepsRawPath(t *testing.T) {
	const p = "/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fzpeng%2Debpf%2Dvm2"
	tests := []struct{ target, path, query string }{
		{p + "?comp=config&keyOnly", p, "comp=config&keyOnly"},
		{"/machine?comp=goalstate", "/machine", "comp=goalstate"},
		{"/provision?", "/provision", ""},
		{"http://168.63.129.16/machine?comp=goalstate", "/machine", "comp=goalstate"},
		{"http://168.63.129.16", "/", ""},
		{"http://168.63.129.16?a=b", "/", "a=b"},
		{"/a?b#frag", "/a", "b"},
	}
	for _, tt := range tests {
		path, query := SplitTarget(tt.target)
		if path != tt.path || query != tt.query {
			t.Errorf("SplitTarget(%q) = %q, %q; want %q, %q", tt.target, path, query, tt.path, tt.query)
		}
	}
}

func TestCanonicalHeaders(t *testing.T) {
	got := CanonicalHeaders([]Field{
		{"X-B", " two "}, {"x-a", "1"}, {"X-A", "last\t"}, {HeaderAuthorization, "Azure-HMAC-SHA256 g s"},
		{"Empty", ""}, {"inner", "a  b"},
	})
	const want = "empty:\ninner:a  b\nx-a:last\nx-b:two\n"
	if got != want {
		t.Fatalf("CanonicalHeaders = %q, want %q", got, want)
	}
	if CanonicalHeaders(nil) != "" {
		t.Fatal("no headers must give an empty block")
	}
}

// signCase is one worked example of §2.8.
type signCase struct {
	name    string
	method  string
	target  string
	headers []Field
	body    string
	sts     string // expected string-to-sign, "" when the spec does not print it
	sig     string
}

func specCases() []signCase {
	claimsRoot := Field{HeaderClaims, ClaimsValue(true)}
	date := Field{HeaderDate, testDate}
	return []signCase{
		{
			name:    "A proxied root GET goalstate",
			method:  "GET",
			target:  "/machine?comp=goalstate",
			headers: []Field{{"Host", "168.63.129.16"}, {"x-ms-version", "2012-11-30"}, claimsRoot, date},
			sts:     "GET\n\nhost:168.63.129.16\nx-ms-azure-host-claims:{ \"isRoot\": \"true\"}\nx-ms-azure-host-date:Wed, 23 Apr 2025 12:00:00 GMT\nx-ms-version:2012-11-30\n/machine\ncomp=goalstate",
			sig:     "7c28efe8da50f19c9c38ab150b0cf9c71d09673f2bd6e061fd426044a5ca212c",
		},
		{
			name:   "B proxied POST health",
			method: "POST",
			target: "/machine?comp=health",
			headers: []Field{{"Host", "168.63.129.16"}, {"Content-Type", "text/xml; charset=utf-8"},
				{"Content-Length", "9"}, {"x-ms-version", "2012-11-30"}, claimsRoot, date},
			body: "<Health/>",
			sts:  "POST\n<Health/>\ncontent-length:9\ncontent-type:text/xml; charset=utf-8\nhost:168.63.129.16\nx-ms-azure-host-claims:{ \"isRoot\": \"true\"}\nx-ms-azure-host-date:Wed, 23 Apr 2025 12:00:00 GMT\nx-ms-version:2012-11-30\n/machine\ncomp=health",
			sig:  "5e8c28bac8d082349e86b50aed1cd114444872f33a9da85d352779e5f75f7647",
		},
		{
			name:    "C own key attestation",
			method:  "POST",
			target:  "/secure-channel/key/" + testGUID + "/key-attestation",
			headers: []Field{{"content-length", "0"}, {"host", "168.63.129.16"}, {"Metadata", "True "}, claimsRoot, date},
			sts:     "POST\n\ncontent-length:0\nhost:168.63.129.16\nmetadata:True\nx-ms-azure-host-claims:{ \"isRoot\": \"true\"}\nx-ms-azure-host-date:Wed, 23 Apr 2025 12:00:00 GMT\n/secure-channel/key/9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf/key-attestation\n",
			sig:     "71a091e6c9e21a0e3972a3b5a481c4d7a578f4d4f28c810636f7e43387bfb8e0",
		},
		{
			name:    "D proxied non-root IMDS",
			method:  "GET",
			target:  "/metadata/instance?api-version=2021-02-01&Format=json",
			headers: []Field{{"Host", "169.254.169.254"}, {"Metadata", "true"}, {HeaderClaims, ClaimsValue(false)}, date},
			sts:     "GET\n\nhost:169.254.169.254\nmetadata:true\nx-ms-azure-host-claims:{ \"isRoot\": \"false\"}\nx-ms-azure-host-date:Wed, 23 Apr 2025 12:00:00 GMT\n/metadata/instance\napi-version=2021-02-01&format=json",
			sig:     "b53e2a207592e9e9a3b19fa45076a2b68edd6a4f4ad99f9733115d2a609e6e91",
		},
		{
			name:    "E own goalstate with incarnation",
			method:  "GET",
			target:  "/machine/?comp=goalstate&incarnation=16",
			headers: []Field{{"content-length", "0"}, {"host", "168.63.129.16"}, claimsRoot, date, {"x-ms-version", "2012-11-30"}},
			sig:     "8a4b79cb72d928837789e4693ad6376ec9c6bff071f59df7745888cbfb725e7d",
		},
	}
}

// §2.8 A–E and §8 item 3.
func TestSpecVectors(t *testing.T) {
	k := mustKey(t)
	for _, c := range specCases() {
		t.Run(c.name, func(t *testing.T) {
			sts := StringToSign(c.method, c.target, c.headers, []byte(c.body))
			if c.sts != "" && string(sts) != c.sts {
				t.Fatalf("string-to-sign\n got %q\nwant %q", sts, c.sts)
			}
			if got := k.Sign(sts); got != c.sig {
				t.Fatalf("signature %s, want %s", got, c.sig)
			}
			auth := k.Authorization(sts)
			if auth != "Azure-HMAC-SHA256 "+testGUID+" "+c.sig {
				t.Fatalf("authorization header %q", auth)
			}
			g, s, ok := ParseAuthorization(auth)
			if !ok || g != testGUID || s != c.sig {
				t.Fatalf("ParseAuthorization(%q) = %q %q %v", auth, g, s, ok)
			}
			// A client-supplied authorization header never changes the signature.
			withAuth := append(append([]Field{}, c.headers...), Field{HeaderAuthorization, "forged"})
			if got := k.Sign(StringToSign(c.method, c.target, withAuth, []byte(c.body))); got != c.sig {
				t.Fatal("x-ms-azure-host-authorization took part in the signature")
			}
		})
	}
}

// Case A through an absolute-form target signs like the origin form.
func TestAbsoluteFormSignsLikeOriginForm(t *testing.T) {
	k := mustKey(t)
	c := specCases()[0]
	sts := StringToSign(c.method, "http://168.63.129.16/machine?comp=goalstate", c.headers, nil)
	if k.Sign(sts) != c.sig {
		t.Fatal("absolute-form target changed the signature")
	}
}

// §8 item 4.
func TestExempt(t *testing.T) {
	tests := []struct {
		method, target string
		want           bool
	}{
		{"PUT", "/vmAgentLog", true},
		{"PUT", "/VMAGENTLOG", true},
		{"POST", "/machine/?comp=telemetrydata", true},
		{"POST", "/machine/?comp=TelemetryData", true},
		{"GET", "/vmAgentLog", false},
		{"GET", "/machine/?comp=telemetrydata", false},
		{"POST", "/machine?comp=telemetrydata", false},
		{"POST", "/machine/?comp=telemetrydata&x=1", false},
		{"PUT", "/vmAgentLog/", false},
		{"POST", "/vmAgentLog", false},
	}
	for _, tt := range tests {
		if got := Exempt(tt.method, tt.target); got != tt.want {
			t.Errorf("Exempt(%s %s) = %v, want %v", tt.method, tt.target, got, tt.want)
		}
	}
}

func TestParseAuthorizationRejectsMalformed(t *testing.T) {
	for _, v := range []string{"", "Azure-HMAC-SHA256", "Azure-HMAC-SHA256 g", "Azure-HMAC-SHA256  g s",
		"Bearer g s", "Azure-HMAC-SHA256 g s extra", "azure-hmac-sha256 g s"} {
		if _, _, ok := ParseAuthorization(v); ok {
			t.Errorf("ParseAuthorization(%q) accepted", v)
		}
	}
}

func TestValidHeaderValue(t *testing.T) {
	for v, want := range map[string]bool{"abc def\t~": true, "": true, "caf\xc3\xa9": false, "a\x00": false,
		"a\r\nb": false, "\x7f": false} {
		if got := ValidHeaderValue(v); got != want {
			t.Errorf("ValidHeaderValue(%q) = %v", v, got)
		}
	}
}

func TestDateRoundTrip(t *testing.T) {
	tm := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	if FormatDate(tm) != testDate {
		t.Fatalf("FormatDate = %q", FormatDate(tm))
	}
	back, err := ParseDate(testDate)
	if err != nil || !back.Equal(tm) {
		t.Fatalf("ParseDate = %v, %v", back, err)
	}
	if _, err := ParseDate("2025-04-23T12:00:00Z"); err == nil {
		t.Fatal("ParseDate accepted a non-RFC1123 date")
	}
	// The kept text of the last second never answers for another one,
	// nor for another zone's same instant wrongly.
	for _, c := range []struct {
		t    time.Time
		want string
	}{
		{tm.Add(999 * time.Millisecond), testDate},
		{tm.Add(time.Second), "Wed, 23 Apr 2025 12:00:01 GMT"},
		{tm.In(time.FixedZone("X", 3600)).Add(time.Second), "Wed, 23 Apr 2025 12:00:01 GMT"},
		{tm.Add(-time.Millisecond), "Wed, 23 Apr 2025 11:59:59 GMT"},
		{tm, testDate},
	} {
		if got := FormatDate(c.t); got != c.want {
			t.Errorf("FormatDate(%v) = %q, want %q", c.t, got, c.want)
		}
	}
}

// FuzzCanonical checks that canonicalisation never panics, is
// deterministic, and never lets the authorization header take part.
func FuzzCanonical(f *testing.F) {
	for _, c := range specCases() {
		f.Add(c.method, c.target, c.headers[0].Name, c.headers[0].Value, c.body)
	}
	f.Add("GET", "http://x", "a", "b", "")
	f.Add("", "?&&==&a=b=c", "", "", "\x00")
	f.Fuzz(func(t *testing.T, method, target, name, value, body string) {
		fields := []Field{{name, value}, {HeaderDate, testDate}}
		a := StringToSign(method, target, fields, []byte(body))
		b := StringToSign(method, target, fields, []byte(body))
		if !bytes.Equal(a, b) {
			t.Fatal("string-to-sign is not deterministic")
		}
		if q := CanonicalQuery(target); q != CanonicalQuery(target) {
			t.Fatal("canonical query is not deterministic")
		}
		if strings.EqualFold(name, HeaderAuthorization) && strings.Contains(CanonicalHeaders(fields), HeaderAuthorization+":") {
			t.Fatal("authorization header leaked into canonical headers")
		}
		path, _ := SplitTarget(target)
		if !bytes.Contains(a, []byte(path+"\n")) {
			t.Fatalf("path %q missing from string-to-sign", path)
		}
	})
}
