package telemetry

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCleanMessage(t *testing.T) {
	long := strings.Repeat("a", MaxMessageBytes-1) + "é€" // the cut falls inside "é"
	cases := []struct {
		name, in string
		check    func(string) bool
	}{
		{"short unchanged", "hello", func(s string) bool { return s == "hello" }},
		{"exactly 4096", strings.Repeat("b", MaxMessageBytes), func(s string) bool { return len(s) == MaxMessageBytes }},
		{"cut at a rune boundary", long, func(s string) bool {
			return len(s) == MaxMessageBytes-1 && utf8.ValidString(s)
		}},
		{"secret redacted", "connect pwd=secret123;user=x", func(s string) bool { return s == "connect [REDACTED];user=x" }},
		{"SAS signature", "GET https://a.blob/c?sv=1&sig=AbC%2Fd&se=2", func(s string) bool {
			return !strings.Contains(s, "AbC") && strings.Contains(s, "[REDACTED]&se=2")
		}},
		// A secret straddling the cut is redacted before the cut, so no
		// fragment of it survives.
		{"secret at the cut", strings.Repeat("x", MaxMessageBytes-8) + " password=hunter2hunter2;", func(s string) bool {
			return !strings.Contains(s, "hun") && !strings.Contains(s, "password=h") && len(s) <= MaxMessageBytes
		}},
		{"JWT across the cut", strings.Repeat("y", MaxMessageBytes-10) + " eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", func(s string) bool {
			return !strings.Contains(s, "eyJhbG") && len(s) <= MaxMessageBytes
		}},
	}
	for _, c := range cases {
		if got := CleanMessage(c.in); !c.check(got) {
			t.Errorf("%s: CleanMessage(%.40q…) = %.80q… (len %d)", c.name, c.in, got, len(got))
		}
	}
}
