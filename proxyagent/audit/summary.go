package audit

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Summary is upstream's ProxySummary (protocol.md §4.7): one request
// outcome as logged when it opens a new time bucket of its summary key.
type Summary struct {
	ID              uint64   `json:"id"`
	Method          string   `json:"method"`
	URL             string   `json:"url"`
	ClientIP        string   `json:"clientIp"`
	ClientPort      uint16   `json:"clientPort"`
	IP              string   `json:"ip"`
	Port            uint16   `json:"port"`
	UserID          uint64   `json:"userId"`
	UserName        string   `json:"userName"`
	UserGroups      []string `json:"userGroups"`
	ProcessFullPath string   `json:"processFullPath"`
	ProcessCmdLine  string   `json:"processCmdLine"`
	RunAsElevated   bool     `json:"runAsElevated"`
	ResponseStatus  string   `json:"responseStatus"`
	ElapsedTime     uint64   `json:"elapsedTime"`
	ErrorDetails    string   `json:"errorDetails"`
}

// SummaryEntry is one aggregated entry of proxyConnectionSummary or
// failedAuthenticateSummary in the status document (protocol.md §5.1):
// Count requests with the same key over the live buckets. It is the status
// package's type, so a Recorder is a status.Summarizer as it is.
type SummaryEntry = status.SummaryEntry

// Upstream's summary constants.
const (
	BucketDuration = 15 * time.Minute
	MaxSummaryAge  = 4 * time.Hour
	// MaxErrorDetails bounds errorDetails in summaries (bytes).
	MaxErrorDetails = 4096
	// AuthorizeFailed is the error of every failed-authenticate entry made
	// for an authorization outcome.
	AuthorizeFailed = "Authorize failed"
	// BlockPrefix starts the error of the normal entry of a denied request.
	BlockPrefix = "Block unauthorized request: "
)

// ResponseStatus returns "<code> <reason phrase>" (e.g. "421 Misdirected
// Request") as upstream's summaries print a status (the Rust http crate's
// canonical reasons, "<unknown status code>" for a code without one).
func ResponseStatus(code int) string {
	if code >= 100 && code < 600 {
		return responseStatuses[code-100]
	}
	return responseStatus(code)
}

// responseStatuses holds ResponseStatus of 100–599, built once.
var responseStatuses = func() (t [500]string) {
	for i := range t {
		t[i] = responseStatus(100 + i)
	}
	return t
}()

// rustReasons are the canonical reasons where the http crate's differ
// from Go's http.StatusText; every other code has the same phrase in both.
var rustReasons = map[int]string{
	http.StatusNonAuthoritativeInfo:         "Non Authoritative Information",
	http.StatusRequestEntityTooLarge:        "Payload Too Large",
	http.StatusRequestURITooLong:            "URI Too Long",
	http.StatusRequestedRangeNotSatisfiable: "Range Not Satisfiable",
	http.StatusUnprocessableEntity:          "Unprocessable Entity",
}

func responseStatus(code int) string {
	text := rustReasons[code]
	if text == "" {
		text = http.StatusText(code)
	}
	if text == "" {
		text = "<unknown status code>"
	}
	return strconv.Itoa(code) + " " + text
}

// counted says which summary tables one request outcome is counted in,
// with which claims and response status:
//
//   - decision Allow, or not authorized: normal, with ev's status;
//   - AllowAudited: normal with ev's status, and failed "403 Forbidden";
//   - Deny: normal "403 Forbidden", and failed as for AllowAudited;
//   - no claims on a redirected connection (ev.Caller nil, ev.Dest valid,
//     status 421, §4.5 step 7): failed only, with ev's status;
//   - answered before the request flow (BeforeFlow, 413) or at a local
//     endpoint (Local): neither.
//
// A request without claims that is counted in the normal table (a direct
// connection) uses the empty claims.
type counted struct {
	c                          *claims.Claims
	normal, failed             bool
	normalStatus, failedStatus int
}

// count returns where ev is counted; it allocates only for a request
// without claims.
func count(ev *Event) counted {
	if ev.BeforeFlow || ev.Local {
		return counted{}
	}
	c := ev.Caller
	if c == nil {
		e := claims.Empty(clientIP(ev), ev.Client.Port())
		if ev.Dest.IsValid() && !ev.Authorized && ev.Status == http.StatusMisdirectedRequest {
			return counted{c: &e, failed: true, failedStatus: ev.Status}
		}
		c = &e
	}
	k := counted{c: c, normal: true, normalStatus: ev.Status}
	if !ev.Authorized || ev.Decision.Result == authz.Allow {
		return k
	}
	k.failed, k.failedStatus = true, http.StatusForbidden
	if ev.Decision.Result == authz.Deny {
		k.normalStatus = http.StatusForbidden
	}
	return k
}

// route returns the summaries ev produces for the normal table and for the
// failed-authenticate table (nil when none), as count places them, with
// their error details: ev's error in the normal entry, except that a Deny
// says "Block unauthorized request: <claims JSON>" (ev.Error when it
// already says so); "Authorize failed" in the failed entry of an
// authorization outcome, ev's error in the failed entry of a request
// without claims.
func route(ev *Event) (normal, failed *Summary) {
	k := count(ev)
	if k.normal {
		n := baseSummary(ev, k.c)
		n.ResponseStatus, n.ErrorDetails = ResponseStatus(k.normalStatus), truncate(ev.Error)
		if ev.Authorized && ev.Decision.Result == authz.Deny && !strings.HasPrefix(ev.Error, BlockPrefix) {
			n.ErrorDetails = truncate(BlockError(k.c))
		}
		normal = &n
	}
	if k.failed {
		f := baseSummary(ev, k.c)
		f.ResponseStatus, f.ErrorDetails = ResponseStatus(k.failedStatus), AuthorizeFailed
		if !ev.Authorized {
			f.ErrorDetails = truncate(ev.Error)
		}
		failed = &f
	}
	return normal, failed
}

func baseSummary(ev *Event, c *claims.Claims) Summary {
	s := Summary{
		ID: ev.HTTPID, Method: ev.Method, URL: ev.Target,
		ClientIP: clientIP(ev), ClientPort: ev.Client.Port(),
		IP:     destIP(ev),
		UserID: c.UserID, UserName: c.UserName, UserGroups: c.UserGroups,
		ProcessFullPath: c.ProcessFullPath, ProcessCmdLine: c.ProcessCmdLine,
		RunAsElevated: c.RunAsElevated, ElapsedTime: uint64(ev.Latency.Milliseconds()),
	}
	if s.UserGroups == nil {
		s.UserGroups = []string{}
	}
	if ev.Dest.IsValid() {
		s.Port = ev.Dest.Port()
	}
	return s
}

// destIP is the summaries' "ip": the original destination's address, or
// "None" without one.
func destIP(ev *Event) string {
	if !ev.Dest.IsValid() {
		return "None"
	}
	return ev.Dest.Addr().Unmap().String()
}

func clientIP(ev *Event) string {
	if !ev.Client.IsValid() {
		return ""
	}
	return ev.Client.Addr().Unmap().String()
}

// truncate cuts s to MaxErrorDetails bytes on a UTF-8 boundary.
func truncate(s string) string {
	if len(s) <= MaxErrorDetails {
		return s
	}
	cut := MaxErrorDetails
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// appendKey appends upstream's aggregation key of a summary of ev with
// claims c and response status to dst: user name, client IP, destination
// IP and port, process path, command line and status, space-separated.
// It formats nothing into strings, so a known key costs no allocation.
func appendKey(dst []byte, ev *Event, c *claims.Claims, status int) []byte {
	dst = append(dst, c.UserName...)
	dst = append(dst, ' ')
	if ev.Client.IsValid() {
		dst = ev.Client.Addr().Unmap().AppendTo(dst)
	}
	dst = append(dst, ' ')
	var port uint16
	if ev.Dest.IsValid() {
		dst = ev.Dest.Addr().Unmap().AppendTo(dst)
		port = ev.Dest.Port()
	} else {
		dst = append(dst, "None"...)
	}
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, uint64(port), 10)
	for _, part := range [...]string{c.ProcessFullPath, c.ProcessCmdLine, ResponseStatus(status)} {
		dst = append(dst, ' ')
		dst = append(dst, part...)
	}
	return dst
}

// bucket counts the adds of one key in [start, start+BucketDuration).
type bucket struct {
	start time.Time
	n     uint64
}

// item is one key of a table: the first summary seen and its buckets,
// oldest first.
type item struct {
	entry   SummaryEntry
	buckets []bucket
}

// prune drops buckets that are MaxAge old or more at now.
func (it *item) prune(now time.Time, maxAge time.Duration) {
	i := 0
	for i < len(it.buckets) && now.Sub(it.buckets[i].start) >= maxAge {
		i++
	}
	if i > 0 {
		it.buckets = append(it.buckets[:0], it.buckets[i:]...)
	}
}

// table is one summary table. Not safe for concurrent use (Recorder.mu).
type table struct {
	items   map[string]*item
	bucket  time.Duration
	maxAge  time.Duration
	maxKeys int
	evicted uint64
	keyBuf  []byte // scratch for add
}

func newTable(bucketDur, maxAge time.Duration, maxKeys int) *table {
	return &table{items: make(map[string]*item), bucket: bucketDur, maxAge: maxAge, maxKeys: maxKeys}
}

// add counts a summary of ev with claims c and response status at now,
// and reports whether it opened a new bucket (a new key, or the first add
// of a key in a new bucket). Upstream's buckets start at their first add,
// not at clock boundaries.
func (t *table) add(now time.Time, ev *Event, c *claims.Claims, status int) bool {
	t.keyBuf = appendKey(t.keyBuf[:0], ev, c, status)
	it := t.items[string(t.keyBuf)] // no allocation for a known key
	if it == nil {
		k := string(t.keyBuf)
		if len(t.items) >= t.maxKeys {
			t.makeRoom(now)
		}
		t.items[k] = &item{
			entry: SummaryEntry{UserName: c.UserName, IP: destIP(ev), Port: ev.Dest.Port(), ProcessCmdLine: c.ProcessCmdLine,
				ResponseStatus: ResponseStatus(status), UserGroups: c.UserGroups, ProcessFullPath: c.ProcessFullPath},
			buckets: []bucket{{start: now, n: 1}},
		}
		return true
	}
	it.prune(now, t.maxAge)
	if n := len(it.buckets); n > 0 && now.Sub(it.buckets[n-1].start) < t.bucket {
		it.buckets[n-1].n++
		return false
	}
	it.buckets = append(it.buckets, bucket{start: now, n: 1})
	return true
}

// makeRoom removes expired keys and, if the table is still full, the key
// whose newest bucket is oldest.
func (t *table) makeRoom(now time.Time) {
	var oldestKey string
	var oldest time.Time
	for k, it := range t.items {
		it.prune(now, t.maxAge)
		if len(it.buckets) == 0 {
			delete(t.items, k)
			continue
		}
		if last := it.buckets[len(it.buckets)-1].start; oldestKey == "" || last.Before(oldest) {
			oldestKey, oldest = k, last
		}
	}
	if len(t.items) >= t.maxKeys && oldestKey != "" {
		delete(t.items, oldestKey)
		t.evicted++
	}
}

// snapshot prunes the table at now and returns its entries sorted by
// count (highest first), then by key.
func (t *table) snapshot(now time.Time) []SummaryEntry {
	type kv struct {
		k string
		e SummaryEntry
	}
	list := make([]kv, 0, len(t.items))
	for k, it := range t.items {
		it.prune(now, t.maxAge)
		if len(it.buckets) == 0 {
			delete(t.items, k)
			continue
		}
		e := it.entry
		for _, b := range it.buckets {
			e.Count += b.n
		}
		e.UserGroups = append([]string{}, e.UserGroups...)
		list = append(list, kv{k, e})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].e.Count != list[j].e.Count {
			return list[i].e.Count > list[j].e.Count
		}
		return list[i].k < list[j].k
	})
	out := make([]SummaryEntry, len(list))
	for i := range list {
		out[i] = list[i].e
	}
	return out
}
