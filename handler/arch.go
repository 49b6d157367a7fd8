package handler

import (
	"os"
	"path/filepath"
	"runtime"
)

// ArchSuffix is what the arm64 build's file names add to the amd64 names
// in the two-architecture extension package: ProxyAgentExt-arm64 and
// ProxyAgent/ProxyAgent/azure-proxy-agent-arm64 sit beside upstream's
// paths (which hold the amd64 build), and the waagent scripts run the
// ProxyAgentExt for `uname -m` (packaging/select-arch.sh). A package for
// one architecture has its build at upstream's paths, without the suffix.
const ArchSuffix = "-arm64"

// BundledAgentFor is the bundled agent's path in the package at extDir for
// a GOARCH: the arm64 build beside upstream's path where the package has
// one (the two-architecture package), else upstream's path.
func BundledAgentFor(extDir, goarch string) string {
	if goarch == "arm64" {
		if _, err := os.Stat(filepath.Join(extDir, filepath.FromSlash(BundledAgent+ArchSuffix))); err == nil {
			return BundledAgent + ArchSuffix
		}
	}
	return BundledAgent
}

// bundledAgent is the bundled agent in the package at extDir for the
// architecture this handler was built for, which the scripts chose by
// `uname -m`.
func bundledAgent(extDir string) string { return BundledAgentFor(extDir, runtime.GOARCH) }

// isExtBinary reports whether a file name is a ProxyAgentExt of any
// architecture.
func isExtBinary(base string) bool {
	return base == ExtBinaryName || base == ExtBinaryName+ArchSuffix
}
