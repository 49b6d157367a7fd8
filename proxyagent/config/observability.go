package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

// MetricsSocketName is the default metrics socket's name inside
// statusFolder: metricsListen defaults to "unix:<statusFolder>/metrics.sock".
const MetricsSocketName = "metrics.sock"

// maxSocketPath is the longest unix socket path Linux binds (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// setObservability applies and validates metricsListen and auditSyslog
// (nil when absent). It runs after statusFolder is final.
func (c *Config) setObservability(metrics, syslog *string) error {
	if metrics == nil {
		c.MetricsListen = "unix:" + filepath.Join(c.StatusFolder, MetricsSocketName)
	} else {
		c.MetricsListen = strings.TrimSpace(*metrics)
		if _, _, err := ParseMetricsListen(c.MetricsListen); err != nil {
			return fmt.Errorf("key %q: %w", "metricsListen", err)
		}
	}
	if syslog != nil {
		c.AuditSyslog = strings.TrimSpace(*syslog)
		if p := c.AuditSyslog; p != "" && (!filepath.IsAbs(p) || len(p) > maxSocketPath) {
			return fmt.Errorf("key %q: %q is not an absolute socket path of at most %d bytes (e.g. /dev/log)",
				"auditSyslog", p, maxSocketPath)
		}
	}
	return nil
}

// ParseMetricsListen parses a metricsListen value into a network ("unix"
// or "tcp") and an address; both are "" for "" (metrics off). A TCP
// address must be a loopback IP literal with a port: the endpoint has no
// authentication, so it is never offered to the network.
func ParseMetricsListen(s string) (network, address string, err error) {
	if s == "" {
		return "", "", nil
	}
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if !filepath.IsAbs(path) || len(path) > maxSocketPath {
			return "", "", fmt.Errorf("%q: want unix:PATH with an absolute PATH of at most %d bytes", s, maxSocketPath)
		}
		return "unix", filepath.Clean(path), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", "", fmt.Errorf("%q is neither unix:PATH nor a loopback IP:PORT", s)
	}
	if !ap.Addr().Unmap().IsLoopback() {
		return "", "", fmt.Errorf("%q is not a loopback address; the metrics endpoint is unauthenticated, so only 127.0.0.0/8 or [::1] (or unix:PATH) is accepted", s)
	}
	if ap.Port() == 0 {
		return "", "", fmt.Errorf("%q has no port", s)
	}
	return "tcp", ap.String(), nil
}

// MetricsEndpoint returns the network and address of metricsListen ("",
// "" when metrics are off).
func (c Config) MetricsEndpoint() (network, address string) {
	network, address, _ = ParseMetricsListen(c.MetricsListen)
	return network, address
}
