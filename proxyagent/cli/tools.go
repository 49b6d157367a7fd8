package cli

import (
	"io"

	"github.com/opengpa/gpa/proxyagent/insight"
)

// runAudit runs `audit report ...` (package insight).
func runAudit(args []string, stdout, stderr io.Writer) int {
	return insight.RunAudit(args, stdout, stderr)
}

// runRules runs `rules suggest ...` and `rules test RULES ...`.
func runRules(args []string, stdout, stderr io.Writer) int {
	return insight.RunRules(args, stdout, stderr)
}
