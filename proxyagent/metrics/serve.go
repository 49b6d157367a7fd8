package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/opengpa/gpa/internal/pause"
)

// Listen opens the metrics listener: network "unix" binds a socket at
// address that only its owner (root, for the agent) may connect to;
// network "tcp" binds address (the config allows loopback only).
//
// The unix socket is bound inside a fresh private directory, restricted to
// mode 0600 there and only then renamed into place, so no other user can
// connect in between. A stale socket at address is replaced; any other
// file there is an error.
func Listen(network, address string) (net.Listener, error) {
	if network != "unix" {
		ln, err := net.Listen(network, address)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		return ln, nil
	}
	dir := filepath.Dir(address)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if fi, err := os.Lstat(address); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("metrics: %s exists and is not a socket", address)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(dir, ".metrics-")
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpSock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := os.Rename(tmpSock, address); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &unixListener{UnixListener: ln, path: address}, nil
}

// unixListener removes its socket file on Close.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// Scrape limits. A loopback metricsListen is open to every local user, so
// a scrape flood must cost the agent little: at most maxScrapeConns
// connections are served at a time (more wait in the kernel's backlog, not
// in the agent), each for one request (no keep-alive, so an idle
// connection holds no slot) whose head must arrive within
// scrapeHeaderTimeout, and pages are rendered at most once per
// minScrapeInterval (a scrape in between waits for its turn). Prometheus
// scrapes every few seconds at most.
const (
	maxScrapeConns      = 16
	scrapeHeaderTimeout = 2 * time.Second
	minScrapeInterval   = 100 * time.Millisecond
)

// Serve answers GET /metrics on ln until ctx ends, then closes ln. Other
// paths get 404. It serves at most maxScrapeConns connections at a time,
// one request each, and renders at most one page per minScrapeInterval.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, paced(m.Handler(), minScrapeInterval))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: scrapeHeaderTimeout, WriteTimeout: 10 * time.Second,
		MaxHeaderBytes: 16 << 10}
	srv.SetKeepAlivesEnabled(false)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(netutil.LimitListener(ln, maxScrapeConns)) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
		return nil
	}
}

// paced serves h at most once per interval: a request that comes sooner
// waits until its turn (or until its client goes away).
func paced(h http.Handler, interval time.Duration) http.Handler {
	var mu sync.Mutex
	var next time.Time
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if !pause.For(r.Context(), time.Until(next)) {
			mu.Unlock()
			return
		}
		next = time.Now().Add(interval)
		mu.Unlock()
		h.ServeHTTP(w, r)
	})
}
