package authz

import (
	"testing"
)

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
