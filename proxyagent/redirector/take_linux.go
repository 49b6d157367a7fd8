package redirector

import (
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/bpf"
)

// bpfMapLookupAndDeleteElem is the bpf(2) command (uapi linux/bpf.h).
const bpfMapLookupAndDeleteElem = 21

// mapElemAttr is bpf(2)'s attribute for the map element commands. The
// key and value addresses are kept as pointers, so the garbage collector
// keeps and never moves what they point at; the kernel's fields are 64
// bits, as a pointer on 64-bit platforms (takeRaw is used there only).
type mapElemAttr struct {
	mapFD uint32
	_     uint32
	key   unsafe.Pointer
	value unsafe.Pointer
	flags uint64
}

// rawTakeResult is what a raw lookup-and-delete found.
type rawTakeResult int

const (
	rawTaken       rawTakeResult = iota // rec holds the record, now deleted
	rawMissing                          // no record for the key
	rawUnsupported                      // the kernel cannot (before 5.14) or another error: use the library
)

// takeRaw looks up and deletes key in m with one raw bpf(2) call, made
// without the runtime's blocking-call bookkeeping: the call cannot block,
// and on the agent's per-connection path that bookkeeping wakes the
// runtime's monitor thread (see package rawio). The library's
// Map.LookupAndDelete makes the same call through the blocking path.
//
// The kernel copies ValueSize bytes into rec, so a map whose sizes are
// not exactly those of the Go types is left to the library, as is a
// 32-bit platform.
func takeRaw(m *ebpf.Map, key *bpf.RedirectConnKey, rec *bpf.RedirectConnRecord) rawTakeResult {
	if unsafe.Sizeof(mapElemAttr{}) != 32 ||
		m.KeySize() != uint32(unsafe.Sizeof(*key)) || m.ValueSize() != uint32(unsafe.Sizeof(*rec)) {
		return rawUnsupported
	}
	attr := mapElemAttr{
		mapFD: uint32(m.FD()),
		key:   unsafe.Pointer(key),
		value: unsafe.Pointer(rec),
	}
	_, _, e := unix.RawSyscall(unix.SYS_BPF, bpfMapLookupAndDeleteElem, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(rec)
	runtime.KeepAlive(m)
	switch e {
	case 0:
		return rawTaken
	case unix.ENOENT:
		return rawMissing
	}
	return rawUnsupported
}
