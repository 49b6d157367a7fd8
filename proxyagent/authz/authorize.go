package authz

import (
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Snapshot is one immutable version of the installed rule sets. Every
// decision made from one Snapshot uses
// the same rule sets; its Epoch identifies the version.
type Snapshot struct {
	// rootContainers lets elevated callers in other network namespaces
	// reach the WireServer and HostGAPlugin (StoreConfig).
	rootContainers        bool
	epoch                 uint64
	wireServer, imds, hga *RuleSet
}

// NewSnapshot builds a standalone snapshot from compiled rule sets (nil =
// no rule set installed for that service), for example to replay audit
// history against a candidate rules document. Its Epoch is 0.
func NewSnapshot(wireServer, imds, hostGA *RuleSet) *Snapshot {
	return &Snapshot{wireServer: wireServer, imds: imds, hga: hostGA}
}

// Epoch returns the snapshot's version; each Store change increments it.
func (s *Snapshot) Epoch() uint64 { return s.epoch }

// RuleSet returns the rule set installed for a service, or nil.
func (s *Snapshot) RuleSet(svc msp.Service) *RuleSet {
	switch svc {
	case msp.WireServer:
		return s.wireServer
	case msp.IMDS:
		return s.imds
	case msp.HostGAPlugin:
		return s.hga
	}
	return nil
}

// Authorize decides one request (protocol.md §3.5), in this order:
//
//  1. No caller identity ⇒ Deny. (The proxy answers 421 before asking;
//     this only keeps the authorizer closed on its own.)
//     1a. The WireServer or HostGAPlugin from another network namespace (a
//     container) ⇒ Deny, even as uid 0, unless the store lets elevated
//     containers through (this project's default; upstream cannot tell
//     containers apart).
//  2. An exempt upload (msp.Exempt) from an elevated caller ⇒ Allow,
//     whatever the destination and rules.
//  3. The proxy's own listener ⇒ Deny; a destination that is none of the
//     metadata services ⇒ Allow.
//  4. WireServer and HostGAPlugin require an elevated caller (uid 0) ⇒
//     otherwise Deny. Quirk 11: this holds in every mode, Audit and
//     Disabled included, and with no rules installed.
//  5. No rule set installed ⇒ Allow; mode Disabled ⇒ Allow (rules
//     ignored, quirk 20 included).
//  6. The rules allow ⇒ Allow; otherwise Audit ⇒ AllowAudited, Enforce ⇒
//     Deny.
//
// The Decision names the service, the snapshot's epoch and, when a rule
// set is installed for the service, its id and compiled mode (both empty
// otherwise); Privilege and Identity come from the matcher.
func (s *Snapshot) Authorize(req Request) Decision {
	svc := req.Service
	d := Decision{Service: svc, Epoch: s.epoch}
	rs := s.RuleSet(svc)
	if rs != nil {
		d.RuleID, d.Mode = rs.id, rs.mode
	}
	c := req.Caller
	if c == nil {
		return deny(d, "no caller identity")
	}
	if (svc == msp.WireServer || svc == msp.HostGAPlugin) && c.OtherNetns && !(s.rootContainers && c.RunAsElevated) {
		return deny(d, string(svc)+" is the platform's channel: denied to callers in other network namespaces (containers)")
	}
	if c.RunAsElevated && msp.Exempt(req.Method, req.Target) {
		return allow(d, "exempt upload from an elevated caller")
	}
	switch svc {
	case "":
		return deny(d, "destination not classified")
	case msp.ProxyAgent:
		return deny(d, "requests to the proxy agent's own listener are forbidden")
	case msp.WireServer, msp.HostGAPlugin:
		if !c.RunAsElevated {
			return deny(d, string(svc)+" requires root")
		}
	}
	if !svc.IsMetadata() {
		return allow(d, "destination is not a metadata service")
	}
	if rs == nil {
		return allow(d, "no rules installed")
	}
	if rs.mode == msp.ModeDisabled {
		return allow(d, "mode disabled; rules ignored")
	}
	m := rs.Match(req.Target, c)
	d.Privilege, d.Identity = m.Privilege, m.Identity
	switch {
	case m.Allowed:
		return allow(d, m.Reason)
	case rs.mode == msp.ModeAudit:
		d.Result = AllowAudited
		d.Reason = m.Reason + " (audit mode: forwarded)"
		return d
	}
	return deny(d, m.Reason)
}

func allow(d Decision, reason string) Decision {
	d.Result, d.Reason = Allow, reason
	return d
}

func deny(d Decision, reason string) Decision {
	d.Result, d.Reason = Deny, reason
	return d
}
