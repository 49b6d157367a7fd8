package insight

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Caller is the part of a caller's claims the tools group by: user,
// groups, executable, process name, elevation and the executables of its
// parent processes. Process ids, ports and command lines are left out, so
// one program run many times is one caller.
type Caller struct {
	User        string   `json:"user"`
	UID         uint64   `json:"uid"`
	Groups      []string `json:"groups,omitempty"`
	Exe         string   `json:"exe"`
	ProcessName string   `json:"processName"`
	Elevated    bool     `json:"elevated"`
	// Ancestry is the executable of each parent, nearest first.
	Ancestry []string `json:"ancestry,omitempty"`
	// NoIdentity marks requests that carried no caller identity.
	NoIdentity bool `json:"noIdentity,omitempty"`
	// Container is where a containerised caller runs (another network
	// namespace, or a runtime's cgroup): one program in two containers is
	// two callers. Nil for the VM's own processes.
	Container *claims.Workload `json:"container,omitempty"`
	// OtherUserNS marks a caller in another user namespace than the
	// agent's, whose executable is not known for that reason.
	OtherUserNS bool `json:"otherUserns,omitempty"`
}

// CallerOf returns the Caller of a record's claims (nil: no identity).
func CallerOf(c *claims.Claims) Caller {
	if c == nil {
		return Caller{NoIdentity: true}
	}
	out := Caller{User: c.UserName, UID: c.UserID, Groups: slices.Clone(c.UserGroups), Exe: c.ProcessFullPath,
		ProcessName: c.ProcessName, Elevated: c.RunAsElevated, OtherUserNS: c.OtherUserNS}
	for _, p := range c.Ancestry {
		out.Ancestry = append(out.Ancestry, p.Exe)
	}
	if c.OtherNetns || c.ContainerID != "" {
		w := c.Workload
		out.Container = &w
	}
	return out
}

// key identifies the caller in maps.
func (c Caller) key() string {
	if c.NoIdentity {
		return "\x00none"
	}
	var w claims.Workload
	if c.Container != nil {
		w = *c.Container
	}
	return strings.Join([]string{c.User, strconv.FormatUint(c.UID, 10), strings.Join(c.Groups, ","), c.Exe,
		c.ProcessName, strconv.FormatBool(c.Elevated), strings.Join(c.Ancestry, "\x01"),
		strconv.FormatBool(c.Container != nil), w.CgroupPath, w.ContainerID, w.PodUID, strconv.FormatBool(c.OtherUserNS)}, "\x00")
}

// String describes the caller on one line, with control characters
// escaped: `user=alice(1000) exe=/usr/bin/curl via /bin/bash < /usr/lib/systemd/systemd`.
func (c Caller) String() string {
	if c.NoIdentity {
		return "(no caller identity)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "user=%s(%d)", clean(c.User), c.UID)
	if c.Elevated && c.UID != 0 {
		b.WriteString(" elevated")
	}
	b.WriteString(" exe=" + clean(c.Exe))
	if c.Exe == "" || !strings.HasSuffix(c.Exe, "/"+c.ProcessName) {
		b.WriteString(" name=" + clean(c.ProcessName))
	}
	if c.OtherUserNS {
		b.WriteString(" in another user namespace")
	}
	if len(c.Ancestry) > 0 {
		parts := make([]string, len(c.Ancestry))
		for i, a := range c.Ancestry {
			parts[i] = clean(a)
		}
		b.WriteString(" via " + strings.Join(parts, " < "))
	}
	if w := c.Container; w != nil {
		b.WriteString(" in container")
		if w.ContainerID != "" {
			b.WriteString(" " + clean(w.ContainerID[:min(12, len(w.ContainerID))]))
		}
		if w.PodUID != "" {
			b.WriteString(" pod=" + clean(w.PodUID))
		}
		cg := w.CgroupPath
		if cg == "" {
			cg = "(unknown)"
		}
		b.WriteString(" cgroup=" + clean(cg))
	}
	return b.String()
}

// clean escapes characters that could move a terminal's cursor or hide
// text (log contents are caller-controlled).
func clean(s string) string {
	ok := utf8.ValidString(s)
	for _, r := range s {
		if !unicode.IsPrint(r) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// ServiceOf returns the service a record's request was for ("" when the
// connection had no original destination).
func ServiceOf(rec *audit.Record) msp.Service { return msp.Service(rec.Destination.Service) }

// RequestOf rebuilds the authorization request of a record for replay:
// the service the agent classified when it accepted the connection, the
// request line and the caller.
func RequestOf(rec *audit.Record) authz.Request {
	return authz.Request{Service: ServiceOf(rec), Method: rec.Method, Target: rec.Target, Caller: rec.Caller}
}

// replayable reports whether a record's request reached authorization
// and so can be judged again.
func replayable(rec *audit.Record) bool {
	switch rec.Decision {
	case "allow", "audit-deny", "deny":
		return true
	}
	return false
}

// queryPair is one decoded query parameter.
type queryPair struct{ Key, Value string }

// splitTarget returns the percent-decoded path of target as the matcher
// sees it (cut at a decoded '?', ASCII lower-cased when it is ASCII; the
// agent lower-cases rule paths the same way) and its query parameters,
// first occurrence of each decoded, lower-cased key, sorted by key.
func splitTarget(target string) (string, []queryPair) {
	rawPath, rawQuery := msp.SplitTarget(target)
	path, _, _ := strings.Cut(msp.PercentDecode(rawPath), "?")
	path = asciiLower(path)
	var pairs []queryPair
	seen := map[string]bool{}
	for piece := range strings.SplitSeq(rawQuery, "&") {
		k, v, _ := strings.Cut(piece, "=")
		if k == "" {
			continue
		}
		k = asciiLower(msp.PercentDecode(k))
		if seen[k] {
			continue
		}
		seen[k] = true
		pairs = append(pairs, queryPair{k, asciiLower(msp.PercentDecode(v))})
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].Key < pairs[j].Key })
	return path, pairs
}

// truncatePath keeps the first depth segments of path (0 keeps all).
func truncatePath(path string, depth int) string {
	if depth <= 0 || !strings.HasPrefix(path, "/") {
		return path
	}
	segs := strings.Split(path[1:], "/")
	if len(segs) <= depth {
		return path
	}
	return "/" + strings.Join(segs[:depth], "/")
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return s // the agent lower-cases non-ASCII rule text itself
		}
	}
	return strings.ToLower(s)
}
