package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/prereq"
)

// TestRedirectorFailure: a load failure on a machine without cgroup v2
// names that and its fix before the load error; on a capable machine the
// load error stands alone.
func TestRedirectorFailure(t *testing.T) {
	loadErr := errors.New("redirector: find cgroup v2 root: no cgroup2 file system in /proc/self/mounts")
	sys := testenv.Debian12
	sys.Mounts = testenv.MountsV1Only
	got := redirectorFailureOn(loadErr, prereq.Paths{Root: testenv.NewSystemRoot(t, sys)})
	want := "cgroup v2 is not mounted: boot with systemd.unified_cgroup_hierarchy=1"
	if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "Failed to start Redirector: "+loadErr.Error()) {
		t.Errorf("message %q, want it to start with %q and end with the load error", got, want)
	}
	got = redirectorFailureOn(loadErr, prereq.Paths{Root: testenv.NewSystemRoot(t, testenv.Debian12)})
	if got != "Failed to start Redirector: "+loadErr.Error() {
		t.Errorf("capable machine: %q", got)
	}
}
