package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/bench/gobench"
	"github.com/opengpa/gpa/bench/load"
	"github.com/opengpa/gpa/bench/procstat"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median reordered its input")
	}
}

func mkRun(p50, p99 float64, ok, requests int, agentCPU time.Duration) loadRun {
	return loadRun{Result: load.Result{OK: ok, Requests: requests, RPS: float64(ok), Latency: load.Latency{P50: p50, P99: p99}}, AgentCPU: agentCPU}
}

func TestSummarize(t *testing.T) {
	s := summarize([]loadRun{
		mkRun(100, 300, 10000, 10000, 2*time.Second),
		mkRun(300, 900, 10000, 10002, 4*time.Second),
		mkRun(200, 500, 10000, 10000, 3*time.Second),
	})
	if s.P50 != 200 || s.P99 != 500 || s.RPS != 10000 {
		t.Errorf("medians: %+v", s)
	}
	if math.Abs(s.AgentCPU-3) > 1e-9 {
		t.Errorf("agent CPU per 10k = %v s, want 3", s.AgentCPU)
	}
	if s.Failed != 2 || s.Requests != 30002 {
		t.Errorf("failed %d requests %d", s.Failed, s.Requests)
	}
	if z := summarize([]loadRun{mkRun(0, 0, 0, 5, time.Second)}); z.AgentCPU != 0 || z.Failed != 5 {
		t.Errorf("no successful request: %+v", z)
	}
}

// TestTargetsFollowFigures checks that a verdict is derived from the
// measured figures: met when inside the target, MISSED when outside.
func TestTargetsFollowFigures(t *testing.T) {
	mk := func(addedP50, idleKiB float64, unsigned int) *Report {
		r := &Report{Options: map[string]any{}}
		r.Latency = []Cell{
			{Path: "direct", Concurrency: 1, KeepAlive: true, Median: Summary{P50: 100, P99: 200}},
			{Path: "agent-enforce", Concurrency: 1, KeepAlive: true, Median: Summary{P50: 100 + addedP50, P99: 300}},
		}
		r.Memory.Idle = procstat.Sample{RSSKiB: int64(idleKiB)}
		r.Restart = &Restart{HostUnsigned: unsigned}
		r.Micro = []gobench.Result{{Name: "BenchmarkCompile1k", Metrics: map[string]float64{"ns/op": 60e6}},
			{Name: "BenchmarkRecordCapacity/1000", Metrics: map[string]float64{"records": 1000 - float64(unsigned),
				"%evicted": float64(unsigned) / 10, "%refused": float64(unsigned) / 10, "capacity": 16384}},
			{Name: "BenchmarkRecordCapacity/18000", Metrics: map[string]float64{"records": 16384,
				"%evicted": 9, "%refused": 9, "capacity": 16384}}}
		r.evaluate()
		return r
	}
	verdicts := func(r *Report) map[string]string {
		m := map[string]string{}
		for _, tg := range r.Targets {
			m[tg.Name] = tg.Verdict
		}
		return m
	}
	good := verdicts(mk(50, 10*1024, 0))
	bad := verdicts(mk(150, 20*1024, 1))
	for _, name := range []string{
		"B-lat agent-enforce p50 added, c=1 keep-alive",
		"B-restart unsigned requests served by the host",
		"B-ebpf (b) 1000 connections waiting to be accepted at once: records kept; refused at accept",
	} {
		if good[name] != "met" || bad[name] != "MISSED" {
			t.Errorf("%s: good %q bad %q", name, good[name], bad[name])
		}
	}
	idle := ""
	for k, v := range bad {
		if strings.HasPrefix(k, "B-mem idle RSS") {
			idle = v
		}
	}
	if idle != "MISSED" {
		t.Errorf("idle RSS 20 MiB verdict %q", idle)
	}
	if v := bad["B-ebpf (b) 18000 connections waiting to be accepted at once: records kept; refused at accept"]; v != "n/a" {
		t.Errorf("over the map's capacity judged %q, want n/a (measured)", v)
	}
	if bad["B-authz rule load, 1k rules"] != "MISSED" {
		t.Errorf("60 ms rule load judged %q", bad["B-authz rule load, 1k rules"])
	}
}

func TestReportOutputs(t *testing.T) {
	r := newReport(options{runs: 1, cell: time.Second})
	r.Latency = []Cell{{Path: "direct", Concurrency: 1, KeepAlive: true, Median: Summary{P50: 100, P99: 200, RPS: 5000}}}
	r.Restart = &Restart{HostIMDSRequests: 10}
	var buf bytes.Buffer
	printTable(&buf, r)
	for _, want := range []string{"B-lat / B-rps", "direct", "B-restart", "§3 targets"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	p := filepath.Join(t.TempDir(), "sub", "latest.json")
	if err := writeJSON(p, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Latency) != 1 || back.Latency[0].Median.P50 != 100 || back.Restart.HostIMDSRequests != 10 {
		t.Errorf("JSON round trip lost figures: %+v", back)
	}
}

// Issue 13's verdicts compare the agent with nginx in the same run.
func TestNginxParityVerdicts(t *testing.T) {
	mk := func(agentCPU, agentAdded, agentRPS, quotaRPS, signNs float64) map[string]string {
		r := &Report{Options: map[string]any{}}
		for _, ka := range []bool{true, false} {
			r.Latency = append(r.Latency,
				Cell{Path: "direct", Concurrency: 1, KeepAlive: ka, Median: Summary{P50: 100, P99: 200}},
				Cell{Path: "nginx", Concurrency: 1, KeepAlive: ka, Median: Summary{P50: 150, P99: 300, NginxCPU: 1}},
				Cell{Path: "agent-enforce", Concurrency: 1, KeepAlive: ka, Median: Summary{P50: 100 + agentAdded, P99: 200 + agentAdded, AgentCPU: agentCPU}})
		}
		r.Latency = append(r.Latency,
			Cell{Path: "nginx", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 8000, NginxCPU: 0.2}},
			Cell{Path: "agent-enforce", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: agentRPS, AgentCPU: agentCPU / 5}})
		r.Quota = &Quota{Percent: 15, Saturated: Summary{RPS: quotaRPS}}
		r.Micro = []gobench.Result{{Name: "BenchmarkRequestSign", Metrics: map[string]float64{"ns/op": signNs, "allocs/op": 1}}}
		r.evaluate()
		m := map[string]string{}
		for _, tg := range r.Targets {
			m[tg.Name] = tg.Verdict
		}
		return m
	}
	good, bad := mk(0.9, 40, 9000, 250, 2000), mk(3, 120, 4000, 150, 7000)
	for _, name := range []string{
		"parity: agent CPU per request vs nginx, c=1 new connection",
		"parity: agent CPU per request vs nginx, c=16 keep-alive",
		"parity: added p50 vs nginx's, c=1 keep-alive",
		"parity: added p99 vs nginx's, c=1 new connection",
		"parity: throughput vs nginx, c=16 keep-alive",
		"parity: sustained throughput within CPUQuota=15% (16 clients keep-alive)",
		"parity: signing one request",
	} {
		if good[name] != "met" || bad[name] != "MISSED" {
			t.Errorf("%s: good %q bad %q", name, good[name], bad[name])
		}
	}
}

// The Go floor's rows put the bare relay beside nginx and the agent, and
// the reference rows nginx writing its access log.
func TestGoFloorRows(t *testing.T) {
	r := &Report{Options: map[string]any{}}
	r.Latency = append(r.Latency,
		Cell{Path: "direct", Concurrency: 1, KeepAlive: false, Median: Summary{P50: 100, P99: 200}},
		Cell{Path: "nginx", Concurrency: 1, KeepAlive: false, Median: Summary{P50: 150, P99: 300, NginxCPU: 1}},
		Cell{Path: "go-relay", Concurrency: 1, KeepAlive: false, Median: Summary{P50: 160, P99: 330, RelayCPU: 1.5}},
		Cell{Path: "agent-enforce", Concurrency: 1, KeepAlive: false, Median: Summary{P50: 190, P99: 400, AgentCPU: 3}},
		Cell{Path: "nginx", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 8000, NginxCPU: 0.2}},
		Cell{Path: "go-relay", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 6000, RelayCPU: 0.3}},
		Cell{Path: "go-relay-raw", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 7000, RelayCPU: 0.25}},
		Cell{Path: "agent-enforce", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 4000, AgentCPU: 0.45}},
		Cell{Path: "nginx-log", Concurrency: 1, KeepAlive: false, Median: Summary{P50: 155, P99: 310, NginxCPU: 1.2}},
		Cell{Path: "nginx-log", Concurrency: 16, KeepAlive: true, Median: Summary{RPS: 7600, NginxCPU: 0.25}})
	r.evaluate()
	got := map[string]string{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg.Measured
	}
	for name, want := range map[string]string{
		"floor: go-relay CPU per request vs nginx, c=1 new connection":      "1.50 s vs 1.00 s per 10k (1.5×); agent 2.0× go-relay",
		"floor: go-relay CPU per request vs nginx, c=16 keep-alive":         "0.30 s vs 0.20 s per 10k (1.5×); agent 1.5× go-relay",
		"floor: go-relay added p50 / p99, c=1 new connection":               "+60 / +130 µs",
		"floor: go-relay throughput vs nginx, c=16 keep-alive":              "6000 vs 8000 req/s (0.75×)",
		"floor: go-relay-raw CPU per request vs nginx, c=16 keep-alive":     "0.25 s vs 0.20 s per 10k (1.2×); agent 1.8× go-relay-raw",
		"floor: go-relay-raw throughput vs nginx, c=16 keep-alive":          "7000 vs 8000 req/s (0.88×)",
		"reference: nginx-log CPU per request vs nginx, c=1 new connection": "1.20 s vs 1.00 s per 10k (1.2×); agent 2.5× nginx-log",
		"reference: nginx-log CPU per request vs nginx, c=16 keep-alive":    "0.25 s vs 0.20 s per 10k (1.2×); agent 1.8× nginx-log",
		"reference: nginx-log added p50 / p99, c=1 new connection":          "+55 / +110 µs",
		"reference: nginx-log throughput vs nginx, c=16 keep-alive":         "7600 vs 8000 req/s (0.95×)",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	s := summarize([]loadRun{{Result: load.Result{OK: 10000, Requests: 10000}, RelayCPU: 2 * time.Second}})
	if math.Abs(s.RelayCPU-2) > 1e-9 {
		t.Errorf("relay CPU per 10k = %v s, want 2", s.RelayCPU)
	}
}

// The soak verdict reads a trend, not one sample against another: FDs that
// wander with the connections in flight are flat, a steady climb in any of
// RSS, FDs or threads is growth.
func TestSoakTrend(t *testing.T) {
	soak := func(rss func(i int) int64, fds func(i int) int, threads func(i int) int) string {
		r := &Report{Options: map[string]any{}}
		s := &Soak{Duration: "2m0s"}
		for i := 0; i < 24; i++ {
			s.Samples = append(s.Samples, SoakSample{At: float64(5 * (i + 1)),
				Sample: procstat.Sample{RSSKiB: rss(i), FDs: fds(i), Threads: threads(i)}})
		}
		r.Memory.Soak = s
		r.evaluate()
		for _, tg := range r.Targets {
			if strings.HasPrefix(tg.Name, "B-mem soak") {
				return tg.Verdict
			}
		}
		t.Fatal("no soak verdict")
		return ""
	}
	steady := func(int) int64 { return 21 << 10 }
	eight := func(int) int { return 8 }
	// The 19:07 run's FDs: 109 at the first sample, 114 at the last.
	wander := []int{109, 111, 112, 113, 112, 110, 111, 112, 110, 110, 111, 111, 109, 110, 110, 110, 111, 110, 110, 109, 110, 113, 114, 114}
	if v := soak(steady, func(i int) int { return wander[i] }, eight); v != "met" {
		t.Errorf("wandering FDs: %s, want met", v)
	}
	if v := soak(steady, func(i int) int { return 100 + i/2 }, eight); v != "MISSED" {
		t.Errorf("FDs climbing by 12: %s, want MISSED", v)
	}
	if v := soak(func(i int) int64 { return 20<<10 + int64(i)*256 }, eight, eight); v != "MISSED" {
		t.Errorf("RSS climbing by 6 MiB: %s, want MISSED", v)
	}
	if v := soak(steady, eight, func(i int) int { return 8 + i/4 }); v != "MISSED" {
		t.Errorf("threads climbing by 5: %s, want MISSED", v)
	}
}
