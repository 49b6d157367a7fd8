package metrics

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
)

// scrapeOn connects through ln, sends GET /metrics and sets got once a
// 200 came back; the connection is sent on conn once made.
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
	if err == nil && resp.StatusCode == 200 {
		got.Store(true)
	}
}

// TestServeLimitsConnections: connections beyond maxScrapeConns are not
// served while the first ones are open, and are once one closes.
func TestServeLimitsConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		ln := testsupport.NewPipeListener()
		done := make(chan error, 1)
		go func() { done <- populated().Serve(ctx, ln) }()
		var held []net.Conn
		for range maxScrapeConns {
			c, err := ln.Dial(ctx, "", "") // open, never a request
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		var got atomic.Bool
		extraC := make(chan net.Conn, 1)
		go scrapeOn(ln, extraC, &got)
		synctest.Wait()
		if got.Load() {
			t.Fatalf("a connection beyond %d was served while they were open", maxScrapeConns)
		}
		held[0].Close()
		synctest.Wait()
		if !got.Load() {
			t.Fatal("the waiting connection was not served after one closed")
		}
		for _, c := range append(held[1:], <-extraC) {
			c.Close()
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
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
		c, err := ln.Dial(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		const n = 11
		start := time.Now()
		for i := range n {
			if _, err := c.Write([]byte("GET " + Path + " HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("scrape %d: %v %v", i, resp, err)
			}
			resp.Body.Close()
		}
		if took := time.Since(start); took < (n-1)*minScrapeInterval {
			t.Errorf("%d scrapes in %v, want at least %v apart", n, took, minScrapeInterval)
		}
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
