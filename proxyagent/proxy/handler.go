package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/provision"
)

// headerMetadata is required by the local endpoints.
const headerMetadata = "Metadata"

// allowedMethods is the method allow-list of protocol.md §4.5 step 2; the
// value is the Allow header of a 405.
var allowedMethods = map[string]bool{
	http.MethodGet: true, http.MethodPost: true, http.MethodPut: true, http.MethodDelete: true,
	http.MethodHead: true, http.MethodOptions: true, http.MethodPatch: true,
}

const allowHeader = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"

// serveRequest runs the per-request flow of protocol.md §4.5 for a request
// on the client connection st.
func (s *Server) serveRequest(w http.ResponseWriter, r *http.Request, st *connState) {
	start := time.Now()
	ev := audit.Event{Time: start, Method: r.Method, Target: r.RequestURI}
	defer func() {
		ev.Latency = time.Since(start)
		s.finish(&ev)
	}()

	ev.TCPID, ev.Client = st.tcpID, st.client
	ev.Caller = st.caller
	if st.redirected {
		ev.Dest, ev.Service = st.dest, st.service
	}

	// 413 first, for every request (quirk 18).
	exempt := msp.Exempt(r.Method, r.RequestURI)
	limit := s.opts.MaxSignedBody
	if exempt {
		limit = s.opts.MaxExemptBody
	} else if st.redirected && isUpload(st.service, r.Method, r.RequestURI) {
		limit = s.opts.MaxUploadBody
	}
	if r.ContentLength > limit {
		// Upstream's body-limit layer answers before its request flow:
		// no request id, not in proxyConnectionsCount or the summaries
		// (audited all the same).
		ev.BeforeFlow = true
		ev.Status, ev.Error = http.StatusRequestEntityTooLarge, "request body exceeds "+strconv.FormatInt(limit, 10)+" bytes"
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Connection", "close")
		w.WriteHeader(ev.Status)
		w.Write([]byte("length limit exceeded"))
		return
	}
	ev.HTTPID = s.requests.Add(1) // §4.5 step 1: proxyConnectionsCount
	if what := invalidHeader(r); what != "" {
		ev.Status, ev.Error = http.StatusBadRequest, "invalid bytes in "+what
		reply(w, ev.Status, true)
		return
	}
	if !allowedMethods[r.Method] {
		ev.Status, ev.Error = http.StatusMethodNotAllowed, "method not allowed"
		h := w.Header()
		h.Set("Allow", allowHeader)
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Connection", "close")
		w.WriteHeader(ev.Status)
		w.Write([]byte("Method Not Allowed"))
		return
	}
	if st.viaContainer && !st.redirected {
		ev.Status, ev.Error = http.StatusMisdirectedRequest, "container listener: not a redirected connection"
		reply(w, ev.Status, true)
		return
	}
	// "OPTIONS *" is the one request without a path (RFC 9110 §9.3.7);
	// every other target goes through the canonicaliser.
	if r.Method != http.MethodOptions || r.RequestURI != "*" {
		if terr := msp.CheckTarget(r.RequestURI); terr != nil {
			ev.Status, ev.Error = terr.Status, terr.Reason
			reply(w, ev.Status, true)
			return
		}
	}
	switch localTarget(r.RequestURI) {
	case provision.Path:
		ev.Local = true
		if s.opts.Local == nil {
			ev.Status, ev.Error = http.StatusInternalServerError, "provisioning state unavailable"
			reply(w, ev.Status, false)
			return
		}
		ev.Status, ev.Error = provision.Serve(w, r, s.opts.Local)
		return
	case msp.AggregateStatusPath:
		ev.Local = true
		s.aggregateStatus(w, r, st, &ev)
		return
	}
	if !st.redirected {
		ev.Status, ev.Error = http.StatusMisdirectedRequest, "no original destination (direct connection)"
		reply(w, ev.Status, true)
		return
	}
	if st.caller == nil {
		ev.Status, ev.Error = http.StatusMisdirectedRequest, "no claims"
		if st.claimsErr != nil {
			ev.Error = "no claims: " + st.claimsErr.Error()
		}
		reply(w, ev.Status, true)
		return
	}
	d := s.opts.Authorizer.Authorize(authz.Request{Service: st.service, Method: r.Method, Target: r.RequestURI, Caller: st.caller})
	ev.Authorized, ev.Decision = true, d
	if d.Result == authz.Deny {
		ev.Status = http.StatusForbidden
		ev.Error = audit.BlockError(st.caller)
		reply(w, ev.Status, true)
		return
	}
	if r.Host == "" && !r.ProtoAtLeast(1, 1) && st.redirected {
		// HTTP/1.0 has no Host requirement; the request goes on as
		// HTTP/1.1, so it names the destination, as upstream's client
		// adds it from the URL (port only when not 80).
		r.Host = hostOf(st.dest)
	}
	if r.Host == "" {
		// Nothing would tell the host which name was asked for; a
		// metadata client always sends one (README, deviations).
		ev.Status, ev.Error = http.StatusBadRequest, "missing required Host header"
		reply(w, ev.Status, true)
		return
	}
	if !exempt {
		release, ok := s.reserveUpload(r, limit)
		if !ok {
			ev.Status, ev.Error = http.StatusServiceUnavailable, "upload buffer budget spent"
			w.Header().Set("Retry-After", "5")
			reply(w, ev.Status, true)
			return
		}
		defer release()
	}
	s.forward(w, r, st, exempt, limit, &ev)
}

// finish records ev and logs it.
func (s *Server) finish(ev *audit.Event) {
	if s.opts.Recorder != nil {
		s.opts.Recorder.Record(*ev)
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.Request(ev)
	}
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	attrs := []any{"httpId", ev.HTTPID, "tcpId", ev.TCPID, "method", ev.Method, "target", ev.Target,
		"client", ev.Client.String(), "status", ev.Status, "latency", ev.Latency}
	if ev.Dest.IsValid() {
		attrs = append(attrs, "dest", ev.Dest.String())
	}
	if ev.Caller != nil {
		attrs = append(attrs, "uid", ev.Caller.UserID, "pid", ev.Caller.ProcessID, "process", ev.Caller.ProcessFullPath)
	}
	if ev.Authorized {
		attrs = append(attrs, "decision", ev.Decision.Result.String(), "service", string(ev.Decision.Service),
			"rule", ev.Decision.RuleID, "epoch", ev.Decision.Epoch)
	}
	if ev.Error != "" {
		attrs = append(attrs, "error", ev.Error)
	}
	s.log.Debug("proxy request", attrs...)
}

// hostOf is the Host field naming dest: its address, with the port unless
// it is 80.
func hostOf(dest netip.AddrPort) string {
	a := dest.Addr().Unmap()
	if dest.Port() == 80 {
		if a.Is6() {
			return "[" + a.String() + "]"
		}
		return a.String()
	}
	return netip.AddrPortFrom(a, dest.Port()).String()
}

// reply writes an empty-bodied response, closing the connection when asked.
func reply(w http.ResponseWriter, status int, closeConn bool) {
	if closeConn {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// invalidHeader names the first part of the request holding bytes that
// must not be forwarded or signed (anything but visible ASCII, space and
// tab in values; anything but visible ASCII in the target), or "".
func invalidHeader(r *http.Request) string {
	for i := 0; i < len(r.RequestURI); i++ {
		if c := r.RequestURI[i]; c <= 0x20 || c >= 0x7f {
			return "request target"
		}
	}
	if !msp.ValidHeaderValue(r.Host) {
		return "header Host"
	}
	for name, vv := range r.Header {
		for _, v := range vv {
			if !msp.ValidHeaderValue(v) {
				return "header " + name
			}
		}
	}
	return ""
}

// localTarget returns the local endpoint path a request-target names: the
// origin-form path alone, or followed by a bare "?". Anything else ("").
func localTarget(target string) string {
	t := strings.TrimSuffix(target, "?")
	if t == provision.Path || t == msp.AggregateStatusPath {
		return t
	}
	return ""
}

func (s *Server) aggregateStatus(w http.ResponseWriter, r *http.Request, st *connState, ev *audit.Event) {
	if _, ok := r.Header[headerMetadata]; !ok {
		ev.Status, ev.Error = http.StatusBadRequest, "missing Metadata header"
		reply(w, ev.Status, true)
		return
	}
	if st.caller == nil || !identity.VMRoot(st.caller.UserID, st.caller.OtherNetns) {
		ev.Status, ev.Error = http.StatusForbidden, "aggregate status requires a redirected elevated caller in the agent's network namespace"
		reply(w, ev.Status, true)
		return
	}
	if s.opts.Local == nil {
		ev.Status, ev.Error = http.StatusInternalServerError, "status unavailable"
		reply(w, ev.Status, false)
		return
	}
	body, err := s.opts.Local.AggregateStatus()
	if err != nil {
		ev.Status, ev.Error = http.StatusInternalServerError, "aggregate status: "+err.Error()
		reply(w, ev.Status, false)
		return
	}
	ev.Status = http.StatusOK
	writeJSON(w, body)
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}
