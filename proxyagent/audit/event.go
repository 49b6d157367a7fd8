// Package audit records what the proxy did with every request: the
// upstream-format ProxyAgent.Connection.log, the aggregated connection and
// failed-authentication summaries reported in status, and a JSON-lines
// audit log (one record per decision) for tools to read.
package audit

import (
	"net/netip"
	"time"

	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Event is one request outcome as the proxy reports it.
type Event struct {
	Time   time.Time
	HTTPID uint64
	TCPID  uint64
	// Caller is nil for a connection without identity.
	Caller *claims.Claims
	Client netip.AddrPort
	// Dest is the original destination; invalid (zero) when unknown.
	Dest netip.AddrPort
	// Service is what Dest is, as classified when the connection was
	// accepted ("" when Dest is unknown).
	Service msp.Service
	Method  string
	Target  string
	// Authorized is false when the request never reached authorization
	// (405, traversal, 421, local endpoints); Decision is then zero.
	Authorized bool
	Decision   authz.Decision
	// Status is the HTTP status the client got (GPA's own or upstream's).
	Status int
	// Error is the error detail (truncated to 4096 bytes in summaries).
	Error   string
	Latency time.Duration
	// BeforeFlow marks a request answered before the request flow, as
	// upstream's body-limit layer answers 413: it has no HTTPID and is in
	// neither summary table, only in the logs.
	BeforeFlow bool
	// Local marks a request the agent answered itself at one of its local
	// endpoints (/provision, /gpa-aggregated-status): in neither summary
	// table, as upstream's handlers of them log no summary (the
	// extension's status polling would otherwise fill the instance view),
	// but in the logs and counted in proxyConnectionsCount.
	Local bool
}
