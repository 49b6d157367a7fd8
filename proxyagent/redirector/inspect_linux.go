package redirector

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Attachment is one of the redirect's pinned links as the kernel reports
// it, for read-only diagnosis (azure-proxy-agent doctor).
type Attachment struct {
	// Pin is the pinned link's path.
	Pin string
	// Want is the attach type the link must have (e.g. CGroupInet4Connect).
	Want string
	// Got is the attach type the kernel reports; "" when Err is set.
	Got string
	// CgroupID is the id of the cgroup the link is attached to.
	CgroupID uint64
	// Err says why the pin could not be read (missing, not a link, no
	// permission).
	Err error
}

// Inspect opens each of the redirect's pinned links in pinDir, only to
// read its info, and reports what it is attached to. It changes nothing;
// opening a pinned link needs CAP_BPF (or root) and access to pinDir.
func Inspect(pinDir string) []Attachment {
	out := make([]Attachment, 0, len(hooks))
	for _, h := range hooks {
		a := Attachment{Pin: filepath.Join(pinDir, h.pin), Want: h.attach.String()}
		l, err := link.LoadPinnedLink(a.Pin, nil)
		if err != nil {
			a.Err = err
			out = append(out, a)
			continue
		}
		info, err := l.Info()
		l.Close()
		switch {
		case err != nil:
			a.Err = err
		case info.Cgroup() == nil:
			a.Err = fmt.Errorf("%s is a link of type %d, not a cgroup link", a.Pin, info.Type)
		default:
			a.Got = ebpf.AttachType(info.Cgroup().AttachType).String()
			a.CgroupID = info.Cgroup().CgroupId
		}
		out = append(out, a)
	}
	return out
}

// CgroupID returns the id of the cgroup v2 directory dir (its inode
// number), the id an Attachment reports; dir must be on cgroup2.
func CgroupID(dir string) (uint64, error) { return cgroupID(dir) }
