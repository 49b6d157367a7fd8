package hostsim

import (
	"encoding/json"
	"html"
	"io"
	"net/http"
	"strings"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// The simulated VM's fixed identity (obviously fake values).
const (
	ContainerID    = "00000000-5ee5-4a11-8f00-000000000001"
	RoleInstanceID = "00000000-5ee5-4a11-8f00-000000000002.hostsim-vm"
	VMID           = "00000000-5ee5-4a11-8f00-000000000003"
	VMName         = "hostsim-vm"
	Incarnation    = 1
)

func (s *Sim) serveWireServer(q *served) {
	if s.serveFabricWireServer(q) {
		return
	}
	r, w := q.r, q.w
	path, query := msp.SplitTarget(r.RequestURI)
	comp := queryValue(query, "comp")
	switch {
	case path == msp.StatusPath && r.Method == http.MethodGet:
		st := s.Status()
		writeJSON(w, http.StatusOK, st)
	case path == msp.KeyPath && r.Method == http.MethodPost:
		s.serveKeyIssue(q)
	case q.attestKey != nil:
		if !s.latch(q.attestKey) {
			writeUnauthorized(w, WireServer, VerdictInvalid)
			return
		}
		s.log.Info("hostsim latched key", "keyGuid", q.attestKey.GUID)
		w.WriteHeader(http.StatusOK)
	case (path == "/" || path == "") && comp == "versions" && r.Method == http.MethodGet:
		writeXML(w, http.StatusOK, versionsXML)
	case (path == "/machine" || path == "/machine/") && comp == "health" && r.Method == http.MethodPost:
		w.WriteHeader(http.StatusOK)
	case (path == "/machine" || path == "/machine/") && comp == "telemetrydata" && r.Method == http.MethodPost:
		w.WriteHeader(http.StatusOK)
	case strings.EqualFold(path, "/vmAgentLog") && r.Method == http.MethodPut:
		w.WriteHeader(http.StatusOK)
	case path == "/machine/"+ContainerID+"/"+RoleInstanceID && comp == "config" && r.Method == http.MethodGet:
		switch queryValue(query, "type") {
		case "sharedConfig":
			writeXML(w, http.StatusOK, sharedConfigXML)
		case "hostingEnvironmentConfig":
			writeXML(w, http.StatusOK, hostingEnvXML)
		default:
			writeXML(w, http.StatusBadRequest, wsErrorXML("Bad request: unknown config type"))
		}
	default:
		writeXML(w, http.StatusNotFound, wsErrorXML("The requested resource was not found"))
	}
}

// serveKeyIssue answers POST /secure-channel/key with a fresh pending key.
// A body, when present, must ask for the Azure-HMAC-SHA256 scheme.
func (s *Sim) serveKeyIssue(q *served) {
	if len(q.body) > 0 {
		var req struct {
			AuthorizationScheme string `json:"authorizationScheme"`
		}
		if err := json.Unmarshal(q.body, &req); err != nil || req.AuthorizationScheme != msp.Scheme {
			writeJSON(q.w, http.StatusBadRequest, map[string]string{"error": "authorizationScheme must be " + msp.Scheme})
			return
		}
	}
	k, err := s.issueKey()
	if err != nil {
		http.Error(q.w, "cannot generate key", http.StatusInternalServerError)
		return
	}
	s.log.Info("hostsim issued key", "keyGuid", k.GUID)
	writeJSON(q.w, http.StatusOK, k)
}

// queryValue returns the raw value of the first query parameter named name
// (case-insensitive), "" when absent.
func queryValue(rawQuery, name string) string {
	for _, piece := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(piece, "=")
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	w.Write(b)
}

func writeXML(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func wsErrorXML(msg string) string {
	return `<?xml version="1.0" encoding="utf-8"?>` + "\n<Error><Code>Error</Code><Message>" +
		html.EscapeString(msg) + "</Message></Error>\n"
}

const versionsXML = `<?xml version="1.0" encoding="utf-8"?>
<Versions>
  <Preferred><Version>2015-04-05</Version></Preferred>
  <Supported><Version>2015-04-05</Version><Version>2012-11-30</Version><Version>2012-09-15</Version></Supported>
</Versions>
`

const sharedConfigXML = `<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="1">
  <Deployment name="` + ContainerID + `" guid="{` + ContainerID + `}" incarnation="0" isNonCancellableTopologyChangeEnabled="false">
    <Service name="hostsim" guid="{00000000-0000-0000-0000-000000000000}" />
    <ServiceInstance name="` + ContainerID + `.0" guid="{` + VMID + `}" />
  </Deployment>
  <Incarnation number="1" instance="` + VMName + `" guid="{` + VMID + `}" />
  <Role guid="{` + VMID + `}" name="` + VMName + `" settleTimeSeconds="0" />
  <Instances>
    <Instance id="` + VMName + `" address="10.0.0.4">
      <InputEndpoints />
    </Instance>
  </Instances>
</SharedConfig>
`

const hostingEnvXML = `<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">
  <StoredCertificates />
  <Deployment name="` + ContainerID + `" guid="{` + ContainerID + `}" incarnation="0" />
  <Incarnation number="1" instance="` + VMName + `" guid="{` + VMID + `}" />
  <Role guid="{` + VMID + `}" name="` + VMName + `" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="0" />
</HostingEnvironmentConfig>
`
