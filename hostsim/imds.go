package hostsim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// imdsVersions are the api-version values IMDS accepts, newest first.
var imdsVersions = []string{
	"2025-04-07", "2024-07-17", "2024-03-15", "2023-11-15", "2023-07-01", "2023-03-01", "2021-12-13",
	"2021-11-15", "2021-11-01", "2021-10-01", "2021-05-01", "2021-03-01", "2021-02-01", "2021-01-01",
	"2020-12-01", "2020-10-01", "2020-09-01", "2020-07-15", "2020-06-01", "2019-11-01", "2019-08-15",
	"2019-08-01", "2019-06-04", "2019-06-01", "2019-04-30", "2019-03-11", "2019-02-01", "2018-10-01",
	"2018-04-02", "2018-02-01", "2017-12-01", "2017-10-01", "2017-08-01", "2017-04-02", "2017-03-01",
}

// computeSince lists compute fields newer than the oldest api-version, with
// the version that introduced them; older api-versions do not see them.
var computeSince = map[string]string{
	"tagsList":                   "2019-06-04",
	"securityProfile":            "2020-06-01",
	"osProfile":                  "2021-01-01",
	"userData":                   "2021-01-01",
	"isHostCompatibilityLayerVm": "2021-02-01",
}

// instanceJSON is the simulated VM's instance metadata (fake values).
const instanceJSON = `{
 "compute": {
  "azEnvironment": "AzurePublicCloud",
  "isHostCompatibilityLayerVm": "false",
  "location": "westeurope",
  "name": "` + VMName + `",
  "offer": "ubuntu-24_04-lts",
  "osProfile": {"adminUsername": "azureuser", "computerName": "` + VMName + `", "disablePasswordAuthentication": "true"},
  "osType": "Linux",
  "provider": "Microsoft.Compute",
  "publisher": "canonical",
  "resourceGroupName": "hostsim-rg",
  "resourceId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hostsim-rg/providers/Microsoft.Compute/virtualMachines/` + VMName + `",
  "securityProfile": {"secureBootEnabled": "true", "virtualTpmEnabled": "true"},
  "sku": "server",
  "subscriptionId": "00000000-0000-0000-0000-000000000000",
  "tags": "env:test",
  "tagsList": [{"name": "env", "value": "test"}],
  "userData": "",
  "version": "24.04.202504230",
  "vmId": "` + VMID + `",
  "vmSize": "Standard_D2s_v5",
  "zone": "1"
 },
 "network": {
  "interface": [{
   "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}], "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
   "ipv6": {"ipAddress": []},
   "macAddress": "000D3A000001"
  }]
 }
}`

// instanceDoc is instanceJSON decoded once; handlers only read it.
var instanceDoc = func() map[string]any {
	var m map[string]any
	if err := json.Unmarshal([]byte(instanceJSON), &m); err != nil {
		panic("hostsim: bad instance JSON: " + err.Error())
	}
	return m
}()

// instanceByVersion caches the rendered full document per api-version.
var instanceByVersion sync.Map

func instanceFor(apiVersion string) map[string]any {
	compute := map[string]any{}
	for k, v := range instanceDoc["compute"].(map[string]any) {
		if since, ok := computeSince[k]; ok && apiVersion < since {
			continue
		}
		compute[k] = v
	}
	return map[string]any{"compute": compute, "network": instanceDoc["network"]}
}

func imdsError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func (s *Sim) serveIMDS(q *served) {
	r, w := q.r, q.w
	path, rawQuery := msp.SplitTarget(r.RequestURI)
	if len(r.Header.Values("X-Forwarded-For")) > 0 {
		imdsError(w, http.StatusBadRequest, "Bad request. Requests with X-Forwarded-For header are not allowed")
		return
	}
	if !strings.EqualFold(strings.TrimSpace(r.Header.Get("Metadata")), "true") {
		imdsError(w, http.StatusBadRequest, "Bad request. Required metadata header not specified")
		return
	}
	params, dup := parseIMDSQuery(rawQuery)
	if dup != "" {
		imdsError(w, http.StatusBadRequest, "Bad request. Query parameter is specified more than once: "+strconv.Quote(dup))
		return
	}
	client, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		client = r.RemoteAddr
	}
	if !s.limiter.allow(client, q.now) {
		imdsError(w, http.StatusTooManyRequests, "Too many requests")
		return
	}
	if r.Method != http.MethodGet {
		imdsError(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	apiVersion := params["api-version"]
	if !slices.Contains(imdsVersions, apiVersion) {
		writeJSON(w, http.StatusBadRequest, map[string]any{
			"error":           "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
			"newest-versions": imdsVersions[:3],
		})
		return
	}
	switch {
	case path == "/metadata/identity/oauth2/token":
		s.serveToken(q, params)
	case path == "/metadata/instance" || strings.HasPrefix(path, "/metadata/instance/"):
		serveInstance(w, path, apiVersion, params["format"])
	default:
		imdsError(w, http.StatusNotFound, "Not found")
	}
}

// parseIMDSQuery decodes the query into lower-cased names and values; dup
// names the first parameter that appears twice (names compare
// case-insensitively after decoding).
func parseIMDSQuery(rawQuery string) (params map[string]string, dup string) {
	params = map[string]string{}
	if rawQuery == "" {
		return params, ""
	}
	for _, piece := range strings.Split(rawQuery, "&") {
		if piece == "" {
			continue
		}
		k, v, _ := strings.Cut(piece, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		k = strings.ToLower(k)
		if _, seen := params[k]; seen {
			return nil, k
		}
		params[k] = v
	}
	return params, ""
}

// serveInstance answers /metadata/instance and any path below it: a
// non-leaf node as JSON, a leaf as text unless format=json.
func serveInstance(w http.ResponseWriter, path, apiVersion, format string) {
	format = strings.ToLower(format)
	if format != "" && format != "json" && format != "text" {
		imdsError(w, http.StatusBadRequest, "Bad request. Invalid format: "+strconv.Quote(format))
		return
	}
	if path == "/metadata/instance" || path == "/metadata/instance/" {
		if format == "text" {
			imdsError(w, http.StatusBadRequest, "Bad request. Format text is not supported for non-leaf nodes")
			return
		}
		if b, ok := instanceByVersion.Load(apiVersion); ok {
			writeRawJSON(w, b.([]byte))
			return
		}
		b, _ := json.Marshal(instanceFor(apiVersion))
		instanceByVersion.Store(apiVersion, b)
		writeRawJSON(w, b)
		return
	}
	var node any = instanceFor(apiVersion)
	for _, seg := range strings.Split(strings.Trim(strings.TrimPrefix(path, "/metadata/instance/"), "/"), "/") {
		switch n := node.(type) {
		case map[string]any:
			v, ok := n[seg]
			if !ok {
				imdsError(w, http.StatusNotFound, "Not found")
				return
			}
			node = v
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(n) {
				imdsError(w, http.StatusNotFound, "Not found")
				return
			}
			node = n[i]
		default:
			imdsError(w, http.StatusNotFound, "Not found")
			return
		}
	}
	leaf, isLeaf := node.(string)
	switch {
	case isLeaf && format != "json":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(leaf))
	case !isLeaf && format == "text":
		imdsError(w, http.StatusBadRequest, "Bad request. Format text is not supported for non-leaf nodes")
	default:
		writeJSON(w, http.StatusOK, node)
	}
}

func writeRawJSON(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// serveToken answers the managed-identity token endpoint with an obviously
// fake bearer token for the requested resource.
func (s *Sim) serveToken(q *served, params map[string]string) {
	resource := params["resource"]
	if resource == "" {
		writeJSON(q.w, http.StatusBadRequest, map[string]string{
			"error":             "invalid_request",
			"error_description": "Required query variable 'resource' is missing",
		})
		return
	}
	sum := sha256.Sum256([]byte(resource))
	now := q.now.Unix()
	writeJSON(q.w, http.StatusOK, map[string]string{
		"access_token":   "FAKE-HOSTSIM-TOKEN." + hex.EncodeToString(sum[:8]) + ".NOT-A-REAL-JWT",
		"client_id":      "00000000-5ee5-4a11-8f00-0000000000c1",
		"expires_in":     "86399",
		"expires_on":     fmt.Sprint(now + 86399),
		"ext_expires_in": "86399",
		"not_before":     fmt.Sprint(now),
		"resource":       resource,
		"token_type":     "Bearer",
	})
}

func (s *Sim) serveHostGA(q *served) {
	if s.serveFabricHostGA(q) {
		return
	}
	r, w := q.r, q.w
	path, _ := msp.SplitTarget(r.RequestURI)
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch path {
	case "/health":
		writeJSON(w, http.StatusOK, map[string]string{"status": "Healthy"})
	case "/status":
		writeJSON(w, http.StatusOK, map[string]any{"status": "Ready", "version": "1.0.8.179", "hostsim": true})
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}
