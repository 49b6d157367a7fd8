package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Options say where a command runs. The zero value runs it where the test
// runs, as the test's user.
type Options struct {
	Netns  *Netns  // network namespace to start in; nil: the caller's
	Cgroup *Cgroup // cgroup the process starts in (before its first instruction); nil: the caller's
	// Credential is the uid/gid (and supplementary groups, none if empty)
	// to run as; nil keeps the caller's.
	Credential *syscall.Credential
	Env        []string // added to the caller's environment
}

// Start starts cmd as o says. The child is placed into o.Cgroup atomically
// at creation (clone3 CLONE_INTO_CGROUP), so even its first connect is made
// from inside the group. The caller waits for cmd.
func Start(cmd *exec.Cmd, o Options) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if o.Credential != nil {
		cmd.SysProcAttr.Credential = o.Credential
	}
	if len(o.Env) > 0 {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, o.Env...)
	}
	if o.Cgroup != nil {
		dir, err := os.Open(o.Cgroup.Path)
		if err != nil {
			return fmt.Errorf("testenv: open cgroup: %w", err)
		}
		defer dir.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	}
	if o.Netns == nil {
		return cmd.Start()
	}
	return o.Netns.Do(cmd.Start)
}

// Run runs name with args as o says and returns its standard output. A
// failure to start or a non-zero exit is an error that quotes the
// command's standard error.
func Run(ctx context.Context, o Options, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := Start(cmd, o); err != nil {
		return nil, fmt.Errorf("testenv: start %s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("testenv: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
