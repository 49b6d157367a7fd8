package handler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Substatus names, in the order upstream's e2e tests read them.
const (
	SubConnectionSummary = "ProxyAgentConnectionSummary"
	SubAgentStatus       = "ProxyAgentStatus"
	SubFailedAuthSummary = "ProxyAgentFailedAuthenticationSummary"
)

// Substatus codes: 0 = OK, 4 = not OK.
const (
	CodeOK    = 0
	CodeNotOK = 4
)

// Limits on the status file the monitor writes.
const (
	MaxConnectionSummaries = 100
	MaxFailedAuthSummaries = 50
	// MaxSummaryBytes bounds substatus [0] + [2] messages together, in
	// bytes (extension-handler.md §2.5; upstream's budget, which its trim
	// can exceed by the note, TrimSummaries). The status file
	// stays within waagent's 128 KiB (BoundStatus), and waagent's upload
	// of it through the agent within the agent's upload limit (8 MiB).
	MaxSummaryBytes = 80 * 1024
	// MaxStatusMessage bounds the top-level message.
	MaxStatusMessage = 1024
	// MaxAgentStatusBytes bounds the ProxyAgentStatus message, so the
	// whole status file stays under waagent's 128 KiB limit.
	MaxAgentStatusBytes = 8 * 1024
	// maxErrorShapeMessage bounds each error-shape substatus message.
	maxErrorShapeMessage = 8 * 1024
)

// Messages used for empty summary tables (upstream's text).
const (
	EmptyConnectionSummary = "proxy connection summary is empty"
	EmptyFailedAuthSummary = "proxy failed auth summary is empty"
	SuccessMessage         = "ProxyAgent extension is reporting successful status."
)

// ConnectionSummary is one aggregated connection-summary entry.
type ConnectionSummary struct {
	UserName        string   `json:"userName"`
	IP              string   `json:"ip"`
	Port            int      `json:"port"`
	ProcessCmdLine  string   `json:"processCmdLine"`
	ResponseStatus  string   `json:"responseStatus"`
	Count           uint64   `json:"count"`
	UserGroups      []string `json:"userGroups,omitempty"`
	ProcessFullPath string   `json:"processFullPath,omitempty"`
}

// AgentStatus is the part of proxyAgentStatus the monitor interprets; the
// full object is passed through verbatim in the ProxyAgentStatus substatus.
type AgentStatus struct {
	Version string                  `json:"version"`
	Status  string                  `json:"status"`
	Modules map[string]ModuleStatus `json:"-"`
}

// ModuleStatus is one module object of proxyAgentStatus.
type ModuleStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Aggregate is the agent's aggregate status (protocol.md §5.1).
type Aggregate struct {
	Timestamp                 string              `json:"timestamp"`
	ProxyAgentStatus          json.RawMessage     `json:"proxyAgentStatus"`
	ProxyConnectionSummary    []ConnectionSummary `json:"proxyConnectionSummary"`
	FailedAuthenticateSummary []ConnectionSummary `json:"failedAuthenticateSummary"`
}

// ParseAggregate decodes an aggregate status document and its
// proxyAgentStatus object.
func ParseAggregate(data []byte) (Aggregate, AgentStatus, error) {
	var a Aggregate
	if err := json.Unmarshal(serdejson.TrimBOM(data), &a); err != nil {
		return a, AgentStatus{}, fmt.Errorf("aggregate status is not valid JSON: %v", err)
	}
	if len(a.ProxyAgentStatus) == 0 || string(a.ProxyAgentStatus) == "null" {
		return a, AgentStatus{}, errors.New("aggregate status has no proxyAgentStatus")
	}
	var st AgentStatus
	if err := json.Unmarshal(a.ProxyAgentStatus, &st); err != nil {
		return a, AgentStatus{}, fmt.Errorf("proxyAgentStatus is not an object: %v", err)
	}
	var mods map[string]json.RawMessage
	json.Unmarshal(a.ProxyAgentStatus, &mods)
	st.Modules = map[string]ModuleStatus{}
	for k, v := range mods {
		if !strings.HasSuffix(k, "Status") || k == "status" {
			continue
		}
		var m ModuleStatus
		if json.Unmarshal(v, &m) == nil && m.Status != "" {
			st.Modules[k] = m
		}
	}
	return a, st, nil
}

// Fetcher obtains the agent's aggregate status.
type Fetcher interface {
	Fetch(ctx context.Context) ([]byte, error)
}

// AggregateFetcher reads the agent's status file first and asks the agent
// over HTTP (GET URL with "Metadata: true", bounded by Timeout) only when
// the WireServer redirect is known to be in place: the URL is the
// WireServer address, which reaches the agent only through the redirect,
// so before the agent reports it (a fresh install, an agent still
// starting) or when the secure channel leaves WireServer unprotected, no
// request leaves for the real WireServer. The redirect is known to be in
// place when Redirected (the kernel's pinned policy) says so, whatever
// the file says; without Redirected (tests), when the file reports it
// (WireServerRedirected). When HTTP is not asked,
// fails or answers anything but 200, the file's contents are the result;
// without a file the error names both causes.
//
// Redirected, when set, is asked right before the HTTP request: the kernel's
// own answer to whether the URL's address reaches the agent now. It closes
// the window in which the agent has just removed the redirect (the channel
// switched off) and the file does not say so yet.
//
// The connection itself must have been redirected: one whose peer is the
// URL's own address is closed before anything is sent (dialRedirected).
// Dial replaces that check: for a URL at another address than the
// WireServer's (Setup.aggregateAccess gives one that refuses only a peer
// at a WireServer address; tests' stand-in agents listen at the URL
// itself). Client replaces the whole transport.
type AggregateFetcher struct {
	URL        string
	File       func() string
	Timeout    time.Duration
	Client     *http.Client
	Redirected func() bool
	Dial       func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Fetch implements Fetcher.
func (f *AggregateFetcher) Fetch(ctx context.Context) ([]byte, error) {
	path := f.File()
	data, ferr := os.ReadFile(path)
	wellFormed := false
	if ferr == nil {
		_, _, perr := ParseAggregate(data)
		wellFormed = perr == nil
	}
	var ask bool
	switch {
	case f.Redirected != nil:
		// The kernel's answer, whatever the file says (v1 hosts' states,
		// a mode kept while the channel is off, a file not yet written).
		ask = f.Redirected()
	default:
		ask = wellFormed && WireServerRedirected(data)
	}
	if ask {
		if body, herr := f.fetchHTTP(ctx); herr == nil {
			return body, nil
		} else if ferr != nil {
			return nil, fmt.Errorf("aggregate status unavailable: file %s: %v; %s: %v", path, ferr, f.URL, herr)
		}
	}
	if ferr != nil {
		return nil, fmt.Errorf("aggregate status unavailable: file %s: %v (%s not asked: the WireServer redirect is not in place)", path, ferr, f.URL)
	}
	return data, nil
}

// dialRedirected dials addr and keeps the connection only if the kernel
// redirected it elsewhere (to the agent's listener): its peer, as the
// socket reports it after connect, is not addr itself. That is the
// kernel's own answer at the moment it mattered, so no request reaches
// the real WireServer however the redirect policy changes around the
// call; a connection that was not redirected is closed before a byte is
// sent.
func dialRedirected(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if err := checkRedirected(c, addr); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// dialAvoiding returns a dialer that keeps a connection only if its peer
// is none of avoid (the WireServer's addresses): for a URL elsewhere that
// a name or a route could still lead there.
func dialAvoiding(avoid ...netip.AddrPort) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		for _, a := range avoid {
			if err := checkRedirected(c, a.String()); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, nil
	}
}

// checkRedirected fails when c's peer is addr (host:port), the address it
// was dialled to: the connection was not redirected.
func checkRedirected(c net.Conn, addr string) error {
	asked, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("aggregate status: %w", err)
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("aggregate status: peer %v is not TCP", c.RemoteAddr())
	}
	peer := ta.AddrPort()
	if netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()) == netip.AddrPortFrom(asked.Addr().Unmap(), asked.Port()) {
		return fmt.Errorf("aggregate status: %s is not redirected to the agent; not asked", addr)
	}
	return nil
}

// WireServerRedirected reports whether an aggregate status document says
// a connection to the WireServer address reaches the agent: eBPF program
// and proxy listener RUNNING, and a secure-channel state that protects
// WireServer (Audit or Enforce; the redirect is removed while it is
// Disabled).
func WireServerRedirected(data []byte) bool {
	agg, st, err := ParseAggregate(data)
	if err != nil {
		return false
	}
	var key struct {
		KeyLatchStatus struct {
			States map[string]string `json:"states"`
		} `json:"keyLatchStatus"`
	}
	json.Unmarshal(agg.ProxyAgentStatus, &key)
	state := key.KeyLatchStatus.States["secureChannelState"]
	protected := strings.HasPrefix(state, "WireServer Audit") || strings.HasPrefix(state, "WireServer Enforce") ||
		state == "wireserver" || state == "wireserverandimds" // v1.0: WireServer in Enforce
	return protected && st.Modules["ebpfProgramStatus"].Status == "RUNNING" && st.Modules["proxyListenerStatus"].Status == "RUNNING"
}

func (f *AggregateFetcher) fetchHTTP(ctx context.Context) ([]byte, error) {
	if f.URL == "" {
		return nil, errors.New("no URL")
	}
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Metadata", "true")
	client := f.Client
	if client == nil {
		dial := f.Dial
		if dial == nil {
			dial = dialRedirected
		}
		client = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: dial}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return body, nil
}

// Evaluation is the monitor's reading of one aggregate status.
type Evaluation struct {
	// Healthy is true only when the status is fresh, from the bundled
	// version, and the agent itself reports SUCCESS.
	Healthy bool
	// Message is the top-level message: success text or what is wrong.
	Message string
	// Substatus is always exactly three entries in upstream's order.
	Substatus []extension.SubStatus
	// AgentVersion is the version the agent reports ("" if unknown).
	AgentVersion string
}

// timestamp layouts the agent and upstream emit.
var timestampLayouts = []string{
	"2006-01-02T15:04:05.999999999",
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999Z",
}

// ParseTimestamp parses "YYYY-MM-DDTHH:MM:SS[.fff]" (UTC, no zone) and
// the same with a "Z" or offset.
func ParseTimestamp(s string) (time.Time, error) {
	for _, l := range timestampLayouts {
		if t, err := time.ParseInLocation(l, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("Error in parsing timestamp %q", s)
}

// ErrorShape returns the three substatuses reported when the aggregate
// status cannot be used: each transitioning, code 4, carrying msg.
func ErrorShape(msg string) []extension.SubStatus {
	m := extension.TruncateUTF8(msg, maxErrorShapeMessage)
	out := make([]extension.SubStatus, 0, 3)
	for _, n := range []string{SubConnectionSummary, SubAgentStatus, SubFailedAuthSummary} {
		out = append(out, extension.SubStatus{Name: n, Status: extension.StatusTransitioning, Code: CodeNotOK, FormattedMessage: extension.Message(m)})
	}
	return out
}

// Evaluate turns a fetched aggregate status (or the fetch error) into the
// monitor's view, given the bundled agent version, the current time and
// the staleness limit. It checks, in order: fetch error, JSON, timestamp
// (parseable, not older than staleAfter and not more than staleAfter in
// the future), version equal to bundled, and the agent's own overall
// status. Any failure before the last yields the error shape; an agent
// reporting anything but SUCCESS yields the full shape with the
// ProxyAgentStatus substatus marked error (ERROR) or transitioning
// (UNKNOWN), and Healthy false.
func Evaluate(data []byte, fetchErr error, bundled string, now time.Time, staleAfter time.Duration) Evaluation {
	fail := func(msg string) Evaluation {
		return Evaluation{Message: msg, Substatus: ErrorShape(msg)}
	}
	if fetchErr != nil {
		return fail(fetchErr.Error())
	}
	agg, st, err := ParseAggregate(data)
	if err != nil {
		return fail(err.Error())
	}
	ts, err := ParseTimestamp(agg.Timestamp)
	if err != nil {
		e := fail(err.Error())
		e.AgentVersion = st.Version
		return e
	}
	if age := now.Sub(ts); age > staleAfter || -age > staleAfter {
		e := fail(fmt.Sprintf("Proxy agent aggregate status file is stale. Status timestamp: %s, Current time: %s",
			agg.Timestamp, now.UTC().Format(extension.TimestampLayout)))
		e.AgentVersion = st.Version
		return e
	}
	if st.Version != bundled {
		e := fail(fmt.Sprintf("Proxy agent aggregate status file version %s does not match proxy agent file version in extension %s", st.Version, bundled))
		e.AgentVersion = st.Version
		return e
	}

	var compact bytes.Buffer
	if err := json.Compact(&compact, agg.ProxyAgentStatus); err != nil {
		return fail("proxyAgentStatus is not valid JSON")
	}
	conn := summaryMessage(agg.ProxyConnectionSummary, MaxConnectionSummaries, EmptyConnectionSummary)
	failed := summaryMessage(agg.FailedAuthenticateSummary, MaxFailedAuthSummaries, EmptyFailedAuthSummary)
	conn, failed = TrimSummaries(conn, failed)

	ev := Evaluation{AgentVersion: st.Version}
	agentSub := extension.SubStatus{Name: SubAgentStatus, Status: extension.StatusSuccess, Code: CodeOK,
		FormattedMessage: extension.Message(boundAgentStatus(compact.Bytes()))}
	switch st.Status {
	case "SUCCESS":
		ev.Healthy = true
		ev.Message = SuccessMessage
	case "ERROR":
		agentSub.Status, agentSub.Code = extension.StatusError, CodeNotOK
		ev.Message = "Proxy agent reports status ERROR: " + moduleProblems(st)
	default:
		agentSub.Status, agentSub.Code = extension.StatusTransitioning, CodeNotOK
		ev.Message = fmt.Sprintf("Proxy agent reports status %q: %s", st.Status, moduleProblems(st))
	}
	ev.Message = extension.TruncateUTF8(ev.Message, MaxStatusMessage)
	ev.Substatus = []extension.SubStatus{
		{Name: SubConnectionSummary, Status: extension.StatusSuccess, Code: CodeOK, FormattedMessage: extension.Message(conn)},
		agentSub,
		{Name: SubFailedAuthSummary, Status: extension.StatusSuccess, Code: CodeOK, FormattedMessage: extension.Message(failed)},
	}
	return ev
}

// moduleProblems lists the modules that are not RUNNING (monitor and
// telemetry logger excluded, as the agent's own overall status does).
func moduleProblems(st AgentStatus) string {
	var parts []string
	for _, k := range []string{"keyLatchStatus", "ebpfProgramStatus", "proxyListenerStatus"} {
		m, ok := st.Modules[k]
		if !ok {
			parts = append(parts, k+" missing")
			continue
		}
		if m.Status != "RUNNING" {
			parts = append(parts, fmt.Sprintf("%s %s: %s", k, m.Status, m.Message))
		}
	}
	if len(parts) == 0 {
		return "no module reports a problem"
	}
	return strings.Join(parts, "; ")
}

// summaryMessage keeps the max entries with the largest counts, sorted
// ascending by count, as JSON; an empty table gives the empty text.
func summaryMessage(list []ConnectionSummary, max int, empty string) string {
	if len(list) == 0 {
		return empty
	}
	l := append([]ConnectionSummary(nil), list...)
	sort.SliceStable(l, func(i, j int) bool { return l[i].Count < l[j].Count })
	if len(l) > max {
		l = l[len(l)-max:]
	}
	b, _ := serdejson.Marshal(l) // strings, numbers and string slices
	return string(b)
}

// SummaryDroppedNote replaces the connection summary when the summaries
// exceed MaxSummaryBytes (upstream's text).
const SummaryDroppedNote = "Substatus of proxy agent connection message and failed auth message size exceeds max size, dropping connection summary"

// TrimSummaries keeps the connection-summary and failed-auth messages
// within MaxSummaryBytes together, as upstream does: above that, the
// connection summary is replaced by SummaryDroppedNote, and a failed-auth
// message too long to go with the note is cut (at a character boundary;
// upstream cuts bytes, and to MaxSummaryBytes itself, so that its two
// messages can exceed the budget by the note).
func TrimSummaries(conn, failed string) (string, string) {
	if len(conn)+len(failed) <= MaxSummaryBytes {
		return conn, failed
	}
	return SummaryDroppedNote, extension.TruncateUTF8(failed, MaxSummaryBytes-len(SummaryDroppedNote))
}

// boundAgentStatus returns the compact proxyAgentStatus JSON for
// substatus [1], at most MaxAgentStatusBytes long and still one JSON
// object: a longer one is re-encoded in upstream's field order with its
// module messages cut shorter and shorter ("..." marks a cut). Only a
// document that cannot be read as upstream's shape is cut as text.
func boundAgentStatus(compact []byte) string {
	if len(compact) <= MaxAgentStatusBytes {
		return string(compact)
	}
	var st status.AgentStatus
	if json.Unmarshal(compact, &st) == nil {
		mods := []*status.ModuleStatus{&st.MonitorStatus, &st.KeyLatchStatus, &st.EbpfProgramStatus,
			&st.ProxyListenerStatus, &st.TelemetryLoggerStatus}
		for limit := status.MaxMessageBytes / 2; limit >= 0; limit /= 2 {
			for _, m := range mods {
				if len(m.Message) > limit {
					m.Message = extension.TruncateUTF8(m.Message, limit) + "..."
				}
			}
			if b, err := serdejson.Marshal(st); err == nil && len(b) <= MaxAgentStatusBytes {
				return string(b)
			}
			if limit == 0 {
				break
			}
		}
	}
	return extension.TruncateUTF8(string(compact), MaxAgentStatusBytes)
}
