package proxy

import (
	"net/http"
	"strings"
	"sync"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// waagent's uploads through the proxy are signed and can be larger than
// DefaultMaxSignedBody:
//
//   - HostGAPlugin PUT /status carries the whole VM status blob (every
//     extension's status, each up to waagent's 128 KiB status-file limit,
//     re-encoded by Python's json.dumps, which escapes quotes and writes
//     non-ASCII as \uXXXX) base64-encoded inside a JSON document, about
//     1.34 times the blob; a page-blob upload sends the same blob in
//     pages.
//   - WireServer uploads addressed with ?comp= on /machine (health reports
//     and, on fabrics without HostGAPlugin, status); telemetry
//     (?comp=telemetrydata) is exempt from signing and has its own limit.
//
// DefaultMaxUploadBody (8 MiB) holds the blob of 46 extensions at 128 KiB
// each (23 when every byte needs escaping); bodies above
// DefaultMaxSignedBody draw on a shared buffer budget,
// DefaultUploadBudget (16 MiB, two uploads at the full limit at once), so
// the memory held for request bodies stays bounded whatever the number of
// connections. An upload that finds the budget spent gets 503, and waagent
// retries it on its next status cycle.
const (
	DefaultMaxUploadBody = 8 << 20
	DefaultUploadBudget  = 16 << 20
)

// isUpload reports whether a signed request is one of waagent's upload
// paths that get Options.MaxUploadBody: PUT /status to the HostGAPlugin,
// or a PUT or POST to /machine or /machine/ with a comp= query parameter
// to the WireServer (service is the redirected connection's destination;
// anything else, a direct connection too, keeps the signed limit). The
// comparison is on the lower-cased raw target.
func isUpload(service msp.Service, method, target string) bool {
	t := strings.ToLower(target)
	switch {
	case service == msp.HostGAPlugin:
		return method == http.MethodPut && t == "/status"
	case service != msp.WireServer:
		return false
	case method != http.MethodPut && method != http.MethodPost:
		return false
	}
	path, query, ok := strings.Cut(t, "?")
	if !ok || (path != "/machine" && path != "/machine/") {
		return false
	}
	for _, kv := range strings.Split(query, "&") {
		if strings.HasPrefix(kv, "comp=") {
			return true
		}
	}
	return false
}

// byteBudget is a counting budget of bytes; tryTake never waits.
type byteBudget struct {
	mu   sync.Mutex
	free int64
}

func (b *byteBudget) tryTake(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.free {
		return false
	}
	b.free -= n
	return true
}

func (b *byteBudget) give(n int64) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
}

// reserveUpload takes the buffer an upload above MaxSignedBody needs
// (its Content-Length, or limit for a chunked body) from the upload
// budget. It returns the function that gives it back, or ok false when the
// budget is spent.
func (s *Server) reserveUpload(r *http.Request, limit int64) (release func(), ok bool) {
	n := r.ContentLength
	if n < 0 {
		n = limit
	}
	if n <= s.opts.MaxSignedBody {
		return func() {}, true
	}
	if !s.uploads.tryTake(n) {
		return nil, false
	}
	return func() { s.uploads.give(n) }, true
}
