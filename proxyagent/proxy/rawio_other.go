//go:build !linux

package proxy

import "net"

// rawIO returns c: raw socket calls are used on Linux only.
func rawIO(c net.Conn) net.Conn { return c }
