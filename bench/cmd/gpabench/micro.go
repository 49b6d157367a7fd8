package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opengpa/gpa/bench/gobench"
)

// microPackages are the packages whose benchmarks the suite folds in.
var microPackages = []string{
	"./proxyagent/authz",      // rule load (1k), canonicalisation + match
	"./proxyagent/msp",        // signing per request
	"./proxyagent/proxy",      // proxied request in-process, signing with header work
	"./proxyagent/audit",      // audit-record write
	"./proxyagent/claims",     // caller claims from /proc
	"./proxyagent/redirector", // connect() attached/detached, Load
	"./proxyagent/metrics",    // per-request metric update
	"./proxyagent/syslog",     // audit record to syslog (writer goroutine)
}

// runMicro runs `go test -run '^$' -bench . -benchtime T -p 1` over the
// micro packages and parses the figures. A failure is returned as text,
// with whatever figures were parsed.
func runMicro(ctx context.Context, root, benchtime string) ([]gobench.Result, string) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchtime", benchtime, "-benchmem", "-count", "1", "-p", "1"}, microPackages...)
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	res, perr := gobench.Parse(bytes.NewReader(out.Bytes()))
	msg := ""
	if runErr != nil {
		msg = runErr.Error() + ": " + tail(strings.TrimSpace(out.String()), 600)
	} else if perr != nil {
		msg = perr.Error()
	}
	return res, msg
}
