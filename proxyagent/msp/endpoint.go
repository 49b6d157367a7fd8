package msp

import "net/netip"

// Service names what a connection's original destination is: one of the
// three metadata services, the agent's own listener, or anything else.
// The strings are the ones audit records, status and logs carry.
type Service string

// The services (protocol.md §0, §3.4).
const (
	WireServer   Service = "WireServer"
	IMDS         Service = "IMDS"
	HostGAPlugin Service = "HostGAPlugin"
	// ProxyAgent is the agent's own listener, never a valid destination.
	ProxyAgent Service = "ProxyAgent"
	// Other is any destination that is none of the above.
	Other Service = "Default"
)

// MetadataServices are the three services the agent protects, in the
// order upstream reports them.
var MetadataServices = [3]Service{WireServer, IMDS, HostGAPlugin}

// IsMetadata reports whether s is one of the three metadata services.
func (s Service) IsMetadata() bool {
	return s == WireServer || s == IMDS || s == HostGAPlugin
}

// Production addresses (protocol.md §0). No other file spells them.
var (
	// WireServerAddr is the WireServer, 168.63.129.16:80.
	WireServerAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{168, 63, 129, 16}), 80)
	// IMDSAddr is the Instance Metadata Service, 169.254.169.254:80.
	IMDSAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{169, 254, 169, 254}), 80)
	// HostGAPluginAddr is the HostGAPlugin, 168.63.129.16:32526.
	HostGAPluginAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{168, 63, 129, 16}), 32526)
	// ListenerAddr is the agent's own listener, 127.0.0.1:3080.
	ListenerAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 3080)
)

// Endpoints are the addresses of the three services and of the agent's
// listener. Production uses DefaultEndpoints; tests may move any of them.
type Endpoints struct {
	WireServer   netip.AddrPort
	IMDS         netip.AddrPort
	HostGAPlugin netip.AddrPort
	Listener     netip.AddrPort
}

// DefaultEndpoints returns the production addresses.
func DefaultEndpoints() Endpoints {
	return Endpoints{WireServer: WireServerAddr, IMDS: IMDSAddr, HostGAPlugin: HostGAPluginAddr, Listener: ListenerAddr}
}

// WithDefaults returns e with every zero address replaced by its
// production value.
func (e Endpoints) WithDefaults() Endpoints {
	d := DefaultEndpoints()
	for _, f := range []struct{ dst, def *netip.AddrPort }{
		{&e.WireServer, &d.WireServer}, {&e.IMDS, &d.IMDS}, {&e.HostGAPlugin, &d.HostGAPlugin}, {&e.Listener, &d.Listener},
	} {
		if !f.dst.IsValid() {
			*f.dst = *f.def
		}
	}
	return e
}

// Addr returns the address of a metadata service or of the listener; the
// zero AddrPort for Other.
func (e Endpoints) Addr(s Service) netip.AddrPort {
	switch s {
	case WireServer:
		return e.WireServer
	case IMDS:
		return e.IMDS
	case HostGAPlugin:
		return e.HostGAPlugin
	case ProxyAgent:
		return e.Listener
	}
	return netip.AddrPort{}
}

// Classify names the service at dest. It is the one classification of a
// destination: the proxy calls it once per accepted connection and the
// result travels with every request to the authorizer and the audit log.
// Addresses compare as exact ip:port after unmapping IPv4-mapped IPv6, so
// [::ffff:168.63.129.16]:80 is the WireServer too. An invalid dest is
// Other.
func (e Endpoints) Classify(dest netip.AddrPort) Service {
	if !dest.IsValid() {
		return Other
	}
	dest = unmap(dest)
	switch dest {
	case unmap(e.WireServer):
		return WireServer
	case unmap(e.HostGAPlugin):
		return HostGAPlugin
	case unmap(e.IMDS):
		return IMDS
	case unmap(e.Listener):
		return ProxyAgent
	}
	return Other
}

func unmap(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
