// Command gpaload is the benchmark suite's load generator: it sends GET
// requests to one URL from a number of concurrent clients for a fixed time
// and prints a load.Result (latency percentiles, statuses, requests/s and,
// with -trace, every request) as JSON on stdout.
//
// The suite starts it inside the benchmark's network namespace; for the
// redirected paths also inside the cgroup the agent is attached to.
//
//	gpaload -url http://169.254.169.254/metadata/instance?api-version=2021-02-01 \
//	    -H 'Metadata: true' -c 16 -d 2s [-warmup 200ms] [-keepalive=false] [-rate 20] [-trace]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/bench/load"
)

// headers collects repeated -H "Name: value" flags.
type headers http.Header

func (h headers) String() string { return fmt.Sprint(http.Header(h)) }

func (h headers) Set(v string) error {
	name, value, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q is not Name: value", v)
	}
	http.Header(h).Add(strings.TrimSpace(name), strings.TrimSpace(value))
	return nil
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("gpaload", flag.ContinueOnError)
	h := headers{}
	var cfg load.Config
	fs.StringVar(&cfg.URL, "url", "", "URL to GET (required)")
	fs.Var(h, "H", "request header \"Name: value\" (repeatable)")
	fs.IntVar(&cfg.Concurrency, "c", 1, "concurrent clients")
	fs.DurationVar(&cfg.Duration, "d", 2*time.Second, "measured duration")
	fs.DurationVar(&cfg.Warmup, "warmup", 200*time.Millisecond, "unmeasured warm-up before -d")
	fs.BoolVar(&cfg.KeepAlive, "keepalive", true, "reuse connections (false: new connection per request)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "total requests per second (0: unpaced)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.BoolVar(&cfg.Trace, "trace", false, "include every request in the output")
	hold := fs.Int("hold", 0, "instead of requests: hold this many connections to the URL's host open for -d, each with an unfinished request head, reopening any the server closes (the B-flood load)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *hold > 0 {
		u, err := url.Parse(cfg.URL)
		if err != nil || u.Host == "" {
			fmt.Fprintln(os.Stderr, "gpaload: -hold needs a -url with a host")
			return 2
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := json.NewEncoder(os.Stdout).Encode(load.Hold(ctx, host, *hold, cfg.Duration)); err != nil {
			return 1
		}
		return 0
	}
	if cfg.URL == "" {
		fmt.Fprintln(os.Stderr, "gpaload: -url is required")
		return 2
	}
	cfg.Headers = http.Header(h)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := load.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpaload:", err)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "gpaload:", err)
		return 1
	}
	return 0
}
