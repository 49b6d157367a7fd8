package config

import (
	"strings"
	"testing"
)

func TestMetricsListen(t *testing.T) {
	for _, tc := range []struct {
		doc              string
		network, address string
	}{
		{`{}`, "unix", "/var/log/azure-proxy-agent/metrics.sock"},
		{`{"statusFolder":"/run/gpa"}`, "unix", "/run/gpa/metrics.sock"},
		{`{"metricsListen":""}`, "", ""},
		{`{"metricsListen":"unix:/run/azure-proxy-agent/m.sock"}`, "unix", "/run/azure-proxy-agent/m.sock"},
		{`{"metricsListen":"127.0.0.1:9585"}`, "tcp", "127.0.0.1:9585"},
		{`{"metricsListen":"127.0.0.53:9585"}`, "tcp", "127.0.0.53:9585"},
		{`{"metricsListen":"[::1]:9585"}`, "tcp", "[::1]:9585"},
	} {
		c, err := Parse([]byte(tc.doc))
		if err != nil {
			t.Errorf("%s: %v", tc.doc, err)
			continue
		}
		if n, a := c.MetricsEndpoint(); n != tc.network || a != tc.address {
			t.Errorf("%s: endpoint %q %q, want %q %q", tc.doc, n, a, tc.network, tc.address)
		}
	}
}

func TestDefaultMetricsListenFollowsStatusFolder(t *testing.T) {
	c, err := Parse([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := Default(); d.MetricsListen != c.MetricsListen || d.AuditSyslog != c.AuditSyslog {
		t.Errorf("Default() %q %q differs from an empty file's %q %q", d.MetricsListen, d.AuditSyslog, c.MetricsListen, c.AuditSyslog)
	}
}

func TestObservabilityErrors(t *testing.T) {
	long := "/" + strings.Repeat("a", 120)
	for _, tc := range []struct{ doc, want string }{
		{`{"metricsListen":"0.0.0.0:9585"}`, "not a loopback address"},
		{`{"metricsListen":"10.0.0.4:9585"}`, "not a loopback address"},
		{`{"metricsListen":"[::]:9585"}`, "not a loopback address"},
		{`{"metricsListen":"localhost:9585"}`, "neither unix:PATH nor a loopback IP:PORT"},
		{`{"metricsListen":"127.0.0.1"}`, "neither unix:PATH nor a loopback IP:PORT"},
		{`{"metricsListen":"127.0.0.1:0"}`, "has no port"},
		{`{"metricsListen":"unix:relative.sock"}`, "absolute PATH"},
		{`{"metricsListen":"unix:` + long + `"}`, "absolute PATH"},
		{`{"metricsListen":9585}`, `key "metricsListen"`},
		{`{"auditSyslog":"dev/log"}`, "not an absolute socket path"},
		{`{"auditSyslog":true}`, `key "auditSyslog"`},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.doc, err, tc.want)
		}
		if err != nil && strings.Contains(tc.doc, "metricsListen") && !strings.Contains(err.Error(), "metricsListen") {
			t.Errorf("%s: error %v does not name the key", tc.doc, err)
		}
	}
}

func TestAuditSyslog(t *testing.T) {
	c, err := Parse([]byte(`{}`))
	if err != nil || c.AuditSyslog != "" {
		t.Fatalf("default auditSyslog %q (%v), want off", c.AuditSyslog, err)
	}
	c, err = Parse([]byte(`{"auditSyslog":"/dev/log"}`))
	if err != nil || c.AuditSyslog != "/dev/log" {
		t.Fatalf("auditSyslog %q (%v), want /dev/log", c.AuditSyslog, err)
	}
}
