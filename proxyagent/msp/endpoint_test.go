package msp

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	test := Endpoints{
		WireServer:   netip.MustParseAddrPort("127.0.0.2:8080"),
		HostGAPlugin: netip.MustParseAddrPort("127.0.0.2:32526"),
		IMDS:         netip.MustParseAddrPort("127.0.0.3:8080"),
		Listener:     netip.MustParseAddrPort("127.0.0.1:3999"),
	}
	for _, tc := range []struct {
		e    Endpoints
		dest string
		want Service
	}{
		{test, "127.0.0.1:3999", ProxyAgent},
		{test, "127.0.0.9:80", Other},
		{test, "127.0.0.2:8081", Other},
		{test, "[::ffff:127.0.0.2]:8080", WireServer}, // v4-mapped is v4
		{test, "[::1]:8080", Other},
		{DefaultEndpoints(), "168.63.129.16:80", WireServer},
		{DefaultEndpoints(), "168.63.129.16:32526", HostGAPlugin},
		{DefaultEndpoints(), "169.254.169.254:80", IMDS},
		{DefaultEndpoints(), "[::ffff:169.254.169.254]:80", IMDS},
		{DefaultEndpoints(), "127.0.0.1:3080", ProxyAgent},
		{DefaultEndpoints(), "168.63.129.16:53", Other},
		{Endpoints{}.WithDefaults(), "127.0.0.1:3080", ProxyAgent},
	} {
		if got := tc.e.Classify(netip.MustParseAddrPort(tc.dest)); got != tc.want {
			t.Errorf("Classify(%s) = %s, want %s", tc.dest, got, tc.want)
		}
	}
	if got := DefaultEndpoints().Classify(netip.AddrPort{}); got != Other {
		t.Errorf("invalid destination = %s, want Other", got)
	}
	for _, s := range MetadataServices {
		if !s.IsMetadata() || DefaultEndpoints().Classify(DefaultEndpoints().Addr(s)) != s {
			t.Errorf("%s does not round-trip through Addr and Classify", s)
		}
	}
}
