package handler

import (
	"os"
	"path/filepath"
	"testing"
)

// The bundled agent for each architecture, in the two-architecture package
// (arm64's beside upstream's path) and in a package for one architecture
// (its build at upstream's path).
func TestBundledAgentFor(t *testing.T) {
	both, arm64Only := t.TempDir(), t.TempDir()
	for _, f := range []string{filepath.Join(both, BundledAgent), filepath.Join(both, BundledAgent+ArchSuffix), filepath.Join(arm64Only, BundledAgent)} {
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, nil, 0o755)
	}
	for _, tc := range []struct{ dir, goarch, want string }{
		{both, "amd64", "ProxyAgent/ProxyAgent/azure-proxy-agent"},
		{both, "arm64", "ProxyAgent/ProxyAgent/azure-proxy-agent-arm64"},
		{arm64Only, "arm64", "ProxyAgent/ProxyAgent/azure-proxy-agent"},
	} {
		if got := BundledAgentFor(tc.dir, tc.goarch); got != tc.want {
			t.Errorf("%s in %s: %s, want %s", tc.goarch, tc.dir, got, tc.want)
		}
	}
	for name, want := range map[string]bool{"ProxyAgentExt": true, "ProxyAgentExt-arm64": true, "ProxyAgentExt-x": false, "azure-proxy-agent": false} {
		if isExtBinary(name) != want {
			t.Errorf("isExtBinary(%q) = %v", name, !want)
		}
	}
}
