package cli

import (
	"fmt"
	"io"
)

func runAudit(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "audit: not available in this build")
	return 2
}

func runRules(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "rules: not available in this build")
	return 2
}
