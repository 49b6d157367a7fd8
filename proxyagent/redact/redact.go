// Package redact removes secrets (passwords, storage and SAS keys, tokens,
// private keys, Authorization header values, URL passwords) from free text
// before it is stored in claims, logs, audit records or telemetry
// (shared/spec/protocol.md §6.3).
//
// The detection list is upstream's (proxy_agent_shared/src/secrets_redactor.rs,
// Azure/GuestProxyAgent): a cheap keyword pre-filter, then seventeen regular
// expressions applied in order, each replacing every match with [REDACTED].
// Two things are added beyond upstream: text containing both "://" and "@"
// passes the pre-filter (upstream's keywords let a URL password through
// unless some other keyword happens to be present), and a PEM private-key
// block without its END line (for example a command line cut short) is
// redacted to the end of the text instead of being left in clear.
package redact

import (
	"regexp"
	"strings"
)

// Marker is the text that replaces every secret.
const Marker = "[REDACTED]"

// foldedIndicators are matched ASCII-case-insensitively; each is lower case.
var foldedIndicators = []string{
	"pwd=", "password=", "accountkey=", "primarykey=", "secondarykey=", "sig=",
	"token", "ado", "vsts", "key", "secret", "authorization",
}

// exactIndicators are matched case-sensitively.
var exactIndicators = []string{"AzCa", "PRIVATE KEY", "eyJ"}

// patterns is upstream's CRED_PATTERNS list, in upstream's order, written as
// the bytes the Rust regex engine received (Rust "\\s" in a normal string is
// \s here; Rust raw strings are copied verbatim, including the doubled
// backslashes of the DevOps pattern, which upstream's engine reads as a
// literal backslash).
var patterns = []string{
	// SQL connection string password.
	`pwd=[^;]*`,
	`password=[^;]*`,
	// Azure Storage connection string keys.
	`AccountKey=[^;]*`,
	`PrimaryKey=[^;]*`,
	`SecondaryKey=[^;]*`,
	// SAS signature.
	`sig=[^&]*`,
	// Azure Redis Cache secret (identifiable).
	`(?-i)([0-9a-zA-Z]{33}AzCa[A-P][0-9a-zA-Z]{5}=)|([0-9a-zA-Z]{44}AzCa[0-9a-zA-Z]{5}[AQgw])`,
	// X.509 certificate private key.
	`BEGIN [A-Z ]+ PRIVATE KEY-----[\s\S]+?-----END [A-Z ]+ PRIVATE KEY`,
	// Azure DevOps personal access token.
	`(?i)(pat[\\s\\W]|token|ado|vsts|azuredevops|visualstudio\\.com|dev\\.azure\\.com).([a-z2-7]{52}|[A-Z2-7]{52})`,
	// Azure Storage account access key.
	`(?i)(key|access|sas|shared|secret|password|pwd|pswd|credential)[\s\S]{0,200}[^a-z0-9/+]([a-z0-9/+]{43}=)`,
	`(?i)(azurecr[\s\S]{0,50}|pwd|pswd|password)[:\s=]+([a-z0-9/{\}{\+}=\-!#$%&()*,./:;?@[\]^_` + "`" + `{|}~+<=>\s]+){0,50}`,
	`(?i)(key|access|sas|shared|secret|password|pswd|pwd|credential)[\s\S]{0,200}[^a-z0-9/+]([a-z0-9/+]{86}=)`,
	// Microsoft Entra client secret / identifiable / access token.
	`(?i)(\Waws|amazon)?.{0,5}(secret|access.?(key|token)).{0,10}[^/,\w\+\$\-][a-z0-9/\+]{40}\W`,
	`(?i)((app(lication)?|client|api)[_ \-]?(se?cre?t|key(url)?)|(refresh|twilio(account|auth))[_ \-]?(Sid|Token))([\s=:>]{1,10}|[\s"':=|>,\]\\]{3,15}|["'=:\(]{2})(ConvertTo-SecureString[^"']+["'])?("data:text/plain,.+"|[a-z0-9/+=_.\?\-]{8,200}[^\(\[\{;,\r\n]|[^\s"';<,\)]{5,200})`,
	`(?-i)eyJ(?i)[a-z0-9\-_%]+\.(?-i)eyJ`,
	// General password in a URL's userinfo.
	`(?i)((amqp|ssh|(ht|f)tps?)://[^%:\s"'/][^:\s"'/\$]+[^:\s"'/\$%]:([^%\s"'/][^@\s"'/]{0,100}[^%\s"'/])@[\$a-z0-9:\._%\?=/]+|[a-z0-9]{3,5}://[^%:\s"'/][^:\s"'/\$]+[^:\s"'/\$%]:([^%\s"'/][^@\s"'/]{0,100}[^%\s"'/])@[\$a-z0-9:\._%\?=/\-]+)`,
	// HTTP Authorization header.
	`(?i)authorization[,\[:= "'\s]+(value[,\[:= "'\s]+)?(basic|digest|hoba|mutual|negotiate|oauth( oauth_token=)?|(http[^ ]+/saml\d\-)?bearer [^e"'&]|scram\-sha\-1|scram\-sha\-256|vapid|aws4\-hmac\-sha256).*`,
	// Not upstream: a private-key block whose END line is missing.
	`BEGIN [A-Z ]+ PRIVATE KEY-----[\s\S]*`,
}

// gates holds, per pattern, a cheap necessary condition for a match in
// pure-ASCII text (nil: none). A gate only skips a pattern that cannot
// match, so the result is the same as running every pattern; it exists
// because Go's regexp runs the long bounded repetitions of some patterns
// slowly. Text with non-ASCII bytes always runs every pattern, since
// case-insensitive matching folds some non-ASCII letters (ſ, K) to ASCII.
var gates = []func(s string) bool{
	6: func(s string) bool { return strings.Contains(s, "AzCa") },
	8: func(s string) bool { return longestRun(s, isBase32Fold, 0) >= 52 },
	9: func(s string) bool { return longestRun(s, isBase64Fold, '=') >= 43 },
	10: func(s string) bool {
		return containsFold(s, "pwd") || containsFold(s, "pswd") || containsFold(s, "password") ||
			containsFold(s, "azurecr")
	},
	11: func(s string) bool { return longestRun(s, isBase64Fold, '=') >= 86 },
	12: func(s string) bool {
		return (containsFold(s, "secret") || containsFold(s, "access")) && longestRun(s, isBase64Fold, 0) >= 40
	},
	13: func(s string) bool {
		// (app|application|client|api)[_ -]?(se?cre?t|key…) or
		// (refresh|twilio…)[_ -]?(sid|token).
		return (containsFold(s, "app") || containsFold(s, "client") || containsFold(s, "api")) &&
			(containsFold(s, "cr") || containsFold(s, "key")) ||
			(containsFold(s, "refresh") || containsFold(s, "twilio")) &&
				(containsFold(s, "sid") || containsFold(s, "token"))
	},
	15: func(s string) bool { return strings.Contains(s, "://") && strings.Contains(s, "@") },
	16: func(s string) bool { return containsFold(s, "authorization") },
	17: func(s string) bool { return strings.Contains(s, "PRIVATE KEY") },
}

// compiled holds patterns compiled once at package initialisation, with
// \s read as upstream's engine reads it (unicodeSpace); a pattern that
// does not compile is a programming error and panics at start.
var compiled = func() []*regexp.Regexp {
	out := make([]*regexp.Regexp, len(patterns))
	for i, p := range patterns {
		out[i] = regexp.MustCompile(unicodeSpace(p))
	}
	return out
}()

// spaceClass is what Rust's \s matches and Go's does not as well: the
// vertical tab, NEL and the Unicode separators (no-break space, em space).
const spaceClass = `\s\v\x{85}\p{Z}`

// unicodeSpace rewrites the \s escapes of the Go regular expression p to
// match every space Rust's Unicode \s matches: inside a character class
// (negated ones too) the class gains spaceClass, outside one \s becomes
// [spaceClass]. Other escapes (an escaped backslash "\\" included) are
// kept as they are.
func unicodeSpace(p string) string {
	var b strings.Builder
	inClass := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\' && i+1 < len(p):
			if p[i+1] == 's' {
				if inClass {
					b.WriteString(spaceClass)
				} else {
					b.WriteString("[" + spaceClass + "]")
				}
			} else {
				b.WriteByte(c)
				b.WriteByte(p[i+1])
			}
			i++
			continue
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			// A ']' right after '[' or '[^' is a literal.
			if i+1 < len(p) && p[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
			if i+1 < len(p) && p[i+1] == ']' {
				b.WriteByte(']')
				i++
			}
			continue
		case c == ']' && inClass:
			inClass = false
		}
		b.WriteByte(c)
	}
	return b.String()
}

// MightContainSecret reports whether s contains one of the pre-filter
// keywords. When it is false, String returns s unchanged without running
// any regular expression.
func MightContainSecret(s string) bool {
	for _, ind := range exactIndicators {
		if strings.Contains(s, ind) {
			return true
		}
	}
	for _, ind := range foldedIndicators {
		if containsFold(s, ind) {
			return true
		}
	}
	// Not upstream: a URL with userinfo ("scheme://user:pass@host") has
	// no keyword of its own.
	return strings.Contains(s, "://") && strings.Contains(s, "@")
}

// String returns s with every detected secret replaced by Marker. Text in
// which no pattern matches is returned unchanged (the same string, no
// allocation). Safe for concurrent use.
func String(s string) string {
	return redact(s, true)
}

// redact is String with the per-pattern gates optional (for tests).
func redact(s string, useGates bool) string {
	if s == "" || !MightContainSecret(s) {
		return s
	}
	ascii := useGates && isASCII(s)
	for i, re := range compiled {
		if ascii && i < len(gates) && gates[i] != nil && !gates[i](s) {
			continue
		}
		if re.MatchString(s) {
			s = re.ReplaceAllLiteralString(s, Marker)
		}
	}
	return s
}

// containsFold reports whether s contains lowerSub, comparing ASCII letters
// without regard to case. lowerSub must be lower-case ASCII.
func containsFold(s, lowerSub string) bool {
	n := len(lowerSub)
	if n == 0 {
		return true
	}
	first := lowerSub[0]
	for i := 0; i+n <= len(s); i++ {
		if lowerASCII(s[i]) != first {
			continue
		}
		j := 1
		for j < n && lowerASCII(s[i+j]) == lowerSub[j] {
			j++
		}
		if j == n {
			return true
		}
	}
	return false
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + ('a' - 'A')
	}
	return b
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// isBase32Fold is [a-z2-7] under case folding (ASCII only).
func isBase32Fold(b byte) bool {
	b = lowerASCII(b)
	return 'a' <= b && b <= 'z' || '2' <= b && b <= '7'
}

// isBase64Fold is [a-z0-9/+] under case folding (ASCII only).
func isBase64Fold(b byte) bool {
	b = lowerASCII(b)
	return 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '/' || b == '+'
}

// longestRun returns the length of the longest run of bytes in class; when
// follow is not 0, only runs immediately followed by that byte count.
func longestRun(s string, in func(byte) bool, follow byte) int {
	best, run := 0, 0
	for i := 0; i < len(s); i++ {
		if in(s[i]) {
			run++
			continue
		}
		if (follow == 0 || s[i] == follow) && run > best {
			best = run
		}
		run = 0
	}
	if follow == 0 && run > best {
		best = run
	}
	return best
}
