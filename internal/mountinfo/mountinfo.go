// Package mountinfo finds mounted file systems by type in /proc/self/mounts,
// for the redirector (the cgroup v2 root, bpffs) and the test support code.
package mountinfo

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Find returns the mount point of the first file system of type fstype
// (e.g. "cgroup2", "bpf") listed in /proc/self/mounts.
func Find(fstype string) (string, error) {
	return FindIn("/proc/self/mounts", fstype)
}

// FindIn is Find reading the mount table at path (a crafted one in tests,
// or /proc/mounts under another root); an error wrapping fs.ErrNotExist
// means path does not exist.
func FindIn(path, fstype string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 3 && fields[2] == fstype {
			return Unescape(fields[1]), nil
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", fmt.Errorf("%w: no %s file system in %s", ErrNotMounted, fstype, path)
}

// ErrNotMounted is the error FindIn wraps when the table lists no file
// system of the type.
var ErrNotMounted = errors.New("not mounted")

// Unescape undoes the octal escapes (\040 for a space) the kernel writes
// in mount paths; anything that is not a three-digit octal escape stays.
func Unescape(p string) string {
	if !strings.Contains(p, `\`) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+4 <= len(p) {
			if n, err := strconv.ParseUint(p[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
