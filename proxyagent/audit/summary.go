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
// Request"), or just the code when it has no standard phrase.
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

func responseStatus(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}

// route returns the summaries ev produces for the normal table and for the
// failed-authenticate table (nil when none):
//
//   - decision Allow, or not authorized: normal, with ev's status;
//   - AllowAudited: normal with ev's status, and failed "403 Forbidden",
//     "Authorize failed";
//   - Deny: normal "403 Forbidden" with error "Block unauthorized request:
//     <claims JSON>" (ev.Error when it already says so), and failed as for
//     AllowAudited;
//   - no claims on a redirected connection (ev.Caller nil, ev.Dest valid,
//     status 421, §4.5 step 7): failed only, with ev's status and error.
//
// A request without claims that is recorded in the normal table (a direct
// connection) uses the empty claims.
func route(ev *Event) (normal, failed *Summary) {
	c := ev.Caller
	if c == nil {
		if ev.Dest.IsValid() && !ev.Authorized && ev.Status == http.StatusMisdirectedRequest {
			e := claims.Empty(clientIP(ev), ev.Client.Port())
			s := baseSummary(ev, &e)
			s.ResponseStatus, s.ErrorDetails = ResponseStatus(ev.Status), truncate(ev.Error)
			return nil, &s
		}
		e := claims.Empty(clientIP(ev), ev.Client.Port())
		c = &e
	}
	n := baseSummary(ev, c)
	n.ResponseStatus, n.ErrorDetails = ResponseStatus(ev.Status), truncate(ev.Error)
	if !ev.Authorized || ev.Decision.Result == authz.Allow {
		return &n, nil
	}
	f := baseSummary(ev, c)
	f.ResponseStatus, f.ErrorDetails = ResponseStatus(http.StatusForbidden), AuthorizeFailed
	if ev.Decision.Result == authz.Deny {
		n.ResponseStatus = ResponseStatus(http.StatusForbidden)
		if !strings.HasPrefix(ev.Error, BlockPrefix) {
			n.ErrorDetails = truncate(BlockPrefix + upstreamClaimsJSON(c))
		}
	}
	return &n, &f
}

func baseSummary(ev *Event, c *claims.Claims) Summary {
	s := Summary{
		ID: ev.HTTPID, Method: ev.Method, URL: ev.Target,
		ClientIP: clientIP(ev), ClientPort: ev.Client.Port(),
		IP:     "None",
		UserID: c.UserID, UserName: c.UserName, UserGroups: c.UserGroups,
		ProcessFullPath: c.ProcessFullPath, ProcessCmdLine: c.ProcessCmdLine,
		RunAsElevated: c.RunAsElevated, ElapsedTime: uint64(ev.Latency.Milliseconds()),
	}
	if s.UserGroups == nil {
		s.UserGroups = []string{}
	}
	if ev.Dest.IsValid() {
		s.IP, s.Port = ev.Dest.Addr().Unmap().String(), ev.Dest.Port()
	}
	return s
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

// appendKey appends upstream's aggregation key to dst.
func (s *Summary) appendKey(dst []byte) []byte {
	for i, part := range [...]string{s.UserName, s.ClientIP, s.IP} {
		if i > 0 {
			dst = append(dst, ' ')
		}
		dst = append(dst, part...)
	}
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, uint64(s.Port), 10)
	for _, part := range [...]string{s.ProcessFullPath, s.ProcessCmdLine, s.ResponseStatus} {
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

// add counts s at now and reports whether it opened a new bucket (a new
// key, or the first add of a key in a new bucket). Upstream's buckets
// start at their first add, not at clock boundaries.
func (t *table) add(now time.Time, s *Summary) bool {
	t.keyBuf = s.appendKey(t.keyBuf[:0])
	it := t.items[string(t.keyBuf)] // no allocation for a known key
	if it == nil {
		k := string(t.keyBuf)
		if len(t.items) >= t.maxKeys {
			t.makeRoom(now)
		}
		t.items[k] = &item{
			entry: SummaryEntry{UserName: s.UserName, IP: s.IP, Port: s.Port, ProcessCmdLine: s.ProcessCmdLine,
				ResponseStatus: s.ResponseStatus, UserGroups: s.UserGroups, ProcessFullPath: s.ProcessFullPath},
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
