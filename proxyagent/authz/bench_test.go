package authz

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// doc1k returns a host item with n privileges, n/10 roles, n/10
// identities and n/10 assignments (protocol.md §3.1 shape).
func doc1k(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"defaultAccess":"deny","mode":"enforce","id":"bench","rules":{"privileges":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%4 == 0 {
			fmt.Fprintf(&b, `{"name":"p%d","path":"/Metadata/Path%d/Sub","queryParameters":{"api-version":"2021-0%d-01"}}`, i, i, i%9+1)
		} else {
			fmt.Fprintf(&b, `{"name":"p%d","path":"/metadata/path%d"}`, i, i)
		}
	}
	b.WriteString(`],"roles":[`)
	for r := range n / 10 {
		if r > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"r%d","privileges":[`, r)
		for j := range 10 {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"p%d"`, r*10+j)
		}
		b.WriteString(`]}`)
	}
	b.WriteString(`],"identities":[`)
	for i := range n / 10 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"i%d","userName":"user%d","exePath":"/usr/bin/app%d"}`, i, i, i)
	}
	b.WriteString(`],"roleAssignments":[`)
	for i := range n / 10 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"role":"r%d","identities":["i%d","i%d"]}`, i, i, (i+1)%(n/10))
	}
	b.WriteString(`]}}`)
	return []byte(b.String())
}

// BenchmarkCompile1k measures rule load for a 1,000-privilege document:
// JSON decode plus compilation.
func BenchmarkCompile1k(b *testing.B) {
	data := doc1k(1000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var it msp.AuthorizationItem
		if err := json.Unmarshal(data, &it); err != nil {
			b.Fatal(err)
		}
		_ = Compile(&it)
	}
}

// BenchmarkStoreUpdate1k measures one key-keeper poll that installs a new
// 1,000-privilege WireServer item (no snapshot file).
func BenchmarkStoreUpdate1k(b *testing.B) {
	var it msp.AuthorizationItem
	if err := json.Unmarshal(doc1k(1000), &it); err != nil {
		b.Fatal(err)
	}
	s := NewStore(StoreConfig{Logger: quietLogger()})
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n++
		it.ID = fmt.Sprint(n)
		update(s, &msp.AuthorizationRules{WireServer: &it})
	}
}

// BenchmarkAuthorize measures one decision against the store.
func BenchmarkAuthorize(b *testing.B) {
	var it msp.AuthorizationItem
	if err := json.Unmarshal(doc1k(1000), &it); err != nil {
		b.Fatal(err)
	}
	s := NewStore(StoreConfig{Logger: quietLogger()})
	update(s, &msp.AuthorizationRules{IMDS: &it, WireServer: &it})
	c := user()
	c.UserName, c.ProcessFullPath = "user50", "/usr/bin/app50"
	for _, bc := range []struct{ name, target string }{
		{"no-match", "/metadata/instance?api-version=2021-02-01"},
		{"match-allowed", "/metadata/path500/x"},
		{"match-query", "/metadata/path500/sub?api-version=2021-03-01&format=json"},
		{"encoded", "/metadata/path501%2Fsub%3Fx=1"},
	} {
		b.Run("imds-1k/"+bc.name, func(b *testing.B) {
			req := Request{Service: msp.IMDS, Method: "GET", Target: bc.target, Caller: c}
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Authorize(req)
			}
		})
	}
	b.Run("wireserver-root-only", func(b *testing.B) {
		req := Request{Service: msp.WireServer, Method: "GET", Target: "/machine?comp=goalstate", Caller: c}
		b.ReportAllocs()
		for b.Loop() {
			_ = s.Authorize(req)
		}
	})
	small := NewStore(StoreConfig{Logger: quietLogger()})
	update(small, &msp.AuthorizationRules{IMDS: wireItem(b, testIdentityItem)})
	b.Run("imds-1rule", func(b *testing.B) {
		req := Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/instance?api-version=2021-02-01", Caller: c}
		b.ReportAllocs()
		for b.Loop() {
			_ = small.Authorize(req)
		}
	})
}
