package metrics

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
)

// scrapeOn connects through ln, sends GET /metrics and sets got once a
// 200 came back whole; the connection is sent on conn once made.
func scrapeOn(ln *testsupport.PipeListener, conn chan<- net.Conn, got *atomic.Bool) {
	c, err := ln.Dial(context.Background(), "", "")
	if err != nil {
		return
	}
	conn <- c
	if _, err := c.Write([]byte("GET " + Path + " HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return
	}
	if _, err := io.Copy(io.Discard, resp.Body); err == nil && resp.StatusCode == 200 {
		got.Store(true)
	}
}

// TestServeLimitsConnections: a connection serves one scrape, so clients
// that keep theirs open hold no slot; connections beyond maxScrapeConns
// are not served while the first ones are open without a request, and
// are once one closes.
func TestServeLimitsConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		ln := testsupport.NewPipeListener()
		done := make(chan error, 1)
		go func() { done <- populated().Serve(ctx, ln) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}()
		// More scrapers than slots, each keeping its connection open.
		for i := range maxScrapeConns + 2 {
			var got atomic.Bool
			conn := make(chan net.Conn, 1)
			scrapeOn(ln, conn, &got)
			c := <-conn
			defer c.Close()
			if !got.Load() {
				t.Errorf("scrape %d on its own connection failed", i)
				return
			}
		}
		synctest.Wait() // the server closed each after its answer
		var held []net.Conn
		for range maxScrapeConns {
			c, err := ln.Dial(ctx, "", "") // open, never a request
			if err != nil {
				t.Error(err)
				return
			}
			held = append(held, c)
			defer c.Close()
		}
		var got atomic.Bool
		extra := make(chan net.Conn, 1)
		go scrapeOn(ln, extra, &got)
		// Long enough for any pacing wait, short of the held connections'
		// header timeout.
		time.Sleep(scrapeHeaderTimeout / 2)
		synctest.Wait()
		if got.Load() {
			t.Errorf("a connection beyond %d was served while they were open", maxScrapeConns)
			return
		}
		held[0].Close()
		time.Sleep(minScrapeInterval)
		synctest.Wait()
		if !got.Load() {
			t.Error("the waiting connection was not served after one closed")
		}
		defer (<-extra).Close()
	})
}

// TestServePacesRendering: back-to-back scrapes are rendered at most once
// per minScrapeInterval.
func TestServePacesRendering(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		ln := testsupport.NewPipeListener()
		done := make(chan error, 1)
		go func() { done <- populated().Serve(ctx, ln) }()
		const n = 11
		start := time.Now()
		for i := range n {
			var got atomic.Bool
			conn := make(chan net.Conn, 1)
			scrapeOn(ln, conn, &got)
			(<-conn).Close()
			if !got.Load() {
				t.Errorf("scrape %d failed", i)
				break
			}
		}
		if took := time.Since(start); took < (n-1)*minScrapeInterval {
			t.Errorf("%d scrapes in %v, want at least %v apart", n, took, minScrapeInterval)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}
