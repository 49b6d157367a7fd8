package hostsim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// State is the host's view reported by GET /state on the control endpoint.
type State struct {
	// LatchedKeyGUID is null when no key is latched.
	LatchedKeyGUID     *string  `json:"latchedKeyGuid"`
	KeyIncarnationID   *int     `json:"keyIncarnationId"`
	StatusVersion      string   `json:"statusVersion"`
	SecureChannelState string   `json:"secureChannelState"`
	WireServerMode     msp.Mode `json:"wireServerMode"`
	IMDSMode           msp.Mode `json:"imdsMode"`
	HostGAMode         msp.Mode `json:"hostGAMode"`
	PendingKeys        int      `json:"pendingKeys"`
	JournalDropped     uint64   `json:"journalDropped"`
}

// State returns the host's current view: latched key, modes, versions.
func (s *Sim) State() State {
	s.mu.Lock()
	st := buildStatus(s.settings, s.profiles, s.latched, s.statusVersion)
	out := State{StatusVersion: s.statusVersion, PendingKeys: len(s.pending)}
	if s.latched != nil {
		g := s.latched.GUID
		out.LatchedKeyGUID = &g
	}
	if s.settings.KeyIncarnationID != nil {
		n := *s.settings.KeyIncarnationID
		out.KeyIncarnationID = &n
	}
	s.mu.Unlock()
	m := st.Derive()
	out.SecureChannelState, out.WireServerMode, out.IMDSMode, out.HostGAMode = m.State, m.WireServer, m.IMDS, m.HostGA
	out.JournalDropped = s.journal.Dropped()
	return out
}

// Options are the run-time knobs settable with PUT /options; absent fields
// are left unchanged.
type Options struct {
	StatusVersion *string `json:"statusVersion,omitempty"`
	// IMDSRateLimit in requests per second per client IP; 0 disables.
	IMDSRateLimit *int `json:"imdsRateLimit,omitempty"`
	// DateSkew as a Go duration ("5m", "30s").
	DateSkew *string `json:"dateSkew,omitempty"`
}

const maxControlBody = 4 << 20

// ControlHandler returns the control API served on the control address:
//
//	GET    /settings            current proxyAgentSettings (ARM JSON)
//	PUT    /settings            replace them (bare object or VM model)
//	GET    /profiles            stored profile versions keyed by id
//	PUT    /profiles/{id}       store a profile version (id: its ARM resource id;
//	                            PUT /profiles?id=... or the document's "id" also work)
//	DELETE /profiles/{id}       remove one
//	GET    /status              the secure-channel status the WireServer reports
//	GET    /state               State (latched key GUID, modes, ...)
//	POST   /rotate              bump keyIncarnationId and forget the key
//	PUT    /options             Options (status version, rate limit, skew)
//	GET    /journal             journal entries as a JSON array; filters:
//	                            ?service=&verdict=&since=<seq>
//	DELETE /journal             clear the journal
//
// Errors are {"error": "..."} with status 400 or 404.
func (s *Sim) ControlHandler() http.Handler {
	return http.HandlerFunc(s.serveControl)
}

func controlError(w http.ResponseWriter, code int, err string) {
	writeJSON(w, code, map[string]string{"error": err})
}

func (s *Sim) serveControl(w http.ResponseWriter, r *http.Request) {
	if s.serveFabricControl(w, r) {
		return
	}
	path := r.URL.Path
	var body []byte
	if r.Method == http.MethodPut || r.Method == http.MethodPost {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, maxControlBody))
		if err != nil {
			controlError(w, http.StatusBadRequest, "cannot read body")
			return
		}
	}
	switch {
	case path == "/settings" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Settings())
	case path == "/settings" && r.Method == http.MethodPut:
		ps, err := ParseSettings(body)
		if err == nil {
			err = s.SetSettings(ps)
		}
		if err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return
		}
		s.log.Info("hostsim settings changed", "settings", string(body))
		writeJSON(w, http.StatusOK, s.Settings())
	case path == "/profiles" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Profiles())
	case (path == "/profiles" || strings.HasPrefix(path, "/profiles/")) && r.Method == http.MethodPut:
		p, err := ParseProfile(body)
		if err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return
		}
		id := profileIDFrom(r)
		if id == "" {
			id = p.ID
		}
		if err := s.SetProfile(id, p); err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return
		}
		s.log.Info("hostsim profile stored", "id", id)
		writeJSON(w, http.StatusOK, p)
	case strings.HasPrefix(path, "/profiles") && r.Method == http.MethodDelete:
		id := profileIDFrom(r)
		if id == "" {
			controlError(w, http.StatusBadRequest, "profile id is empty")
			return
		}
		s.DeleteProfile(id)
		w.WriteHeader(http.StatusNoContent)
	case path == "/status" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Status())
	case path == "/state" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.State())
	case path == "/rotate" && r.Method == http.MethodPost:
		n := s.Rotate()
		writeJSON(w, http.StatusOK, map[string]int{"keyIncarnationId": n})
	case path == "/options" && r.Method == http.MethodPut:
		s.putOptions(w, body)
	case path == "/journal" && r.Method == http.MethodGet:
		s.getJournal(w, r.URL.Query())
	case path == "/journal" && r.Method == http.MethodDelete:
		s.journal.Clear()
		w.WriteHeader(http.StatusNoContent)
	default:
		controlError(w, http.StatusNotFound, "no such control endpoint: "+r.Method+" "+path)
	}
}

// profileIDFrom takes a profile id from ?id= or from the path after
// "/profiles/" (ARM ids contain slashes, so the rest of the path is the id).
func profileIDFrom(r *http.Request) string {
	if id := r.URL.Query().Get("id"); id != "" {
		return id
	}
	return strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/profiles"), "/")
}

func (s *Sim) putOptions(w http.ResponseWriter, body []byte) {
	var o Options
	if err := json.Unmarshal(body, &o); err != nil {
		controlError(w, http.StatusBadRequest, "options: "+err.Error())
		return
	}
	var skew time.Duration
	if o.DateSkew != nil {
		d, err := time.ParseDuration(*o.DateSkew)
		if err != nil || d <= 0 {
			controlError(w, http.StatusBadRequest, "options: dateSkew must be a positive duration")
			return
		}
		skew = d
	}
	if o.StatusVersion != nil {
		if err := s.SetStatusVersion(*o.StatusVersion); err != nil {
			controlError(w, http.StatusBadRequest, "options: "+err.Error())
			return
		}
	}
	if o.IMDSRateLimit != nil {
		s.SetIMDSRateLimit(*o.IMDSRateLimit)
	}
	if skew > 0 {
		s.SetDateSkew(skew)
	}
	writeJSON(w, http.StatusOK, s.State())
}

func (s *Sim) getJournal(w http.ResponseWriter, q url.Values) {
	var since uint64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			controlError(w, http.StatusBadRequest, "since must be a sequence number")
			return
		}
		since = n
	}
	service, verdict := Service(q.Get("service")), Verdict(q.Get("verdict"))
	out := []Entry{}
	for _, e := range s.journal.Entries() {
		if e.Seq <= since || (service != "" && e.Service != service) || (verdict != "" && e.Verdict != verdict) {
			continue
		}
		out = append(out, e)
	}
	writeJSON(w, http.StatusOK, out)
}
