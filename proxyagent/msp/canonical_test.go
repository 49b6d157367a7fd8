package msp

import (
	"strings"
	"testing"
)

// The in-place canonicaliser must give exactly the bytes of the general
// one (CanonicalHeaders, CanonicalQuery) for every input, including the
// quirks: last header value wins, key+value de-duplication where
// "a=bc" and "ab=c" collide, empty keys skipped.
func TestCanonicalInPlaceMatchesGeneral(t *testing.T) {
	queries := []string{
		"", "&", "a", "a=bc&ab=c", "ab=c&a=bc", "A=1&a=1&a=2", "b=1&a=2&A=1&c", "x=&x&y=%2F&Z=Q", "&&=x",
		"comp=config&keyOnly&comp=again&type=hostingEnvironmentConfig&incarnation=1",
		"K=v&k=v&K=V", "a=b=c&a=b", "é=1&a=2", strings.Repeat("p=1&", maxInPlace+3),
	}
	for _, q := range queries {
		if got, want := string(appendCanonicalQuery(nil, q)), CanonicalQuery(q); got != want {
			t.Errorf("query %q: in place %q, general %q", q, got, want)
		}
	}
	many := make([]Field, maxInPlace+2)
	for i := range many {
		many[i] = Field{Name: "X-" + strings.Repeat("a", i%5), Value: " v "}
	}
	headerSets := [][]Field{
		nil,
		{{"X-B", " two "}, {"x-a", "1"}, {"X-A", "last\t"}, {HeaderAuthorization, "sig"}, {"Empty", ""}, {"inner", "a  b"}},
		{{"X-A", "1"}, {"x-a", "2"}, {"x-A", "3"}, {"X-Authorization", "kept"}, {"X-MS-AZURE-HOST-AUTHORIZATION", "dropped"}},
		{{"Ä", "1"}, {"a", "2"}},
		{{"b", "\u00a0x\u00a0"}, {"a", "v"}},
		many,
	}
	for _, fs := range headerSets {
		if got, want := string(appendCanonicalHeaders(nil, fs)), CanonicalHeaders(fs); got != want {
			t.Errorf("headers %q: in place %q, general %q", fs, got, want)
		}
	}
}

// FuzzCanonicalInPlace compares the in-place canonicaliser with the
// general one on arbitrary queries and header names.
func FuzzCanonicalInPlace(f *testing.F) {
	f.Add("a=bc&ab=c&A=1", "X-A", "x-a", "B")
	f.Add("b=1&a=2&A=1&c", HeaderAuthorization, "Host", "host")
	f.Fuzz(func(t *testing.T, q, n1, n2, n3 string) {
		if got, want := string(appendCanonicalQuery(nil, q)), CanonicalQuery(q); got != want {
			t.Fatalf("query %q: in place %q, general %q", q, got, want)
		}
		fs := []Field{{n1, " 1"}, {n2, "2 "}, {n3, "3"}, {n1, "4"}}
		if got, want := string(appendCanonicalHeaders(nil, fs)), CanonicalHeaders(fs); got != want {
			t.Fatalf("headers %q: in place %q, general %q", fs, got, want)
		}
	})
}
