package provision

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/simtest"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/keykeeper"
	"github.com/opengpa/gpa/proxyagent/status"
)

type policyRecorder struct {
	mu    sync.Mutex
	calls [][3]bool
}

func (r *policyRecorder) SetPolicy(ws, imds, hgap bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, [3]bool{ws, imds, hgap})
	return nil
}

func (r *policyRecorder) last() [3]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) == 0 {
		return [3]bool{}
	}
	return r.calls[len(r.calls)-1]
}

// The key keeper, provisioning and status wired as the agent wires them,
// against a v1 host: provisioning finishes, the tags and status.json say
// so, --status exits 0, and the v1 redirects are in place when it finishes
// and stay after a notify (the deliberate fix of upstream quirk 14).
func TestKeyKeeperProvisioningStatus(t *testing.T) {
	on := true
	sim := simtest.Start(t, hostsim.Config{StatusVersion: hostsim.StatusV1,
		Settings: hostsim.ProxyAgentSettings{Enabled: &on, WireServer: &hostsim.HostEndpointSettings{Mode: "Enforce"}}})

	root := t.TempDir()
	keyDir := filepath.Join(root, "keys")
	reg := status.NewRegistry()
	redir := &policyRecorder{}
	var kk *keykeeper.KeyKeeper
	finished := make(chan struct{})
	writer := &status.Writer{Reporter: &status.Reporter{Registry: reg, Version: "1.2.3"},
		Path: filepath.Join(root, "status", "status.json"), Interval: time.Hour, MinGap: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	prov := New(Options{
		Dir:      keyDir,
		Registry: reg,
		State:    func() string { return kk.State() },
		Notify:   func() { kk.Notify() },
		OnFinished: func() {
			wg.Add(1)
			go func() { defer wg.Done(); writer.Run(ctx) }()
			close(finished)
		},
	})
	var err error
	kk, err = keykeeper.New(keykeeper.Options{
		WireServer: sim.Addrs().WireServer, KeyDir: keyDir,
		PollInterval: 20 * time.Millisecond, FastPollInterval: 10 * time.Millisecond,
		Redirector: redir, Provisioning: prov,
		OnChange: func(st *keykeeper.State) { reg.SetStatus(status.KeyLatch, st.ModuleStatus()) },
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); kk.Run(ctx) }()

	// The redirector and listener come up (other packages report these).
	reg.Set(status.EbpfProgram, status.Running, "Started Redirector with eBPF maps - 5")
	prov.RedirectorReady()
	reg.Set(status.ProxyListener, status.Running, "Started proxy listener, ready to accept request - 6")
	prov.ListenerReady()

	// Provisioning has finished once it called OnFinished: the ALL_READY
	// flags and the tag files come first.
	testsupport.Receive(t, "provisioning to finish", finished)
	if prov.Flags() != AllReady {
		t.Fatalf("finished with flags %d", prov.Flags())
	}
	if kk.Key() == nil || kk.State() != "wireserver" {
		t.Fatalf("key %v state %q", kk.Key(), kk.State())
	}
	if st, err := os.ReadFile(filepath.Join(keyDir, StatusTag)); err != nil || len(st) != 0 {
		t.Errorf("status.tag %q %v", st, err)
	}
	if p := redir.last(); p != [3]bool{true, true, true} {
		t.Errorf("redirect policy after ALL_READY %v; v1 wireserver must stay redirected", p)
	}

	// status.json appears once provisioning finished, with SUCCESS.
	var data []byte
	testsupport.WaitFor(t, "status.json with SUCCESS", func() bool {
		data, _ = os.ReadFile(writer.Path)
		return strings.Contains(string(data), `"status":"SUCCESS"`)
	})
	for _, want := range []string{`"version":"1.2.3"`, `"secureChannelState":"wireserver"`, `"keyGuid":"` + kk.Key().GUID + `"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("status.json lacks %s: %s", want, data)
		}
	}

	// A notify in the latched state calls key_latched (the finish time
	// moves on); upstream would then remove the v1 redirects (quirk 14),
	// here the key keeper alone owns them and they stay.
	before := prov.FinishedTimeTick()
	kk.Notify()
	testsupport.WaitFor(t, "the notify to reach provisioning", func() bool { return prov.FinishedTimeTick() != before })
	if p := redir.last(); p != [3]bool{true, true, true} {
		t.Errorf("redirect policy after notify %v, want the v1 redirects kept", p)
	}

	// A status query after the finish, with the channel latched, is finished.
	if fin, msg := prov.Query(time.Now().UnixNano(), true); !fin || msg != "" {
		t.Errorf("query finished=%v msg=%q", fin, msg)
	}
}
