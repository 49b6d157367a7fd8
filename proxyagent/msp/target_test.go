package msp

import (
	"net/http"
	"net/url"
	"testing"
)

func TestCheckTarget(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   int // 0: accepted
	}{
		{"/metadata/instance?api-version=2021-02-01&format=json", 0},
		{"/metadata/identity/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F", 0}, // encoded query is data
		{"/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fzpeng%2Debpf%2Dvm2?comp=config", 0},
		{"http://169.254.169.254/metadata/instance", 0},
		{"/machine/?comp=goalstate", 0},
		{"/%6Detadata/instance", 0}, // an encoded letter is unambiguous
		{"/metadata/instance/", 0},
		{"HTTP://169.254.169.254?api-version=1", 0},
		{"https://169.254.169.254/metadata/instance", 0},
		// Neither origin-form nor http absolute-form: a host reads a path
		// the matcher never saw (http:/p is "/p" to Go's server).
		{"*", http.StatusBadRequest},
		{"http:/metadata/identity/oauth2/token", http.StatusBadRequest},
		{"https:/metadata/identity/oauth2/token", http.StatusBadRequest},
		{"http:metadata/identity", http.StatusBadRequest},
		{"foo://host/metadata/identity", http.StatusBadRequest},
		{"foo:/metadata/identity", http.StatusBadRequest},
		{"metadata/identity", http.StatusBadRequest},
		{"http:///metadata/identity", http.StatusBadRequest},
		{"http://a\\b/metadata/identity", http.StatusBadRequest},
		// Upstream's traversal guard.
		{"/metadata//identity", http.StatusForbidden},
		{"/metadata/x/../identity", http.StatusForbidden},
		{"/metadata/x/%2e%2E/identity", http.StatusForbidden},
		{"/metadata/x/.%2e/identity", http.StatusForbidden},
		{"http://169.254.169.254//metadata", http.StatusForbidden},
		// Ambiguous.
		{"/metadata/instance#/../identity/oauth2/token", http.StatusBadRequest},
		{"/metadata/instance?x=1#frag", http.StatusBadRequest},
		{"/metadata/instance/%252E%252E/identity/oauth2/token", http.StatusBadRequest},
		{"/metadata/identity/oauth2/%252Ftoken", http.StatusBadRequest},
		{"/metadata/%2e/identity", http.StatusBadRequest},
		{"/metadata/%2E/identity", http.StatusBadRequest},
		{"/metadata/./identity", http.StatusBadRequest},
		{"/metadata/identity/.", http.StatusBadRequest},
		{"/metadata%2Fidentity", http.StatusBadRequest},
		{"/metadata%2fidentity", http.StatusBadRequest},
		{"/metadata%5Cidentity", http.StatusBadRequest},
		{"/metadata\\identity", http.StatusBadRequest},
		{"/metadata/identity%3Fapi-version=1", http.StatusBadRequest},
		{"/metadata/identity;x=y/oauth2/token", http.StatusBadRequest},
		{"/metadata/identity%00", http.StatusBadRequest},
		{"/metadata/identity%7F", http.StatusBadRequest},
		{"/metadata/%C4%B0dentity", http.StatusBadRequest},
		{"/metadata/\xc4\xb0dentity", http.StatusBadRequest},
		{"/metadata/identity%2", http.StatusBadRequest},
		{"/metadata/identity%zz", http.StatusBadRequest},
		// A repeated query key: the matcher checks the first value, a host
		// may take the last.
		{"/metadata/identity/oauth2/token?resource=x&resource=https://vault.azure.net", http.StatusBadRequest},
		{"/metadata/identity/oauth2/token?Resource=x&resource=y", http.StatusBadRequest},
		{"/metadata/identity/oauth2/token?r%65source=x&resource=y", http.StatusBadRequest},
		{"/m?a+b=1&a%20b=2", http.StatusBadRequest},
		{"/m?a=1&a", http.StatusBadRequest},
		{"/m?k0=0&k1=1&k2=2&k3=3&k4=4&k5=5&k6=6&k7=7&k8=8&k9=9&k10=10&k5=x", http.StatusBadRequest},
		{"/m?k0=0&k1=1&k2=2&k3=3&k4=4&k5=5&k6=6&k7=7&k8=8&k9=9&k10=10", 0},
		{"/m?a=1&=2&=3&b", 0},
		{"/metadata/identity/oauth2/token?resource=x&api-version=2018-02-01&client_id=1", 0},
	} {
		err := CheckTarget(tc.target)
		got := 0
		if err != nil {
			got = err.Status
		}
		if got != tc.want {
			t.Errorf("CheckTarget(%q) = %v, want status %d", tc.target, err, tc.want)
		}
	}
}

func FuzzCheckTarget(f *testing.F) {
	for _, s := range []string{"/a", "/a/%2e/b", "/a#b", "/%252E", "http://h/a?b", "/a;b", "/%C4%B0", "http:/a", "*", "HTTP://h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if CheckTarget(target) != nil {
			return
		}
		// An accepted target decodes to the same segments a host would
		// see: no dot segment, no delimiter or control byte appears by
		// decoding, and decoding twice changes nothing more.
		path, _ := SplitTarget(target)
		once := PercentDecode(path)
		if PercentDecode(once) != once {
			t.Fatalf("%q: a second decode changes %q", target, once)
		}
		for i := 0; i < len(once); i++ {
			if c := once[i]; c < 0x20 || c >= 0x7f || c == '\\' || c == '?' || c == '#' || c == ';' {
				t.Fatalf("%q decodes to byte %#x", target, c)
			}
		}
		for _, seg := range splitSegments(once) {
			if seg == "." || seg == ".." {
				t.Fatalf("%q decodes to a dot segment", target)
			}
		}
		if len(once) > 0 && countSlashes(once) != countSlashes(path) {
			t.Fatalf("%q: decoding adds a segment", target)
		}
		// A host built on Go's server reads the same path.
		if u, err := url.ParseRequestURI(target); err == nil {
			host := u.Path
			if host == "" {
				host = "/"
			}
			if host != once {
				t.Fatalf("%q: host path %q, matcher path %q", target, host, once)
			}
		}
	})
}

func splitSegments(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

func countSlashes(p string) int {
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			n++
		}
	}
	return n
}

func TestLowerMatchesRust(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/TEST/Path", "/test/path"},
		{"ÀÉÎ", "àéî"},
		{"İ", "i\u0307"},     // full lowercase mapping, two code points
		{"ΟΔΟΣ", "οδος"},     // final sigma
		{"ΟΔΟΣ/X", "οδος/x"}, // word-final before a non-letter
		{"ΣΑ", "σα"},         // not final
		{"Σ", "σ"},           // no cased letter before
		{"K", "k"},           // Kelvin sign lower-cases to ASCII k
		{"ı", "ı"},           // dotless i has no lower-case change
		{"\uFFFD", "\uFFFD"},
	} {
		if got := Lower(tc.in); got != tc.want {
			t.Errorf("Lower(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPercentDecode(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a%2Fb", "/a/b"},
		{"/a%2fb", "/a/b"},
		{"/a+b", "/a+b"},                    // '+' is not a space in a path
		{"/a%2", "/a%2"},                    // incomplete escape kept
		{"/a%zz", "/a%zz"},                  // non-hex escape kept
		{"%25", "%"},                        // decoded once only
		{"%252F", "%2F"},                    // double encoding survives one decode
		{"%C3%A9", "é"},                     // UTF-8
		{"%FF", "\uFFFD"},                   // invalid byte
		{"%C0%80", "\uFFFD\uFFFD"},          // overlong: each byte is its own subpart
		{"%E2%82", "\uFFFD"},                // truncated 3-byte sequence: one subpart
		{"%F0%9F%98x", "\uFFFDx"},           // truncated 4-byte sequence then ASCII
		{"%ED%A0%80", "\uFFFD\uFFFD\uFFFD"}, // surrogate: ED then two stray bytes
	} {
		if got := PercentDecode(tc.in); got != tc.want {
			t.Errorf("PercentDecode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
