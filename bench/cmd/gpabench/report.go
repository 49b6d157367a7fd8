package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opengpa/gpa/bench/gobench"
	"github.com/opengpa/gpa/bench/load"
	"github.com/opengpa/gpa/bench/procstat"
)

// Report is everything one suite run measured; it is written as JSON.
type Report struct {
	Started time.Time      `json:"started"`
	Seconds float64        `json:"seconds"`
	Machine Machine        `json:"machine"`
	Options map[string]any `json:"options"`

	Latency []Cell   `json:"latency"`
	Quota   *Quota   `json:"cpu_quota,omitempty"`
	Flood   []Flood  `json:"flood,omitempty"`
	Memory  Memory   `json:"memory"`
	Start   Start    `json:"start"`
	Restart *Restart `json:"restart,omitempty"`

	Micro      []gobench.Result `json:"micro"`
	MicroError string           `json:"micro_error,omitempty"`

	Targets []Target `json:"targets"`
	Notes   []string `json:"notes"`
	Errors  []string `json:"errors,omitempty"`
}

// Machine describes where the figures were taken.
type Machine struct {
	Kernel     string `json:"kernel"`
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model"`
	GoVersion  string `json:"go"`
	GOMAXPROCS string `json:"gomaxprocs"`
}

// Cell is one (path, concurrency, connection mode) of B-lat/B-rps.
type Cell struct {
	Path        string    `json:"path"`
	Concurrency int       `json:"concurrency"`
	KeepAlive   bool      `json:"keep_alive"`
	Median      Summary   `json:"median"`
	Runs        []loadRun `json:"runs"`
}

// Summary holds medians over runs; CPU figures are seconds per 10k
// successful requests.
type Summary struct {
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	RPS        float64 `json:"rps"`
	Failed     int     `json:"failed"`
	AgentCPU   float64 `json:"agent_cpu_s_per_10k"`
	HostCPU    float64 `json:"host_cpu_s_per_10k"`
	NginxCPU   float64 `json:"nginx_cpu_s_per_10k"`
	RelayCPU   float64 `json:"go_relay_cpu_s_per_10k"`
	Requests   int     `json:"requests"`
	FirstError string  `json:"first_error,omitempty"`
}

// Quota is the B-rps check under a CPU quota.
type Quota struct {
	Percent   int     `json:"percent"`
	Saturated Summary `json:"saturated_c16_keepalive"`
	Paced20   Summary `json:"paced_20rps_c5_newconn"`
	Error     string  `json:"error,omitempty"`
}

// Flood is one B-flood run: a well-behaved client alone and while Users
// unprivileged users together hold (or keep trying to hold) Connections
// connections, Hold their totals.
type Flood struct {
	Connections int             `json:"connections"`
	Users       int             `json:"users"`
	Baseline    Summary         `json:"baseline"`
	Flooded     Summary         `json:"flooded"`
	Hold        load.HoldResult `json:"hold"`
	AgentAlive  bool            `json:"agent_alive"`
	// AgentCPUAlone and AgentCPUFlooded are the agent's CPU time over wall
	// time while the client ran alone and while flooded (1 = one CPU).
	AgentCPUAlone   float64 `json:"agent_cpu_alone"`
	AgentCPUFlooded float64 `json:"agent_cpu_flooded"`
	Error           string  `json:"error,omitempty"`
}

// Memory is B-mem.
type Memory struct {
	IdleAfter  string          `json:"idle_after"`
	Idle       procstat.Sample `json:"idle"`
	AfterLoad  procstat.Sample `json:"after_load"`
	PeakHWMKiB int64           `json:"peak_hwm_kib"`
	Soak       *Soak           `json:"soak,omitempty"`
}

// Soak is the paced soak with periodic samples.
type Soak struct {
	Duration string          `json:"duration"`
	Load     string          `json:"load"`
	Requests int             `json:"requests"`
	Failed   int             `json:"failed"`
	Samples  []SoakSample    `json:"samples"`
	After    procstat.Sample `json:"after"`
}

// SoakSample is one reading during the soak, At seconds after its start.
type SoakSample struct {
	At float64 `json:"at_s"`
	procstat.Sample
}

// Start is B-start.
type Start struct {
	ColdMs       []float64       `json:"cold_ms"`
	WarmMs       []float64       `json:"warm_ms"`
	ColdMedianMs float64         `json:"cold_median_ms"`
	WarmMedianMs float64         `json:"warm_median_ms"`
	Extension    *ExtensionStart `json:"extension,omitempty"`
}

// ExtensionStart is extension enable → success status.
type ExtensionStart struct {
	Measured        bool      `json:"measured"`
	Settings        string    `json:"settings,omitempty"`
	InstallMs       float64   `json:"install_ms,omitempty"`
	EnableCommandMs float64   `json:"enable_command_ms,omitempty"`
	Ms              []float64 `json:"ms,omitempty"`
	MedianMs        float64   `json:"median_ms,omitempty"`
	Reason          string    `json:"reason,omitempty"`
}

// Restart is B-restart.
type Restart struct {
	Load                 string  `json:"load"`
	Requests             int     `json:"requests"`
	OK                   int     `json:"ok"`
	FailedAfterKill      int     `json:"failed_after_kill"`
	KillToRestartMs      float64 `json:"kill_to_restart_ms"`
	KillToSuccessMs      float64 `json:"kill_to_first_success_ms"`
	RestartToSuccessMs   float64 `json:"restart_to_first_success_ms"`
	HostIMDSRequests     int     `json:"host_imds_requests"`
	HostUnsigned         int     `json:"host_unsigned"`
	HostServedUnaccepted int     `json:"host_served_unaccepted"`
	Error                string  `json:"error,omitempty"`
}

// Target is one §3 target next to the measured figure.
type Target struct {
	Name     string `json:"name"`
	Measured string `json:"measured"`
	Target   string `json:"target"`
	Verdict  string `json:"verdict"` // met, missed, n/a
}

func newReport(o options) *Report {
	r := &Report{
		Started: time.Now().UTC(),
		Machine: Machine{Kernel: kernel(), CPUs: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version(),
			GOMAXPROCS: fmt.Sprintf("agent %d, host and load 2", o.agentProcsOrDefault())},
		Options: map[string]any{"runs": o.runs, "cell": o.cell.String(), "warmup": o.warmup.String(), "soak": o.soak.String(),
			"idle": o.idle.String(), "starts": o.starts, "micro_benchtime": o.microTime, "cpu_quota_pct": o.quota, "audit_syslog": o.syslog,
			"agent_procs": o.agentProcsOrDefault(), "nginx_workers": o.nginxWorkersOrDefault()},
	}
	r.Notes = append(r.Notes,
		fmt.Sprintf("the agent runs with GOMAXPROCS=%d (its service default is 1), nginx with %d worker processes; host simulator and load generator with GOMAXPROCS=2, all on the same machine; the load generator competes with them for the CPUs",
			o.agentProcsOrDefault(), o.nginxWorkersOrDefault()),
		"latency is measured in the client (gpaload, Go net/http) per request; medians of the per-run percentiles over -runs runs",
		"direct = client in the namespace outside the attached cgroup, host IMDS mode Disabled; nginx = nginx-light proxy_pass (upstream keep-alive) outside the cgroup, host Disabled; nginx-log = the same nginx writing one access-log line per request (buffered 256 KiB, flushed each second; the agent's within 50 ms); go-relay = the Go floor, a bare relay in Go with the agent's processors (bench/cmd/gorelay: no authorization, signing, audit or checks), outside the cgroup, host Disabled; go-relay-raw = the same making its socket calls as the agent does (package rawio); agent-* = client inside the attached cgroup, redirected by eBPF to the agent, host IMDS in Audit/Enforce (the host verifies the signature)",
		"CPU is utime+stime from /proc/<pid>/stat (10 ms ticks) per 10k successful requests; host = azure-host-sim",
		"goroutine counts are not available (no debug endpoint); threads (/proc/<pid>/status) and FDs (/proc/<pid>/fd) are reported instead",
		"B-ebpf (a) connect cost, (b) audit-map capacity (BenchmarkRecordCapacity: N connections held waiting, then accepted) and (c) load time come from the redirector micro-benchmarks; B-flood floods from one unprivileged user (the per-caller limit applies) and from 40 (only the limit of all callers together does); containers are not measured",
	)
	return r
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// median of xs (mean of the middle two for an even count); 0 if empty.
// trend is how much of f grew over a soak: the median over the last third
// of the samples minus that over the first third. Medians of thirds, not
// the first and last sample, so the connections in flight at one sample
// (a paced client with a new connection per request) are not read as a
// leak, while a steady climb still is.
func trend(samples []SoakSample, f func(SoakSample) float64) float64 {
	third := max(len(samples)/3, 1)
	var head, tail []float64
	for i, x := range samples {
		if i < third {
			head = append(head, f(x))
		}
		if i >= len(samples)-third {
			tail = append(tail, f(x))
		}
	}
	return median(tail) - median(head)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summarize takes the median of every figure over runs.
func summarize(runs []loadRun) Summary {
	var p50, p90, p99, p999, rps, agent, host, ngx, relay []float64
	var s Summary
	per10k := func(d time.Duration, ok int) float64 {
		if ok == 0 {
			return 0
		}
		return d.Seconds() / float64(ok) * 10000
	}
	for _, r := range runs {
		p50 = append(p50, r.Latency.P50)
		p90 = append(p90, r.Latency.P90)
		p99 = append(p99, r.Latency.P99)
		p999 = append(p999, r.Latency.P999)
		rps = append(rps, r.RPS)
		agent = append(agent, per10k(r.AgentCPU, r.OK))
		host = append(host, per10k(r.HostCPU, r.OK))
		ngx = append(ngx, per10k(r.NginxCPU, r.OK))
		relay = append(relay, per10k(r.RelayCPU, r.OK))
		s.Failed += r.Requests - r.OK
		s.Requests += r.Requests
		if s.FirstError == "" {
			s.FirstError = r.FirstError
		}
	}
	s.P50, s.P90, s.P99, s.P999 = median(p50), median(p90), median(p99), median(p999)
	s.RPS, s.AgentCPU, s.HostCPU, s.NginxCPU, s.RelayCPU = median(rps), median(agent), median(host), median(ngx), median(relay)
	return s
}

// cell finds a latency cell.
func (r *Report) cell(path string, c int, ka bool) *Cell {
	for i := range r.Latency {
		l := &r.Latency[i]
		if l.Path == path && l.Concurrency == c && l.KeepAlive == ka {
			return l
		}
	}
	return nil
}

// micro finds a micro-benchmark figure.
func (r *Report) micro(name, unit string) (float64, bool) {
	for _, m := range r.Micro {
		if m.Name == name {
			v, ok := m.Metrics[unit]
			return v, ok
		}
	}
	return 0, false
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// evaluate fills Targets from the figures.
func (r *Report) evaluate() {
	r.Targets = nil
	add := func(name, measured, target, v string) {
		r.Targets = append(r.Targets, Target{name, measured, target, v})
	}
	d := r.cell("direct", 1, true)
	for _, p := range []string{"agent-audit", "agent-enforce"} {
		a := r.cell(p, 1, true)
		if d == nil || a == nil {
			continue
		}
		p50 := a.Median.P50 - d.Median.P50
		p99 := a.Median.P99 - d.Median.P99
		add("B-lat "+p+" p50 added, c=1 keep-alive", fmt.Sprintf("%.0f µs", p50), "≤ 100 µs", verdict(p50 <= 100))
		add("B-lat "+p+" p99 added, c=1 keep-alive", fmt.Sprintf("%.0f µs", p99), "≤ 400 µs (upstream ≤ 1 ms)", verdict(p99 <= 400))
	}
	// The container path costs what the host path costs (issue 11: within
	// 10 %), each against its own direct baseline.
	for _, ka := range []bool{true, false} {
		d, a := r.cell("direct", 1, ka), r.cell("agent-audit", 1, ka)
		dc, ac := r.cell("direct-container", 1, ka), r.cell("agent-audit-container", 1, ka)
		if d == nil || a == nil || dc == nil || ac == nil {
			continue
		}
		host, ctr := a.Median.P50-d.Median.P50, ac.Median.P50-dc.Median.P50
		conn := "keep-alive"
		if !ka {
			conn = "new connection"
		}
		add("B-lat container path p50 added, c=1 "+conn, fmt.Sprintf("%.0f µs (host path %.0f µs)", ctr, host),
			"≤ host path + 10 %", verdict(ctr <= host*1.1))
	}
	r.evaluateNginxParity(add)
	if q := r.Quota; q != nil && q.Error == "" {
		ok := q.Paced20.RPS >= 19 && q.Paced20.P99 < 10000 && q.Paced20.Failed == 0
		add(fmt.Sprintf("B-rps 20 req/s within CPUQuota=%d%%", q.Percent),
			fmt.Sprintf("%.1f req/s, p99 %.0f µs, %d failed", q.Paced20.RPS, q.Paced20.P99, q.Paced20.Failed), "≥ 20 req/s, p99 < 10 ms", verdict(ok))
	}
	for _, f := range r.Flood {
		if f.Error != "" || f.Baseline.P99 == 0 {
			continue
		}
		ok := f.AgentAlive && f.Flooded.Failed == 0 && f.Flooded.P50 <= 2*f.Baseline.P50 && f.Flooded.P99 <= 2*f.Baseline.P99
		add(fmt.Sprintf("B-flood %d connections from %s: well-behaved client p50/p99", f.Connections, floodUsers(f.Users)),
			fmt.Sprintf("%.0f/%.0f µs (alone %.0f/%.0f), %d failed", f.Flooded.P50, f.Flooded.P99, f.Baseline.P50, f.Baseline.P99, f.Flooded.Failed),
			"agent alive, ≤ 2× alone, none failed", verdict(ok))
	}
	if r.Memory.Idle.RSSKiB > 0 {
		mb := float64(r.Memory.Idle.RSSKiB) / 1024
		add("B-mem idle RSS (after "+r.Memory.IdleAfter+")", fmt.Sprintf("%.1f MiB", mb), "≤ 15 MB (upstream ≤ 20 MB)", verdict(mb <= 15))
	}
	if s := r.Memory.Soak; s != nil && len(s.Samples) >= 2 {
		first, last := s.Samples[0], s.Samples[len(s.Samples)-1]
		maxRSS := int64(0)
		for _, x := range s.Samples {
			maxRSS = max(maxRSS, x.RSSKiB)
		}
		rss := trend(s.Samples, func(x SoakSample) float64 { return float64(x.RSSKiB) / 1024 })
		fds := trend(s.Samples, func(x SoakSample) float64 { return float64(x.FDs) })
		threads := trend(s.Samples, func(x SoakSample) float64 { return float64(x.Threads) })
		flat := rss <= 2 && fds <= 2 && threads <= 2
		add("B-mem soak "+s.Duration+" (RSS first→last sample, FDs, threads; growth: last third's median − first third's)",
			fmt.Sprintf("%.1f→%.1f MiB (max %.1f, growth %+.1f), FDs %d→%d (%+.1f), threads %d→%d (%+.1f)",
				float64(first.RSSKiB)/1024, float64(last.RSSKiB)/1024, float64(maxRSS)/1024, rss,
				first.FDs, last.FDs, fds, first.Threads, last.Threads, threads),
			"no growth (flat ±2 MiB/±2)", verdict(flat))
	}
	if rr := r.Restart; rr != nil {
		add("B-restart unsigned requests served by the host", fmt.Sprintf("%d unsigned, %d served unaccepted", rr.HostUnsigned, rr.HostServedUnaccepted), "0", verdict(rr.HostUnsigned == 0 && rr.HostServedUnaccepted == 0))
		add("B-restart kill -9 → first success", fmt.Sprintf("%.0f ms (restart → success %.0f ms)", rr.KillToSuccessMs, rr.RestartToSuccessMs), "measured", "n/a")
	}
	if r.Start.ColdMedianMs > 0 {
		add("B-start agent start → provisioned", fmt.Sprintf("cold %.0f ms, warm %.0f ms", r.Start.ColdMedianMs, r.Start.WarmMedianMs), "measured (SDK probes time out at 0.3–1 s)", "n/a")
	}
	if v, ok := r.micro("BenchmarkCompile1k", "ns/op"); ok {
		add("B-authz rule load, 1k rules", fmt.Sprintf("%.2f ms", v/1e6), "≤ 50 ms", verdict(v/1e6 <= 50))
	}
	if v, ok := r.micro("BenchmarkAuthorize/imds-1k/match-query", "ns/op"); ok {
		add("B-authz canonicalise + match, 1k rules (match-query)", fmt.Sprintf("%.2f µs", v/1e3), "≤ 5 µs (mean; plan 2.1 ≤ 5/30 µs)", verdict(v/1e3 <= 5))
	}
	if v, ok := r.micro("BenchmarkAuthorize/imds-1rule", "ns/op"); ok {
		add("B-authz canonicalise + match, 1 rule", fmt.Sprintf("%.2f µs", v/1e3), "≤ 1 µs (mean; plan 2.1 ≤ 1/5 µs)", verdict(v/1e3 <= 1))
	}
	for _, m := range r.Micro {
		// BenchmarkRecordCapacity/N, in the benchmark's order of N.
		ns, ok := strings.CutPrefix(m.Name, "BenchmarkRecordCapacity/")
		n, err := strconv.Atoi(ns)
		records, ok1 := m.Metrics["records"]
		evicted, ok2 := m.Metrics["%evicted"]
		refused, ok3 := m.Metrics["%refused"]
		capacity, ok4 := m.Metrics["capacity"]
		if !ok || err != nil || !ok1 || !ok2 || !ok3 || !ok4 {
			continue
		}
		target, v := fmt.Sprintf("every record kept (the map holds %.0f)", capacity), verdict(evicted == 0 && refused == 0)
		if float64(n) > capacity {
			target, v = fmt.Sprintf("measured (over the map's %.0f: the oldest refused, 421)", capacity), "n/a"
		}
		add(fmt.Sprintf("B-ebpf (b) %d connections waiting to be accepted at once: records kept; refused at accept", n),
			fmt.Sprintf("%.0f (%.1f %% evicted); %.1f %% refused", records, evicted, refused), target, v)
	}
	if v, ok := r.micro("BenchmarkMetricsRequest", "ns/op"); ok {
		add("metrics update per request (counter + histogram)", fmt.Sprintf("%.0f ns", v), "≤ 1 µs (no measurable latency)", verdict(v <= 1000))
	}
	if v, ok := r.micro("BenchmarkSyslogWriteRecord", "ns/op"); ok {
		add("syslog per audit record (audit writer goroutine, not the request path)", fmt.Sprintf("%.2f µs", v/1e3), "measured", "n/a")
	}
}

// printTable writes the human-readable report.
func printTable(w io.Writer, r *Report) {
	r.evaluate()
	fmt.Fprintf(w, "\n== gpa benchmark suite  %s  (%s, %d CPUs, %s, kernel %s, GOMAXPROCS %s, %d runs × %s per cell, medians)\n",
		r.Started.Format(time.RFC3339), r.Machine.CPUModel, r.Machine.CPUs, r.Machine.GoVersion, r.Machine.Kernel, r.Machine.GOMAXPROCS, r.Options["runs"], r.Options["cell"])

	if len(r.Latency) > 0 {
		fmt.Fprintln(w, "\n-- B-lat / B-rps: GET /metadata/instance (~1 KB; *-token: the managed-identity token path, c=1 only); latency in µs;")
		fmt.Fprintln(w, "   +p50/+p99 = minus direct (token rows: minus direct-token); proxy/host CPU = CPU-seconds per 10k requests")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "conn\tc\tpath\tp50\tp90\tp99\tp99.9\t+p50\t+p99\treq/s\tproxy CPU\thost CPU\tfailed\t")
		for _, ka := range keepAlives {
			for _, c := range concurrencies {
				for _, l := range r.Latency {
					if l.Concurrency != c || l.KeepAlive != ka {
						continue
					}
					m := l.Median
					add50, add99 := "", ""
					if d := r.cell(baseline(l.Path), c, ka); d != nil && d.Path != l.Path {
						add50 = fmt.Sprintf("%+.0f", m.P50-d.Median.P50)
						add99 = fmt.Sprintf("%+.0f", m.P99-d.Median.P99)
					}
					proxyCPU := "-"
					if v, ok := m.proxyCPU(l.Path); ok {
						proxyCPU = fmt.Sprintf("%.2f", v)
					}
					conn := "keep-alive"
					if !ka {
						conn = "new-conn"
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%.0f\t%s\t%.2f\t%d\t\n",
						conn, c, l.Path, m.P50, m.P90, m.P99, m.P999, add50, add99, m.RPS, proxyCPU, m.HostCPU, m.Failed)
				}
			}
		}
		tw.Flush()
	}
	if q := r.Quota; q != nil {
		fmt.Fprintf(w, "\n-- B-rps under CPUQuota=%d%% (agent in a cgroup v1 cpu group, cfs_quota 15ms/100ms), Enforce\n", q.Percent)
		if q.Error != "" {
			fmt.Fprintf(w, "not measured: %s\n", q.Error)
		} else {
			fmt.Fprintf(w, "saturated, 16 clients keep-alive: %.0f req/s, p50 %.0f µs, p99 %.0f µs, failed %d\n", q.Saturated.RPS, q.Saturated.P50, q.Saturated.P99, q.Saturated.Failed)
			fmt.Fprintf(w, "paced 20 req/s, 5 clients, new conn: %.1f req/s, p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, failed %d\n", q.Paced20.RPS, q.Paced20.P50, q.Paced20.P99, q.Paced20.P999, q.Paced20.Failed)
		}
	}
	if len(r.Flood) > 0 {
		fmt.Fprintln(w, "\n-- B-flood: root client, c=1, new connection per request, IMDS Enforce; alone, then while unprivileged users hold N connections (unfinished heads, reopened when closed)")
		for _, f := range r.Flood {
			fmt.Fprintf(w, "N=%d from %s: alone p50 %.0f µs p99 %.0f µs; flooded p50 %.0f µs p99 %.0f µs, %.1f req/s, failed %d; flood opened %d, closed by the agent %d, connect failures %d, held at end %d; agent CPU %.0f %% alone, %.0f %% flooded; agent alive %v",
				f.Connections, floodUsers(f.Users), f.Baseline.P50, f.Baseline.P99, f.Flooded.P50, f.Flooded.P99, f.Flooded.RPS, f.Flooded.Failed,
				f.Hold.Opened, f.Hold.Closed, f.Hold.Failed, f.Hold.HeldAtEnd, 100*f.AgentCPUAlone, 100*f.AgentCPUFlooded, f.AgentAlive)
			if f.Error != "" {
				fmt.Fprintf(w, "; error: %s", f.Error)
			}
			fmt.Fprintln(w)
		}
	}
	m := r.Memory
	fmt.Fprintln(w, "\n-- B-mem (agent process; threads and FDs instead of goroutines)")
	if m.Idle.RSSKiB > 0 {
		fmt.Fprintf(w, "idle after %s: RSS %.1f MiB, threads %d, FDs %d\n", m.IdleAfter, float64(m.Idle.RSSKiB)/1024, m.Idle.Threads, m.Idle.FDs)
	}
	if m.PeakHWMKiB > 0 {
		fmt.Fprintf(w, "peak (VmHWM) after the B-lat/B-rps matrix: %.1f MiB; RSS then %.1f MiB, threads %d, FDs %d\n", float64(m.PeakHWMKiB)/1024,
			float64(m.AfterLoad.RSSKiB)/1024, m.AfterLoad.Threads, m.AfterLoad.FDs)
	}
	if s := m.Soak; s != nil {
		fmt.Fprintf(w, "soak %s (%s): %d requests, %d failed\n", s.Duration, s.Load, s.Requests, s.Failed)
		for _, x := range s.Samples {
			fmt.Fprintf(w, "  t=%4.0fs RSS %.1f MiB  HWM %.1f MiB  threads %d  FDs %d\n", x.At, float64(x.RSSKiB)/1024, float64(x.HWMKiB)/1024, x.Threads, x.FDs)
		}
		fmt.Fprintf(w, "  2 s after: RSS %.1f MiB, threads %d, FDs %d\n", float64(s.After.RSSKiB)/1024, s.After.Threads, s.After.FDs)
	}
	fmt.Fprintln(w, "\n-- B-start (agent start → GET /provision finished: key latched, redirect attached, listener up)")
	fmt.Fprintf(w, "cold (no key on disk, host key forgotten, no pins): median %.0f ms  %v\n", r.Start.ColdMedianMs, fmtMs(r.Start.ColdMs))
	fmt.Fprintf(w, "warm (key on disk and latched, pins present):       median %.0f ms  %v\n", r.Start.WarmMedianMs, fmtMs(r.Start.WarmMs))
	if e := r.Start.Extension; e != nil {
		if e.Measured {
			fmt.Fprintf(w, "extension enable → success status: %.0f ms (enable command itself %.0f ms; install before it %.0f ms; %s)\n", e.MedianMs, e.EnableCommandMs, e.InstallMs, e.Settings)
			if e.Reason != "" {
				fmt.Fprintf(w, "  %s\n", e.Reason)
			}
		} else {
			fmt.Fprintf(w, "extension enable → success status: %s\n", e.Reason)
		}
	}
	if rr := r.Restart; rr != nil {
		fmt.Fprintf(w, "\n-- B-restart (kill -9 under load, immediate restart; %s)\n", rr.Load)
		fmt.Fprintf(w, "host IMDS requests %d: unsigned %d, served-unaccepted %d\n", rr.HostIMDSRequests, rr.HostUnsigned, rr.HostServedUnaccepted)
		fmt.Fprintf(w, "kill → restart %.1f ms; kill → first success %.0f ms; restart → first success %.0f ms; failed client requests after kill %d\n",
			rr.KillToRestartMs, rr.KillToSuccessMs, rr.RestartToSuccessMs, rr.FailedAfterKill)
		if rr.Error != "" {
			fmt.Fprintln(w, rr.Error)
		}
	}
	if len(r.Micro) > 0 || r.MicroError != "" {
		fmt.Fprintln(w, "\n-- Micro-benchmarks (go test -bench, GOMAXPROCS=2)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, b := range r.Micro {
			var figs []string
			for _, u := range []string{"ns/op", "ns/connect", "B/op", "allocs/op", "missing-records", "dropped"} {
				v, ok := b.Metrics[u]
				if !ok {
					continue
				}
				if per, isNs := strings.CutPrefix(u, "ns/"); isNs {
					figs = append(figs, fmtNs(v)+"/"+per)
				} else {
					figs = append(figs, fmt.Sprintf("%.0f %s", v, u))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.TrimPrefix(b.Package, "github.com/opengpa/gpa/"), b.Name, strings.Join(figs, "  "))
		}
		tw.Flush()
		if r.MicroError != "" {
			fmt.Fprintf(w, "micro-benchmark error: %s\n", r.MicroError)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\n-- §3 targets")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "figure\tmeasured\ttarget\tverdict")
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Measured, t.Target, t.Verdict)
		}
		tw.Flush()
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", e)
	}
	fmt.Fprintf(w, "total %.0f s\n", r.Seconds)
}

// fmtNs prints a nanosecond figure in a readable unit.
func fmtNs(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.2f µs", v/1e3)
	}
	return fmt.Sprintf("%.0f ns", v)
}

func fmtMs(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return "[" + strings.Join(s, " ") + "] ms"
}

// writeJSON writes the report to path (creating its directory).
func writeJSON(path string, r *Report) error {
	r.evaluate()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// floodUsers names a B-flood's flooders: "one user" or "N users".
func floodUsers(n int) string {
	if n <= 1 {
		return "one user"
	}
	return strconv.Itoa(n) + " users"
}
