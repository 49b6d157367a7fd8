package hostsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Defaults used when the matching Config field is zero.
const (
	DefaultDateSkew      = 5 * time.Minute
	DefaultIMDSRateLimit = 5
)

// Body limits: a signed request's body is buffered to be verified; an
// exempt upload is counted and discarded.
const (
	maxSignedBody = 16 << 20 // waagent's PUT /status carries the whole VM status
	maxExemptBody = 100 << 20
	maxPending    = 32
)

// Config configures a Sim. The zero value is usable: every service listens
// on an ephemeral 127.0.0.1 port, the secure channel is disabled and the
// status is reported in the v2.0 shape.
type Config struct {
	// Listen addresses; "" means "127.0.0.1:0". ControlAddr must be a
	// loopback address.
	WireServerAddr, IMDSAddr, HostGAAddr, ControlAddr string
	// StorageAddr is the simulated storage account (extension packages,
	// status blob; see StorageHandler).
	StorageAddr string
	// Settings and Profiles (keyed by resource id) are the initial
	// configuration.
	Settings ProxyAgentSettings
	Profiles map[string]ProfileVersion
	// StatusVersion is StatusV2 ("" too) or StatusV1.
	StatusVersion string
	// IMDSRateLimit is the IMDS limit in requests per second per client IP:
	// 0 means DefaultIMDSRateLimit, a negative value disables the limit.
	IMDSRateLimit int
	// DateSkew is the largest accepted distance between x-ms-azure-host-date
	// and the host clock: 0 means DefaultDateSkew.
	DateSkew time.Duration
	// Now is the host clock (time.Now when nil); it stamps the journal and
	// Date headers and drives the skew check and the rate limit.
	Now func() time.Time
	// PresetKey, when set, is latched from the start, as if it had been
	// issued and attested.
	PresetKey *msp.IssuedKey
	// JournalSize bounds the journal (DefaultJournalSize when 0).
	JournalSize int
	// Logger receives one record per request (Debug when served, Info when
	// refused); slog.Default() when nil.
	Logger *slog.Logger
}

// Addrs are the bound addresses of a started Sim.
type Addrs struct {
	WireServer, IMDS, HostGA, Control, Storage string
}

// Sim is a running (or ready to run) simulated host. All methods are safe
// for concurrent use. mu owns settings, profiles, keys, statusVersion,
// skew and the listeners; the journal and the rate limiter own their
// state.
type Sim struct {
	log     *slog.Logger
	now     func() time.Time
	journal *Journal
	limiter *rateLimiter
	cfg     Config

	mu            sync.Mutex
	settings      ProxyAgentSettings
	profiles      map[string]ProfileVersion
	statusVersion string
	skew          time.Duration
	latched       *msp.Key
	pending       map[string]*msp.Key
	pendingOrder  []string
	// modes are derived from settings, profiles and statusVersion by
	// recomputeLocked after every change, not per request.
	modes   msp.Modes
	servers []*http.Server
	addrs   Addrs
	started bool

	fab *fabric // extensions, goal state and status blob (own lock)
}

// New validates cfg and returns a Sim that is not yet listening.
func New(cfg Config) (*Sim, error) {
	if err := cfg.Settings.Validate(); err != nil {
		return nil, err
	}
	version := cfg.StatusVersion
	if version == "" {
		version = StatusV2
	}
	if version != StatusV1 && version != StatusV2 {
		return nil, errUnknownVersion
	}
	if cfg.ControlAddr != "" {
		if err := checkLoopback(cfg.ControlAddr); err != nil {
			return nil, err
		}
	}
	s := &Sim{
		log:           cfg.Logger,
		now:           cfg.Now,
		journal:       NewJournal(cfg.JournalSize),
		cfg:           cfg,
		settings:      cfg.Settings,
		profiles:      map[string]ProfileVersion{},
		statusVersion: version,
		skew:          cfg.DateSkew,
		pending:       map[string]*msp.Key{},
	}
	s.fab = newFabric(time.Now)
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.skew == 0 {
		s.skew = DefaultDateSkew
	}
	limit := cfg.IMDSRateLimit
	if limit == 0 {
		limit = DefaultIMDSRateLimit
	}
	s.limiter = newRateLimiter(limit)
	for id, p := range cfg.Profiles {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("profile %s: %w", id, err)
		}
		s.profiles[profileKey(id)] = p
	}
	if cfg.PresetKey != nil {
		k, err := msp.NewKey(cfg.PresetKey.GUID, cfg.PresetKey.Key)
		if err != nil || len(cfg.PresetKey.Key) != 64 {
			return nil, fmt.Errorf("preset key %s: not 64 hex characters", cfg.PresetKey.GUID)
		}
		s.latched = k
	}
	s.recomputeLocked()
	return s, nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("control address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("control address %q is not a loopback address", addr)
	}
	return nil
}

// Start binds all four listeners and serves them in the background. It
// fails (and binds nothing) if any address cannot be bound.
func (s *Sim) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("hostsim: already started")
	}
	type svc struct {
		addr    string
		handler http.Handler
		set     *string
	}
	list := []svc{
		{s.cfg.WireServerAddr, s.Handler(WireServer), &s.addrs.WireServer},
		{s.cfg.IMDSAddr, s.Handler(IMDS), &s.addrs.IMDS},
		{s.cfg.HostGAAddr, s.Handler(HostGA), &s.addrs.HostGA},
		{s.cfg.ControlAddr, s.ControlHandler(), &s.addrs.Control},
		{s.cfg.StorageAddr, s.StorageHandler(), &s.addrs.Storage},
	}
	var lns []net.Listener
	for _, v := range list {
		addr := v.addr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("hostsim: listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
		*v.set = ln.Addr().String()
	}
	for i, v := range list {
		srv := &http.Server{Handler: v.handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
		s.servers = append(s.servers, srv)
		go srv.Serve(lns[i])
	}
	s.started = true
	s.fab.mu.Lock()
	s.fab.storageBase = "http://" + s.addrs.Storage
	s.fab.mu.Unlock()
	s.log.Info("hostsim started", "wireserver", s.addrs.WireServer, "imds", s.addrs.IMDS,
		"hostga", s.addrs.HostGA, "control", s.addrs.Control, "storage", s.addrs.Storage)
	return nil
}

// Close stops all listeners and closes open connections.
func (s *Sim) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Close())
	}
	return errors.Join(errs...)
}

// Shutdown stops accepting and waits for in-flight requests, until ctx ends.
func (s *Sim) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Addrs returns the bound addresses (empty before Start).
func (s *Sim) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Settings returns a copy of the current proxyAgentSettings.
func (s *Sim) Settings() ProxyAgentSettings {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.settings
}

// SetSettings replaces the proxyAgentSettings. A changed keyIncarnationId
// makes the host forget the latched and pending keys, so keyGuid is null
// until a new key is attested.
func (s *Sim) SetSettings(ps ProxyAgentSettings) error {
	if err := ps.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if incarnation(ps) != incarnation(s.settings) {
		s.forgetKeysLocked("keyIncarnationId changed")
	}
	s.settings = ps
	s.recomputeLocked()
	return nil
}

func incarnation(ps ProxyAgentSettings) int {
	if ps.KeyIncarnationID == nil {
		return -1
	}
	return *ps.KeyIncarnationID
}

// Rotate increments keyIncarnationId (from 0 when unset), which forgets the
// latched key, and returns the new incarnation.
func (s *Sim) Rotate() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := max(incarnation(s.settings), 0) + 1
	s.settings.KeyIncarnationID = &n
	s.forgetKeysLocked("rotate")
	return n
}

func (s *Sim) forgetKeysLocked(why string) {
	if s.latched != nil {
		s.log.Info("hostsim forgot latched key", "keyGuid", s.latched.GUID, "reason", why)
	}
	s.latched = nil
	s.pending = map[string]*msp.Key{}
	s.pendingOrder = nil
}

// SetProfile stores (or replaces) the profile version with resource id id.
// Ids compare case-insensitively, ignoring leading and trailing slashes.
func (s *Sim) SetProfile(id string, p ProfileVersion) error {
	if profileKey(id) == "" {
		return errors.New("profile id is empty")
	}
	if err := p.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.profiles[profileKey(id)] = p
	s.recomputeLocked()
	return nil
}

// DeleteProfile removes a profile version; an endpoint still referring to
// it then gets defaultAccess "deny".
func (s *Sim) DeleteProfile(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.profiles, profileKey(id))
	s.recomputeLocked()
}

// Profiles returns a copy of the stored profile versions keyed by their
// normalised id.
func (s *Sim) Profiles() map[string]ProfileVersion {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.profiles)
}

// SetStatusVersion selects the status shape: StatusV1 or StatusV2.
func (s *Sim) SetStatusVersion(v string) error {
	if v != StatusV1 && v != StatusV2 {
		return errUnknownVersion
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statusVersion = v
	s.recomputeLocked()
	return nil
}

// SetIMDSRateLimit sets the IMDS limit in requests per second per client
// IP; 0 or less disables it.
func (s *Sim) SetIMDSRateLimit(perSecond int) {
	if perSecond <= 0 {
		perSecond = -1
	}
	s.limiter.setLimit(perSecond)
}

// SetDateSkew sets the accepted x-ms-azure-host-date skew (0 restores
// DefaultDateSkew).
func (s *Sim) SetDateSkew(d time.Duration) {
	if d <= 0 {
		d = DefaultDateSkew
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skew = d
}

// Status returns the secure-channel status the WireServer reports now.
func (s *Sim) Status() msp.KeyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return buildStatus(s.settings, s.profiles, s.latched, s.statusVersion)
}

// Modes returns the per-service modes the host enforces: those the agent
// derives from the reported status (msp.KeyStatus.Derive).
func (s *Sim) Modes() msp.Modes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.modes
}

// LatchedKeyGUID returns the GUID of the latched key; ok is false when no
// key is latched.
func (s *Sim) LatchedKeyGUID() (guid string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latched == nil {
		return "", false
	}
	return s.latched.GUID, true
}

// Journal returns the journal of received requests.
func (s *Sim) Journal() *Journal { return s.journal }

// issueKey creates a fresh pending key and returns it as Key JSON fields.
func (s *Sim) issueKey() (msp.IssuedKey, error) {
	var raw [32]byte
	var g [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return msp.IssuedKey{}, err
	}
	if _, err := rand.Read(g[:]); err != nil {
		return msp.IssuedKey{}, err
	}
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	h := hex.EncodeToString(g[:])
	guid := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	keyHex := strings.ToUpper(hex.EncodeToString(raw[:]))
	k, err := msp.NewKey(guid, keyHex)
	if err != nil {
		return msp.IssuedKey{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending[guid] = k
	s.pendingOrder = append(s.pendingOrder, guid)
	if len(s.pendingOrder) > maxPending {
		delete(s.pending, s.pendingOrder[0])
		s.pendingOrder = s.pendingOrder[1:]
	}
	out := msp.IssuedKey{AuthorizationScheme: msp.Scheme, GUID: guid,
		Issued: s.now().UTC().Format("2006-01-02T15:04:05Z"), Key: keyHex}
	if s.settings.KeyIncarnationID != nil {
		n := uint32(*s.settings.KeyIncarnationID)
		out.IncarnationID = &n
	}
	return out, nil
}

// attestationKey returns the key a key-attestation for guid must be signed
// with: the pending key of that GUID, or the latched key when it has that
// GUID (re-attestation is harmless).
func (s *Sim) attestationKey(guid string) *msp.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.pending[guid]; ok {
		return k
	}
	if s.latched != nil && s.latched.GUID == guid {
		return s.latched
	}
	return nil
}

// latch makes k the latched key if it is still pending or latched (a
// rotation in between wins).
func (s *Sim) latch(k *msp.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pending[k.GUID]; ok && p == k {
		delete(s.pending, k.GUID)
		s.latched = k
		return true
	}
	return s.latched == k
}

// recomputeLocked refreshes the cached modes; the latched key does not
// affect them.
func (s *Sim) recomputeLocked() {
	st := buildStatus(s.settings, s.profiles, nil, s.statusVersion)
	s.modes = st.Derive()
}

// snapshot returns what one request needs under one lock: the latched key,
// the skew and the service's mode.
func (s *Sim) snapshot(svc Service) (*msp.Key, time.Duration, msp.Mode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mode := s.modes.WireServer
	switch svc {
	case IMDS:
		mode = s.modes.IMDS
	case HostGA:
		mode = s.modes.HostGA
	}
	return s.latched, s.skew, mode
}

// requestFields returns every header of r as received, with Host put back
// (Go's server moves it out of r.Header) and Transfer-Encoding restored.
func requestFields(r *http.Request) []msp.Field {
	fields := make([]msp.Field, 0, len(r.Header)+2)
	if r.Host != "" {
		fields = append(fields, msp.Field{Name: "host", Value: r.Host})
	}
	if len(r.TransferEncoding) > 0 && r.Header.Get("Transfer-Encoding") == "" {
		fields = append(fields, msp.Field{Name: "transfer-encoding", Value: strings.Join(r.TransferEncoding, ", ")})
	}
	for name, values := range r.Header {
		for _, v := range values {
			fields = append(fields, msp.Field{Name: name, Value: v})
		}
	}
	return fields
}

// verify judges the signature of a received request under key. guid is the
// key GUID the header names ("" when none).
func verify(r *http.Request, fields []msp.Field, body []byte, key *msp.Key, now time.Time, skew time.Duration) (v Verdict, guid string) {
	req := msp.Request{Method: r.Method, Target: r.RequestURI, Fields: fields, Body: body}
	guid, err := req.Verify(key, now, skew)
	switch {
	case err == nil:
		return VerdictValid, guid
	case errors.Is(err, msp.ErrUnsigned):
		return VerdictUnsigned, guid
	case errors.Is(err, msp.ErrBadDate):
		return VerdictBadDate, guid
	}
	return VerdictInvalid, guid
}

// statusWriter records the status code a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// served is the context a service handler gets for one request.
type served struct {
	w       http.ResponseWriter
	r       *http.Request
	body    []byte
	now     time.Time
	verdict Verdict
	// attestKey is the key an attestation request verified under.
	attestKey *msp.Key
}

// Handler returns the HTTP handler of one service. It is what the
// service's listener serves; use it directly to embed a service in another
// server.
func (s *Sim) Handler(svc Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.serve(svc, w, r)
	})
}

func (s *Sim) serve(svc Service, rw http.ResponseWriter, r *http.Request) {
	now := s.now()
	w := &statusWriter{ResponseWriter: rw}
	w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
	fields := requestFields(r)
	key, skew, mode := s.snapshot(svc)
	entry := Entry{Time: now, Service: svc, Remote: r.RemoteAddr, Method: r.Method, Target: r.RequestURI,
		Headers: fields, Mode: mode}
	defer func() {
		entry.Status = w.code
		if entry.Status == 0 {
			entry.Status = http.StatusOK // net/http's answer when nothing was written
		}
		s.journal.Add(entry)
		level := slog.LevelDebug
		if w.code >= 400 {
			level = slog.LevelInfo
		}
		s.log.Log(r.Context(), level, "hostsim request", "service", svc, "remote", r.RemoteAddr,
			"method", r.Method, "target", r.RequestURI, "mode", mode, "verdict", entry.Verdict,
			"keyGuid", entry.KeyGUID, "status", w.code)
	}()

	exempt := msp.Exempt(r.Method, r.RequestURI)
	limit := int64(maxSignedBody)
	if exempt {
		limit = maxExemptBody
	}
	var body []byte
	var err error
	if exempt {
		entry.BodyLen, err = io.Copy(io.Discard, io.LimitReader(r.Body, limit+1))
	} else {
		body, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
		entry.BodyLen = int64(len(body))
	}
	if err != nil {
		entry.Verdict = VerdictInvalid
		http.Error(w, "cannot read request body", http.StatusBadRequest)
		return
	}
	if entry.BodyLen > limit {
		entry.Verdict = VerdictInvalid
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}

	attestGUID, isAttest := attestationGUID(svc, r)
	var attestKey *msp.Key
	switch {
	case exempt:
		entry.Verdict = VerdictExempt
	case isAttest:
		attestKey = s.attestationKey(attestGUID)
		entry.Verdict, entry.KeyGUID = verify(r, fields, body, attestKey, now, skew)
		if entry.Verdict != VerdictValid {
			writeUnauthorized(w, svc, entry.Verdict)
			return
		}
	case svc == WireServer && noSignatureNeeded(r):
		entry.Verdict = VerdictNotRequired
	default:
		entry.Verdict, entry.KeyGUID = verify(r, fields, body, key, now, skew)
		if mode == msp.ModeEnforce && !entry.Verdict.Accepted() {
			writeUnauthorized(w, svc, entry.Verdict)
			return
		}
	}
	req := &served{w: w, r: r, body: body, now: now, verdict: entry.Verdict, attestKey: attestKey}
	switch svc {
	case WireServer:
		s.serveWireServer(req)
	case IMDS:
		s.serveIMDS(req)
	case HostGA:
		s.serveHostGA(req)
	}
}

// noSignatureNeeded reports the secure-channel calls that are made before
// any key exists: GET /secure-channel/status and POST /secure-channel/key.
func noSignatureNeeded(r *http.Request) bool {
	path, _ := msp.SplitTarget(r.RequestURI)
	return (r.Method == http.MethodGet && path == msp.StatusPath) ||
		(r.Method == http.MethodPost && path == msp.KeyPath)
}

// attestationGUID recognises POST /secure-channel/key/{guid}/key-attestation
// on the WireServer.
func attestationGUID(svc Service, r *http.Request) (string, bool) {
	if svc != WireServer || r.Method != http.MethodPost {
		return "", false
	}
	path, _ := msp.SplitTarget(r.RequestURI)
	rest, ok := strings.CutPrefix(path, msp.KeyPath+"/")
	if !ok {
		return "", false
	}
	guid, ok := strings.CutSuffix(rest, "/key-attestation")
	if !ok || guid == "" || strings.Contains(guid, "/") {
		return "", false
	}
	return guid, true
}

func writeUnauthorized(w http.ResponseWriter, svc Service, v Verdict) {
	msg := "request is not signed with the latched key"
	switch v {
	case VerdictUnsigned:
		msg = "request is not signed"
	case VerdictBadDate:
		msg = "x-ms-azure-host-date is missing or outside the allowed skew"
	}
	if svc == IMDS {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Unauthorized. " + msg})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, "Unauthorized: "+msg+"\n")
}
