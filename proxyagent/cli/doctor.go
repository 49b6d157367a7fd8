package cli

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/opengpa/gpa/internal/version"
	"github.com/opengpa/gpa/proxyagent/doctor"
)

// EnvInstallRoot is the variable (the extension's $GPA_ROOT) whose value,
// when set, is doctor's default --root.
const EnvInstallRoot = "GPA_ROOT"

// runDoctor is `doctor [--json] [--root DIR] [--system-root DIR]`: exit 1
// when a check fails, 0 otherwise (warnings and what could not be checked
// included), 2 on a usage error. cfgPath is "" unless --config was given.
func runDoctor(cfgPath string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the findings as JSON")
	root := fs.String("root", os.Getenv(EnvInstallRoot), "directory the installation is under (default $GPA_ROOT, else /)")
	sysRoot := fs.String("system-root", "", "directory to read /proc, /sys and os-release under (default /)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if err == nil {
			fmt.Fprintf(stderr, "doctor: unexpected argument %q\n", fs.Arg(0))
		}
		return 2
	}
	r := doctor.Run(doctor.Options{ConfigPath: cfgPath, InstallRoot: *root, SystemRoot: *sysRoot, UID: os.Geteuid()}, version.Version)
	if *asJSON {
		if err := doctor.PrintJSON(stdout, r); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	} else {
		doctor.PrintText(stdout, r)
	}
	if r.Failed() {
		return 1
	}
	return 0
}
