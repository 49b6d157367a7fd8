package main

import "fmt"

// parityPath is the agent path judged against nginx: Enforce, as in
// production (every request authorized, signed and verified by the host).
const parityPath = "agent-enforce"

// comparisons are the paths measured beside nginx that split the agent's
// gap: the Go floors (what a relay in Go costs before any of the agent's
// work) and nginx writing its access log (what recording every request
// costs nginx).
var comparisons = []struct {
	kind string // the rows' prefix
	p    pathSpec
}{{"floor", pathGoRelay}, {"floor", pathGoRelayRaw}, {"reference", pathNginxLog}}

// evaluateNginxParity adds issue 13's verdicts: the agent's hot path costs
// no more than nginx's (CPU per request, added latency, throughput), each a
// comparison within one run, plus the CPU-quota and micro-benchmark goals.
func (r *Report) evaluateNginxParity(add func(name, measured, target, verdict string)) {
	conn := func(ka bool) string {
		if ka {
			return "keep-alive"
		}
		return "new connection"
	}
	for _, cc := range []struct {
		c  int
		ka bool
	}{{1, false}, {16, true}} {
		a, n := r.cell(parityPath, cc.c, cc.ka), r.cell("nginx", cc.c, cc.ka)
		if a == nil || n == nil || n.Median.NginxCPU == 0 {
			continue
		}
		ratio := a.Median.AgentCPU / n.Median.NginxCPU
		add(fmt.Sprintf("parity: agent CPU per request vs nginx, c=%d %s", cc.c, conn(cc.ka)),
			fmt.Sprintf("%.2f s vs %.2f s per 10k (%.1f×)", a.Median.AgentCPU, n.Median.NginxCPU, ratio), "≤ nginx (≤ 1.0×)", verdict(ratio <= 1))
		for _, f := range comparisons {
			g := r.cell(f.p.name, cc.c, cc.ka)
			if g == nil {
				continue
			}
			if cpu, _ := g.Median.proxyCPU(f.p.name); cpu > 0 {
				add(fmt.Sprintf("%s: %s CPU per request vs nginx, c=%d %s", f.kind, f.p.name, cc.c, conn(cc.ka)),
					fmt.Sprintf("%.2f s vs %.2f s per 10k (%.1f×); agent %.1f× %s", cpu, n.Median.NginxCPU,
						cpu/n.Median.NginxCPU, a.Median.AgentCPU/cpu, f.p.name), "measured", "n/a")
			}
		}
	}
	for _, ka := range []bool{true, false} {
		d, a, n := r.cell("direct", 1, ka), r.cell(parityPath, 1, ka), r.cell("nginx", 1, ka)
		if d == nil || a == nil || n == nil {
			continue
		}
		for _, q := range []struct {
			name         string
			agent, nginx float64
		}{
			{"p50", a.Median.P50 - d.Median.P50, n.Median.P50 - d.Median.P50},
			{"p99", a.Median.P99 - d.Median.P99, n.Median.P99 - d.Median.P99},
		} {
			add(fmt.Sprintf("parity: added %s vs nginx's, c=1 %s", q.name, conn(ka)),
				fmt.Sprintf("%+.0f µs vs nginx %+.0f µs", q.agent, q.nginx), "≤ nginx's", verdict(q.agent <= q.nginx))
		}
		for _, f := range comparisons {
			if g := r.cell(f.p.name, 1, ka); g != nil {
				add(fmt.Sprintf("%s: %s added p50 / p99, c=1 %s", f.kind, f.p.name, conn(ka)),
					fmt.Sprintf("%+.0f / %+.0f µs", g.Median.P50-d.Median.P50, g.Median.P99-d.Median.P99), "measured", "n/a")
			}
		}
	}
	if a, n := r.cell(parityPath, 16, true), r.cell("nginx", 16, true); a != nil && n != nil && n.Median.RPS > 0 {
		add("parity: throughput vs nginx, c=16 keep-alive",
			fmt.Sprintf("%.0f vs %.0f req/s (%.2f×)", a.Median.RPS, n.Median.RPS, a.Median.RPS/n.Median.RPS), "≥ nginx (≥ 1.0×)",
			verdict(a.Median.RPS >= n.Median.RPS))
		for _, f := range comparisons {
			if g := r.cell(f.p.name, 16, true); g != nil {
				add(fmt.Sprintf("%s: %s throughput vs nginx, c=16 keep-alive", f.kind, f.p.name),
					fmt.Sprintf("%.0f vs %.0f req/s (%.2f×)", g.Median.RPS, n.Median.RPS, g.Median.RPS/n.Median.RPS), "measured", "n/a")
			}
		}
	}
	if q := r.Quota; q != nil && q.Error == "" {
		add(fmt.Sprintf("parity: sustained throughput within CPUQuota=%d%% (16 clients keep-alive)", q.Percent),
			fmt.Sprintf("%.0f req/s", q.Saturated.RPS), "≥ 200 req/s", verdict(q.Saturated.RPS >= 200))
	}
	if v, ok := r.micro("BenchmarkAuthorize/imds-1k/match-query", "ns/op"); ok {
		add("parity: authz canonicalise + match, 1k rules", fmt.Sprintf("%.2f µs", v/1e3), "≤ 1 µs (as 10 rules)", verdict(v <= 1000))
	}
	if v, ok := r.micro("BenchmarkRequestSign", "ns/op"); ok {
		allocs, _ := r.micro("BenchmarkRequestSign", "allocs/op")
		add("parity: signing one request", fmt.Sprintf("%.2f µs, %.0f allocs", v/1e3, allocs), "≤ 3 µs, ≤ 5 allocs",
			verdict(v <= 3000 && allocs <= 5))
	}
	if v, ok := r.micro("BenchmarkResolveCachedImage", "ns/op"); ok {
		add("parity: caller claims, later connection of a known process image", fmt.Sprintf("%.1f µs", v/1e3), "measured", "n/a")
	}
}
