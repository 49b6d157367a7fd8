package handler

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// OSInfo is the NAME and VERSION_ID of /etc/os-release.
type OSInfo struct {
	Name      string
	VersionID string
}

// String is "<NAME>-<VERSION_ID>", as in the unsupported-OS message.
func (o OSInfo) String() string { return o.Name + "-" + o.VersionID }

// ReadOSRelease parses an os-release file.
func ReadOSRelease(path string) (OSInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return OSInfo{}, err
	}
	defer f.Close()
	var info OSInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "NAME":
			info.Name = v
		case "VERSION_ID":
			info.VersionID = v
		}
	}
	return info, sc.Err()
}

// Supported reports whether the agent supports this distribution and
// release: Ubuntu 20+, CBL-Mariner 2+, Azure Linux 3+, RHEL 9+, Rocky
// Linux 9+ and SLES 15 SP4+. Everything else, Debian included, is not.
func (o OSInfo) Supported() bool {
	name := strings.ToLower(o.Name)
	major, minor, err := splitVersion(o.VersionID)
	if err != nil {
		return false
	}
	switch {
	case strings.Contains(name, "ubuntu"):
		return major >= 20
	case strings.Contains(name, "mariner"):
		return major >= 2
	case strings.Contains(name, "azure linux"):
		return major >= 3
	case strings.Contains(name, "red hat enterprise linux"):
		return major >= 9
	case strings.Contains(name, "rocky linux"):
		return major >= 9
	case name == "sles" || strings.Contains(name, "suse linux enterprise server"):
		return major > 15 || major == 15 && minor >= 4
	}
	return false
}

// splitVersion parses "22.04", "9", "15.4" or "15-SP4".
func splitVersion(v string) (major, minor int, err error) {
	v = strings.ToUpper(strings.TrimSpace(v))
	v = strings.Replace(v, "-SP", ".", 1)
	parts := strings.SplitN(v, ".", 3)
	major, err = strconv.Atoi(parts[0])
	if err != nil {
		return 0, 0, fmt.Errorf("version %q: %w", v, err)
	}
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	return major, minor, nil
}
