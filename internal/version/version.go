// Package version holds the one version number stamped into every binary
// of this project at build time:
//
//	go build -ldflags "-X github.com/opengpa/gpa/internal/version.Version=1.2.3"
package version

// Version is the three-part version of the agent and the extension. The
// Makefile sets it from the VERSION file; unstamped builds report 0.0.0.
var Version = "0.0.0"
