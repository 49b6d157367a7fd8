package main

import (
	"net"
	"path/filepath"
	"sync/atomic"
)

// syslogSink is a local syslog socket that reads and counts what the
// agent sends, so the suite measures the agent with its audit records
// going to syslog as well as to the file.
type syslogSink struct {
	Path     string
	conn     *net.UnixConn
	Received atomic.Uint64
}

// startSyslogSink binds a datagram socket in dir and drains it until
// close.
func startSyslogSink(dir string) (*syslogSink, error) {
	s := &syslogSink{Path: filepath.Join(dir, "syslog.sock")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.Path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	s.conn = c
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			s.Received.Add(1)
		}
	}()
	return s, nil
}

func (s *syslogSink) close() { s.conn.Close() }
