package msp

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// The authorization rules schema (protocol.md §3.1), defined once for the
// secure channel's key status, the authorizer, local rules files, rule
// snapshots and the simulated host. Presence is kept as upstream's Option
// types keep it: a list that is present but empty is a non-nil empty
// slice and is written back as [] (quirk 5 counts presence), an absent one
// is nil and is omitted; an identity selector named with an empty value
// stays specified.

// AuthorizationRules holds one rules item per service.
type AuthorizationRules struct {
	IMDS       *AuthorizationItem `json:"imds,omitempty"`
	WireServer *AuthorizationItem `json:"wireserver,omitempty"`
	HostGA     *AuthorizationItem `json:"hostga,omitempty"`
}

// AuthorizationItem is one service's rule set: its default, mode, id and
// optional rules (protocol.md §3.1). defaultAccess, mode and id are
// required on the wire.
type AuthorizationItem struct {
	DefaultAccess string `json:"defaultAccess"`
	Mode          string `json:"mode"`
	ID            string `json:"id"`
	Rules         *Rules `json:"rules,omitempty"`
}

// Rules is the RBAC body of an AuthorizationItem, also the body of an
// inVMAccessControlProfile version and of a local rules file. A nil list
// is absent; a non-nil empty list is present (see MarshalJSON).
type Rules struct {
	Privileges      []Privilege      `json:"privileges,omitempty"`
	Roles           []Role           `json:"roles,omitempty"`
	Identities      []Identity       `json:"identities,omitempty"`
	RoleAssignments []RoleAssignment `json:"roleAssignments,omitempty"`
}

// Privilege names a path prefix and optional required query parameters.
type Privilege struct {
	Name            string            `json:"name"`
	Path            string            `json:"path"`
	QueryParameters map[string]string `json:"queryParameters,omitempty"`
}

// Role groups privileges by name.
type Role struct {
	Name       string   `json:"name"`
	Privileges []string `json:"privileges"`
}

// Identity selects callers; every specified selector must match. A
// selector is specified when it is non-empty or when the document named it,
// even with an empty value (upstream then requires the claim to be empty),
// so a decoded "userName": "" survives a round trip.
type Identity struct {
	Name        string
	UserName    string
	GroupName   string
	ExePath     string
	ProcessName string
	// CgroupPath (a cgroup v2 path prefix, whole segments) and ContainerID
	// (a container id, or a prefix of at least 12 digits) select callers
	// by workload. They are this project's extension of the schema, read
	// from local rules files only: host-delivered rules keep upstream's
	// schema (StripLocalSelectors). Empty means absent.
	CgroupPath  string
	ContainerID string
	// named records selectors the decoded document named with an empty
	// value, so they are not mistaken for wildcards.
	named emptySelectors
}

// emptySelectors is a set of selectors named with an empty value.
type emptySelectors uint8

const (
	emptyUserName emptySelectors = 1 << iota
	emptyGroupName
	emptyExePath
	emptyProcessName
)

// identityJSON is the wire form of Identity; a nil selector is absent.
type identityJSON struct {
	Name        string  `json:"name"`
	UserName    *string `json:"userName,omitempty"`
	GroupName   *string `json:"groupName,omitempty"`
	ExePath     *string `json:"exePath,omitempty"`
	ProcessName *string `json:"processName,omitempty"`
	CgroupPath  string  `json:"cgroupPath,omitempty"`
	ContainerID string  `json:"containerId,omitempty"`
}

// Selectors returns the specified selectors; nil means absent (a wildcard).
func (id Identity) Selectors() (userName, groupName, exePath, processName *string) {
	sel := func(v string, bit emptySelectors) *string {
		if v == "" && id.named&bit == 0 {
			return nil
		}
		return &v
	}
	return sel(id.UserName, emptyUserName), sel(id.GroupName, emptyGroupName), sel(id.ExePath, emptyExePath),
		sel(id.ProcessName, emptyProcessName)
}

// MarshalJSON writes the specified selectors, empty ones included.
func (id Identity) MarshalJSON() ([]byte, error) {
	u, g, e, p := id.Selectors()
	return json.Marshal(identityJSON{Name: id.Name, UserName: u, GroupName: g, ExePath: e, ProcessName: p,
		CgroupPath: id.CgroupPath, ContainerID: id.ContainerID})
}

// UnmarshalJSON reads an identity, remembering selectors named with an
// empty value. name is required, as upstream's deserializer has it.
func (id *Identity) UnmarshalJSON(b []byte) error {
	var w struct {
		identityJSON
		Name *string `json:"name"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Name == nil {
		return missingField("identity", "name")
	}
	w.identityJSON.Name = *w.Name
	*id = Identity{Name: *w.Name, CgroupPath: w.CgroupPath, ContainerID: w.ContainerID}
	for _, f := range []struct {
		src *string
		dst *string
		bit emptySelectors
	}{{w.UserName, &id.UserName, emptyUserName}, {w.GroupName, &id.GroupName, emptyGroupName},
		{w.ExePath, &id.ExePath, emptyExePath}, {w.ProcessName, &id.ProcessName, emptyProcessName}} {
		if f.src != nil {
			*f.dst = *f.src
			if *f.src == "" {
				id.named |= f.bit
			}
		}
	}
	return nil
}

// RoleAssignment grants a role to identities.
type RoleAssignment struct {
	Role       string   `json:"role"`
	Identities []string `json:"identities"`
}

// missingField is the parse error for a required field that is absent or
// null: upstream's deserializer fails the whole document on it.
func missingField(kind, field string) error {
	return fmt.Errorf("%s: missing field `%s`", kind, field)
}

// UnmarshalJSON reads a privilege; name and path are required.
func (p *Privilege) UnmarshalJSON(b []byte) error {
	var w struct {
		Name            *string           `json:"name"`
		Path            *string           `json:"path"`
		QueryParameters map[string]string `json:"queryParameters"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	switch {
	case w.Name == nil:
		return missingField("privilege", "name")
	case w.Path == nil:
		return missingField("privilege", "path")
	}
	*p = Privilege{Name: *w.Name, Path: *w.Path, QueryParameters: w.QueryParameters}
	return nil
}

// UnmarshalJSON reads a role; name and privileges are required.
func (r *Role) UnmarshalJSON(b []byte) error {
	var w struct {
		Name       *string   `json:"name"`
		Privileges *[]string `json:"privileges"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	switch {
	case w.Name == nil:
		return missingField("role", "name")
	case w.Privileges == nil:
		return missingField("role", "privileges")
	}
	*r = Role{Name: *w.Name, Privileges: *w.Privileges}
	return nil
}

// UnmarshalJSON reads a role assignment; role and identities are required.
func (ra *RoleAssignment) UnmarshalJSON(b []byte) error {
	var w struct {
		Role       *string   `json:"role"`
		Identities *[]string `json:"identities"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	switch {
	case w.Role == nil:
		return missingField("roleAssignment", "role")
	case w.Identities == nil:
		return missingField("roleAssignment", "identities")
	}
	*ra = RoleAssignment{Role: *w.Role, Identities: *w.Identities}
	return nil
}

// UnmarshalJSON enforces the required fields of an item, as upstream's
// deserializer does: a missing defaultAccess, mode or id fails the parse.
func (a *AuthorizationItem) UnmarshalJSON(b []byte) error {
	var raw struct {
		DefaultAccess *string `json:"defaultAccess"`
		Mode          *string `json:"mode"`
		ID            *string `json:"id"`
		Rules         *Rules  `json:"rules"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	switch {
	case raw.DefaultAccess == nil:
		return missingField("authorization item", "defaultAccess")
	case raw.Mode == nil:
		return missingField("authorization item", "mode")
	case raw.ID == nil:
		return missingField("authorization item", "id")
	}
	*a = AuthorizationItem{DefaultAccess: *raw.DefaultAccess, Mode: *raw.Mode, ID: *raw.ID, Rules: raw.Rules}
	return nil
}

// MarshalJSON writes the lists that are present, an empty one as [], as
// upstream's serialiser does (encoding/json's omitempty would drop it).
func (r Rules) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for _, f := range []struct {
		name    string
		present bool
		v       any
	}{
		{"privileges", r.Privileges != nil, r.Privileges},
		{"roles", r.Roles != nil, r.Roles},
		{"identities", r.Identities != nil, r.Identities},
		{"roleAssignments", r.RoleAssignments != nil, r.RoleAssignments},
	} {
		if !f.present {
			continue
		}
		enc, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.name...)
		b = append(b, '"', ':')
		b = append(b, enc...)
	}
	return append(b, '}'), nil
}

// MarshalJSON writes queryParameters whenever it is present, even empty.
func (p Privilege) MarshalJSON() ([]byte, error) {
	type plain struct {
		Name            string             `json:"name"`
		Path            string             `json:"path"`
		QueryParameters *map[string]string `json:"queryParameters,omitempty"`
	}
	out := plain{Name: p.Name, Path: p.Path}
	if p.QueryParameters != nil {
		out.QueryParameters = &p.QueryParameters
	}
	return json.Marshal(out)
}

// MarshalJSON writes privileges as a list, [] when there are none (the
// field is required upstream).
func (r Role) MarshalJSON() ([]byte, error) {
	type plain Role
	r.Privileges = nonNil(r.Privileges)
	return json.Marshal(plain(r))
}

// MarshalJSON writes identities as a list, [] when there are none (the
// field is required upstream).
func (ra RoleAssignment) MarshalJSON() ([]byte, error) {
	type plain RoleAssignment
	ra.Identities = nonNil(ra.Identities)
	return json.Marshal(plain(ra))
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Clone returns a deep copy that keeps presence, so merging rules never
// changes an input; nil yields nil.
func (it *AuthorizationItem) Clone() *AuthorizationItem {
	if it == nil {
		return nil
	}
	out := *it
	out.Rules = it.Rules.Clone()
	return &out
}

// Clone returns a deep copy that keeps presence; nil yields nil.
func (r *Rules) Clone() *Rules {
	if r == nil {
		return nil
	}
	out := Rules{
		Privileges:      slices.Clone(r.Privileges),
		Roles:           slices.Clone(r.Roles),
		Identities:      slices.Clone(r.Identities),
		RoleAssignments: slices.Clone(r.RoleAssignments),
	}
	for i := range out.Privileges {
		out.Privileges[i].QueryParameters = maps.Clone(out.Privileges[i].QueryParameters)
	}
	for i := range out.Roles {
		out.Roles[i].Privileges = slices.Clone(out.Roles[i].Privileges)
	}
	for i := range out.RoleAssignments {
		out.RoleAssignments[i].Identities = slices.Clone(out.RoleAssignments[i].Identities)
	}
	return &out
}

// StripLocalSelectors removes the selectors only local rules files may
// use (CgroupPath, ContainerID), as upstream's schema ignores them; it
// reports whether any was present.
func (r *Rules) StripLocalSelectors() bool {
	if r == nil {
		return false
	}
	found := false
	for i := range r.Identities {
		id := &r.Identities[i]
		if id.CgroupPath != "" || id.ContainerID != "" {
			found = true
			id.CgroupPath, id.ContainerID = "", ""
		}
	}
	return found
}
