package authz

import (
	"slices"
	"strings"
	"testing"
)

// linearPrefixes is the definition the index implements: every path that
// is a byte prefix of p, in index order.
func linearPrefixes(paths []string, p string) []int {
	var out []int
	for i, q := range paths {
		if strings.HasPrefix(p, q) {
			out = append(out, i)
		}
	}
	return out
}

func checkIndex(t *testing.T, paths []string, probes []string) {
	t.Helper()
	var x pathIndex
	for i, p := range paths {
		x.add(p, i)
	}
	for _, p := range probes {
		got := x.prefixesOf(p, nil)
		if want := linearPrefixes(paths, p); !slices.Equal(got, want) {
			t.Fatalf("paths %q, probe %q: index %v, linear %v", paths, p, got, want)
		}
	}
}

func TestPathIndexIsStringPrefix(t *testing.T) {
	// Not segment-aware (Quirk 6), duplicates, the empty path, a path
	// that ends inside another's edge, non-ASCII bytes.
	paths := []string{"/test", "/metadata/instance", "", "/test", "/metadata", "/metadata/identity/oauth2/token",
		"/te", "/testing/x", "/σ", "/\xff", "/metadata/inst", "/b", "/a"}
	probes := []string{"", "/", "/test", "/test-evil", "/testing", "/testing/x/y", "/te", "/t", "/metadata/instance/compute",
		"/metadata/ins", "/metadata/identity/oauth2/token?x", "/σς", "/\xff\xfe", "/a", "/c", "x"}
	checkIndex(t, paths, probes)
}

// FuzzPathIndex compares the index with the linear definition on
// arbitrary path sets (split from one string on '|') and probes.
func FuzzPathIndex(f *testing.F) {
	f.Add("/test|/te|/testing|", "/test-evil")
	f.Add("/a/b|/a|/a/b/c|/ab", "/a/b/c/d")
	f.Fuzz(func(t *testing.T, set, probe string) {
		paths := strings.Split(set, "|")
		probes := []string{probe}
		for _, p := range paths {
			probes = append(probes, p, p+probe)
		}
		checkIndex(t, paths, probes)
	})
}
