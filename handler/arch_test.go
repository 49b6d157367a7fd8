package handler

import "testing"

func TestBundledAgentFor(t *testing.T) {
	if got := BundledAgentFor("amd64"); got != "ProxyAgent/ProxyAgent/azure-proxy-agent" {
		t.Errorf("amd64: %s", got)
	}
	if got := BundledAgentFor("arm64"); got != "ProxyAgent/ProxyAgent/azure-proxy-agent-arm64" {
		t.Errorf("arm64: %s", got)
	}
	for name, want := range map[string]bool{"ProxyAgentExt": true, "ProxyAgentExt-arm64": true, "ProxyAgentExt-x": false, "azure-proxy-agent": false} {
		if isExtBinary(name) != want {
			t.Errorf("isExtBinary(%q) = %v", name, !want)
		}
	}
}
