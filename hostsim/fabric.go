package hostsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// The fabric protocol a guest agent's extension handler uses (waagent):
// the VM model's extension resources become a goal state whose
// ExtensionsConfig names each handler, its manifest and its settings; the
// manifest and the handler packages are served by a simulated storage
// account and through HostGAPlugin /extensionArtifact; the guest agent
// uploads the VM status blob through HostGAPlugin PUT /status (or straight
// to storage), and the simulator turns the latest blob into the instance
// view a user reads with `az vm get-instance-view`.

// ExtensionResourceType is the ARM type of a VM extension resource.
const ExtensionResourceType = "Microsoft.Compute/virtualMachines/extensions"

// hostGAAPIVersion is the HostGAPlugin API version waagent requires in
// /versions before it uses the plugin.
const hostGAAPIVersion = "2015-09-01"

// statusBlobPath is the status blob's path on the storage endpoint; its
// SAS-style query is fake.
const statusBlobPath = "/vhds/" + VMName + ".status"

const statusBlobQuery = "sv=2018-03-28&sr=b&sk=system-1&sp=rw&se=9999-01-01T00%3A00%3A00Z&sig=hostsim"

// VMExtension is one extension resource of the VM model
// (Microsoft.Compute/virtualMachines/extensions), with the properties the
// host derives the goal state from.
type VMExtension struct {
	Name       string                `json:"name"`
	Type       string                `json:"type,omitempty"`
	Properties VMExtensionProperties `json:"properties"`
}

// VMExtensionProperties are an extension resource's properties.
// TypeHandlerVersion is "major.minor" (or longer); the host picks the
// newest published package of that major version at or above it, of that
// minor version too unless AutoUpgradeMinorVersion. A change of Settings,
// ForceUpdateTag or the picked version is a new sequence number. State is
// hostsim's own: "" or "enabled", or "disabled" (ARM has no such property;
// it stands for the plugin state CRP sends).
type VMExtensionProperties struct {
	Publisher               string          `json:"publisher"`
	Type                    string          `json:"type"`
	TypeHandlerVersion      string          `json:"typeHandlerVersion"`
	AutoUpgradeMinorVersion bool            `json:"autoUpgradeMinorVersion,omitempty"`
	Settings                json.RawMessage `json:"settings,omitempty"`
	ForceUpdateTag          string          `json:"forceUpdateTag,omitempty"`
	State                   string          `json:"state,omitempty"`
	// ProtectedSettings is read only to refuse it: the simulator has no
	// certificate to encrypt it with, and taking the model while dropping
	// it would hand the extension settings other than the ones asked for.
	ProtectedSettings json.RawMessage `json:"protectedSettings,omitempty"`
}

// HandlerName is the handler's full name, publisher.type.
func (p VMExtensionProperties) HandlerName() string { return p.Publisher + "." + p.Type }

// VMModel is the part of an ARM VM model the simulator uses: the security
// profile's proxyAgentSettings and the extension resources.
type VMModel struct {
	Properties struct {
		SecurityProfile struct {
			ProxyAgentSettings *ProxyAgentSettings `json:"proxyAgentSettings,omitempty"`
		} `json:"securityProfile"`
	} `json:"properties"`
	Resources []VMExtension `json:"resources"`
}

// ParseVMModel decodes a VM model and validates its extensions: each needs
// a name, publisher, type and typeHandlerVersion, names are unique, and
// settings (when present) are a JSON object.
func ParseVMModel(b []byte) (VMModel, error) {
	var m VMModel
	if err := json.Unmarshal(serdejson.TrimBOM(b), &m); err != nil {
		return m, fmt.Errorf("VM model: %w", err)
	}
	if ps := m.Properties.SecurityProfile.ProxyAgentSettings; ps != nil {
		if err := ps.Validate(); err != nil {
			return m, err
		}
	}
	seen := map[string]bool{}
	for i, x := range m.Resources {
		p := x.Properties
		switch {
		case x.Type != "" && !strings.EqualFold(x.Type, ExtensionResourceType):
			return m, fmt.Errorf("VM model: resource %d has type %q, want %s", i, x.Type, ExtensionResourceType)
		case x.Name == "" || p.Publisher == "" || p.Type == "" || p.TypeHandlerVersion == "":
			return m, fmt.Errorf("VM model: extension %d needs name, publisher, type and typeHandlerVersion", i)
		case seen[strings.ToLower(p.HandlerName())]:
			return m, fmt.Errorf("VM model: handler %s appears twice", p.HandlerName())
		case p.State != "" && p.State != "enabled" && p.State != "disabled":
			return m, fmt.Errorf("VM model: extension %s state %q, want enabled or disabled", x.Name, p.State)
		}
		if _, err := parseVersion(p.TypeHandlerVersion); err != nil {
			return m, fmt.Errorf("VM model: extension %s: %w", x.Name, err)
		}
		if ps := bytes.TrimSpace(p.ProtectedSettings); len(ps) > 0 && string(ps) != "null" {
			return m, fmt.Errorf("VM model: extension %s has protectedSettings, which the simulator does not support (it has no certificate to encrypt them with)", x.Name)
		}
		if len(p.Settings) > 0 && !bytes.HasPrefix(bytes.TrimSpace(p.Settings), []byte("{")) && string(bytes.TrimSpace(p.Settings)) != "null" {
			return m, fmt.Errorf("VM model: extension %s settings are not a JSON object", x.Name)
		}
		seen[strings.ToLower(p.HandlerName())] = true
	}
	return m, nil
}

// parseVersion splits a dotted version into numbers.
func parseVersion(v string) ([]int, error) {
	parts := strings.Split(v, ".")
	out := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("version %q is not dotted numbers", v)
		}
		out[i] = n
	}
	return out, nil
}

func compareVersions(a, b []int) int {
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// fabricHandler is one handler in the goal state.
type fabricHandler struct {
	name     string // publisher.type
	resource string // the extension resource's name
	version  string // the picked package version
	state    string // enabled, disabled or uninstall
	settings string // the RuntimeSettings document
	seq      int
	// key is what a change of makes a new sequence number.
	key string
}

// fabric is the simulator's extension state: published packages, the goal
// state derived from the VM model, and the status blob. It has its own
// lock; Sim methods call into it without holding Sim.mu.
type fabric struct {
	mu          sync.Mutex
	now         func() time.Time
	model       []VMExtension
	packages    map[string]map[string][]byte // handler name (lower case) → version → zip
	handlers    []*fabricHandler
	incarnation int
	createdOn   time.Time
	storageBase string // http://host:port of the storage endpoint
	blob        []byte // the latest status blob
	blobType    string
	blobAt      time.Time
	uploads     int
}

func newFabric(now func() time.Time) *fabric {
	return &fabric{now: now, packages: map[string]map[string][]byte{}, incarnation: Incarnation, createdOn: now()}
}

// PublishPackage makes a handler package (the zip waagent downloads)
// available as version of handler name (publisher.type). It does not
// change the goal state by itself: a VM model that asks for the handler
// picks the version at its next change (as a new publication does on
// Azure only for a new goal state).
func (s *Sim) PublishPackage(name, version string, zip []byte) error {
	if name == "" || strings.ContainsAny(name, "/?#& ") {
		return fmt.Errorf("package name %q is invalid", name)
	}
	if _, err := parseVersion(version); err != nil {
		return err
	}
	if len(zip) < 4 || !bytes.HasPrefix(zip, []byte("PK")) {
		return errors.New("package is not a zip file")
	}
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	k := strings.ToLower(name)
	if f.packages[k] == nil {
		f.packages[k] = map[string][]byte{}
	}
	f.packages[k][version] = zip
	return nil
}

// Packages lists the published packages: handler name → versions, oldest
// first.
func (s *Sim) Packages() map[string][]string {
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for name, vs := range f.packages {
		out[name] = sortedVersions(vs)
	}
	return out
}

func sortedVersions(vs map[string][]byte) []string {
	var out []string
	for v := range vs {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := parseVersion(out[i])
		b, _ := parseVersion(out[j])
		return compareVersions(a, b) < 0
	})
	return out
}

// SetVMModel applies a VM model: its proxyAgentSettings (when present)
// replace the current ones, and its extension resources become the goal
// state. A changed set of handlers, versions, settings or states is a new
// incarnation; an extension resource that disappears stays in the goal
// state with state "uninstall", as CRP sends it after a deletion.
func (s *Sim) SetVMModel(m VMModel) error {
	if ps := m.Properties.SecurityProfile.ProxyAgentSettings; ps != nil {
		if err := s.SetSettings(*ps); err != nil {
			return err
		}
	}
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	old := map[string]*fabricHandler{}
	for _, h := range f.handlers {
		old[strings.ToLower(h.name)] = h
	}
	var next []*fabricHandler
	changed := false
	for _, x := range m.Resources {
		p := x.Properties
		h := &fabricHandler{name: p.HandlerName(), resource: x.Name, state: "enabled",
			version: f.pickVersionLocked(p), settings: runtimeSettings(p.Settings)}
		if p.State == "disabled" {
			h.state = "disabled"
		}
		h.key = h.version + "\x00" + h.settings + "\x00" + p.ForceUpdateTag
		if o, ok := old[strings.ToLower(h.name)]; ok {
			delete(old, strings.ToLower(h.name))
			h.seq = o.seq
			if o.key != h.key || o.state != h.state {
				changed = true
				if o.key != h.key {
					h.seq = o.seq + 1
				}
			}
		} else {
			changed = true
		}
		next = append(next, h)
	}
	for _, o := range f.handlers {
		if _, gone := old[strings.ToLower(o.name)]; !gone {
			continue
		}
		if o.state != "uninstall" {
			changed = true
		}
		u := *o
		u.state = "uninstall"
		next = append(next, &u)
	}
	f.model = append([]VMExtension(nil), m.Resources...)
	f.handlers = next
	if changed {
		f.incarnation++
		f.createdOn = f.now()
		s.log.Info("hostsim new goal state", "incarnation", f.incarnation, "handlers", len(next))
	}
	return nil
}

// VMExtensions returns the VM model's extension resources.
func (s *Sim) VMExtensions() []VMExtension {
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]VMExtension(nil), f.model...)
}

// GoalStateIncarnation is the current goal state's incarnation.
func (s *Sim) GoalStateIncarnation() int {
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.incarnation
}

// pickVersionLocked chooses the package version for p: the newest
// published version with p's major version (and minor version unless
// AutoUpgradeMinorVersion) at or above TypeHandlerVersion; with none
// published, TypeHandlerVersion itself (waagent then reports that the
// manifest lacks it).
func (f *fabric) pickVersionLocked(p VMExtensionProperties) string {
	want, _ := parseVersion(p.TypeHandlerVersion)
	best, bestV := "", []int(nil)
	for v := range f.packages[strings.ToLower(p.HandlerName())] {
		pv, err := parseVersion(v)
		if err != nil || pv[0] != want[0] || compareVersions(pv, want) < 0 {
			continue
		}
		if !p.AutoUpgradeMinorVersion && len(want) > 1 && (len(pv) < 2 || pv[1] != want[1]) {
			continue
		}
		if best == "" || compareVersions(pv, bestV) > 0 {
			best, bestV = v, pv
		}
	}
	if best == "" {
		return p.TypeHandlerVersion
	}
	return best
}

// runtimeSettings is the RuntimeSettings document for public settings.
func runtimeSettings(settings json.RawMessage) string {
	pub := json.RawMessage("{}")
	if t := bytes.TrimSpace(settings); len(t) > 0 && string(t) != "null" {
		var c bytes.Buffer
		if json.Compact(&c, t) == nil {
			pub = c.Bytes()
		}
	}
	doc := map[string]any{"runtimeSettings": []any{map[string]any{"handlerSettings": map[string]any{"publicSettings": pub}}}}
	b, _ := json.Marshal(doc)
	return string(b)
}

// manifestURL, packageURL and statusBlobURL are where the storage
// endpoint serves a handler's manifest, a package and the status blob.
func (f *fabric) manifestURL(name string) string {
	return f.storageBase + "/extensions/" + name + "/manifest.xml"
}

func (f *fabric) packageURL(name, version string) string {
	return f.storageBase + "/extensions/" + name + "/" + version + ".zip"
}

func (f *fabric) statusBlobURL() string {
	return f.storageBase + statusBlobPath + "?" + statusBlobQuery
}

// goalStateXML renders the goal state of the current incarnation; host
// is the WireServer host the client used.
func (f *fabric) goalStateXML(host string) string {
	f.mu.Lock()
	n := f.incarnation
	f.mu.Unlock()
	if host == "" {
		host = msp.WireServerAddr.Addr().String()
	}
	cfg := func(kind string) string {
		return html.EscapeString(fmt.Sprintf("http://%s/machine/%s/%s?comp=config&type=%s&incarnation=%d", host, ContainerID, RoleInstanceID, kind, n))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2015-04-05</Version>
  <Incarnation>%d</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>%s</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>%s</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>%s</HostingEnvironmentConfig>
          <SharedConfig>%s</SharedConfig>
          <ExtensionsConfig>%s</ExtensionsConfig>
          <FullConfig>%s</FullConfig>
          <ConfigName>%s.%s.%d.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
`, n, ContainerID, RoleInstanceID, cfg("hostingEnvironmentConfig"), cfg("sharedConfig"), cfg("extensionsConfig"),
		cfg("fullConfig"), ContainerID, RoleInstanceID, n)
	return b.String()
}

// ExtensionsConfigXML renders the ExtensionsConfig of the current goal
// state (no certificates: settings are public only).
func (s *Sim) ExtensionsConfigXML() string {
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	esc := html.EscapeString
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="%d"><GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <GAFamilies />
</GuestAgentExtension>
<Plugins>
`, f.incarnation)
	for _, h := range f.handlers {
		m := esc(f.manifestURL(h.name))
		fmt.Fprintf(&b, `  <Plugin name="%s" version="%s" location="%s" state="%s" autoUpgrade="false" failoverlocation="%s" runAsStartupTask="false" isJson="true" useExactVersion="true" />
`, esc(h.name), esc(h.version), m, h.state, m)
	}
	b.WriteString("</Plugins>\n<PluginSettings>\n")
	for _, h := range f.handlers {
		if h.state == "uninstall" {
			continue
		}
		fmt.Fprintf(&b, "  <Plugin name=\"%s\" version=\"%s\">\n    <RuntimeSettings seqNo=\"%d\">%s</RuntimeSettings>\n  </Plugin>\n",
			esc(h.name), esc(h.version), h.seq, xmlText.Replace(h.settings))
	}
	// createdOnTicks: 100 ns ticks since 0001-01-01.
	ticks := (f.createdOn.Unix()+62135596800)*10000000 + int64(f.createdOn.Nanosecond()/100)
	fmt.Fprintf(&b, `</PluginSettings>
<StatusUploadBlob statusBlobType="BlockBlob">%s</StatusUploadBlob>
<InVMGoalStateMetaData inSvdSeqNo="%d" createdOnTicks="%d" activityId="00000000-5ee5-4a11-8f00-%012d" correlationId="00000000-5ee5-4a11-8f01-%012d" />
</Extensions>
`, esc(f.statusBlobURL()), f.incarnation, ticks, f.incarnation, f.incarnation)
	return b.String()
}

// xmlText escapes element text (quotes stay readable in the settings).
var xmlText = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// manifestXML lists every published version of handler name, each with
// its package URL.
func (f *fabric) manifestXML(name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vs, ok := f.packages[strings.ToLower(name)]
	if !ok {
		return "", false
	}
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?>
<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <Plugins>
`)
	for _, v := range sortedVersions(vs) {
		fmt.Fprintf(&b, "    <Plugin>\n      <Version>%s</Version>\n      <Uris>\n        <Uri>%s</Uri>\n      </Uris>\n    </Plugin>\n",
			html.EscapeString(v), html.EscapeString(f.packageURL(name, v)))
	}
	b.WriteString("  </Plugins>\n  <InternalPlugins />\n</PluginVersionManifest>\n")
	return b.String(), true
}

// StatusBlob returns the latest VM status blob the guest uploaded (nil
// when none) and how many uploads arrived.
func (s *Sim) StatusBlob() ([]byte, int) {
	f := s.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.TrimRight(append([]byte(nil), f.blob...), " \x00"), f.uploads
}
