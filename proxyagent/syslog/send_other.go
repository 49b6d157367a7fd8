//go:build !linux

package syslog

import "net"

// sendBatch sends msgs on c in order, one write each (sendmmsg is used on
// Linux only). It returns how many were sent and the first error.
func sendBatch(c *net.UnixConn, msgs [][]byte) (int, error) {
	for i, m := range msgs {
		if _, err := c.Write(m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}
