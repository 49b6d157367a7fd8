package authz

import "testing"

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
		if got := lower(tc.in); got != tc.want {
			t.Errorf("lower(%q) = %q, want %q", tc.in, got, tc.want)
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
		if got := percentDecode(tc.in); got != tc.want {
			t.Errorf("percentDecode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSamePath(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/usr/bin/curl", "/usr/bin/curl", true},
		{"/usr//bin/curl", "/usr/bin/curl", true},
		{"/usr/./bin/curl", "/usr/bin/curl", true},
		{"/usr/bin/curl/", "/usr/bin/curl", true},
		{"/usr/bin/../bin/curl", "/usr/bin/curl", false}, // ".." is not resolved
		{"./curl", "curl", false},                        // leading "." is kept
		{"a/./b", "a/b", true},
		{"/usr/bin/Curl", "/usr/bin/curl", false}, // case-sensitive
		{"usr/bin/curl", "/usr/bin/curl", false},  // relative is not absolute
		{"", "", true},
		{"", "/", false},
	} {
		if got := samePath(tc.a, tc.b); got != tc.want {
			t.Errorf("samePath(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
