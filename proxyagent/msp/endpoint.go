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
	// ContainerListenerAddr is the agent's listener for callers in other
	// network namespaces (containers), 169.254.100.254:3080: an address the
	// agent adds to the loopback device of its namespace, which containers
	// reach through their default route. It is link-local, so never routed
	// off the VM, and none of the addresses the platform or the usual
	// container stacks use: Azure's 169.254.169.254 and 168.63.129.16,
	// other clouds' metadata, DNS and credential addresses in
	// 169.254.169.0/24 and 169.254.170.0/24, Docker's bridges
	// (172.17.0.0/16 and the pools after it), Kubernetes node-local DNS
	// (169.254.20.10), Calico's and the AWS CNI's gateway 169.254.1.1.
	ContainerListenerAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{169, 254, 100, 254}), 3080)
)

// AggregateStatusPath is the agent's local status endpoint
// (/gpa-aggregated-status, protocol.md §5.5), answered by the agent itself
// on any redirected WireServer connection; the extension's monitor asks it
// at the WireServer address.
const AggregateStatusPath = "/gpa-aggregated-status"

// Endpoints are the addresses of the three services and of the agent's
// listener. Production uses DefaultEndpoints; tests may move any of them.
type Endpoints struct {
	WireServer   netip.AddrPort
	IMDS         netip.AddrPort
	HostGAPlugin netip.AddrPort
	Listener     netip.AddrPort
	// ContainerListener is the listener for other network namespaces; the
	// zero value means there is none (containers' connects are refused).
	// WithDefaults leaves it as it is.
	ContainerListener netip.AddrPort
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
	if e.ContainerListener.IsValid() && dest == unmap(e.ContainerListener) {
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
