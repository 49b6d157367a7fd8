package agent

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/status"
)

// A listener port someone else holds stops the listener, not the agent
// (§4.1): proxyListenerStatus is STOPPED with the error while the key
// keeper goes on, and once the port is free the agent binds it and serves.
func TestListenerPortTakenAgentStaysUp(t *testing.T) {
	listenRetry, bindRetryInterval = 20*time.Millisecond, time.Millisecond
	t.Cleanup(func() { listenRetry, bindRetryInterval = 30*time.Second, 0 })
	squatter, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	h := configureHarness(t, enforceSettings(), func(c *config.Config) { c.ListenAddress = squatter.Addr().String() })

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: h.cfg, Version: "9.9.9", Identity: h.ids, Stdout: io.Discard, Stderr: io.Discard,
			Ready: func(addr string) { ready <- addr }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	}()
	read := func() status.AgentStatus {
		var a status.Aggregate
		data, _ := os.ReadFile(h.cfg.StatusFile())
		json.Unmarshal(data, &a)
		return a.ProxyAgentStatus
	}
	testsupport.WaitFor(t, "listener STOPPED with the bind error, key latched", func() bool {
		s := read()
		return s.ProxyListenerStatus.Status == status.Stopped && strings.Contains(s.ProxyListenerStatus.Message, "address already in use") &&
			s.KeyLatchStatus.Status == status.Running
	})
	select {
	case err := <-done:
		t.Fatalf("agent exited while its port was taken: %v", err)
	case addr := <-ready:
		t.Fatalf("listener bound at %s while the port was taken", addr)
	default:
	}

	squatter.Close()
	select {
	case h.addr = <-ready:
	case err := <-done:
		t.Fatalf("agent exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("listener not bound once the port was free")
	}
	if resp := h.do(nobody, h.sim.Addrs().IMDS, "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("after binding: %s", resp.Status)
	}
	testsupport.WaitFor(t, "listener RUNNING", func() bool { return read().ProxyListenerStatus.Status == status.Running })
}
