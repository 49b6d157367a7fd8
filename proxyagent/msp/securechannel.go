// The secure channel's wire types: the key status the WireServer
// reports (GET /secure-channel/status), the key it issues (POST
// /secure-channel/key, also the on-disk key file), and the authorization
// rules documents carried inside the status (shared/spec/protocol.md §1.2,
// §1.4, §3.1). Field names and JSON spellings are upstream's.

package msp

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opengpa/gpa/internal/serdejson"
)

// Paths and fixed request bodies of the secure-channel API on the WireServer.
const (
	StatusPath = "/secure-channel/status"
	KeyPath    = "/secure-channel/key"
	// AttestationPathFormat is formatted with the key GUID.
	AttestationPathFormat = "/secure-channel/key/%s/key-attestation"
	// KeyRequestBody is the exact 44-byte body of POST /secure-channel/key.
	KeyRequestBody = `{"authorizationScheme": "Azure-HMAC-SHA256"}`
	// MetadataHeaderValue is the Metadata header value upstream sends on
	// secure-channel calls (note the trailing space).
	MetadataHeaderValue = "True "
)

// Mode is a per-service enforcement mode, lower-case on the wire.
type Mode string

// The three modes. Anything else parsed from the wire is treated as
// Disabled by the authorizer (protocol.md §3.1).
const (
	ModeDisabled Mode = "disabled"
	ModeAudit    Mode = "audit"
	ModeEnforce  Mode = "enforce"
)

// ParseMode lower-cases s and maps it to a Mode; ok is false when s is not
// one of the three names (the caller decides what that means).
func ParseMode(s string) (m Mode, ok bool) {
	switch Mode(strings.ToLower(s)) {
	case ModeDisabled:
		return ModeDisabled, true
	case ModeAudit:
		return ModeAudit, true
	case ModeEnforce:
		return ModeEnforce, true
	}
	return ModeDisabled, false
}

// Title returns "Disabled", "Audit" or "Enforce", as used in state strings.
func (m Mode) Title() string {
	switch m {
	case ModeAudit:
		return "Audit"
	case ModeEnforce:
		return "Enforce"
	}
	return "Disabled"
}

// KeyStatus is the body of GET /secure-channel/status, in the v1.0 or v2.0
// shape. Unknown fields are ignored.
type KeyStatus struct {
	AuthorizationScheme       string              `json:"authorizationScheme"`
	KeyDeliveryMethod         string              `json:"keyDeliveryMethod"`
	KeyIncarnationID          *uint32             `json:"keyIncarnationId,omitempty"`
	KeyGUID                   *string             `json:"keyGuid"`
	RequiredClaimsHeaderPairs []string            `json:"requiredClaimsHeaderPairs,omitempty"`
	SecureChannelState        *string             `json:"secureChannelState,omitempty"`
	SecureChannelEnabled      *bool               `json:"secureChannelEnabled,omitempty"`
	Version                   string              `json:"version"`
	AuthorizationRules        *AuthorizationRules `json:"authorizationRules,omitempty"`
}

// ParseKeyStatus decodes a status body (a leading UTF-8 BOM is accepted)
// and checks the fields every version requires. It does not apply the
// validation of protocol.md §1.3; see Validate.
func ParseKeyStatus(body []byte) (*KeyStatus, error) {
	body, _ = keyStatusKeys.DropMiscased(serdejson.TrimBOM(body))
	var req struct {
		AuthorizationScheme *string `json:"authorizationScheme"`
		KeyDeliveryMethod   *string `json:"keyDeliveryMethod"`
		Version             *string `json:"version"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("key status: %w", err)
	}
	switch {
	case req.AuthorizationScheme == nil:
		return nil, errors.New("key status: missing field `authorizationScheme`")
	case req.KeyDeliveryMethod == nil:
		return nil, errors.New("key status: missing field `keyDeliveryMethod`")
	case req.Version == nil:
		return nil, errors.New("key status: missing field `version`")
	}
	var ks KeyStatus
	if err := json.Unmarshal(body, &ks); err != nil {
		return nil, fmt.Errorf("key status: %w", err)
	}
	return &ks, nil
}

// Validate applies protocol.md §1.3. Warnings (scheme or delivery method
// not the expected ones) are returned as text and do not fail; when a rule
// fails, the error's text carries them too, as upstream's message does.
func (s *KeyStatus) Validate() (warnings string, err error) {
	var w []string
	if s.AuthorizationScheme != "Azure-HMAC-SHA256" {
		w = append(w, fmt.Sprintf("authorizationScheme %q is not Azure-HMAC-SHA256", s.AuthorizationScheme))
	}
	if m := strings.ToLower(s.KeyDeliveryMethod); m != "http" && m != "vtpm" {
		w = append(w, fmt.Sprintf("unknown keyDeliveryMethod %q", s.KeyDeliveryMethod))
	}
	warnings = strings.Join(w, "; ")
	fail := func(msg string) (string, error) {
		if warnings != "" {
			msg = warnings + "; " + msg
		}
		return warnings, errors.New(msg)
	}
	if s.SecureChannelEnabled == nil && s.SecureChannelState == nil {
		return fail("both secureChannelEnabled and secureChannelState are missing")
	}
	if s.SecureChannelState != nil {
		switch strings.ToLower(*s.SecureChannelState) {
		case "disabled", "wireserver", "wireserverandimds":
		default:
			return fail(fmt.Sprintf("invalid secureChannelState %q", *s.SecureChannelState))
		}
	} else if s.Version == "1.0" {
		return fail("secureChannelState is required for version 1.0")
	}
	if s.SecureChannelEnabled == nil && s.Version == "2.0" {
		return fail("secureChannelEnabled is required for version 2.0")
	}
	return warnings, nil
}

// Modes are the three per-service modes and rule sources derived from a
// status, with the state string reported as keyLatchStatus.states
// .secureChannelState (protocol.md §1.5).
type Modes struct {
	State      string
	WireServer Mode
	IMDS       Mode
	HostGA     Mode
	// Raw mode strings as the host sent them (v2); an unknown string is not
	// "disabled" for redirection but compiles to Disabled (quirk 20).
	WireServerRaw, IMDSRaw string
}

// StateDisabled and StateUnknown are the special state strings.
const (
	StateDisabled = "disabled"
	StateUnknown  = "Unknown"
)

// Derive computes the state string and modes of protocol.md §1.5,
// reproducing upstream's double space before "IMDS" and HostGA mirroring
// the WireServer item.
func (s *KeyStatus) Derive() Modes {
	if s.Version == "2.0" {
		// The modes come from the rules items whatever the state: a host
		// that turns the channel off but still sends an item's mode keeps
		// that service redirected (and its rules checked), unsigned, as
		// upstream's mode getters do.
		var wsItem, imdsItem *AuthorizationItem
		if r := s.AuthorizationRules; r != nil {
			wsItem, imdsItem = r.WireServer, r.IMDS
		}
		wsRaw, imdsRaw := itemMode(wsItem), itemMode(imdsItem)
		ws, _ := ParseMode(wsRaw)
		imds, _ := ParseMode(imdsRaw)
		state := fmt.Sprintf("WireServer %s -  IMDS %s - HostGA %s", ws.Title(), imds.Title(), ws.Title())
		if s.SecureChannelEnabled == nil || !*s.SecureChannelEnabled || s.AuthorizationRules == nil {
			state = StateDisabled
		}
		return Modes{State: state, WireServer: ws, IMDS: imds, HostGA: ws, WireServerRaw: wsRaw, IMDSRaw: imdsRaw}
	}
	state := StateDisabled
	if s.SecureChannelState != nil {
		state = strings.ToLower(*s.SecureChannelState)
	}
	m := Modes{State: state, WireServer: ModeDisabled, IMDS: ModeDisabled, HostGA: ModeDisabled}
	switch state {
	case "wireserver":
		m.WireServer, m.IMDS, m.HostGA = ModeEnforce, ModeAudit, ModeEnforce
	case "wireserverandimds":
		m.WireServer, m.IMDS, m.HostGA = ModeEnforce, ModeEnforce, ModeEnforce
	case "audit":
		m.WireServer, m.IMDS, m.HostGA = ModeAudit, ModeAudit, ModeAudit
	}
	m.WireServerRaw, m.IMDSRaw = string(m.WireServer), string(m.IMDS)
	return m
}

func itemMode(it *AuthorizationItem) string {
	if it == nil {
		return string(ModeDisabled)
	}
	return strings.ToLower(it.Mode)
}

// IssuedKey is the body of POST /secure-channel/key and the content of a
// <guid>.key file. Key is hex text; never log a Key value.
type IssuedKey struct {
	AuthorizationScheme string  `json:"authorizationScheme"`
	IncarnationID       *uint32 `json:"incarnationId,omitempty"`
	GUID                string  `json:"guid"`
	Issued              string  `json:"issued"`
	Key                 string  `json:"key"`
}

// String names the key by GUID only, so printing an IssuedKey never leaks it.
func (k IssuedKey) String() string { return "secure-channel key " + k.GUID }

// GoString names the key by GUID only.
func (k IssuedKey) GoString() string { return k.String() }

// ParseIssuedKey decodes an IssuedKey (a leading UTF-8 BOM is accepted) and requires
// authorizationScheme, guid, issued and key. Errors never contain the key.
func ParseIssuedKey(body []byte) (*IssuedKey, error) {
	body, _ = issuedKeyKeys.DropMiscased(serdejson.TrimBOM(body))
	var raw struct {
		AuthorizationScheme *string `json:"authorizationScheme"`
		IncarnationID       *uint32 `json:"incarnationId"`
		GUID                *string `json:"guid"`
		Issued              *string `json:"issued"`
		Key                 *string `json:"key"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("key: invalid JSON at offset %d", se.Offset)
		}
		return nil, errors.New("key: invalid JSON value")
	}
	switch {
	case raw.AuthorizationScheme == nil:
		return nil, errors.New("key: missing field `authorizationScheme`")
	case raw.GUID == nil:
		return nil, errors.New("key: missing field `guid`")
	case raw.Issued == nil:
		return nil, errors.New("key: missing field `issued`")
	case raw.Key == nil:
		return nil, errors.New("key: missing field `key`")
	}
	return &IssuedKey{AuthorizationScheme: *raw.AuthorizationScheme, IncarnationID: raw.IncarnationID,
		GUID: *raw.GUID, Issued: *raw.Issued, Key: *raw.Key}, nil
}

// The top-level fields of a key status and of a key are read by their
// exact names, as upstream reads them: a key in other letter case is
// ignored (and a required field so spelt is missing).
var (
	keyStatusKeys = serdejson.Of[KeyStatus]()
	issuedKeyKeys = serdejson.Of[IssuedKey]()
)
