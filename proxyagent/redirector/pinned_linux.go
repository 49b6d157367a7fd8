package redirector

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/opengpa/gpa/bpf"
)

// Redirects reports whether the policy map pinned in pinDir redirects dst
// right now, read from the kernel without loading anything (for the
// extension's monitor, which must not send a request to a service address
// the kernel would not hand to the agent). No pinned map is false.
func Redirects(pinDir string, dst netip.AddrPort) (bool, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.RedirectMapPolicyMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer m.Close()
	var v bpf.RedirectPolicyValue
	err = m.Lookup(policyKey(dst), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}
