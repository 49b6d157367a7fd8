package hostsim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// maxPackageBody bounds a package published through the control endpoint.
const maxPackageBody = 256 << 20

// serveFabricWireServer answers the goal state and the ExtensionsConfig;
// it reports false for every other request.
func (s *Sim) serveFabricWireServer(q *served) bool {
	r, w := q.r, q.w
	if r.Method != http.MethodGet {
		return false
	}
	path, query := msp.SplitTarget(r.RequestURI)
	comp := queryValue(query, "comp")
	switch {
	case (path == "/machine" || path == "/machine/") && comp == "goalstate":
		writeXML(w, http.StatusOK, s.fab.goalStateXML(r.Host))
	case path == "/machine/"+ContainerID+"/"+RoleInstanceID && comp == "config" && queryValue(query, "type") == "extensionsConfig":
		writeXML(w, http.StatusOK, s.ExtensionsConfigXML())
	default:
		return false
	}
	return true
}

// serveFabricHostGA answers HostGAPlugin /versions, /extensionArtifact and
// PUT /status; it reports false for every other request.
func (s *Sim) serveFabricHostGA(q *served) bool {
	r, w := q.r, q.w
	path, _ := msp.SplitTarget(r.RequestURI)
	switch {
	case path == "/versions" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, []string{hostGAAPIVersion, msp.WireServerAPIVersion})
	case path == "/extensionArtifact" && r.Method == http.MethodGet:
		loc := r.Header.Get("x-ms-artifact-location")
		u, err := url.Parse(loc)
		if loc == "" || err != nil {
			http.Error(w, "x-ms-artifact-location is missing or not a URL", http.StatusBadRequest)
			return true
		}
		s.fab.serveStorageGet(w, u.Path)
	case path == "/vmSettings":
		// Fast Track is not simulated: waagent falls back to the
		// WireServer's ExtensionsConfig.
		http.Error(w, "vmSettings are not supported by this host", http.StatusNotFound)
	case path == "/status" && r.Method == http.MethodPut:
		s.putStatusThroughHostGA(w, q.body)
	default:
		return false
	}
	return true
}

// putStatusThroughHostGA applies waagent's HostGAPlugin status document:
// {"requestUri": blob SAS URL, "headers": [{headerName, headerValue}],
// "content": base64 of the bytes to write (absent when creating a page
// blob)}.
func (s *Sim) putStatusThroughHostGA(w http.ResponseWriter, body []byte) {
	var doc struct {
		RequestURI string `json:"requestUri"`
		Headers    []struct {
			Name  string `json:"headerName"`
			Value string `json:"headerValue"`
		} `json:"headers"`
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		http.Error(w, "status document is not JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	u, err := url.Parse(doc.RequestURI)
	if err != nil || u.Path != statusBlobPath {
		http.Error(w, "requestUri is not this VM's status blob", http.StatusBadRequest)
		return
	}
	h := http.Header{}
	for _, kv := range doc.Headers {
		h.Set(kv.Name, kv.Value)
	}
	var content []byte
	if doc.Content != nil {
		if content, err = base64.StdEncoding.DecodeString(*doc.Content); err != nil {
			http.Error(w, "content is not base64", http.StatusBadRequest)
			return
		}
	}
	code, msg := s.fab.writeBlob(h, u.RawQuery, content)
	if code != http.StatusCreated {
		http.Error(w, msg, code)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// writeBlob writes the status blob as Azure storage does for a block blob
// PUT, a page blob create (x-ms-blob-type PageBlob, size in
// x-ms-blob-content-length) and a page write (comp=page, x-ms-range).
func (f *fabric) writeBlob(h http.Header, rawQuery string, content []byte) (int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case queryValue(rawQuery, "comp") == "page":
		if f.blobType != "PageBlob" {
			return http.StatusConflict, "page write to a blob that is not a page blob"
		}
		var start, end int
		if _, err := fmt.Sscanf(h.Get("x-ms-range"), "bytes=%d-%d", &start, &end); err != nil ||
			start < 0 || end < start || end >= len(f.blob) || end-start+1 != len(content) {
			return http.StatusRequestedRangeNotSatisfiable, "bad x-ms-range"
		}
		copy(f.blob[start:], content)
	case strings.EqualFold(h.Get("x-ms-blob-type"), "PageBlob"):
		n, err := strconv.Atoi(h.Get("x-ms-blob-content-length"))
		if err != nil || n < 0 || n%512 != 0 || n > maxSignedBody {
			return http.StatusBadRequest, "bad x-ms-blob-content-length"
		}
		f.blob, f.blobType = make([]byte, n), "PageBlob"
	default:
		f.blob, f.blobType = append([]byte(nil), content...), "BlockBlob"
	}
	f.blobAt = f.now()
	f.uploads++
	return http.StatusCreated, ""
}

// StorageHandler serves the simulated storage account: handler manifests
// and packages (GET /extensions/{handler}/manifest.xml and
// /extensions/{handler}/{version}.zip) and the status blob (GET and PUT
// /vhds/<vm>.status).
func (s *Sim) StorageHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet:
			s.fab.serveStorageGet(w, r.URL.Path)
		case r.Method == http.MethodPut && r.URL.Path == statusBlobPath:
			body, err := io.ReadAll(io.LimitReader(r.Body, maxSignedBody+1))
			if err != nil || len(body) > maxSignedBody {
				http.Error(w, "cannot read body", http.StatusBadRequest)
				return
			}
			code, msg := s.fab.writeBlob(r.Header, r.URL.RawQuery, body)
			if code != http.StatusCreated {
				http.Error(w, msg, code)
				return
			}
			w.WriteHeader(code)
		default:
			http.Error(w, "not found", http.StatusNotFound)
		}
	})
}

func (f *fabric) serveStorageGet(w http.ResponseWriter, path string) {
	if path == statusBlobPath {
		f.mu.Lock()
		blob := append([]byte(nil), f.blob...)
		f.mu.Unlock()
		if blob == nil {
			http.Error(w, "BlobNotFound", http.StatusNotFound)
			return
		}
		w.Write(blob)
		return
	}
	rest, ok := strings.CutPrefix(path, "/extensions/")
	name, file, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		http.Error(w, "BlobNotFound", http.StatusNotFound)
		return
	}
	if file == "manifest.xml" {
		m, ok := f.manifestXML(name)
		if !ok {
			http.Error(w, "BlobNotFound", http.StatusNotFound)
			return
		}
		writeXML(w, http.StatusOK, m)
		return
	}
	version, ok := strings.CutSuffix(file, ".zip")
	f.mu.Lock()
	zip := f.packages[strings.ToLower(name)][version]
	f.mu.Unlock()
	if !ok || zip == nil {
		http.Error(w, "BlobNotFound", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(zip)
}

// serveFabricControl answers the control endpoints of the fabric; it
// reports false for every other request:
//
//	GET  /vm                        the VM model's extension resources
//	PUT  /vm                        apply a VM model (SetVMModel)
//	GET  /packages                  published packages
//	PUT  /packages/{handler}/{ver}  publish a package (body: the zip)
//	GET  /goalstate                 incarnation and ExtensionsConfig
//	GET  /instanceView              the instance view (InstanceView)
//	GET  /statusBlob                the latest status blob as uploaded
func (s *Sim) serveFabricControl(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	switch {
	case path == "/vm" && r.Method == http.MethodGet:
		var m VMModel
		ps := s.Settings()
		m.Properties.SecurityProfile.ProxyAgentSettings = &ps
		m.Resources = s.VMExtensions()
		writeJSON(w, http.StatusOK, m)
	case path == "/vm" && r.Method == http.MethodPut:
		body, err := io.ReadAll(io.LimitReader(r.Body, maxControlBody))
		if err != nil {
			controlError(w, http.StatusBadRequest, "cannot read body")
			return true
		}
		m, err := ParseVMModel(body)
		if err == nil {
			err = s.SetVMModel(m)
		}
		if err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return true
		}
		writeJSON(w, http.StatusOK, map[string]int{"incarnation": s.GoalStateIncarnation()})
	case path == "/packages" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Packages())
	case strings.HasPrefix(path, "/packages/") && r.Method == http.MethodPut:
		name, version, ok := strings.Cut(strings.TrimPrefix(path, "/packages/"), "/")
		body, err := io.ReadAll(io.LimitReader(r.Body, maxPackageBody))
		if !ok || err != nil {
			controlError(w, http.StatusBadRequest, "want PUT /packages/{handler}/{version} with the zip as body")
			return true
		}
		if err := s.PublishPackage(name, version, body); err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return true
		}
		writeJSON(w, http.StatusOK, s.Packages())
	case path == "/goalstate" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"incarnation": s.GoalStateIncarnation(), "extensionsConfig": s.ExtensionsConfigXML()})
	case path == "/instanceView" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.InstanceView())
	case path == "/statusBlob" && r.Method == http.MethodGet:
		blob, _ := s.StatusBlob()
		if len(blob) == 0 {
			controlError(w, http.StatusNotFound, "no status blob uploaded yet")
			return true
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(bytes.TrimSpace(blob))
	default:
		return false
	}
	return true
}
