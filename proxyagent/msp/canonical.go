package msp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strings"
	"sync"
	"unicode/utf8"
)

// The allocation-free form of the string-to-sign. The signer runs once per
// forwarded request, so it builds the canonical headers and query in place,
// into a buffer the caller reuses, instead of through maps and
// intermediate strings. It gives exactly the bytes of CanonicalHeaders and
// CanonicalQuery: when a header name or query key is not ASCII (where
// strings.ToLower is not a byte-wise mapping) or there are more entries
// than its fixed scratch space holds, it falls back to them.

// maxInPlace bounds the header fields and query pieces canonicalised on
// the stack; requests with more take the general path.
const maxInPlace = 48

// AppendStringToSign appends the string-to-sign of StringToSign to dst and
// returns the extended buffer.
func AppendStringToSign(dst []byte, method, target string, fields []Field, body []byte) []byte {
	path, query := SplitTarget(target)
	dst = append(dst, method...)
	dst = append(dst, '\n')
	dst = append(dst, body...)
	dst = append(dst, '\n')
	dst = appendCanonicalHeaders(dst, fields)
	dst = append(dst, path...)
	dst = append(dst, '\n')
	return appendCanonicalQuery(dst, query)
}

// appendCanonicalHeaders appends CanonicalHeaders(fields) to dst.
func appendCanonicalHeaders(dst []byte, fields []Field) []byte {
	if len(fields) > maxInPlace {
		return append(dst, CanonicalHeaders(fields)...)
	}
	var scratch [maxInPlace]int
	idx := scratch[:0]
	for i := range fields {
		if !isASCII(fields[i].Name) {
			return append(dst, CanonicalHeaders(fields)...)
		}
		if equalFoldASCII(fields[i].Name, HeaderAuthorization) {
			continue
		}
		// Stable insertion by lower-cased name: equal names keep their
		// order, so the last of a run is the value that wins.
		j := len(idx)
		idx = append(idx, i)
		for j > 0 && compareFoldASCII(fields[idx[j-1]].Name, fields[i].Name) > 0 {
			idx[j] = idx[j-1]
			j--
		}
		idx[j] = i
	}
	for k, i := range idx {
		if k+1 < len(idx) && compareFoldASCII(fields[idx[k+1]].Name, fields[i].Name) == 0 {
			continue // a later field of the same name wins
		}
		dst = appendLowerASCII(dst, fields[i].Name)
		dst = append(dst, ':')
		dst = append(dst, strings.TrimSpace(fields[i].Value)...)
		dst = append(dst, '\n')
	}
	return dst
}

// appendCanonicalQuery appends CanonicalQuery(rawQuery) to dst.
func appendCanonicalQuery(dst []byte, rawQuery string) []byte {
	if rawQuery == "" {
		return dst
	}
	type pair struct{ key, value string }
	var scratch [maxInPlace]pair
	pairs := scratch[:0]
	for rest := rawQuery; ; {
		piece, tail, more := strings.Cut(rest, "&")
		k, v, _ := strings.Cut(piece, "=")
		if k != "" {
			if len(pairs) == maxInPlace || !isASCII(k) {
				return append(dst, CanonicalQuery(rawQuery)...)
			}
			// Stable insertion by lower(key)+value, the sort key (and
			// de-duplication key) of CanonicalQuery.
			j := len(pairs)
			pairs = append(pairs, pair{k, v})
			for j > 0 && compareEntry(pairs[j-1].key, pairs[j-1].value, k, v) > 0 {
				pairs[j] = pairs[j-1]
				j--
			}
			pairs[j] = pair{k, v}
		}
		if !more {
			break
		}
		rest = tail
	}
	first := true
	for i, p := range pairs {
		if i+1 < len(pairs) && compareEntry(pairs[i+1].key, pairs[i+1].value, p.key, p.value) == 0 {
			continue // the last entry with the same key+value text wins
		}
		if !first {
			dst = append(dst, '&')
		}
		first = false
		dst = appendLowerASCII(dst, p.key)
		if p.value != "" {
			dst = append(dst, '=')
			dst = append(dst, p.value...)
		}
	}
	return dst
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func appendLowerASCII(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = append(dst, lowerASCII(s[i]))
	}
	return dst
}

func equalFoldASCII(a, b string) bool {
	return len(a) == len(b) && compareFoldASCII(a, b) == 0
}

// compareFoldASCII compares lower(a) with lower(b) byte-wise.
func compareFoldASCII(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		x, y := lowerASCII(a[i]), lowerASCII(b[i])
		if x != y {
			return int(x) - int(y)
		}
	}
	return len(a) - len(b)
}

// compareEntry compares lower(k1)+v1 with lower(k2)+v2 byte-wise, without
// building either string.
func compareEntry(k1, v1, k2, v2 string) int {
	n1, n2 := len(k1)+len(v1), len(k2)+len(v2)
	at := func(k, v string, i int) byte {
		if i < len(k) {
			return lowerASCII(k[i])
		}
		return v[i-len(k)]
	}
	for i := 0; i < n1 && i < n2; i++ {
		x, y := at(k1, v1, i), at(k2, v2, i)
		if x != y {
			return int(x) - int(y)
		}
	}
	return n1 - n2
}

// stsBuffers are the reused string-to-sign buffers of Request.Sign.
var stsBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// macState is one reusable HMAC of a key and room for its sum.
type macState struct {
	mac hash.Hash
	sum [sha256.Size]byte
}

// macs pools HMAC states keyed by the key's secret; it is created with the
// key, so no state outlives (or crosses) a key.
type macs struct{ pool sync.Pool }

func newMACs(secret []byte) *macs {
	m := &macs{}
	m.pool.New = func() any { return &macState{mac: hmac.New(sha256.New, secret)} }
	return m
}

// appendSignature appends the lower-case hex HMAC-SHA256 of msg under k.
func (k *Key) appendSignature(dst, msg []byte) []byte {
	var st *macState
	if k.macs != nil {
		st = k.macs.pool.Get().(*macState)
		st.mac.Reset()
	} else {
		st = &macState{mac: hmac.New(sha256.New, k.secret)}
	}
	st.mac.Write(msg)
	sum := st.mac.Sum(st.sum[:0])
	dst = hex.AppendEncode(dst, sum)
	if k.macs != nil {
		k.macs.pool.Put(st)
	}
	return dst
}
