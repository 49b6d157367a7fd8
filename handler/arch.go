package handler

import "runtime"

// ArchSuffix is what the arm64 build's file names add to the amd64 names
// in the extension package: ProxyAgentExt-arm64 and
// ProxyAgent/ProxyAgent/azure-proxy-agent-arm64 sit beside upstream's
// paths (which hold the amd64 build), and the waagent scripts run the
// ProxyAgentExt for `uname -m` (packaging/select-arch.sh).
const ArchSuffix = "-arm64"

// BundledAgentFor is the bundled agent's path in the package for a GOARCH.
func BundledAgentFor(goarch string) string {
	if goarch == "arm64" {
		return BundledAgent + ArchSuffix
	}
	return BundledAgent
}

// bundledAgent is the bundled agent for the architecture this handler was
// built for, which the scripts chose by `uname -m`.
func bundledAgent() string { return BundledAgentFor(runtime.GOARCH) }

// isExtBinary reports whether a file name is a ProxyAgentExt of any
// architecture.
func isExtBinary(base string) bool {
	return base == ExtBinaryName || base == ExtBinaryName+ArchSuffix
}
