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
)

// pipeListener hands out the server ends of net.Pipe connections.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// dial returns the client end of a new connection, which the listener
// hands to the server whenever it accepts.
func (l *pipeListener) dial() net.Conn {
	c, s := net.Pipe()
	go func() {
		select {
		case l.conns <- s:
		case <-l.done:
			s.Close()
		}
	}()
	return c
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

// scrapeOn sends GET /metrics on c and sets got once a 200 came back.
func scrapeOn(c net.Conn, got *atomic.Bool) {
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
		ln := newPipeListener()
		done := make(chan error, 1)
		go func() { done <- populated().Serve(ctx, ln) }()
		var held []net.Conn
		for range maxScrapeConns {
			held = append(held, ln.dial()) // open, never a request
		}
		var got atomic.Bool
		extra := ln.dial()
		go scrapeOn(extra, &got)
		synctest.Wait()
		if got.Load() {
			t.Fatalf("a connection beyond %d was served while they were open", maxScrapeConns)
		}
		held[0].Close()
		synctest.Wait()
		if !got.Load() {
			t.Fatal("the waiting connection was not served after one closed")
		}
		for _, c := range append(held[1:], extra) {
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
		ln := newPipeListener()
		done := make(chan error, 1)
		go func() { done <- populated().Serve(ctx, ln) }()
		c := ln.dial()
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
