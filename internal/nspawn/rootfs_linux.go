package nspawn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CacheDir is where the root file system is kept between test runs,
// outside any repository checkout. It is rebuilt when missing or
// incomplete.
const CacheDir = "/var/cache/opengpa/nspawn-bookworm"

// Suite is the Debian release the root file system is bootstrapped from.
const Suite = "bookworm"

// Packages are installed into the root file system beside debootstrap's
// minbase variant: systemd as PID 1, D-Bus for systemctl, ip(8) and curl.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "curl"}

// DefaultMirror is the Debian mirror used when the machine's apt sources
// name none for Suite.
const DefaultMirror = "http://deb.debian.org/debian"

// completeMarker is written into the root file system after debootstrap
// succeeded; its content records how it was built, so a change of Suite or
// Packages rebuilds it.
const completeMarker = ".opengpa-rootfs-complete"

func recipe() string {
	return "debootstrap --variant=minbase --include=" + strings.Join(Packages, ",") + " " + Suite + "\n"
}

// rootfsLock is the cache directory's lock: held exclusively while the root
// file system is checked or built, and shared by every machine booted from
// it until the machine is closed, so no test rebuilds it under another.
type rootfsLock struct{ f *os.File }

func lockRootfs(ctx context.Context) (*rootfsLock, error) {
	if err := os.MkdirAll(filepath.Dir(CacheDir), 0o755); err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	f, err := os.OpenFile(CacheDir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &rootfsLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("nspawn: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("nspawn: waiting for the root file system lock: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// share turns the exclusive lock into a shared one.
func (l *rootfsLock) share() error { return unix.Flock(int(l.f.Fd()), unix.LOCK_SH) }

func (l *rootfsLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// rootfs makes sure CacheDir holds a complete root file system, building it first with debootstrap when it is
// missing or incomplete (about 70 s and 257 MB), and returns the lock,
// shared, which the caller holds while it uses the tree. logf, when not nil, is told when
// a build starts and ends.
func rootfs(ctx context.Context, logf func(string, ...any)) (*rootfsLock, error) {
	l, err := lockRootfs(ctx)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			l.release()
		}
	}()
	if b, err := os.ReadFile(filepath.Join(CacheDir, completeMarker)); err != nil || string(b) != recipe() {
		if err := build(ctx, logf); err != nil {
			return nil, err
		}
	}
	if err := l.share(); err != nil {
		return nil, fmt.Errorf("nspawn: share the root file system lock: %w", err)
	}
	ok = true
	return l, nil
}

func build(ctx context.Context, logf func(string, ...any)) error {
	tmp := CacheDir + ".build"
	for _, d := range []string{tmp, CacheDir} {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("nspawn: remove incomplete root file system: %w", err)
		}
	}
	mirror := AptMirror("/etc/apt", Suite)
	if logf != nil {
		logf("nspawn: building %s from %s (debootstrap, about 70 s)", CacheDir, mirror)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(Packages, ","), Suite, tmp, mirror)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("nspawn: debootstrap: %w: %s", err, tail(string(out), 20))
	}
	if err := os.WriteFile(filepath.Join(tmp, completeMarker), []byte(recipe()), 0o644); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("nspawn: %w", err)
	}
	if err := os.Rename(tmp, CacheDir); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("nspawn: %w", err)
	}
	if logf != nil {
		logf("nspawn: built %s in %v", CacheDir, time.Since(start).Round(time.Second))
	}
	return nil
}

// AptMirror returns the first Debian mirror that the apt sources under
// aptDir (sources.list and sources.list.d/*.list, *.sources) use for
// suite, so the root file system comes from wherever this machine gets its
// packages; DefaultMirror when none does.
func AptMirror(aptDir, suite string) string {
	files := []string{filepath.Join(aptDir, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*"))
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var m string
		if strings.HasSuffix(f, ".sources") {
			m = deb822Mirror(string(b), suite)
		} else if strings.HasSuffix(f, ".list") {
			m = listMirror(string(b), suite)
		}
		if m != "" {
			return m
		}
	}
	return DefaultMirror
}

// listMirror reads one-line-style sources: "deb [options] URI SUITE ...".
func listMirror(s, suite string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) >= 2 && f[1] == suite {
			return f[0]
		}
	}
	return ""
}

// deb822Mirror reads deb822-style sources: stanzas of "Types:", "URIs:",
// "Suites:" fields separated by blank lines.
func deb822Mirror(s, suite string) string {
	for _, stanza := range strings.Split(s, "\n\n") {
		fields := map[string][]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
		}
		if !slices.Contains(fields["types"], "deb") || !slices.Contains(fields["suites"], suite) || len(fields["uris"]) == 0 {
			continue
		}
		return fields["uris"][0]
	}
	return ""
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
