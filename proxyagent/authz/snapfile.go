package authz

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// DefaultSnapshotDir is where upstream writes AuthorizationRules_*.json
// (hard-coded, not taken from the config file).
const DefaultSnapshotDir = "/var/log/azure-proxy-agent/"

// SnapshotFilePrefix starts every rule snapshot file name.
const SnapshotFilePrefix = "AuthorizationRules_"

// computedJSON is upstream's ComputedAuthorizationItem serialisation.
type computedJSON struct {
	ID                   string                   `json:"id"`
	DefaultAllowed       bool                     `json:"defaultAllowed"`
	Mode                 string                   `json:"mode"`
	Privileges           map[string]msp.Privilege `json:"privileges"`
	PrivilegeAssignments map[string][]string      `json:"privilegeAssignments"`
	Identities           map[string]msp.Identity  `json:"identities"`
}

// MarshalJSON writes the compiled rule set in upstream's snapshot form:
// {"id", "defaultAllowed", "mode": "Disabled"|"Audit"|"Enforce",
// "privileges": {name: privilege}, "privilegeAssignments": {name:
// [identity]}, "identities": {name: identity}}, with lower-cased paths
// and query parameters.
func (rs *RuleSet) MarshalJSON() ([]byte, error) {
	c := computedJSON{ID: rs.id, DefaultAllowed: rs.defaultAllowed, Mode: rs.mode.Title(),
		Privileges: map[string]msp.Privilege{}, PrivilegeAssignments: map[string][]string{}, Identities: map[string]msp.Identity{}}
	for _, p := range rs.privs {
		c.Privileges[p.Name] = p.Privilege
		if p.assigned != nil {
			names := make([]string, len(p.assigned))
			for i, id := range p.assigned {
				names[i] = id.def.Name
			}
			c.PrivilegeAssignments[p.Name] = names
		}
	}
	for name, id := range rs.identities {
		c.Identities[name] = id.def
	}
	return json.Marshal(c)
}

type computedRules struct {
	IMDS       *RuleSet `json:"imds,omitempty"`
	WireServer *RuleSet `json:"wireserver,omitempty"`
	HostGA     *RuleSet `json:"hostga,omitempty"`
}

type snapshotDoc struct {
	InputRules    msp.AuthorizationRules `json:"inputRules"`
	ComputedRules computedRules          `json:"computedRules"`
}

// SnapshotFileName returns the name upstream gives a snapshot written at
// t: AuthorizationRules_<YYYY-MM-DDTHH.MM.SS.mmm>-<unix nanos>.json (UTC;
// the colons of the ISO time replaced by dots).
func SnapshotFileName(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s%s-%d.json", SnapshotFilePrefix, t.Format("2006-01-02T15.04.05.000"), t.UnixNano())
}

// writeSnapshotFile prunes old snapshot files so that at most max remain
// after writing, then writes the new one (pretty JSON, via a temporary
// file and rename).
func writeSnapshotFile(dir string, max int, now time.Time, in msp.AuthorizationRules, s *Snapshot) error {
	if err := pruneSnapshots(dir, max); err != nil {
		return err
	}
	doc := snapshotDoc{InputRules: in, ComputedRules: computedRules{IMDS: s.imds, WireServer: s.wireServer, HostGA: s.hga}}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, SnapshotFileName(now)), b, 0o640)
}

// pruneSnapshots deletes the oldest (by name) snapshot files when max or
// more exist, leaving max-1.
func pruneSnapshots(dir string, max int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if e.Type().IsRegular() && strings.HasPrefix(n, SnapshotFilePrefix) && strings.HasSuffix(n, ".json") {
			files = append(files, n)
		}
	}
	sort.Strings(files)
	for i := 0; len(files)-i >= max && i < len(files); i++ {
		// Best effort, as upstream: a file that cannot be removed does
		// not stop the new snapshot from being written.
		_ = os.Remove(filepath.Join(dir, files[i]))
	}
	return nil
}
