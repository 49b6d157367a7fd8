package claims

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/opengpa/gpa/proxyagent/identity"
)

const (
	cid  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cid2 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	pod  = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
)

func TestParseWorkload(t *testing.T) {
	podSys := "kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice"
	for _, tc := range []struct {
		path         string
		wantID, wPod string
	}{
		{"/system.slice/docker-" + cid + ".scope", cid, ""},
		{"/docker/" + cid, cid, ""},
		{"/system.slice/containerd.service/kubepods-besteffort-pod" + "x.slice", "", ""},
		{"/kubepods.slice/kubepods-burstable.slice/" + podSys + "/cri-containerd-" + cid + ".scope", cid, pod},
		{"/kubepods.slice/" + podSys + "/crio-" + cid + ".scope", cid, pod},
		{"/kubepods/burstable/pod" + pod + "/" + cid, cid, pod},
		{"/kubepods/pod" + pod, "", pod},
		{"/machine.slice/libpod-" + cid + ".scope/container", cid, ""},
		{"/user.slice/user-1000.slice/session-3.scope", "", ""},
		{"/docker/short", "", ""},
		// Only the outermost container counts: a container that made a
		// cgroup named after another inside its own is still itself.
		{"/machine.slice/libpod-" + cid + ".scope/container/docker-" + cid2 + ".scope", cid, ""},
		{"/system.slice/docker-" + cid + ".scope/kubepods/pod" + pod + "/" + cid2, cid, ""},
		{"/", "", ""},
	} {
		w := ParseWorkload(tc.path)
		if w.CgroupPath != tc.path || w.ContainerID != tc.wantID || w.PodUID != tc.wPod {
			t.Errorf("ParseWorkload(%q) = %+v, want id %q pod %q", tc.path, w, tc.wantID, tc.wPod)
		}
	}
}

// The cgroup path comes from /proc/<pid>/cgroup and is kept only while it
// names the cgroup the kernel recorded (same inode number).
func TestResolveCgroupPath(t *testing.T) {
	root := t.TempDir()
	proc := filepath.Join(root, "proc")
	cg := filepath.Join(root, "cgroup")
	dir := filepath.Join(cg, "system.slice", "docker-"+cid+".scope")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	pdir := filepath.Join(proc, strconv.Itoa(pid))
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"cgroup":  "0::/system.slice/docker-" + cid + ".scope\n",
		"cmdline": "curl\x00-s\x00",
		"stat":    statLine(pid, "curl", 1, 100),
	} {
		if err := os.WriteFile(filepath.Join(pdir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/usr/bin/curl", filepath.Join(pdir, "exe")); err != nil {
		t.Fatal(err)
	}
	r := &Resolver{ProcRoot: proc, CgroupRoot: cg, PasswdFile: "/dev/null", GroupFile: "/dev/null", NameService: noNameService}
	client := netip.MustParseAddrPort("10.200.0.2:40000")
	c, err := r.Resolve(identity.Record{PID: uint32(pid), UID: 0, CgroupID: st.Ino, StartTime: 100, OtherNetns: true}, client)
	if err != nil {
		t.Fatal(err)
	}
	if c.CgroupPath != "/system.slice/docker-"+cid+".scope" || c.ContainerID != cid || !c.OtherNetns {
		t.Errorf("claims %+v", c)
	}
	// Another cgroup id (the process moved, or the pid is someone else's):
	// no path, no container.
	c, err = r.Resolve(identity.Record{PID: uint32(pid), CgroupID: st.Ino + 1, StartTime: 100}, client)
	if err != nil {
		t.Fatal(err)
	}
	if c.CgroupPath != "" || c.ContainerID != "" {
		t.Errorf("claims for a mismatched cgroup id %+v", c)
	}
}

// A container or pod is named only by cgroups root owns down to the one
// that names it: a user's own delegated cgroup named after a container
// (systemd-run --user --scope --unit=docker-<id>) keeps its path but names
// no container; cgroups a container delegates below its own may belong to
// anyone.
func TestWorkloadNeedsRootOwnedCgroups(t *testing.T) {
	cg := t.TempDir()
	userScope := "/user.slice/user-1000.slice/user@1000.service/app.slice/docker-" + cid + ".scope"
	inner := "/system.slice/docker-" + cid + ".scope/inner"
	pod := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-" + cid + ".scope"
	for _, p := range []string{userScope, inner, pod} {
		if err := os.MkdirAll(filepath.Join(cg, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"/user.slice/user-1000.slice/user@1000.service", "/user.slice/user-1000.slice/user@1000.service/app.slice",
		userScope, inner} {
		if err := os.Chown(filepath.Join(cg, p), 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
	r := &Resolver{CgroupRoot: cg}
	if w := r.workload(userScope); w.ContainerID != "" || w.CgroupPath != userScope {
		t.Errorf("a user's scope named after a container: %+v", w)
	}
	if w := r.workload(inner); w.ContainerID != cid {
		t.Errorf("a cgroup delegated inside a root-owned container: %+v", w)
	}
	// A container's own cgroup chowned to its user-namespace root (runc
	// with cgroup delegation) still names it: its parents are root's.
	remapped := "/system.slice/docker-" + cid2 + ".scope"
	if err := os.MkdirAll(filepath.Join(cg, remapped), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(cg, remapped), 100000, 100000); err != nil {
		t.Fatal(err)
	}
	if w := r.workload(remapped); w.ContainerID != cid2 {
		t.Errorf("a container whose own cgroup its user owns: %+v", w)
	}
	if w := r.workload(pod); w.ContainerID != cid || w.PodUID != "0a1b2c3d-4e5f-6789-abcd-ef0123456789" {
		t.Errorf("a pod's container: %+v", w)
	}
	if err := os.Chown(filepath.Join(cg, "/kubepods.slice/kubepods-besteffort.slice"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if w := r.workload(pod); w.ContainerID != "" || w.PodUID != "" {
		t.Errorf("a pod under a user-owned cgroup: %+v", w)
	}
}
