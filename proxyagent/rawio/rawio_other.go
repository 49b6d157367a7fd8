//go:build !linux

package rawio

import "net"

// Wrap returns c: raw socket calls are used on Linux only.
func Wrap(c net.Conn) net.Conn { return c }

// Listen returns ln: raw accept calls are used on Linux only.
func Listen(ln net.Listener) (net.Listener, error) { return ln, nil }

// CloseOwned closes c (descriptors are given back in batches on Linux
// only).
func CloseOwned(c net.Conn, _ *Releaser) { c.Close() }
