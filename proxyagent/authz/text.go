package authz

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// lower reproduces Rust's str::to_lowercase, which upstream applies to
// rule paths, query keys and values and to the decoded request path. It
// differs from strings.ToLower in two places: U+0130 (İ) becomes "i̇"
// (two code points) and a capital sigma at the end of a word becomes ς.
func lower(s string) string {
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

// percentDecode reproduces percent_encoding::percent_decode_str followed
// by decode_utf8_lossy: every "%XY" with two hex digits becomes one byte,
// any other '%' is kept, '+' is not touched, and invalid UTF-8 is
// replaced by U+FFFD once per maximal invalid subpart (as Rust does, not
// once per run of bad bytes as strings.ToValidUTF8 does).
func percentDecode(s string) string {
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

// samePath reproduces Rust's Path equality on Unix, which upstream uses
// for the exePath selector: paths are compared component-wise, so
// repeated separators, a trailing separator and interior "." components
// are ignored, while a leading "." of a relative path and ".." are kept.
// No symlink is resolved.
func samePath(a, b string) bool {
	if a == b {
		return true
	}
	ca, cb := pathComponents(a), pathComponents(b)
	if len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if ca[i] != cb[i] {
			return false
		}
	}
	return true
}

func pathComponents(p string) []string {
	var out []string
	rooted := strings.HasPrefix(p, "/")
	if rooted {
		out = append(out, "/")
	}
	for i, part := range strings.Split(p, "/") {
		switch {
		case part == "":
		case part == "." && !(i == 0 && !rooted):
		default:
			out = append(out, part)
		}
	}
	return out
}
