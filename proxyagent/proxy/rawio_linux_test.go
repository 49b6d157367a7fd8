package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns a raw-I/O connection and its peer.
func tcpPair(t *testing.T) (*rawIOConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := (<-accepted).(*net.TCPConn)
	r, ok := rawIO(c).(*rawIOConn)
	if !ok {
		t.Fatal("rawIO did not wrap a TCP connection")
	}
	t.Cleanup(func() { r.Close(); peer.Close() })
	return r, peer
}

// The raw connection behaves as the wrapped one where the proxy relies on
// it: whole writes past a full socket buffer, EOF, deadlines, resets.
func TestRawIOConn(t *testing.T) {
	t.Run("large write and read", func(t *testing.T) {
		r, peer := tcpPair(t)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB: the socket buffer fills
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(peer)
			got <- b
		}()
		if n, err := r.Write(want); n != len(want) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
		}
		r.CloseWrite()
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("peer read %d bytes, want the %d written", len(b), len(want))
		}
		go func() {
			peer.Write(want)
			peer.Close()
		}()
		b, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("ReadAll = %d bytes, %v", len(b), err)
		}
		if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the peer's close = %d, %v; want io.EOF", n, err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		r, _ := tcpPair(t)
		r.SetReadDeadline(time.Now().Add(-time.Second))
		_, err := r.Read(make([]byte, 1))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !commonReadError(err) {
			t.Fatalf("Read past the deadline: %v, want a timeout", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		r, _ := tcpPair(t)
		r.Close()
		if _, err := r.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := r.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		r, peer := tcpPair(t)
		peer.SetLinger(0) // close with RST, delivered on loopback before Close returns
		peer.Close()
		_, rerr := r.Read(make([]byte, 1))
		_, err := r.Write([]byte("x"))
		if !errors.Is(rerr, syscall.ECONNRESET) || !connGone(rerr) {
			t.Fatalf("Read from a reset connection: %v, want ECONNRESET", rerr)
		}
		if !errors.Is(err, syscall.EPIPE) || !connGone(err) {
			t.Fatalf("Write to a reset connection: %v, want EPIPE", err)
		}
	})
}
