package keykeeper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// fakeProv records provisioning callbacks.
type fakeProv struct {
	mu                        sync.Mutex
	latched, resets, timeouts int
	events                    int
}

func (p *fakeProv) KeyLatched()       { p.mu.Lock(); p.latched++; p.mu.Unlock() }
func (p *fakeProv) KeyLatchReset()    { p.mu.Lock(); p.resets++; p.mu.Unlock() }
func (p *fakeProv) ProvisionTimeout() { p.mu.Lock(); p.timeouts++; p.mu.Unlock() }
func (p *fakeProv) StartEvents()      { p.mu.Lock(); p.events++; p.mu.Unlock() }
func (p *fakeProv) counts() (latched, resets, timeouts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latched, p.resets, p.timeouts
}

// fakeRedir records redirect policies; fail makes the next n calls fail.
type fakeRedir struct {
	mu    sync.Mutex
	calls [][3]bool
	fail  int
}

func (r *fakeRedir) SetPolicy(ws, imds, hgap bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, [3]bool{ws, imds, hgap})
	if r.fail > 0 {
		r.fail--
		return fmt.Errorf("redirector not ready")
	}
	return nil
}

func (r *fakeRedir) last() ([3]bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) == 0 {
		return [3]bool{}, 0
	}
	return r.calls[len(r.calls)-1], len(r.calls)
}

// fakeRules records the rules documents it is given.
type fakeRules struct {
	mu    sync.Mutex
	calls []*msp.AuthorizationRules
}

func (f *fakeRules) Apply(r *msp.AuthorizationRules) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r)
	return true, nil
}

func (f *fakeRules) lastCall() (*msp.AuthorizationRules, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return nil, 0
	}
	return f.calls[len(f.calls)-1], len(f.calls)
}

// harness runs a KeyKeeper against a WireServer address.
type harness struct {
	kk    *KeyKeeper
	prov  *fakeProv
	redir *fakeRedir
	rules *fakeRules
	logs  *testsupport.SyncBuffer
	// startup holds the Startup milestones, one per line.
	startup *testsupport.SyncBuffer
	dir     string
	cancel  context.CancelFunc
	done    chan error
}

func startKeeper(t *testing.T, wsAddr, keyDir string, mod func(*Options)) *harness {
	t.Helper()
	h := &harness{prov: &fakeProv{}, redir: &fakeRedir{}, rules: &fakeRules{}, logs: &testsupport.SyncBuffer{},
		startup: &testsupport.SyncBuffer{}, dir: keyDir}
	opts := Options{
		WireServer:       wsAddr,
		KeyDir:           keyDir,
		PollInterval:     20 * time.Millisecond,
		FastPollInterval: 10 * time.Millisecond,
		RequestTimeout:   2 * time.Second,
		Rules:            h.rules,
		Redirector:       h.redir,
		Provisioning:     h.prov,
		Logger:           slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Startup:          func(msg string) { h.startup.Write([]byte(msg + "\n")) },
	}
	if mod != nil {
		mod(&opts)
	}
	kk, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.kk = kk
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- kk.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.cancel = nil
}

// keyFiles lists the *.key files of dir, sorted.
func keyFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.key"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

// fakeWS is a small WireServer for fault injection: the test sets what the
// status call answers; keys are issued fresh and attestations verified
// against them.
type fakeWS struct {
	srv  *httptest.Server
	pipe *testsupport.PipeListener // instead of srv, in a synctest bubble

	mu sync.Mutex
	// statusFn builds the status answer; nil answers v1 with state and the
	// last attested key GUID (or keyGuid, when set).
	statusFn   func() (code int, header map[string]string, body string)
	state      string
	keyGUID    *string // reported keyGuid override; nil = last attested
	nullGUID   bool    // always report keyGuid null
	keyCode    int     // status of POST /secure-channel/key (0 = 200)
	issueGUID  string  // GUID of issued keys ("" = random)
	attestCode int     // status of attestation (0 = 200)
	issued     map[string]*msp.Key
	hexes      []string
	attested   []string
	verified   []bool
	attestHdrs []http.Header
	statusN    int
	keyN       int
}

func newFakeWS(t *testing.T, state string) *fakeWS {
	f := &fakeWS{state: state, issued: map[string]*msp.Key{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// newBubbleWS is newFakeWS served over in-memory pipes, for tests that
// run the keeper inside a testing/synctest bubble: start the keeper with
// withPipe(ws) so it dials the pipes.
func newBubbleWS(t *testing.T, state string) *fakeWS {
	f := &fakeWS{state: state, issued: map[string]*msp.Key{}, pipe: testsupport.NewPipeListener()}
	srv := &http.Server{Handler: http.HandlerFunc(f.serve)}
	go srv.Serve(f.pipe)
	t.Cleanup(func() { srv.Close() })
	return f
}

// withPipe makes the keeper dial ws's pipes (see newBubbleWS).
func withPipe(ws *fakeWS, mod func(*Options)) func(*Options) {
	return func(o *Options) {
		o.Dial = ws.pipe.Dial
		if mod != nil {
			mod(o)
		}
	}
}

func (f *fakeWS) addr() string {
	if f.pipe != nil {
		return "wireserver.test:80"
	}
	return strings.TrimPrefix(f.srv.URL, "http://")
}

func (f *fakeWS) set(fn func(f *fakeWS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeWS) get(fn func(f *fakeWS)) { f.set(fn) }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (f *fakeWS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == msp.StatusPath:
		f.statusN++
		if f.statusFn != nil {
			code, hdr, b := f.statusFn()
			for k, v := range hdr {
				w.Header()[k] = []string{v}
			}
			w.WriteHeader(code)
			io.WriteString(w, b)
			return
		}
		guid := "null"
		switch {
		case f.nullGUID:
		case f.keyGUID != nil:
			guid = fmt.Sprintf("%q", *f.keyGUID)
		case len(f.attested) > 0:
			guid = fmt.Sprintf("%q", f.attested[len(f.attested)-1])
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprintf(w, `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","keyGuid":%s,`+
			`"requiredClaimsHeaderPairs":["isRoot"],"secureChannelState":%q,"version":"1.0"}`, guid, f.state)
	case r.Method == http.MethodPost && r.URL.Path == msp.KeyPath:
		f.keyN++
		if f.keyCode != 0 && f.keyCode != 200 {
			w.WriteHeader(f.keyCode)
			return
		}
		guid := f.issueGUID
		if guid == "" {
			g := randomHex(16)
			guid = g[0:8] + "-" + g[8:12] + "-" + g[12:16] + "-" + g[16:20] + "-" + g[20:32]
		}
		keyHex := strings.ToUpper(randomHex(32))
		sk, _ := msp.NewKey(guid, keyHex)
		f.issued[guid] = sk
		f.hexes = append(f.hexes, keyHex)
		inc := uint32(3)
		json.NewEncoder(w).Encode(msp.IssuedKey{AuthorizationScheme: msp.Scheme, IncarnationID: &inc,
			GUID: guid, Issued: "2021-05-05T 12:00:00Z", Key: keyHex})
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/key-attestation"):
		guid := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, msp.KeyPath+"/"), "/key-attestation")
		ok := false
		if sk := f.issued[guid]; sk != nil {
			fields := []msp.Field{{Name: "host", Value: r.Host}}
			for name, vs := range r.Header {
				for _, v := range vs {
					fields = append(fields, msp.Field{Name: name, Value: v})
				}
			}
			g, sig, parsed := msp.ParseAuthorization(r.Header.Get(msp.HeaderAuthorization))
			ok = parsed && g == guid && sk.Verify(msp.StringToSign(r.Method, r.RequestURI, fields, body), sig)
		}
		f.verified = append(f.verified, ok)
		f.attestHdrs = append(f.attestHdrs, r.Header.Clone())
		if f.attestCode != 0 && f.attestCode != 200 {
			w.WriteHeader(f.attestCode)
			return
		}
		if ok {
			f.attested = append(f.attested, guid)
		}
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
