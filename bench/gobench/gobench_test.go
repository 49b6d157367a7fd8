package gobench

import (
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/opengpa/gpa/proxyagent/authz
cpu: Intel(R) Xeon(R)
BenchmarkCompile1k-2   	     303	   3912345 ns/op	  12.50 MB/s	 1234567 B/op	   12345 allocs/op
BenchmarkAuthorize/imds-1k/no-match-2         	 1000000	      1050 ns/op	       0 B/op	       0 allocs/op
--- BENCH: BenchmarkSomething
BenchmarkBroken-2   	 abc	   1 ns/op
PASS
ok  	github.com/opengpa/gpa/proxyagent/authz	3.1s
pkg: github.com/opengpa/gpa/proxyagent/redirector
BenchmarkConnect/attached-2 	   20000	     55000 ns/op	     45000 ns/connect
`

func TestParse(t *testing.T) {
	rs, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("got %d results: %+v", len(rs), rs)
	}
	want := []struct {
		pkg, name, unit string
		n               int64
		v               float64
	}{
		{"github.com/opengpa/gpa/proxyagent/authz", "BenchmarkCompile1k", "ns/op", 303, 3912345},
		{"github.com/opengpa/gpa/proxyagent/authz", "BenchmarkAuthorize/imds-1k/no-match", "allocs/op", 1000000, 0},
		{"github.com/opengpa/gpa/proxyagent/redirector", "BenchmarkConnect/attached", "ns/connect", 20000, 45000},
	}
	for i, w := range want {
		r := rs[i]
		v, ok := r.Metrics[w.unit]
		if r.Package != w.pkg || r.Name != w.name || r.N != w.n || !ok || v != w.v {
			t.Errorf("result %d = %+v, want %+v", i, r, w)
		}
	}
	if rs[0].Metrics["MB/s"] != 12.5 {
		t.Errorf("MB/s not parsed: %v", rs[0].Metrics)
	}
}
