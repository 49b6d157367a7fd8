// Command gpabench is the project's benchmark suite (threats-and-benchmarks.md
// §3): it builds the agent and the host simulator, runs them in a private
// network namespace with the eBPF redirect attached to a private cgroup,
// drives them with the gpaload generator and prints a table of latency,
// throughput, CPU, memory, start and restart figures next to the §3
// targets, plus the package micro-benchmarks. The same figures go to a
// JSON file (default bench/results/latest.json).
//
// It needs root (netns, cgroups, bpffs, eBPF). Everything it creates is
// removed on exit, also on failure and on SIGINT/SIGTERM; no traffic
// leaves its namespace and nothing attaches to the cgroup2 root.
//
//	go run ./bench/cmd/gpabench [-runs 3] [-cell 1s] [-soak 2m] [-idle 10s] [-out bench/results/latest.json]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/e2eenv"
)

// options are the command-line flags.
type options struct {
	runs       int
	cell       time.Duration
	warmup     time.Duration
	soak       time.Duration
	idle       time.Duration
	starts     int
	out        string
	micro      bool
	microTime  string
	quota      int
	skipNginx  bool
	skipRelay  bool
	perfDir    string
	cells      *regexp.Regexp // nil: every latency/throughput cell
	moduleRoot string
	syslog     bool
	flood      bool
	// agentProcs is the agent's GOMAXPROCS (0: the agent's own default,
	// one processor); nginxWorkers nginx's worker_processes (0: as many as
	// the agent's processors).
	agentProcs   int
	nginxWorkers int
}

// agentProcsOrDefault is the agent's GOMAXPROCS in the run.
func (o options) agentProcsOrDefault() int {
	if o.agentProcs > 0 {
		return o.agentProcs
	}
	return 1 // the agent service's default (proxyagent/cli)
}

// nginxWorkersOrDefault is nginx's worker_processes in the run.
func (o options) nginxWorkersOrDefault() int {
	if o.nginxWorkers > 0 {
		return o.nginxWorkers
	}
	return o.agentProcsOrDefault()
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	flag.IntVar(&o.runs, "runs", 3, "repetitions of every latency/throughput cell (medians are reported)")
	flag.DurationVar(&o.cell, "cell", time.Second, "measured duration of one latency/throughput cell")
	flag.DurationVar(&o.warmup, "warmup", 200*time.Millisecond, "unmeasured warm-up before each cell")
	flag.DurationVar(&o.soak, "soak", 2*time.Minute, "B-mem soak duration under paced load (the spec asks 1h)")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "idle time before the idle RSS reading (the spec asks 10m)")
	flag.IntVar(&o.starts, "starts", 3, "cold and warm agent starts each (B-start)")
	flag.StringVar(&o.out, "out", "bench/results/latest.json", "JSON output file (\"\" = none)")
	flag.BoolVar(&o.micro, "micro", true, "run the package micro-benchmarks (go test -bench)")
	flag.StringVar(&o.microTime, "micro-benchtime", "300ms", "-benchtime of the micro-benchmarks")
	flag.IntVar(&o.quota, "cpu-quota", 15, "CPU quota in percent for the B-rps quota check (0 = skip)")
	flag.BoolVar(&o.flood, "flood", true, "run B-flood (a client's latency while one user floods the agent with 200 and 2000 connections)")
	flag.BoolVar(&o.skipNginx, "no-nginx", false, "skip the nginx reference path")
	flag.BoolVar(&o.skipRelay, "no-go-relay", false, "skip the Go floor paths (bench/cmd/gorelay: a bare Go relay, plain and with the agent's socket calls)")
	flag.Func("cells", "run only the latency/throughput cells whose key (path/concurrency/keep-alive, e.g. nginx/1/false) matches this regexp", func(v string) error {
		re, err := regexp.Compile(v)
		o.cells = re
		return err
	})
	flag.StringVar(&o.perfDir, "perf", "", "also record the agent and the rawio Go floor with perf(1) during extra runs (c=1, and c=16 kept alive), count kernel events per request (perf stat) for the agent, nginx and the Go floor, and write reports into this directory")
	flag.StringVar(&o.moduleRoot, "module", ".", "a directory inside the gpa module")
	flag.BoolVar(&o.syslog, "syslog", true, "send the agent's audit records to a local syslog socket as well")
	flag.IntVar(&o.agentProcs, "agent-procs", 0, "the agent's GOMAXPROCS (0 = the agent's default, 1)")
	flag.IntVar(&o.nginxWorkers, "nginx-workers", 0, "nginx worker processes (0 = as many as the agent's processors)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if os.Geteuid() != 0 {
		log.Error("gpabench needs root (network namespace, cgroups, eBPF)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep, err := suite(ctx, o, log)
	if rep != nil {
		printTable(os.Stdout, rep)
		if o.out != "" {
			if werr := writeJSON(o.out, rep); werr != nil {
				log.Error("write JSON", "err", werr)
				err = errors.Join(err, werr)
			} else {
				log.Info("wrote JSON", "file", o.out)
			}
		}
	}
	if err != nil {
		log.Error("benchmark suite failed", "err", err)
		return 1
	}
	return 0
}

// suite runs every benchmark and returns the report (partial on error).
func suite(ctx context.Context, o options, log *slog.Logger) (*Report, error) {
	root, err := e2eenv.ModuleRoot(o.moduleRoot)
	if err != nil {
		return nil, err
	}
	rep := newReport(o)
	t0 := time.Now()
	defer func() { rep.Seconds = time.Since(t0).Seconds() }()

	// Fixed GOMAXPROCS for what the suite starts (host, load; the agent:
	// -agent-procs).
	os.Setenv("GOMAXPROCS", "2")

	if o.micro {
		log.Info("micro-benchmarks (go test -bench)")
		rep.Micro, rep.MicroError = runMicro(ctx, root, o.microTime)
		if rep.MicroError != "" {
			log.Warn("micro-benchmarks", "err", rep.MicroError)
		}
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}

	binDir, err := os.MkdirTemp("", "gpa-bench-bin-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(binDir)
	log.Info("building binaries")
	bins, err := e2eenv.Build(ctx, root, binDir)
	if err != nil {
		return rep, err
	}
	gpaload := filepath.Join(binDir, "gpaload")
	if out, err := goBuild(ctx, root, gpaload, "./bench/cmd/gpaload"); err != nil {
		return rep, fmt.Errorf("build gpaload: %w: %s", err, out)
	}
	gorelay := filepath.Join(binDir, "gorelay")
	if out, err := goBuild(ctx, root, gorelay, "./bench/cmd/gorelay"); err != nil {
		return rep, fmt.Errorf("build gorelay: %w: %s", err, out)
	}
	// The namespace's clients run as root; the binaries must be reachable.
	_ = os.Chmod(binDir, 0o755)

	// The agent runs as in production with its metrics endpoint (the
	// default unix socket) and, with -syslog, audit records to syslog too.
	agentCfg := map[string]any{}
	if o.syslog {
		sink, err := startSyslogSink(binDir)
		if err != nil {
			return rep, err
		}
		defer func() { sink.close(); log.Info("syslog sink", "messages", sink.Received.Load()) }()
		agentCfg["auditSyslog"] = sink.Path
	}
	setupCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	// The agent runs with its own default processors unless -agent-procs
	// says; everything else the suite starts gets GOMAXPROCS=2.
	agentEnv := []string{"GOMAXPROCS="}
	if o.agentProcs > 0 {
		agentEnv = []string{"GOMAXPROCS=" + strconv.Itoa(o.agentProcs)}
	}
	env, err := e2eenv.Setup(setupCtx, e2eenv.Config{Bin: bins, Settings: e2eenv.EnforceSettings, AgentConfig: agentCfg, AgentEnv: agentEnv})
	cancel()
	if err != nil {
		return rep, err
	}
	b := &benchEnv{Env: env, gpaload: gpaload, gorelay: gorelay}
	defer func() {
		if err := b.close(); err != nil {
			log.Error("cleanup", "err", err)
		}
	}()
	// Many short connections: let the namespace reuse TIME_WAIT ports.
	for k, v := range map[string]string{"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.ip_local_port_range": "1024 65000"} {
		if err := b.sysctl(k, v); err != nil {
			log.Warn("sysctl", "err", err)
		}
	}
	if _, err := b.waitProvisioned(ctx, 60*time.Second); err != nil {
		return rep, fmt.Errorf("first provisioning: %w\n%s", err, b.LogTails(30))
	}

	phases := []struct {
		name string
		fn   func(context.Context, *benchEnv, options, *Report) error
	}{
		{"B-start", benchStart},
		{"B-mem idle", benchIdle},
		{"B-lat/B-rps", benchLatency},
		{"B-rps quota", benchQuota},
		{"B-flood", benchFlood},
		{"B-mem soak", benchSoak},
		{"B-restart", benchRestart},
	}
	var errs []error
	for _, p := range phases {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		log.Info("phase", "name", p.name)
		if err := p.fn(ctx, b, o, rep); err != nil {
			log.Error("phase failed", "name", p.name, "err", err)
			rep.Errors = append(rep.Errors, p.name+": "+err.Error())
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			if ctx.Err() != nil {
				break
			}
			if b.AgentPID() == 0 {
				fmt.Fprintf(os.Stderr, "agent not running; environment logs:\n%s\n", b.LogTails(30))
				break // nothing else can run
			}
		}
	}
	if ctx.Err() == nil {
		log.Info("phase", "name", "B-start extension")
		benchExtensionStart(ctx, b, root, rep)
	}
	return rep, errors.Join(errs...)
}

// goBuild builds pkg of the module at root into out (static).
func goBuild(ctx context.Context, root, out, pkg string) ([]byte, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}
