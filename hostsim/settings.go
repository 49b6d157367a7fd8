package hostsim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// ProxyAgentSettings is the VM model's securityProfile.proxyAgentSettings
// in its ARM JSON shape (Microsoft.Compute API 2024-03-01 and later).
type ProxyAgentSettings struct {
	// Enabled turns the secure channel on; absent or false reports
	// secureChannelEnabled false.
	Enabled *bool `json:"enabled,omitempty"`
	// Mode is the deprecated VM-wide mode ("Audit" or "Enforce"); it applies
	// to every endpoint that names neither a mode nor a profile.
	Mode string `json:"mode,omitempty"`
	// KeyIncarnationID: changing it makes the host forget the latched key.
	KeyIncarnationID *int `json:"keyIncarnationId,omitempty"`
	// WireServer settings also govern the HostGAPlugin.
	WireServer *HostEndpointSettings `json:"wireServer,omitempty"`
	IMDS       *HostEndpointSettings `json:"imds,omitempty"`
	// AddProxyAgentExtension is accepted and ignored.
	AddProxyAgentExtension *bool `json:"addProxyAgentExtension,omitempty"`
}

// HostEndpointSettings configures one host endpoint: a mode ("Audit",
// "Enforce" or "Disabled") and/or the resource id of an
// inVMAccessControlProfile version whose rules apply. An explicit Mode wins
// over the profile's mode.
type HostEndpointSettings struct {
	Mode                                string `json:"mode,omitempty"`
	InVMAccessControlProfileReferenceID string `json:"inVMAccessControlProfileReferenceId,omitempty"`
}

// ProfileVersion is an inVMAccessControlProfile version resource in its ARM
// JSON shape; only Properties matter to the host.
type ProfileVersion struct {
	ID         string            `json:"id,omitempty"`
	Name       string            `json:"name,omitempty"`
	Properties ProfileProperties `json:"properties"`
}

// ProfileProperties are the properties of a profile version: its mode
// ("Audit", "Enforce", "Disabled"), its defaultAccess ("Allow" or "Deny")
// and its rules.
type ProfileProperties struct {
	Mode          string     `json:"mode"`
	DefaultAccess string     `json:"defaultAccess"`
	Rules         *msp.Rules `json:"rules,omitempty"`
}

// ParseSettings decodes proxyAgentSettings JSON. It accepts the bare object,
// or a VM model (or fragment) that holds it under securityProfile or
// properties.securityProfile, and validates every mode.
func ParseSettings(b []byte) (ProxyAgentSettings, error) {
	var wrap struct {
		ProxyAgentSettings *json.RawMessage `json:"proxyAgentSettings"`
		SecurityProfile    *struct {
			ProxyAgentSettings *json.RawMessage `json:"proxyAgentSettings"`
		} `json:"securityProfile"`
		Properties *struct {
			SecurityProfile *struct {
				ProxyAgentSettings *json.RawMessage `json:"proxyAgentSettings"`
			} `json:"securityProfile"`
		} `json:"properties"`
	}
	b = serdejson.TrimBOM(b)
	if err := json.Unmarshal(b, &wrap); err != nil {
		return ProxyAgentSettings{}, fmt.Errorf("proxyAgentSettings: %w", err)
	}
	raw := b
	switch {
	case wrap.ProxyAgentSettings != nil:
		raw = *wrap.ProxyAgentSettings
	case wrap.SecurityProfile != nil && wrap.SecurityProfile.ProxyAgentSettings != nil:
		raw = *wrap.SecurityProfile.ProxyAgentSettings
	case wrap.Properties != nil && wrap.Properties.SecurityProfile != nil &&
		wrap.Properties.SecurityProfile.ProxyAgentSettings != nil:
		raw = *wrap.Properties.SecurityProfile.ProxyAgentSettings
	}
	var s ProxyAgentSettings
	if err := json.Unmarshal(raw, &s); err != nil {
		return ProxyAgentSettings{}, fmt.Errorf("proxyAgentSettings: %w", err)
	}
	return s, s.Validate()
}

// Validate reports the first invalid field: a legacy mode other than Audit
// or Enforce, an endpoint mode other than Audit, Enforce or Disabled, or a
// negative keyIncarnationId.
func (s ProxyAgentSettings) Validate() error {
	if s.Mode != "" {
		if m, ok := msp.ParseMode(s.Mode); !ok || m == msp.ModeDisabled {
			return fmt.Errorf("proxyAgentSettings.mode %q: want Audit or Enforce", s.Mode)
		}
	}
	if s.KeyIncarnationID != nil && *s.KeyIncarnationID < 0 {
		return fmt.Errorf("proxyAgentSettings.keyIncarnationId %d is negative", *s.KeyIncarnationID)
	}
	for name, e := range map[string]*HostEndpointSettings{"wireServer": s.WireServer, "imds": s.IMDS} {
		if e == nil || e.Mode == "" {
			continue
		}
		if _, ok := msp.ParseMode(e.Mode); !ok {
			return fmt.Errorf("proxyAgentSettings.%s.mode %q: want Audit, Enforce or Disabled", name, e.Mode)
		}
	}
	return nil
}

// ParseProfile decodes an inVMAccessControlProfile version document, either
// the ARM resource ({"id", "name", "properties": {...}}) or its bare
// properties object, and validates mode and defaultAccess.
func ParseProfile(b []byte) (ProfileVersion, error) {
	b = serdejson.TrimBOM(b)
	var probe struct {
		Properties *json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return ProfileVersion{}, fmt.Errorf("inVMAccessControlProfile version: %w", err)
	}
	var p ProfileVersion
	var err error
	if probe.Properties != nil {
		err = json.Unmarshal(b, &p)
	} else {
		err = json.Unmarshal(b, &p.Properties)
	}
	if err != nil {
		return ProfileVersion{}, fmt.Errorf("inVMAccessControlProfile version: %w", err)
	}
	return p, p.Validate()
}

// Validate reports an invalid mode or defaultAccess.
func (p ProfileVersion) Validate() error {
	if _, ok := msp.ParseMode(p.Properties.Mode); !ok {
		return fmt.Errorf("profile mode %q: want Audit, Enforce or Disabled", p.Properties.Mode)
	}
	switch strings.ToLower(p.Properties.DefaultAccess) {
	case "allow", "deny":
	default:
		return fmt.Errorf("profile defaultAccess %q: want Allow or Deny", p.Properties.DefaultAccess)
	}
	return nil
}

// profileKey normalises an ARM resource id for lookup: ARM ids are
// case-insensitive and compared here without leading or trailing slashes.
func profileKey(id string) string {
	return strings.ToLower(strings.Trim(strings.TrimSpace(id), "/"))
}

// Status versions the WireServer can report.
const (
	StatusV1 = "1.0"
	StatusV2 = "2.0"
)

// DefaultMode is the mode of an enabled endpoint that names neither a mode
// nor a profile, when no legacy VM-wide mode is set either.
const DefaultMode = msp.ModeAudit

// deriveItem builds one service's authorization item from its endpoint
// settings, the legacy mode and the profiles. A referenced profile that is
// not known yields defaultAccess "deny" (fail closed).
func deriveItem(service string, e *HostEndpointSettings, legacy string, profiles map[string]ProfileVersion) *msp.AuthorizationItem {
	mode := DefaultMode
	if m, ok := msp.ParseMode(legacy); ok && legacy != "" {
		mode = m
	}
	access := "allow"
	var rules *msp.Rules
	ref := ""
	if e != nil && e.InVMAccessControlProfileReferenceID != "" {
		ref = e.InVMAccessControlProfileReferenceID
		if p, ok := profiles[profileKey(ref)]; ok {
			mode, _ = msp.ParseMode(p.Properties.Mode)
			access = strings.ToLower(p.Properties.DefaultAccess)
			rules = p.Properties.Rules
		} else {
			access = "deny"
		}
	}
	if e != nil && e.Mode != "" {
		mode, _ = msp.ParseMode(e.Mode)
	}
	item := &msp.AuthorizationItem{DefaultAccess: access, Mode: string(mode), Rules: rules}
	// The id changes whenever the item's content does, because the agent
	// recompiles rules only when the id changes (protocol.md §3.6).
	h := sha256.New()
	content, _ := json.Marshal(item)
	h.Write(content)
	h.Write([]byte(ref))
	item.ID = service + "-" + hex.EncodeToString(h.Sum(nil))[:16]
	return item
}

// buildStatus derives the secure-channel status the WireServer reports from
// the settings, profiles, latched key and status version.
func buildStatus(s ProxyAgentSettings, profiles map[string]ProfileVersion, latched *msp.Key, version string) msp.KeyStatus {
	ks := msp.KeyStatus{
		AuthorizationScheme:       msp.Scheme,
		KeyDeliveryMethod:         "http",
		RequiredClaimsHeaderPairs: []string{"isRoot"},
		Version:                   version,
	}
	if latched != nil {
		g := latched.GUID
		ks.KeyGUID = &g
	}
	if s.KeyIncarnationID != nil {
		n := uint32(*s.KeyIncarnationID)
		ks.KeyIncarnationID = &n
	}
	enabled := s.Enabled != nil && *s.Enabled
	var ws, imds *msp.AuthorizationItem
	if enabled {
		ws = deriveItem("wireserver", s.WireServer, s.Mode, profiles)
		imds = deriveItem("imds", s.IMDS, s.Mode, profiles)
	}
	if version == StatusV1 {
		state := "Disabled"
		if enabled && ws.Mode == string(msp.ModeEnforce) {
			state = "Wireserver"
			if imds.Mode == string(msp.ModeEnforce) {
				state = "WireserverAndImds"
			}
		}
		ks.SecureChannelState = &state
		return ks
	}
	ks.SecureChannelEnabled = &enabled
	if enabled {
		hga := *ws
		hga.ID = "hostga" + strings.TrimPrefix(ws.ID, "wireserver")
		ks.AuthorizationRules = &msp.AuthorizationRules{WireServer: ws, IMDS: imds, HostGA: &hga}
	}
	return ks
}

var errUnknownVersion = errors.New(`status version must be "1.0" or "2.0"`)
