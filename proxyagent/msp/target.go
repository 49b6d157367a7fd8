package msp

import (
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The request-target canonicaliser. Every part of the agent reads a
// request-target through this file: the proxy's checks (CheckTarget), the
// authorizer's matcher (SplitTarget, PercentDecode, Lower) and the signer
// (StringToSign splits with SplitTarget), so they cannot disagree on what
// a target means.
//
// CheckTarget refuses, before anything is authorized or forwarded:
//
//	400  a target that is neither origin-form ("/…") nor absolute-form with
//	     an http or https scheme and an authority ("http://host/…"): a host
//	     parses "http:/p", "foo:/p" or "*" by its own rules (Go's server
//	     reads the path "/p"), while the matcher would see no path it knows
//	     (the proxy lets "OPTIONS *" through without calling CheckTarget);
//	403  the raw path contains "//", or its single percent-decode contains
//	     ".." (upstream, protocol.md §4.5 step 3);
//	400  a fragment ('#' anywhere in the target): the agent and a host could
//	     disagree on where the path ends, and clients never send one;
//	400  "%25" in the path (double encoding: a host that decodes twice reads
//	     what the rules never saw, e.g. %252E%252E);
//	400  a malformed escape in the path ('%' not followed by two hex digits);
//	400  a delimiter that a host may read differently: encoded %2F ('/'),
//	     %5C ('\'), %3F ('?'), %23 ('#'), %3B (';'), and a raw '\' (some
//	     servers read it as '/') or ';' (some strip ";params" from a segment);
//	400  a space, control or non-ASCII byte in the path, raw or encoded (the
//	     matcher lower-cases Unicode as Rust does and replaces invalid UTF-8;
//	     a host may fold case differently or see the bytes);
//	400  a dot segment in the path, raw ("/./") or encoded ("/%2e/"): a host
//	     that removes dot segments would serve a path the rules did not judge.
//
//	400  a query key given twice, compared as the matcher compares keys
//	     (percent-decoded, lower-cased, '+' read as a space too): the
//	     matcher checks a key's first value (upstream quirk 7) while a host
//	     may take the last.
//
// Upstream answers 403 for the first rule and forwards everything else; the
// 400s are this project's (README, "Where we deliberately differ").
// Otherwise the query is matched and signed as received, and its values are
// data.

// TargetError is a request-target the proxy refuses, with the status to
// answer and the reason to audit.
type TargetError struct {
	Status int // http.StatusForbidden or http.StatusBadRequest
	Reason string
}

func (e *TargetError) Error() string { return e.Reason }

// CheckTarget applies the rules above to a raw request-target (origin or
// absolute form); nil means the target is unambiguous.
func CheckTarget(target string) *TargetError {
	if strings.IndexByte(target, '#') >= 0 {
		return ambiguous("fragment in request target")
	}
	if !strings.HasPrefix(target, "/") {
		if err := checkAbsoluteForm(target); err != nil {
			return err
		}
	}
	path, query := SplitTarget(target)
	if strings.Contains(path, "//") {
		return &TargetError{http.StatusForbidden, "path traversal blocked"}
	}
	decoded := path
	if strings.IndexByte(path, '%') >= 0 {
		decoded = PercentDecode(path)
	}
	if strings.Contains(decoded, "..") {
		return &TargetError{http.StatusForbidden, "path traversal blocked"}
	}
	if strings.IndexByte(path, '\\') >= 0 {
		return ambiguous("backslash in path")
	}
	if strings.IndexByte(path, ';') >= 0 {
		return ambiguous("path parameter")
	}
	for i := 0; i < len(path); i++ {
		if c := path[i]; c <= ' ' || c >= 0x7f {
			return ambiguous("space, control or non-ASCII byte in path")
		}
		if path[i] != '%' {
			continue
		}
		if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
			return ambiguous("malformed percent-encoding in path")
		}
		switch b := unhex(path[i+1])<<4 | unhex(path[i+2]); {
		case b == '%':
			return ambiguous("double percent-encoding in path")
		case b == '/' || b == '\\' || b == '?' || b == '#' || b == ';':
			return ambiguous("encoded delimiter in path")
		case b <= ' ' || b >= 0x7f:
			return ambiguous("encoded space, control or non-ASCII byte in path")
		}
		i += 2
	}
	for seg := range strings.SplitSeq(path, "/") {
		if seg == "." || (strings.IndexByte(seg, '%') >= 0 && PercentDecode(seg) == ".") {
			return ambiguous("dot segment in path")
		}
	}
	if repeatedQueryKey(query) {
		return ambiguous("repeated query parameter")
	}
	return nil
}

// repeatedQueryKey reports whether two pairs of query share a key as
// dupKey compares them; pairs with an empty raw key are skipped, as the
// matcher skips them.
func repeatedQueryKey(query string) bool {
	if strings.IndexByte(query, '&') < 0 {
		return false
	}
	var small [8]string
	keys := small[:0]
	var seen map[string]struct{}
	for piece := range strings.SplitSeq(query, "&") {
		k, _, _ := strings.Cut(piece, "=")
		if k == "" {
			continue
		}
		k = dupKey(k)
		if seen != nil {
			if _, dup := seen[k]; dup {
				return true
			}
			seen[k] = struct{}{}
			continue
		}
		for _, prev := range keys {
			if prev == k {
				return true
			}
		}
		if len(keys) < len(small) {
			keys = append(keys, k)
			continue
		}
		seen = make(map[string]struct{}, 2*len(small))
		for _, prev := range keys {
			seen[prev] = struct{}{}
		}
		seen[k] = struct{}{}
	}
	return false
}

// dupKey is a raw query key as the authorizer compares it (percent-decoded
// and lower-cased as upstream does) and with '+' read as a space too, as a
// host decoding a form does: any two keys either could take for one.
func dupKey(raw string) string {
	k := Lower(PercentDecode(raw))
	if strings.IndexByte(k, '+') >= 0 {
		k = strings.ReplaceAll(k, "+", " ")
	}
	return k
}

// checkAbsoluteForm accepts "http://authority[/path][?query]" (scheme in
// any case, https too) with a non-empty authority of printable ASCII
// without a backslash, the only shape besides origin-form for which
// SplitTarget and every HTTP server agree on the path.
func checkAbsoluteForm(target string) *TargetError {
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
		return ambiguous("request target is neither origin-form nor http absolute-form")
	}
	authority := rest
	if j := strings.IndexAny(rest, "/?"); j >= 0 {
		authority = rest[:j]
	}
	if authority == "" {
		return ambiguous("absolute-form target without authority")
	}
	for i := 0; i < len(authority); i++ {
		if c := authority[i]; c <= ' ' || c >= 0x7f || c == '\\' {
			return ambiguous("space, control, non-ASCII byte or backslash in authority")
		}
	}
	return nil
}

func ambiguous(reason string) *TargetError {
	return &TargetError{http.StatusBadRequest, "ambiguous request target: " + reason}
}

// SplitTarget splits an HTTP request-target into its raw path and raw query
// without decoding either. An absolute-form target ("http://host/p?q")
// yields its path ("/" when empty); a fragment is dropped.
func SplitTarget(target string) (path, query string) {
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	if i := strings.Index(target, "://"); i >= 0 && !strings.HasPrefix(target, "/") {
		rest := target[i+3:]
		j := strings.IndexAny(rest, "/?")
		if j < 0 {
			return "/", ""
		}
		target = rest[j:]
		if target[0] == '?' {
			target = "/" + target
		}
	}
	path, query, _ = strings.Cut(target, "?")
	return path, query
}

// Lower reproduces Rust's str::to_lowercase, which upstream applies to
// rule paths, query keys and values and to the decoded request path. It
// differs from strings.ToLower in two places: U+0130 (İ) becomes "i̇"
// (two code points) and a capital sigma at the end of a word becomes ς.
func Lower(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(s)
	}
	var b strings.Builder
	b.Grow(len(s))
	for i, r := range s {
		switch r {
		case 'İ':
			b.WriteString("i\u0307")
		case 'Σ':
			if ignorableThenCased(s[:i], true) && !ignorableThenCased(s[i+len("Σ"):], false) {
				b.WriteRune('ς')
			} else {
				b.WriteRune('σ')
			}
		default:
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

// ignorableThenCased skips case-ignorable characters (backwards when
// reverse is set) and reports whether the next character is cased.
func ignorableThenCased(s string, reverse bool) bool {
	for len(s) > 0 {
		var r rune
		var n int
		if reverse {
			r, n = utf8.DecodeLastRuneInString(s)
			s = s[:len(s)-n]
		} else {
			r, n = utf8.DecodeRuneInString(s)
			s = s[n:]
		}
		if caseIgnorable(r) {
			continue
		}
		return cased(r)
	}
	return false
}

func cased(r rune) bool {
	return unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r) ||
		unicode.Is(unicode.Other_Lowercase, r) || unicode.Is(unicode.Other_Uppercase, r)
}

func caseIgnorable(r rune) bool {
	switch r {
	case '\'', '.', ':', '·', '\u0387', '\u055F', '\u05F4', '\u2018', '\u2019', '\u2024', '\u2027',
		'\uFE13', '\uFE52', '\uFE55', '\uFF07', '\uFF0E', '\uFF1A':
		return true
	}
	return unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf, unicode.Lm, unicode.Sk)
}

// PercentDecode reproduces percent_encoding::percent_decode_str followed
// by decode_utf8_lossy: every "%XY" with two hex digits becomes one byte,
// any other '%' is kept, '+' is not touched, and invalid UTF-8 is
// replaced by U+FFFD once per maximal invalid subpart (as Rust does, not
// once per run of bad bytes as strings.ToValidUTF8 does).
func PercentDecode(s string) string {
	if strings.IndexByte(s, '%') < 0 && utf8.ValidString(s) {
		return s
	}
	buf := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			buf = append(buf, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		buf = append(buf, c)
	}
	if utf8.Valid(buf) {
		return string(buf)
	}
	return lossyUTF8(buf)
}

func lossyUTF8(b []byte) string {
	var out strings.Builder
	out.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || n > 1 {
			out.Write(b[i : i+n])
			i += n
			continue
		}
		out.WriteRune(utf8.RuneError)
		i += invalidSubpart(b[i:])
	}
	return out.String()
}

// invalidSubpart returns the length of the maximal prefix of b that is
// the start of a well-formed UTF-8 sequence (at least 1), for input that
// does not begin with a valid sequence.
func invalidSubpart(b []byte) int {
	need, lo, hi := 0, byte(0x80), byte(0xBF)
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	if len(b) < 2 || b[1] < lo || b[1] > hi {
		return 1
	}
	n := 2
	for n <= need && n < len(b) && b[n] >= 0x80 && b[n] <= 0xBF {
		n++
	}
	return n
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
