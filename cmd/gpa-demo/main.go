// Command gpa-demo runs the whole Guest Proxy Agent system on a simulated
// VM in a network namespace and narrates it (see package internal/demo).
// It needs root; `make demo` builds what it needs and runs it.
//
//	gpa-demo [-bin bin] [-src .] [-version VERSION]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/opengpa/gpa/internal/demo"
	"github.com/opengpa/gpa/internal/version"
)

func main() {
	bin := flag.String("bin", "bin", "directory with azure-proxy-agent, azure-host-sim and ProxyAgentExt")
	src := flag.String("src", ".", "source tree (for packaging/package.sh)")
	ver := flag.String("version", "", "extension version waagent installs (default: the VERSION file, else this binary's version)")
	flag.Parse()
	v := *ver
	if v == "" {
		if b, err := os.ReadFile(*src + "/VERSION"); err == nil {
			v = strings.TrimSpace(string(b))
		} else {
			v = version.Version
		}
	}
	// Ctrl-C cancels the demo, which then cleans up before exiting.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, demo.Options{BinDir: *bin, ModuleDir: *src, Version: v, Out: os.Stdout}); err != nil {
		fmt.Fprintf(os.Stderr, "gpa-demo: %v\n", err)
		os.Exit(1)
	}
}
