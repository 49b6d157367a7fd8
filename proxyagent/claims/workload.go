package claims

import (
	"bytes"
	"strings"
	"syscall"
)

// Workload says where a caller runs: its cgroup v2 path and, when that
// path follows a known container runtime's pattern, the container and
// Kubernetes pod. None of it is part of upstream's claims.
type Workload struct {
	// CgroupPath is the caller's cgroup relative to the cgroup v2 root
	// ("/system.slice/docker-<id>.scope"); "" when it could not be read or
	// no longer names the cgroup the kernel recorded.
	CgroupPath string `json:"cgroupPath,omitempty"`
	// ContainerID is the runtime's container id (Docker, containerd,
	// CRI-O, Podman); PodUID the Kubernetes pod uid.
	ContainerID string `json:"containerId,omitempty"`
	PodUID      string `json:"podUid,omitempty"`
}

// cgroupPath reads the cgroup v2 path of pid from /proc/<pid>/cgroup (the
// "0::" line) and keeps it only when the directory under cgroupRoot is
// the cgroup the kernel recorded (its inode number is the cgroup id), so a
// process that moved, or a reused pid, yields "".
func (r *Resolver) cgroupPath(pid uint32, cgroupID uint64) string {
	if r.CgroupRoot == "" || cgroupID == 0 {
		return ""
	}
	var buf [4096]byte
	b, err := readLimited(r.procPath(pid, "cgroup"), buf[:])
	if err != nil {
		return ""
	}
	var path string
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if p, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			path = string(p)
			break
		}
	}
	if !strings.HasPrefix(path, "/") || strings.Contains(path, "/../") || strings.HasSuffix(path, "/..") {
		return ""
	}
	var st syscall.Stat_t
	if err := syscall.Stat(strings.TrimSuffix(r.CgroupRoot, "/")+path, &st); err != nil || st.Ino != cgroupID {
		return ""
	}
	return path
}

// workload is ParseWorkload(path) for the cgroup path the resolver found,
// with the container and pod kept only where every cgroup above the one
// naming them belongs to root. Whoever may write a cgroup may create and
// name cgroups in it: any user in its own delegated subtree (systemd-run
// --user --scope --unit=docker-<id>), and a container with a writable
// cgroupfs inside its own; so only the outermost name counts, and only
// under root's cgroups. The naming cgroup itself may belong to the
// container's own user (a runtime chowns it for user namespaces).
func (r *Resolver) workload(path string) Workload {
	w, depth := parseWorkload(path)
	if depth == 0 {
		return w
	}
	root := strings.TrimSuffix(r.CgroupRoot, "/")
	prefix := ""
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, seg := range segs[:depth-1] {
		prefix += "/" + seg
		var st syscall.Stat_t
		if syscall.Lstat(root+prefix, &st) != nil || st.Uid != 0 {
			w.ContainerID, w.PodUID = "", ""
			return w
		}
	}
	return w
}

// ParseWorkload names the container and pod a cgroup path belongs to, for
// the layouts of the common runtimes, systemd and cgroupfs drivers alike:
//
//	/system.slice/docker-<id>.scope                     Docker (systemd)
//	/docker/<id>                                        Docker (cgroupfs)
//	/…/cri-containerd-<id>.scope                        containerd
//	/…/crio-<id>.scope                                  CRI-O
//	/…/libpod-<id>.scope, /machine.slice/libpod-<id>…   Podman
//	/kubepods.slice/…/kubepods-…-pod<uid>.slice/…       Kubernetes (systemd; '_' in the uid)
//	/kubepods/<qos>/pod<uid>/<id>                       Kubernetes (cgroupfs)
//
// A container id is 64 hex digits. The outermost container counts: names
// below it (nested containers, or cgroups a container made itself) are
// ignored. Paths that match nothing give only the path.
func ParseWorkload(path string) Workload {
	w, _ := parseWorkload(path)
	return w
}

// parseWorkload is ParseWorkload, with the depth (1 for the first segment
// below the root) of the deepest segment whose name it used; 0: none.
func parseWorkload(path string) (w Workload, depth int) {
	w.CgroupPath = path
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, seg := range segs {
		if uid, ok := podUID(seg); ok && w.PodUID == "" {
			w.PodUID, depth = uid, i+1
		}
		id := ""
		switch {
		case strings.HasSuffix(seg, ".scope"):
			name := strings.TrimSuffix(seg, ".scope")
			for _, prefix := range []string{"docker-", "cri-containerd-", "crio-", "libpod-"} {
				if rest, ok := strings.CutPrefix(name, prefix); ok {
					id = rest
					break
				}
			}
		case i > 0 && (segs[i-1] == "docker" || strings.HasPrefix(segs[i-1], "pod")):
			id = seg
		}
		if isContainerID(id) {
			w.ContainerID, depth = id, i+1
			break
		}
	}
	return w, depth
}

// podUID recognises a pod cgroup segment: "pod<uid>" (cgroupfs) or
// "kubepods[-<qos>]-pod<uid with '_'>.slice" (systemd).
func podUID(seg string) (string, bool) {
	if rest, ok := strings.CutSuffix(seg, ".slice"); ok && strings.HasPrefix(rest, "kubepods") {
		i := strings.LastIndex(rest, "-pod")
		if i < 0 {
			return "", false
		}
		uid := strings.ReplaceAll(rest[i+len("-pod"):], "_", "-")
		return uid, isUID(uid)
	}
	if rest, ok := strings.CutPrefix(seg, "pod"); ok && isUID(rest) {
		return rest, true
	}
	return "", false
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

// isUID accepts the 8-4-4-4-12 hex form of a Kubernetes uid.
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isLowerHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
