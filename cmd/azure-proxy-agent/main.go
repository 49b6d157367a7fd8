// Command azure-proxy-agent is the Guest Proxy Agent: it endorses and
// authorizes the VM's requests to WireServer, IMDS and HostGAPlugin. See
// package proxyagent/cli for its command line.
package main

import (
	"os"

	"github.com/opengpa/gpa/proxyagent/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
