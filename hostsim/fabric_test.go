package hostsim

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"strings"
	"testing"
)

func testZip(t *testing.T, content string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	f, _ := zw.Create("HandlerManifest.json")
	f.Write([]byte(content))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func model(t *testing.T, doc string) VMModel {
	t.Helper()
	m, err := ParseVMModel([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func get(t *testing.T, url string, hdr ...string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// extensionsConfig is the part of ExtensionsConfig waagent reads.
type extensionsConfig struct {
	Plugins []struct {
		Name     string `xml:"name,attr"`
		Version  string `xml:"version,attr"`
		Location string `xml:"location,attr"`
		State    string `xml:"state,attr"`
	} `xml:"Plugins>Plugin"`
	Settings []struct {
		Name    string `xml:"name,attr"`
		Version string `xml:"version,attr"`
		Runtime struct {
			SeqNo int    `xml:"seqNo,attr"`
			Text  string `xml:",chardata"`
		} `xml:"RuntimeSettings"`
	} `xml:"PluginSettings>Plugin"`
	StatusUploadBlob struct {
		Type string `xml:"statusBlobType,attr"`
		URL  string `xml:",chardata"`
	}
}

func readConfig(t *testing.T, s *Sim) extensionsConfig {
	t.Helper()
	var c extensionsConfig
	if err := xml.Unmarshal([]byte(s.ExtensionsConfigXML()), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFabricGoalState: extension resources become plugins with the
// picked version, settings with sequence numbers that change only with the
// settings or version, new incarnations only on a change, and removal as
// state uninstall.
func TestFabricGoalState(t *testing.T) {
	s := startSim(t, Config{})
	const name = "Pub.Ext"
	for _, v := range []string{"1.0.0", "1.0.1", "1.2.0", "2.0.0"} {
		if err := s.PublishPackage(name, v, testZip(t, v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PublishPackage(name, "1.0", []byte("not a zip")); err == nil {
		t.Error("a non-zip package was accepted")
	}
	ext := func(ver string, auto bool, settings string) string {
		return `{"resources":[{"name":"e","type":"Microsoft.Compute/virtualMachines/extensions","properties":{"publisher":"Pub","type":"Ext","typeHandlerVersion":"` +
			ver + `","autoUpgradeMinorVersion":` + map[bool]string{true: "true", false: "false"}[auto] + `,"settings":` + settings + `}}]}`
	}
	inc0 := s.GoalStateIncarnation()
	steps := []struct {
		doc         string
		version     string
		seq         int
		incarnation int
	}{
		{ext("1.0", false, `{"a":1}`), "1.0.1", 0, inc0 + 1},
		{ext("1.0", false, `{"a":1}`), "1.0.1", 0, inc0 + 1}, // no change
		{ext("1.0", false, `{"a":2}`), "1.0.1", 1, inc0 + 2},
		{ext("1.0", true, `{"a":2}`), "1.2.0", 2, inc0 + 3},
	}
	for i, st := range steps {
		if err := s.SetVMModel(model(t, st.doc)); err != nil {
			t.Fatal(err)
		}
		c := readConfig(t, s)
		if len(c.Plugins) != 1 || c.Plugins[0].Name != name || c.Plugins[0].Version != st.version || c.Plugins[0].State != "enabled" {
			t.Fatalf("step %d: plugins %+v", i, c.Plugins)
		}
		if len(c.Settings) != 1 || c.Settings[0].Version != st.version || c.Settings[0].Runtime.SeqNo != st.seq {
			t.Fatalf("step %d: settings %+v", i, c.Settings)
		}
		if got := s.GoalStateIncarnation(); got != st.incarnation {
			t.Errorf("step %d: incarnation %d, want %d", i, got, st.incarnation)
		}
		var rs struct {
			RuntimeSettings []struct {
				HandlerSettings struct {
					PublicSettings map[string]int `json:"publicSettings"`
				} `json:"handlerSettings"`
			} `json:"runtimeSettings"`
		}
		if err := json.Unmarshal([]byte(c.Settings[0].Runtime.Text), &rs); err != nil || len(rs.RuntimeSettings) != 1 || rs.RuntimeSettings[0].HandlerSettings.PublicSettings["a"] == 0 {
			t.Errorf("step %d: runtime settings %q: %v", i, c.Settings[0].Runtime.Text, err)
		}
	}
	// The goal state document names this incarnation and its config.
	code, body := get(t, "http://"+s.Addrs().WireServer+"/machine/?comp=goalstate")
	if code != 200 || !strings.Contains(string(body), "<Incarnation>"+itoa(inc0+3)+"</Incarnation>") ||
		!strings.Contains(string(body), "type=extensionsConfig&amp;incarnation="+itoa(inc0+3)) {
		t.Errorf("goal state %d:\n%s", code, body)
	}

	// Manifest and package, from storage and through /extensionArtifact.
	c := readConfig(t, s)
	code, body = get(t, c.Plugins[0].Location)
	if code != 200 || strings.Count(string(body), "<Version>") != 4 {
		t.Fatalf("manifest %d:\n%s", code, body)
	}
	pkgURL := strings.Replace(c.Plugins[0].Location, "manifest.xml", "1.2.0.zip", 1)
	code, viaStorage := get(t, pkgURL)
	_, viaHostGA := get(t, "http://"+s.Addrs().HostGA+"/extensionArtifact", "x-ms-artifact-location", pkgURL)
	if code != 200 || !bytes.Equal(viaStorage, testZip(t, "1.2.0")) || !bytes.Equal(viaHostGA, viaStorage) {
		t.Errorf("package: %d, storage %d bytes, hostga %d bytes", code, len(viaStorage), len(viaHostGA))
	}
	if code, body := get(t, "http://"+s.Addrs().HostGA+"/versions"); code != 200 || !strings.Contains(string(body), hostGAAPIVersion) {
		t.Errorf("/versions %d %s", code, body)
	}

	// Removal: state uninstall, no settings, new incarnation.
	if err := s.SetVMModel(model(t, `{"resources":[]}`)); err != nil {
		t.Fatal(err)
	}
	c = readConfig(t, s)
	if len(c.Plugins) != 1 || c.Plugins[0].State != "uninstall" || len(c.Settings) != 0 || s.GoalStateIncarnation() != inc0+4 {
		t.Errorf("after removal: %+v, incarnation %d", c, s.GoalStateIncarnation())
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestParseVMModelRejects(t *testing.T) {
	for _, doc := range []string{
		`{"resources":[{"name":"e","properties":{"publisher":"P","type":"T"}}]}`,
		`{"resources":[{"name":"e","properties":{"publisher":"P","type":"T","typeHandlerVersion":"x.1"}}]}`,
		`{"resources":[{"name":"e","type":"Microsoft.Compute/disks","properties":{"publisher":"P","type":"T","typeHandlerVersion":"1.0"}}]}`,
		`{"resources":[{"name":"a","properties":{"publisher":"P","type":"T","typeHandlerVersion":"1.0"}},{"name":"b","properties":{"publisher":"p","type":"t","typeHandlerVersion":"1.0"}}]}`,
		`{"resources":[{"name":"e","properties":{"publisher":"P","type":"T","typeHandlerVersion":"1.0","settings":[1]}}]}`,
		`{"properties":{"securityProfile":{"proxyAgentSettings":{"mode":"Sometimes"}}}}`,
		`{"resources":[{"name":"e","properties":{"publisher":"P","type":"T","typeHandlerVersion":"1.0","protectedSettings":{"secret":"s3"}}}]}`,
	} {
		if _, err := ParseVMModel([]byte(doc)); err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
}

// statusDoc is a VM status blob in waagent's format.
func statusDoc(handlerCode int, handlerMsg, extStatus string, extCode int) string {
	b, _ := json.Marshal(map[string]any{
		"version": "1.1", "timestampUTC": "2025-04-23T12:00:00Z",
		"aggregateStatus": map[string]any{
			"guestAgentStatus": map[string]any{"version": "2.7.3.0", "status": "Ready",
				"formattedMessage": map[string]any{"lang": "en-US", "message": "Guest Agent is running"}},
			"handlerAggregateStatus": []any{map[string]any{
				"handlerName": "Pub.Ext", "handlerVersion": "1.2.0", "status": "Ready", "code": handlerCode, "useExactVersion": true,
				"formattedMessage": map[string]any{"lang": "en-US", "message": handlerMsg},
				"runtimeSettingsStatus": map[string]any{"sequenceNumber": 2, "settingsStatus": map[string]any{
					"timestampUTC": "2025-04-23T12:00:00Z", "version": 1.0,
					"status": map[string]any{"name": "S", "operation": "Enable", "status": extStatus, "code": extCode,
						"formattedMessage": map[string]any{"lang": "en-US", "message": "ext says " + extStatus},
						"substatus": []any{map[string]any{"name": "Sub", "status": "success", "code": 0,
							"formattedMessage": map[string]any{"lang": "en-US", "message": "fine"}}}}}},
			}},
		},
	})
	return string(b)
}

// putStatus uploads blob as waagent does through HostGAPlugin PUT /status
// (a block blob, base64 content in a JSON document).
func putStatus(t *testing.T, s *Sim, blob string) int {
	t.Helper()
	c := readConfig(t, s)
	doc, _ := json.Marshal(map[string]any{"requestUri": c.StatusUploadBlob.URL, "content": base64.StdEncoding.EncodeToString([]byte(blob)),
		"headers": []map[string]string{{"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"}}})
	req, _ := http.NewRequest(http.MethodPut, "http://"+s.Addrs().HostGA+"/status", bytes.NewReader(doc))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestInstanceView: each uploaded status blob becomes the instance view
// Azure shows; a handler error (waagent's code -1) and an extension error
// are visible in the codes.
func TestInstanceView(t *testing.T) {
	s := startSim(t, Config{Settings: ProxyAgentSettings{}})
	s.PublishPackage("Pub.Ext", "1.2.0", testZip(t, "x"))
	if err := s.SetVMModel(model(t, `{"resources":[{"name":"e","properties":{"publisher":"Pub","type":"Ext","typeHandlerVersion":"1.2"}}]}`)); err != nil {
		t.Fatal(err)
	}
	iv := s.InstanceView()
	if iv.VMAgent != nil || len(iv.Extensions) != 1 || iv.Extensions[0].Statuses[0].Code != "ProvisioningState/transitioning" {
		t.Fatalf("before any upload: %+v", iv)
	}
	if code := putStatus(t, s, statusDoc(0, "", "success", 0)); code != 200 {
		t.Fatalf("PUT /status: %d", code)
	}
	iv = s.InstanceView()
	ev, h := iv.Extensions[0], iv.VMAgent.ExtensionHandlers[0]
	if iv.VMAgent.VMAgentVersion != "2.7.3.0" || iv.VMAgent.Statuses[0].DisplayStatus != "Ready" || iv.StatusUploads != 1 {
		t.Errorf("vm agent %+v", iv.VMAgent)
	}
	if h.Status.Code != "ProvisioningState/succeeded" || h.TypeHandlerVersion != "1.2.0" {
		t.Errorf("handler %+v", h)
	}
	if ev.Name != "e" || ev.TypeHandlerVersion != "1.2.0" || ev.Statuses[0].Code != "ProvisioningState/succeeded" ||
		ev.Statuses[0].Message != "ext says success" || len(ev.Substatuses) != 1 || ev.Substatuses[0].Code != "ComponentStatus/Sub/succeeded" {
		t.Errorf("extension %+v", ev)
	}

	putStatus(t, s, statusDoc(-1, "[ExtensionError] Failed to get heart beat file", "error", 7))
	iv = s.InstanceView()
	ev, h = iv.Extensions[0], iv.VMAgent.ExtensionHandlers[0]
	if h.Status.Code != "ProvisioningState/failed/-1" || !strings.Contains(h.Status.Message, "heart beat") {
		t.Errorf("handler error not shown: %+v", h)
	}
	if ev.Statuses[0].Code != "ProvisioningState/failed/7" || ev.Statuses[0].Level != "Error" {
		t.Errorf("extension error not shown: %+v", ev.Statuses[0])
	}

	// Direct upload to storage (waagent's fallback) counts the same.
	c := readConfig(t, s)
	req, _ := http.NewRequest(http.MethodPut, c.StatusUploadBlob.URL, strings.NewReader(statusDoc(0, "", "transitioning", 0)))
	req.Header.Set("x-ms-blob-type", "BlockBlob")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("direct upload: %v %v", resp, err)
	}
	resp.Body.Close()
	if iv := s.InstanceView(); iv.Extensions[0].Statuses[0].Code != "ProvisioningState/transitioning" || iv.StatusUploads != 3 {
		t.Errorf("after direct upload: %+v", iv.Extensions[0])
	}
}
