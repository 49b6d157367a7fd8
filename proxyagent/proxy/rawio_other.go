//go:build !linux

package proxy

import "net"

// rawIO returns c: raw socket calls are used on Linux only.
func rawIO(c net.Conn) net.Conn { return c }

// rawListen returns ln: raw accept calls are used on Linux only.
func rawListen(ln net.Listener) (net.Listener, error) { return ln, nil }

// closeOwned closes c (descriptors are given back in batches on Linux
// only).
func closeOwned(c net.Conn, _ *fdReleaser) { c.Close() }
