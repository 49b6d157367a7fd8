// Package cli is the azure-proxy-agent command line (protocol.md §5.6):
// run as a service, run in the console, print the version, query
// provisioning, the audit and rules tools, and doctor.
package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/version"
	"github.com/opengpa/gpa/proxyagent/agent"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/provision"
)

const usage = `Usage: azure-proxy-agent [--config PATH] [command]

Commands:
  (none)                 run as a service until SIGTERM
  console                run in the foreground; Enter stops it
  -v, --version          print the version
  -s, --status [-w, --wait SECONDS]
                         query provisioning: exit 0 finished, 2 finished
                         with an error (printed) or a usage error,
                         1 not finished
  audit report [flags]   who called the metadata services (see --help)
  audit top [flags]      live view of callers and decisions, every second
  rules suggest [flags]  least-privilege rules from the audit log
  rules test RULES       decisions that RULES would change
  doctor [--json]        check prerequisites and the installation (read-only);
                         exit 1 when a check fails
  -h, --help             this text
`

// Main runs the command line and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cfgPath, cfgGiven := "", ""
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "--config", "-c":
			if i+1 >= len(args) {
				fmt.Fprintln(stderr, "--config needs a path")
				return 2
			}
			cfgPath, cfgGiven = args[i+1], args[i+1]
			i++
		default:
			rest = append(rest, a)
		}
	}
	if cfgPath == "" {
		// /etc/azure/proxy-agent.json, else proxy-agent.json beside the
		// executable (protocol.md §0).
		cfgPath = config.Locate()
	}
	if len(rest) == 0 {
		return runService(cfgPath, nil, stdout, stderr)
	}
	// The status options in any order, as upstream's parser takes them:
	// "--wait 5 --status" is "--status --wait 5".
	if i := slices.IndexFunc(rest, func(a string) bool { return a == "-s" || a == "--status" }); i > 0 && onlyStatusOptions(rest) {
		rest = slices.Concat([]string{rest[i]}, rest[:i], rest[i+1:])
	}
	switch rest[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "-v", "--version":
		fmt.Fprintln(stdout, version.Version)
		return 0
	case "console":
		return runService(cfgPath, stdin, stdout, stderr)
	case "-s", "--status":
		return queryStatus(cfgPath, rest[1:], stdout, stderr)
	case "audit":
		return runAudit(rest[1:], stdout, stderr)
	case "rules":
		return runRules(rest[1:], stdout, stderr)
	case "doctor":
		return runDoctor(cfgGiven, rest[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "unknown command %q\n\n%s", rest[0], usage)
	return 2
}

// onlyStatusOptions reports whether args are --status and --wait options
// (with --wait's value) and nothing else.
func onlyStatusOptions(args []string) bool {
	for i := 0; i < len(args); i++ {
		a, _, hasVal := strings.Cut(args[i], "=")
		switch {
		case a == "-s" || a == "--status":
		case (a == "-w" || a == "--wait") && hasVal:
		case a == "-w" || a == "--wait":
			i++ // its value
		default:
			return false
		}
	}
	return true
}

func loadConfig(path string, stderr io.Writer) (config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cfg, false
	}
	return cfg, true
}

// runService runs the agent until SIGTERM/SIGINT, or until a line (or EOF)
// arrives on console when it is not nil.
func runService(cfgPath string, console io.Reader, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(cfgPath, stderr)
	if !ok {
		return 1
	}
	if n := serviceProcs(os.Getenv("GOMAXPROCS")); n > 0 {
		runtime.GOMAXPROCS(n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if console != nil {
		fmt.Fprintln(stdout, "Press Enter to end it.") // stdout, as upstream's console mode
		go func() {
			_, _ = bufio.NewReader(console).ReadString('\n')
			stop()
		}()
	}
	if err := agent.Run(ctx, agent.Options{Config: cfg, Version: version.Version, Stdout: stdout, Stderr: stderr}); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// serviceProcs is how many processors (GOMAXPROCS) the agent's service
// takes: 1 unless the GOMAXPROCS environment variable, env here, sets a
// positive number (then 0: the runtime already applied it; a value the
// runtime ignores still gets 1). The agent's work per request
// is a few microseconds between socket waits. On one processor the thread
// that polls the network runs the goroutine it woke; with more, each
// accepted connection and each host answer also wakes an idle thread to
// look for work (futex wake, spin, sleep), which cost about 30 % more
// CPU per new connection and 40 µs more latency at p50 in the benchmark
// (issue 13), while one processor carries ~20k requests a second, far more than
// the metadata services accept from a VM.
func serviceProcs(env string) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return 0
	}
	return 1
}

// queryStatus runs --status with its options args. As upstream's parser
// (clap), --help and --version among them win, and a usage error exits 2,
// never 1, which says "not finished".
func queryStatus(cfgPath string, args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		switch a {
		case "-h", "--help":
			fmt.Fprint(stdout, usage)
			return 0
		case "-v", "--version":
			fmt.Fprintln(stdout, version.Version)
			return 0
		}
	}
	var wait time.Duration
	for i := 0; i < len(args); i++ {
		a, val, hasVal := strings.Cut(args[i], "=")
		switch a {
		case "-w", "--wait":
			if !hasVal {
				if i+1 >= len(args) {
					fmt.Fprintln(stderr, "--wait needs a number of seconds")
					return 2
				}
				val = args[i+1]
				i++
			}
			n, err := strconv.ParseFloat(val, 64)
			if err != nil || n < 0 {
				fmt.Fprintf(stderr, "--wait: %q is not a number of seconds\n", val)
				return 2
			}
			wait = time.Duration(n * float64(time.Second))
		default:
			fmt.Fprintf(stderr, "unknown argument %q\n", args[i])
			return 2
		}
	}
	addr := config.Default().ListenAddress
	if _, err := os.Stat(cfgPath); err == nil {
		cfg, ok := loadConfig(cfgPath, stderr)
		if !ok {
			return 1
		}
		addr = cfg.ListenAddress
	}
	code, msg := provision.QueryStatus(addr, wait)
	if msg != "" {
		fmt.Fprintln(stdout, msg)
	}
	return code
}
