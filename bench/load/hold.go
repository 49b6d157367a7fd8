package load

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// unfinishedHead is what each held connection sends: an IMDS request
// head without its final empty line.
var unfinishedHead = []byte("GET /metadata/instance HTTP/1.1\r\nHost: " + msp.IMDSAddr.Addr().String() + "\r\nMetadata: true\r\n")

// HoldResult is what a connection flood achieved.
type HoldResult struct {
	// Wanted is how many connections were to be held at once.
	Wanted int `json:"wanted"`
	// Opened counts successful connects, Closed the held connections the
	// server closed (each reopened), Failed the connects that failed.
	Opened uint64 `json:"opened"`
	Closed uint64 `json:"closed"`
	Failed uint64 `json:"failed"`
	// HeldAtEnd is how many connections were open when the flood ended.
	HeldAtEnd int64 `json:"held_at_end"`
}

// Hold floods addr with n connections held open for d: each sends the
// start of a request head and never finishes it (a slowloris client), and
// reopens its connection as soon as the server closes it, as an attacker
// trying to take every connection slot would. It is the B-flood load.
func Hold(ctx context.Context, addr string, n int, d time.Duration) HoldResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	res := HoldResult{Wanted: n}
	var opened, closed, failed atomic.Uint64
	var held atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			var dialer net.Dialer
			buf := make([]byte, 512)
			for ctx.Err() == nil {
				c, err := dialer.DialContext(ctx, "tcp", addr)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						// A refused connect (listener queue full) is retried
						// after a pause, not in a tight loop.
						select {
						case <-ctx.Done():
						case <-time.After(10 * time.Millisecond):
						}
					}
					continue
				}
				opened.Add(1)
				held.Add(1)
				stop := context.AfterFunc(ctx, func() { c.Close() })
				c.Write(unfinishedHead)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				stop()
				c.Close()
				held.Add(-1)
				if ctx.Err() == nil {
					closed.Add(1)
				}
			}
		})
	}
	<-ctx.Done()
	res.HeldAtEnd = held.Load()
	wg.Wait()
	res.Opened, res.Closed, res.Failed = opened.Load(), closed.Load(), failed.Load()
	return res
}
