package metrics

import (
	"bytes"
	"strings"
)

// family is one metric family of the exposition.
type family struct {
	name, typ, help string
}

// families lists every family /metrics serves, in output order: the
// agent's, then the Go runtime's and the process's (the subset of what the
// library reads whose names and types pass promtool's lint). A sample
// whose family is not listed here is not served.
var families = []family{
	{Namespace + "_requests_total", "counter", "Requests answered, by service, authorization decision (allow, audit-deny, deny, none), mode and HTTP status (0: none sent)."},
	{Namespace + "_request_duration_seconds", "histogram", "Time from reading a request to answering it, by service."},
	{Namespace + "_upstream_errors_total", "counter", "Forwarded requests that failed on the way to or from the host, by service and kind (timeout, error)."},
	{Namespace + "_unidentified_requests_total", "counter", "Requests answered 421 because their connection had no caller identity, by reason (direct: not redirected by the kernel; no_claims: redirected but the caller could not be resolved)."},
	{Namespace + "_identity_map_entries", "gauge", "Caller identity records the kernel holds for redirected connections the agent has not accepted (yet)."},
	{Namespace + "_identity_map_capacity", "gauge", "Capacity of the kernel's identity map, an LRU: beyond it the oldest records are evicted and their connections get 421."},
	{Namespace + "_connections_refused_total", "counter", "Connections refused before any request was read, by reason (caller_limit_connect: the kernel refused the connect, its caller holding maxConnectionsPerCaller connections; max_connections_connect: the kernel refused it, the callers in the agent's namespace other than root holding their whole share of the slots; caller_limit and max_connections: closed at accept for those reasons, max_connections also for containers holding their share)."},
	{Namespace + "_audit_records_written_total", "counter", "Audit records written, by sink (file, syslog)."},
	{Namespace + "_audit_records_dropped_total", "counter", "Audit records lost because a sink's queue was full or its write failed, by sink (file, syslog)."},
	{Namespace + "_audit_records_suppressed_total", "counter", "Audit records not written because their caller (an unprivileged user) exceeded its record budget; the summaries and request counters still count them."},
	{Namespace + "_key_latched", "gauge", "1 while a key latched with the host is in memory, else 0."},
	{Namespace + "_key_latch_changes_total", "counter", "Times the key latch state (latched or not) changed after the first latch since start."},
	{Namespace + "_key_status_polls_total", "counter", "Key-status polls of the WireServer, by result (ok, error)."},
	{Namespace + "_key_status_last_success_timestamp_seconds", "gauge", "Unix time of the last successful key-status poll (one poll carries every service's mode and rules); 0 before the first."},
	{Namespace + "_secure_channel_state", "gauge", "Always 1; the label is the secure-channel state the host reported last."},
	{Namespace + "_service_mode", "gauge", "1 for each service's current mode (disabled, audit, enforce), 0 for the others."},
	{Namespace + "_rule_epoch", "gauge", "Version of the installed authorization rule snapshot; it grows by one on every rule change."},
	{Namespace + "_module_running", "gauge", "1 while a status module (keyLatchStatus, ebpfProgramStatus, proxyListenerStatus) reports RUNNING, else 0."},
	{Namespace + "_build_info", "gauge", "Always 1; the label is the agent's version."},

	{"go_goroutines", "gauge", "Goroutines that currently exist."},
	{"go_threads", "gauge", "OS threads the Go runtime created."},
	{"go_gomaxprocs", "gauge", "GOMAXPROCS: the CPUs that can run Go code at once."},
	{"go_memlimit_bytes", "gauge", "The Go runtime's soft memory limit (GOMEMLIMIT)."},
	{"go_info", "gauge", "Always 1; the label is the Go version the agent was built with."},
	{"go_gc_duration_seconds", "summary", "Stop-the-world pause durations of garbage collections."},
	{"go_gc_cpu_seconds_total", "counter", "CPU time spent in garbage collection."},
	{"go_memstats_alloc_bytes", "gauge", "Bytes of allocated heap objects."},
	{"go_memstats_alloc_bytes_total", "counter", "Bytes allocated for heap objects since start."},
	{"go_memstats_mallocs_total", "counter", "Heap objects allocated since start."},
	{"go_memstats_frees_total", "counter", "Heap objects freed since start."},
	{"go_memstats_heap_objects", "gauge", "Allocated heap objects."},
	{"go_memstats_heap_inuse_bytes", "gauge", "Bytes in in-use heap spans."},
	{"go_memstats_heap_idle_bytes", "gauge", "Bytes in idle heap spans."},
	{"go_memstats_heap_released_bytes", "gauge", "Bytes of heap memory returned to the operating system."},
	{"go_memstats_heap_sys_bytes", "gauge", "Bytes of heap memory obtained from the operating system."},
	{"go_memstats_stack_inuse_bytes", "gauge", "Bytes in stack spans."},
	{"go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the operating system."},
	{"go_memstats_next_gc_bytes", "gauge", "Heap size at which the next garbage collection starts."},
	{"go_memstats_last_gc_time_seconds", "gauge", "Unix time of the last garbage collection."},
	{"process_cpu_seconds_total", "counter", "User and system CPU time the process used."},
	{"process_resident_memory_bytes", "gauge", "Resident set size (VmRSS)."},
	{"process_resident_memory_peak_bytes", "gauge", "Peak resident set size (VmHWM)."},
	{"process_virtual_memory_bytes", "gauge", "Virtual memory size."},
	{"process_start_time_seconds", "gauge", "Unix time the process started."},
	{"process_open_fds", "gauge", "Open file descriptors."},
	{"process_max_fds", "gauge", "Limit of open file descriptors."},
	{"process_major_pagefaults_total", "counter", "Major page faults."},
	{"process_minor_pagefaults_total", "counter", "Minor page faults."},
	{"process_io_read_bytes_total", "counter", "Bytes the process read (read(2) and friends)."},
	{"process_io_written_bytes_total", "counter", "Bytes the process wrote (write(2) and friends)."},
}

// familyIndex finds a family by name.
var familyIndex = func() map[string]int {
	m := make(map[string]int, len(families))
	for i, f := range families {
		m[f.name] = i
	}
	return m
}()

// familyOf returns the index of the family a sample name belongs to
// (histogram and summary samples carry _bucket, _sum, _count), or -1.
func familyOf(name string) int {
	if i, ok := familyIndex[name]; ok {
		return i
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if i, ok := familyIndex[base]; ok && (families[i].typ == "histogram" || families[i].typ == "summary") &&
				(suffix != "_bucket" || families[i].typ == "histogram") {
				return i
			}
		}
	}
	return -1
}

// annotate writes the samples of raw (text exposition without metadata)
// to b grouped by family in the order of families, each family after its
// HELP and TYPE lines. Samples of unlisted families are left out.
func annotate(b *bytes.Buffer, raw []byte) {
	groups := make([][][]byte, len(families))
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		end := bytes.IndexAny(line, "{ ")
		if end < 0 {
			continue
		}
		if i := familyOf(string(line[:end])); i >= 0 {
			groups[i] = append(groups[i], line)
		}
	}
	for i, lines := range groups {
		if len(lines) == 0 {
			continue
		}
		f := families[i]
		b.WriteString("# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.typ + "\n")
		for _, l := range lines {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
}

// label escapes a label value for the text format.
func label(v string) string {
	if !strings.ContainsAny(v, "\\\"\n") {
		return v
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}
