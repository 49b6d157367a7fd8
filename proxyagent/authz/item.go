package authz

import (
	"encoding/json"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// item is this package's copy of an authorization item. It differs from
// msp.AuthorizationItem in two ways that upstream's Option
// types make observable: a rule list that is present but empty is kept
// apart from an absent one (quirk 5 counts presence), and an identity
// selector that is present but empty ("") is kept apart from an absent
// one (upstream then requires the claim to equal ""). Its JSON form is
// upstream's serialisation of AuthorizationItem, used in rule snapshots.
type item struct {
	DefaultAccess string     `json:"defaultAccess"`
	Mode          string     `json:"mode"`
	ID            string     `json:"id"`
	Rules         *itemRules `json:"rules,omitempty"`
}

// itemRules holds the four rule lists; a nil slice is an absent list.
type itemRules struct {
	Privileges      []privilege      `json:"privileges,omitempty"`
	Roles           []role           `json:"roles,omitempty"`
	Identities      []identitySel    `json:"identities,omitempty"`
	RoleAssignments []roleAssignment `json:"roleAssignments,omitempty"`
}

// privilege is a named path prefix with optional required query values.
type privilege struct {
	Name            string            `json:"name"`
	Path            string            `json:"path"`
	QueryParameters map[string]string `json:"queryParameters,omitempty"`
}

// role groups privileges by name.
type role struct {
	Name       string   `json:"name"`
	Privileges []string `json:"privileges"`
}

// identitySel selects callers; a nil selector is a wildcard.
type identitySel struct {
	Name        string  `json:"name"`
	UserName    *string `json:"userName,omitempty"`
	GroupName   *string `json:"groupName,omitempty"`
	ExePath     *string `json:"exePath,omitempty"`
	ProcessName *string `json:"processName,omitempty"`
}

// roleAssignment grants a role to identities.
type roleAssignment struct {
	Role       string   `json:"role"`
	Identities []string `json:"identities"`
}

// fromWire copies a host item. An identity selector the host named with an
// empty value stays specified (it matches only an empty claim), as
// upstream.
func fromWire(it *msp.AuthorizationItem) *item {
	if it == nil {
		return nil
	}
	out := &item{DefaultAccess: it.DefaultAccess, Mode: it.Mode, ID: it.ID}
	if r := it.Rules; r != nil {
		out.Rules = &itemRules{}
		if r.Privileges != nil {
			out.Rules.Privileges = make([]privilege, 0, len(r.Privileges))
			for _, p := range r.Privileges {
				out.Rules.Privileges = append(out.Rules.Privileges, privilege{Name: p.Name, Path: p.Path, QueryParameters: copyMap(p.QueryParameters)})
			}
		}
		if r.Roles != nil {
			out.Rules.Roles = make([]role, 0, len(r.Roles))
			for _, ro := range r.Roles {
				out.Rules.Roles = append(out.Rules.Roles, role{Name: ro.Name, Privileges: nonNil(ro.Privileges)})
			}
		}
		if r.Identities != nil {
			out.Rules.Identities = make([]identitySel, 0, len(r.Identities))
			for _, id := range r.Identities {
				u, g, e, p := id.Selectors()
				out.Rules.Identities = append(out.Rules.Identities, identitySel{Name: id.Name,
					UserName: u, GroupName: g, ExePath: e, ProcessName: p})
			}
		}
		if r.RoleAssignments != nil {
			out.Rules.RoleAssignments = make([]roleAssignment, 0, len(r.RoleAssignments))
			for _, ra := range r.RoleAssignments {
				out.Rules.RoleAssignments = append(out.Rules.RoleAssignments, roleAssignment{Role: ra.Role, Identities: nonNil(ra.Identities)})
			}
		}
	}
	return out
}

// clone returns a deep copy, so merging never changes an input.
func (it *item) clone() *item {
	if it == nil {
		return nil
	}
	out := *it
	if it.Rules != nil {
		r := itemRules{}
		if it.Rules.Privileges != nil {
			r.Privileges = make([]privilege, len(it.Rules.Privileges))
			for i, p := range it.Rules.Privileges {
				p.QueryParameters = copyMap(p.QueryParameters)
				r.Privileges[i] = p
			}
		}
		if it.Rules.Roles != nil {
			r.Roles = make([]role, len(it.Rules.Roles))
			for i, ro := range it.Rules.Roles {
				ro.Privileges = append([]string{}, ro.Privileges...)
				r.Roles[i] = ro
			}
		}
		if it.Rules.Identities != nil {
			r.Identities = append([]identitySel{}, it.Rules.Identities...)
		}
		if it.Rules.RoleAssignments != nil {
			r.RoleAssignments = make([]roleAssignment, len(it.Rules.RoleAssignments))
			for i, ra := range it.Rules.RoleAssignments {
				ra.Identities = append([]string{}, ra.Identities...)
				r.RoleAssignments[i] = ra
			}
		}
		out.Rules = &r
	}
	return &out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// MarshalJSON writes the lists that are present, an empty one as [], as
// upstream's serialiser does (encoding/json's omitempty would drop it).
func (r itemRules) MarshalJSON() ([]byte, error) {
	var b []byte
	b = append(b, '{')
	add := func(name string, present bool, v any) error {
		if !present {
			return nil
		}
		enc, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		b = append(b, enc...)
		return nil
	}
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
		if err := add(f.name, f.present, f.v); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// MarshalJSON writes queryParameters whenever it is present, even empty.
func (p privilege) MarshalJSON() ([]byte, error) {
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
