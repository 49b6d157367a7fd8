// Command ProxyAgentExt is the Guest Proxy Agent VM extension handler:
// with a waagent command (install, enable, update, disable, uninstall,
// reset) it handles that command; with no arguments it is the monitor.
// All logic lives in package handler.
package main

import (
	"os"

	"github.com/opengpa/gpa/handler"
)

func main() {
	os.Exit(handler.Main(os.Args[1:], os.Stdout, os.Stderr))
}
