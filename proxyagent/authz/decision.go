package authz

import (
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Request is what the authorizer decides on.
type Request struct {
	// Service is what the connection's original destination is, as
	// msp.Endpoints.Classify named it when the connection was accepted.
	Service msp.Service
	// Method and Target are the request line as received (raw target).
	Method string
	Target string
	// Caller is nil when the connection has no identity.
	Caller *claims.Claims
}

// Result is the outcome of an authorization.
type Result int

// The three outcomes of protocol.md §3.5.
const (
	// Allow forwards the request.
	Allow Result = iota
	// AllowAudited forwards the request but records that Enforce would deny it.
	AllowAudited
	// Deny answers 403 and forwards nothing.
	Deny
)

// String returns "allow", "audit-deny" or "deny".
func (r Result) String() string {
	switch r {
	case Allow:
		return "allow"
	case AllowAudited:
		return "audit-deny"
	}
	return "deny"
}

// Decision says what was decided and why: which service and mode, which
// rule set (id and epoch), and which privilege and identity matched.
type Decision struct {
	Result  Result
	Service msp.Service
	Mode    msp.Mode
	// RuleID is the effective rule-set id ("" when no rules are installed).
	RuleID string
	// Epoch is the version of the rule snapshot the decision used.
	Epoch uint64
	// Privilege and Identity name the matching privilege and identity; both
	// empty when no privilege matched the request.
	Privilege string
	Identity  string
	// Reason is a short human-readable explanation, e.g.
	// "WireServer requires root" or "no identity assigned to privilege x".
	Reason string
}
