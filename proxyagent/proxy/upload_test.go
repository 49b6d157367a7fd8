package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

var hgDest = netip.MustParseAddrPort("168.63.129.16:32526")

func TestIsUpload(t *testing.T) {
	hg, ws := msp.HostGAPlugin, msp.WireServer
	for _, tc := range []struct {
		service        msp.Service
		method, target string
		want           bool
	}{
		{hg, "PUT", "/status", true},
		{hg, "PUT", "/STATUS", true},
		{ws, "POST", "/machine?comp=health", true},
		{ws, "POST", "/machine/?comp=health", true},
		{ws, "PUT", "/machine?restype=x&comp=status", true},
		{hg, "GET", "/status", false},
		{hg, "POST", "/status", false},
		{hg, "PUT", "/status/x", false},
		{ws, "PUT", "/status", false},
		{msp.IMDS, "PUT", "/status", false},
		{hg, "POST", "/machine?comp=health", false},
		{msp.IMDS, "POST", "/machine?comp=health", false},
		{ws, "POST", "/machine/x?comp=health", false},
		{ws, "POST", "/machine?compx=1", false},
		{ws, "POST", "/metadata/instance?comp=x", false},
		{ws, "DELETE", "/machine?comp=health", false},
	} {
		if got := isUpload(tc.service, tc.method, tc.target); got != tc.want {
			t.Errorf("isUpload(%s %s %s) = %v", tc.service, tc.method, tc.target, got)
		}
	}
	// Only a redirected connection gets the upload limit: straight to the
	// listener, a large upload is 413 before anything else (quirk 18).
	e := newEnv(t, nil)
	c := e.connect(nil)
	c.send(req("POST", "/machine?comp=health", "Content-Length: 102401"))
	if resp, _ := c.read("POST"); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("direct upload over 100 KiB: %d, want 413", resp.StatusCode)
	}
}

// waagentStatusPut builds the body of waagent's HostGAPlugin PUT /status
// for a status blob of n bytes: the blob base64-encoded in a JSON document
// with the blob's SAS URL and headers (hostplugin.py _build_status_data).
func waagentStatusPut(t *testing.T, n int) []byte {
	blob := bytes.Repeat([]byte("s"), n)
	doc := map[string]any{
		"content":    base64.StdEncoding.EncodeToString(blob),
		"requestUri": "https://md-abc.blob.core.windows.net/$system/vm.status?sv=2018-03-28&sr=b&sk=system-1&sig=x&se=9999-01-01&sp=w",
		"headers": []map[string]string{
			{"headerName": "Content-Length", "headerValue": fmt.Sprint(n)},
			{"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"},
			{"headerName": "x-ms-date", "headerValue": "Wed, 23 Apr 2025 12:00:00 GMT"},
			{"headerName": "x-ms-version", "headerValue": "2014-02-14"},
		},
	}
	body, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestWaagentStatusUploads: waagent's status PUT goes through signed at
// every size its status allows (one extension at its 128 KiB limit, and
// many), and is refused with 413 only above MaxUploadBody; the signature
// the host checks covers the whole body.
func TestWaagentStatusUploads(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name string
		blob int
		want int
	}{
		{"small", 4 << 10, 200},
		{"one extension at 128 KiB", 128 << 10, 200},
		{"ten extensions at 128 KiB, escaped twice", 10 * 256 << 10, 200},
		{"above the upload limit", DefaultMaxUploadBody, 413}, // headers only: the proxy answers before the body
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := waagentStatusPut(t, tc.blob)
			before := len(e.up.requests())
			c := e.connect(rootRec(hgDest))
			raw := req("PUT", "/status", fmt.Sprintf("Content-Length: %d", len(body)), "Content-Type: application/json")
			if tc.want == 200 {
				raw += string(body)
			}
			c.send(raw)
			resp, _ := c.read("PUT")
			if resp.StatusCode != tc.want {
				t.Fatalf("%d-byte body: got %d, want %d", len(body), resp.StatusCode, tc.want)
			}
			reqs := e.up.requests()
			if tc.want != 200 {
				if len(reqs) != before {
					t.Error("a refused upload reached the host")
				}
				return
			}
			got := reqs[len(reqs)-1]
			if !bytes.Equal(got.body, body) || !got.sigPresent || !got.sigOK {
				t.Errorf("host got %d bytes, signed %v, valid %v", len(got.body), got.sigPresent, got.sigOK)
			}
		})
	}
	// Other signed requests keep the 100 KiB limit.
	c := e.connect(rootRec(hgDest))
	c.send(req("PUT", "/vmSettings", "Content-Length: 102401") + strings.Repeat("x", 102401))
	if resp, _ := c.read("PUT"); resp.StatusCode != 413 {
		t.Errorf("PUT /vmSettings over 100 KiB: %d", resp.StatusCode)
	}
}

// TestUploadBudget: large uploads together hold at most UploadBudget
// bytes; one beyond it gets 503 (waagent retries next cycle) and the
// budget is whole again once they finish.
func TestUploadBudget(t *testing.T) {
	release := make(chan struct{})
	var arrived sync.WaitGroup
	var held atomic.Int32
	e := newEnv(t, func(o *Options) { o.UploadBudget = 600 << 10 })
	arrived.Add(2)
	e.up.setHandler(func(r seenRequest) upReply {
		if len(r.body) > DefaultMaxSignedBody && held.Add(1) <= 2 {
			arrived.Done()
			<-release
		}
		return upReply{status: 200}
	})
	body := strings.Repeat("b", 300<<10)
	put := req("PUT", "/status", fmt.Sprintf("Content-Length: %d", len(body))) + body
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		c := e.connect(rootRec(hgDest))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.send(put)
			resp, _ := c.read("PUT")
			codes[i] = resp.StatusCode
		}()
	}
	arrived.Wait() // both hold their 300 KiB
	c := e.connect(rootRec(hgDest))
	c.send(put)
	if resp, _ := c.read("PUT"); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third upload over the budget: %d", resp.StatusCode)
	}
	// Small signed requests are not held back by the budget.
	small := e.connect(rootRec(hgDest))
	if resp, _ := small.do(req("GET", "/health")); resp.StatusCode != 200 {
		t.Errorf("small request while the budget is spent: %d", resp.StatusCode)
	}
	close(release)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Errorf("uploads within the budget: %v", codes)
	}
	c = e.connect(rootRec(hgDest))
	c.send(put)
	if resp, _ := c.read("PUT"); resp.StatusCode != 200 {
		t.Errorf("upload after the budget came back: %d", resp.StatusCode)
	}
}
