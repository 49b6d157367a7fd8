package authz

import (
	"strings"
)

// samePath reproduces Rust's Path equality on Unix, which upstream uses
// for the exePath selector: paths are compared component-wise, so
// repeated separators, a trailing separator and interior "." components
// are ignored, while a leading "." of a relative path and ".." are kept.
// No symlink is resolved.
func samePath(a, b string) bool {
	if a == b {
		return true
	}
	ca, cb := pathComponents(a), pathComponents(b)
	if len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if ca[i] != cb[i] {
			return false
		}
	}
	return true
}

func pathComponents(p string) []string {
	var out []string
	rooted := strings.HasPrefix(p, "/")
	if rooted {
		out = append(out, "/")
	}
	for i, part := range strings.Split(p, "/") {
		switch {
		case part == "":
		case part == "." && !(i == 0 && !rooted):
		default:
			out = append(out, part)
		}
	}
	return out
}
