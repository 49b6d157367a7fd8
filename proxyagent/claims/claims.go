// Package claims describes who made a request to a metadata service: the
// caller's user, groups and process, derived from the kernel's identity
// record and enriched from /proc (shared/spec/protocol.md §4.4).
package claims

// Claims is the caller identity used for authorization, audit records and
// logs. Its JSON form is upstream's; only IsRoot is ever sent to the host.
type Claims struct {
	UserID   uint64 `json:"userId"`
	UserName string `json:"userName"`
	// GroupID is the caller's real group at connect time, as the kernel
	// recorded it (not part of upstream's claims).
	GroupID         uint64   `json:"groupId,omitempty"`
	UserGroups      []string `json:"userGroups"`
	ProcessID       uint32   `json:"processId"`
	ProcessName     string   `json:"processName"`
	ProcessFullPath string   `json:"processFullPath"`
	// ProcessCmdLine is at most the first four arguments, secrets redacted.
	ProcessCmdLine string `json:"processCmdLine"`
	RunAsElevated  bool   `json:"runAsElevated"`
	ClientIP       string `json:"clientIp"`
	ClientPort     uint16 `json:"clientPort"`
	// Ancestry is the caller's parent chain, nearest first (at most four
	// levels). It is not part of upstream's claims and is omitted when empty.
	Ancestry []Process `json:"ancestry,omitempty"`
	// Workload is where the caller runs (cgroup, container, pod).
	Workload
	// OtherNetns is true for a caller in another network namespace than
	// the agent's: a container with its own network. Not upstream's.
	OtherNetns bool `json:"otherNetns,omitempty"`
	// OtherUserNS is true for a caller in another user namespace than the
	// agent's (a rootless container, `unshare -U`). Its executable proves
	// nothing there, so ProcessFullPath and ProcessName are empty and
	// match no rule that names them. Not upstream's.
	OtherUserNS bool `json:"otherUserns,omitempty"`
}

// Process is one ancestor of the caller.
type Process struct {
	PID     uint32 `json:"pid"`
	Exe     string `json:"exe"`
	CmdLine string `json:"cmdLine"`
}

// Empty returns the claims upstream uses for connections without an
// identity: user and process strings "empty", ids 0, not elevated.
func Empty(clientIP string, clientPort uint16) Claims {
	return Claims{UserName: "empty", UserGroups: []string{}, ProcessName: "empty", ProcessFullPath: "empty",
		ProcessCmdLine: "empty", ClientIP: clientIP, ClientPort: clientPort}
}
