// Package load is the benchmark suite's HTTP load generator: a fixed
// number of concurrent clients send GET requests to one URL, either on
// kept-alive connections or on a new connection per request, optionally
// paced to a total rate, and the latency of every measured request is kept
// so exact percentiles can be reported.
//
// It is used by the gpaload program, which the suite starts inside the
// benchmark's network namespace (and, for the redirected paths, inside the
// cgroup the agent's eBPF programs are attached to).
package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Config describes one load run.
type Config struct {
	// URL is requested with GET by every client.
	URL string
	// Headers are added to every request (e.g. "Metadata: true").
	Headers http.Header
	// Concurrency is the number of clients (each sends its next request
	// when the previous one finished); at least 1.
	Concurrency int
	// Duration is how long requests are measured after Warmup.
	Duration time.Duration
	// Warmup is run before Duration; its requests are not recorded.
	Warmup time.Duration
	// KeepAlive reuses each client's connection; false opens a new
	// connection for every request (and sends Connection: close).
	KeepAlive bool
	// Rate, when above 0, paces all clients together to this many requests
	// per second; 0 means as fast as the clients can go.
	Rate float64
	// Timeout bounds one request; 0 means 5 s.
	Timeout time.Duration
	// Trace keeps one Sample per measured request in Result.Trace.
	Trace bool
}

// Sample is one measured request: when it started (Unix ns), how long it
// took (ns) and whether it got the expected 200.
type Sample struct {
	Start   int64 `json:"s"`
	Latency int64 `json:"l"`
	OK      bool  `json:"ok"`
}

// Latency summarises request latencies in microseconds.
type Latency struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Max  float64 `json:"max_us"`
	Mean float64 `json:"mean_us"`
}

// Result is the outcome of Run. Latency covers successful (200) requests
// only; Errors counts transport failures and Status every HTTP status.
type Result struct {
	Requests   int         `json:"requests"`
	OK         int         `json:"ok"`
	Errors     int         `json:"errors"`
	Status     map[int]int `json:"status"`
	Seconds    float64     `json:"seconds"`
	RPS        float64     `json:"rps"`
	Latency    Latency     `json:"latency"`
	FirstError string      `json:"first_error,omitempty"`
	Trace      []Sample    `json:"trace,omitempty"`
}

// Summarize returns the percentiles of d (nearest-rank); an empty d is the
// zero Latency. d is sorted in place.
func Summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	us := func(v time.Duration) float64 { return float64(v) / float64(time.Microsecond) }
	return Latency{
		P50:  us(Percentile(d, 50)),
		P90:  us(Percentile(d, 90)),
		P99:  us(Percentile(d, 99)),
		P999: us(Percentile(d, 99.9)),
		Max:  us(d[len(d)-1]),
		Mean: us(sum / time.Duration(len(d))),
	}
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of the
// sorted slice d: the smallest value with at least p% of d at or below it.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	rank := int(float64(len(d))*p/100 + 0.999999999)
	rank = min(max(rank, 1), len(d))
	return d[rank-1]
}

// worker is one client's private record, merged after the run.
type worker struct {
	lat     []time.Duration
	trace   []Sample
	status  map[int]int
	errors  int
	firstEr error
}

// Run sends requests as cfg says until Warmup+Duration has passed or ctx
// is done, and returns what was measured. It fails only on a bad Config.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Concurrency < 1 {
		return Result{}, errors.New("load: concurrency must be at least 1")
	}
	if cfg.Duration <= 0 {
		return Result{}, errors.New("load: duration must be positive")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	req, err := http.NewRequest(http.MethodGet, cfg.URL, nil)
	if err != nil {
		return Result{}, fmt.Errorf("load: %w", err)
	}
	for k, vs := range cfg.Headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
		DisableKeepAlives:   !cfg.KeepAlive,
		DisableCompression:  true,
		MaxIdleConns:        cfg.Concurrency,
		MaxIdleConnsPerHost: cfg.Concurrency,
		IdleConnTimeout:     time.Minute,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.Timeout}

	var tick <-chan time.Time
	if cfg.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
		defer t.Stop()
		tick = t.C
	}
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	workers := make([]*worker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{status: map[int]int{}}
		workers[i] = w
		wg.Go(func() {
			for ctx.Err() == nil {
				if tick != nil {
					select {
					case <-tick:
					case <-ctx.Done():
						return
					}
				}
				t0 := time.Now()
				status, err := do(ctx, client, req)
				lat := time.Since(t0)
				if ctx.Err() != nil && err != nil {
					return // cut off by the end of the run, not a failure
				}
				if t0.Before(measureFrom) {
					continue
				}
				ok := err == nil && status == http.StatusOK
				if err != nil {
					w.errors++
					if w.firstEr == nil {
						w.firstEr = err
					}
				} else {
					w.status[status]++
				}
				if ok {
					w.lat = append(w.lat, lat)
				}
				if cfg.Trace {
					w.trace = append(w.trace, Sample{Start: t0.UnixNano(), Latency: int64(lat), OK: ok})
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	if elapsed > cfg.Duration {
		elapsed = cfg.Duration
	}

	res := Result{Status: map[int]int{}, Seconds: elapsed.Seconds()}
	var all []time.Duration
	for _, w := range workers {
		all = append(all, w.lat...)
		res.Trace = append(res.Trace, w.trace...)
		res.Errors += w.errors
		for s, n := range w.status {
			res.Status[s] += n
			res.Requests += n
		}
		if res.FirstError == "" && w.firstEr != nil {
			res.FirstError = w.firstEr.Error()
		}
	}
	res.Requests += res.Errors
	res.OK = len(all)
	if res.Seconds > 0 {
		res.RPS = float64(res.OK) / res.Seconds
	}
	res.Latency = Summarize(all)
	slices.SortFunc(res.Trace, func(a, b Sample) int { return cmp.Compare(a.Start, b.Start) })
	return res, nil
}

// do sends one request and reads the whole body.
func do(ctx context.Context, c *http.Client, req *http.Request) (int, error) {
	resp, err := c.Do(req.Clone(ctx))
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}
