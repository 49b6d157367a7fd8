package metrics

import (
	"bytes"
	"maps"
	"slices"
	"strconv"
)

// modes are the values of service_mode's mode label.
var modes = []string{"disabled", "audit", "enforce"}

// writeScraped appends the samples read from Sources at scrape time.
func (m *Metrics) writeScraped(b *bytes.Buffer) {
	s := m.src
	sample := func(name string, v uint64, labels ...string) {
		b.WriteString(Namespace)
		b.WriteString(name)
		for i := 0; i+1 < len(labels); i += 2 {
			if i == 0 {
				b.WriteByte('{')
			} else {
				b.WriteByte(',')
			}
			b.WriteString(labels[i] + `="` + label(labels[i+1]) + `"`)
		}
		if len(labels) > 0 {
			b.WriteByte('}')
		}
		b.WriteByte(' ')
		b.WriteString(strconv.FormatUint(v, 10))
		b.WriteByte('\n')
	}
	sample("_build_info", 1, "version", s.Version)
	if s.IdentityMap != nil {
		if n, capacity, err := s.IdentityMap(); err == nil {
			sample("_identity_map_entries", uint64(n))
			sample("_identity_map_capacity", uint64(capacity))
		}
	}
	if s.KeyLatched != nil {
		sample("_key_latched", bool01(s.KeyLatched()))
	}
	if s.SecureChannel != nil {
		state, mm := s.SecureChannel()
		sample("_secure_channel_state", 1, "state", state)
		for _, svc := range slices.Sorted(maps.Keys(mm)) {
			for _, mode := range modes {
				sample("_service_mode", bool01(mm[svc] == mode), "service", svc, "mode", mode)
			}
		}
	}
	if s.RuleEpoch != nil {
		sample("_rule_epoch", s.RuleEpoch())
	}
	if s.Audit != nil {
		for _, a := range s.Audit() {
			sample("_audit_records_written_total", a.Written, "sink", a.Sink)
			sample("_audit_records_dropped_total", a.Dropped, "sink", a.Sink)
		}
	}
	if s.AuditSuppressed != nil {
		sample("_audit_records_suppressed_total", s.AuditSuppressed())
	}
	if s.ConnectionsRefused != nil {
		mm := s.ConnectionsRefused()
		for _, reason := range slices.Sorted(maps.Keys(mm)) {
			sample("_connections_refused_total", mm[reason], "reason", reason)
		}
	}
	if s.Modules != nil {
		mm := s.Modules()
		for _, name := range slices.Sorted(maps.Keys(mm)) {
			sample("_module_running", bool01(mm[name] == "RUNNING"), "module", name)
		}
	}
}

func bool01(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
