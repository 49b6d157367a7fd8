// Package keykeeper runs the agent's secure-channel key keeper
// (shared/spec/protocol.md §1): it polls the WireServer's secure-channel
// status, derives the per-service modes, installs authorization rules,
// latches a key (acquire, save, re-read, attest) or reloads a saved one,
// follows host-driven rotation, clears the key when the host disables the
// channel, keeps a host-synced clock, and reports the keyLatchStatus block.
//
// The latched key is published atomically: Key returns it (nil when the
// proxy must not sign). Key hex never reaches logs, status or errors.
//
// Upstream behaviour kept: the double-space state string, v1 "Audit"
// rejected, HostGA mirroring WireServer (ids and modes), re-acquisition on
// every poll while the host reports keyGuid null, no attestation for a key
// reloaded from disk, key files never deleted (quirks 1–3, 16), and the
// status messages of §1.10. Deliberate differences:
//   - every host call has a timeout (Options.RequestTimeout);
//   - a host key GUID with a character other than letters, digits and
//     "-_.~{}" is never used as a file name (path separators, white space
//     and control characters would reach the file system or the wire), and
//     a local key file must name the GUID it is stored under and hold valid
//     hex, else a new key is acquired;
//   - the redirect policy is re-applied whenever the installed one differs
//     from the current modes, so a state change is not lost when the key
//     acquisition of its poll fails (quirk 17);
//   - the host's last key status is kept with the key latched after it
//     (LastStatusFile), and applied offline when the first poll after a
//     start fails, so a restart during a host outage neither forwards
//     unsigned nor drops the rules.
package keykeeper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
	"github.com/opengpa/gpa/internal/pause"
	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Upstream's timing constants (protocol.md §1.6); Options override them.
const (
	DefaultPollInterval     = 15 * time.Second
	DefaultFastPollInterval = 1 * time.Second
	DefaultFastPollWindow   = 5 * time.Minute
	DefaultProvisionTimeout = 2 * time.Minute
	DefaultEventsDelay      = 1 * time.Minute
	DefaultRequestTimeout   = 10 * time.Second
)

// Status messages that surface in keyLatchStatus (protocol.md §1.10).
const (
	msgStarted   = "poll secure channel status task started."
	msgCancelled = "poll_secure_channel_status task cancelled."
)

// RulesApplier installs the host's authorization rules. Apply is called
// after every successful status poll with the status' rules (nil when the
// host sent none); it decides itself whether anything changed (§3.6) and
// reports it. An error is logged; the poll goes on.
type RulesApplier interface {
	Apply(rules *msp.AuthorizationRules) (changed bool, err error)
}

// Redirector installs or removes the kernel redirect for each destination
// (§4.3): true redirects WireServer, IMDS or HostGAPlugin traffic to the
// proxy.
type Redirector interface {
	SetPolicy(wireServer, imds, hostGA bool) error
}

// Provisioning receives the key keeper's provisioning events (§5.3).
type Provisioning interface {
	// KeyLatched: a key is in memory or the channel is disabled.
	KeyLatched()
	// KeyLatchReset: a notify arrived while disabled or Unknown.
	KeyLatchReset()
	// ProvisionTimeout: the provisioning timeout elapsed.
	ProvisionTimeout()
	// StartEvents: the process has been up for the events delay; the
	// telemetry and status threads start if provisioning has not started
	// them yet.
	StartEvents()
}

// Options configure a KeyKeeper. WireServer and KeyDir are required.
type Options struct {
	// WireServer is the host:port of the WireServer.
	WireServer string
	// KeyDir holds <guid>.key files and LastStatusFile; its sibling
	// "rules" is created too.
	KeyDir string
	// Mark is the SO_MARK of the key keeper's sockets (0 = unmarked).
	Mark uint32

	PollInterval     time.Duration // default 15 s
	FastPollInterval time.Duration // default 1 s
	FastPollWindow   time.Duration // default 5 min of uptime
	ProvisionTimeout time.Duration // default 2 min
	EventsDelay      time.Duration // uptime before the event threads start anyway, default 1 min
	RequestTimeout   time.Duration // per host call, default 10 s
	ClockResync      time.Duration // default 15 min

	Rules        RulesApplier // may be nil
	Redirector   Redirector   // may be nil: redirect updates then succeed trivially
	Provisioning Provisioning // may be nil

	// OnChange is called on Run's goroutine after every change of the
	// published state, with that state; the agent copies its keyLatchStatus
	// into the status registry.
	OnChange func(*State)
	// Startup, when set, also gets the start-up milestones (the key found
	// locally, a key attested, a secure channel not enforced), on Run's
	// goroutine: the agent writes them to the console, as upstream does.
	Startup func(msg string)
	// OnPoll, when set, is told each key-status poll's outcome (nil:
	// the host answered a valid status), on Run's goroutine (metrics).
	OnPoll func(err error)
	// Start is the process start time for uptime; zero means New's time.
	Start  time.Time
	Logger *slog.Logger
	// Clock is the host-synced clock to keep; nil makes a new one.
	Clock *HostClock
	// Dial overrides the dialer (tests); nil uses hostconn.Dialer(Mark).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// State is one immutable version of what the key keeper knows and
// reports. Run's goroutine publishes a new State on every change; readers
// on any goroutine get a consistent whole.
type State struct {
	// Modes are derived from the last valid key status (state "Unknown"
	// and every mode disabled before the first).
	Modes msp.Modes
	// Key is the latched key, nil when the proxy must not sign;
	// KeyIncarnation is the host's incarnation of it, when given.
	Key            *msp.Key
	KeyIncarnation *uint32
	// WireServerRuleID and IMDSRuleID are the raw rule ids of the last
	// key status (HostGAPlugin reports the WireServer's, quirk 3).
	WireServerRuleID, IMDSRuleID string
	// Module and Message are keyLatchStatus' state and message.
	Module  status.ModuleState
	Message string
}

// ModuleStatus returns the keyLatchStatus block (§1.10): module state,
// message (truncated at 1024 bytes) and the states map.
func (s *State) ModuleStatus() status.ModuleStatus {
	states := map[string]string{
		"secureChannelState": s.Modes.State,
		"wireServerRuleId":   s.WireServerRuleID,
		"imdsRuleId":         s.IMDSRuleID,
		"hostGARuleId":       s.WireServerRuleID,
	}
	if s.Key != nil {
		states["keyGuid"] = s.Key.GUID
		if s.KeyIncarnation != nil {
			states["keyIncarnationId"] = strconv.FormatUint(uint64(*s.KeyIncarnation), 10)
		}
	}
	return status.ModuleStatus{Status: s.Module, Message: status.Truncate(s.Message), States: states}
}

// KeyKeeper is the poll loop and its published State. Run's goroutine is
// the only writer: it owns the loop fields below and publishes State;
// every method other than Run only reads the published State.
type KeyKeeper struct {
	opts   Options
	log    *slog.Logger
	client *hostClient
	clock  *HostClock
	notify chan struct{}

	cur atomic.Pointer[State]

	// Owned by Run's goroutine.
	summary string // last logged status summary
	// applied is the redirect policy last installed successfully (nil
	// before the first).
	applied *[3]bool
	// saved is the key status last written to the key directory
	// (LastStatusFile); resumed is set while the state in force is that
	// file's, applied because the host did not answer the first poll.
	saved   []byte
	resumed bool

	// polled is closed when Run's first poll has ended (whatever its
	// outcome) or Run returned.
	polled     chan struct{}
	polledOnce sync.Once
}

// New validates opts and returns a key keeper in state Unknown with no key.
func New(opts Options) (*KeyKeeper, error) {
	if opts.WireServer == "" {
		return nil, errors.New("keykeeper: no WireServer address")
	}
	if _, _, err := net.SplitHostPort(opts.WireServer); err != nil {
		return nil, fmt.Errorf("keykeeper: WireServer address %q: %w", opts.WireServer, err)
	}
	if opts.KeyDir == "" {
		return nil, errors.New("keykeeper: no key directory")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.PollInterval, DefaultPollInterval)
	def(&opts.FastPollInterval, DefaultFastPollInterval)
	def(&opts.FastPollWindow, DefaultFastPollWindow)
	def(&opts.ProvisionTimeout, DefaultProvisionTimeout)
	def(&opts.EventsDelay, DefaultEventsDelay)
	def(&opts.RequestTimeout, DefaultRequestTimeout)
	def(&opts.ClockResync, DefaultClockResync)
	if opts.Start.IsZero() {
		opts.Start = time.Now()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = NewHostClock()
	}
	dial := opts.Dial
	if dial == nil {
		dial = hostconn.Dialer(opts.Mark, opts.RequestTimeout).DialContext
	}
	k := &KeyKeeper{
		opts:   opts,
		log:    opts.Logger.With("module", "key_keeper"),
		clock:  opts.Clock,
		notify: make(chan struct{}, 1),
		polled: make(chan struct{}),
	}
	k.client = &hostClient{&hostconn.Client{Addr: opts.WireServer, Timeout: opts.RequestTimeout, Dial: dial, Now: k.clock.Now}}
	k.cur.Store(&State{Module: status.Unknown, Message: status.InitialMessage,
		Modes: msp.Modes{State: msp.StateUnknown, WireServer: msp.ModeDisabled, IMDS: msp.ModeDisabled, HostGA: msp.ModeDisabled,
			WireServerRaw: string(msp.ModeDisabled), IMDSRaw: string(msp.ModeDisabled)}})
	return k, nil
}

// Current returns the published state.
func (k *KeyKeeper) Current() *State { return k.cur.Load() }

// publish stores a copy of the current state changed by edit, when edit
// changed anything, and tells OnChange. Only Run's goroutine calls it.
func (k *KeyKeeper) publish(edit func(*State)) {
	old := k.cur.Load()
	next := *old
	edit(&next)
	if next == *old {
		return
	}
	k.cur.Store(&next)
	if k.opts.OnChange != nil {
		k.opts.OnChange(&next)
	}
}

// Key returns the latched key, or nil when none is in memory (the proxy
// then forwards unsigned).
func (k *KeyKeeper) Key() *msp.Key { return k.cur.Load().Key }

// Now returns the host-synced time used for x-ms-azure-host-date.
func (k *KeyKeeper) Now() time.Time { return k.clock.Now() }

// Clock returns the host-synced clock the key keeper maintains.
func (k *KeyKeeper) Clock() *HostClock { return k.clock }

// Notify asks the poll loop to act now (§1.6): in the disabled or Unknown
// state it resets KEY_LATCH_READY and polls at once; otherwise it
// refreshes the provisioning finish time. Never blocks.
func (k *KeyKeeper) Notify() {
	select {
	case k.notify <- struct{}{}:
	default:
	}
}

// Modes returns the modes derived from the last valid status (state
// "Unknown" and all modes disabled before the first).
func (k *KeyKeeper) Modes() msp.Modes { return k.cur.Load().Modes }

// State returns the secure-channel state string (§1.5).
func (k *KeyKeeper) State() string { return k.Modes().State }

// Status returns the keyLatchStatus block of the published state.
func (k *KeyKeeper) Status() status.ModuleStatus { return k.cur.Load().ModuleStatus() }

// policyOf returns the redirect policy {WS, IMDS, HGAP} of modes: a
// destination is redirected iff its raw mode is not "disabled" (an unknown
// v2 mode string counts as enabled, upstream quirk 20).
func policyOf(m msp.Modes) [3]bool {
	ws := m.WireServerRaw != string(msp.ModeDisabled)
	imds := m.IMDSRaw != string(msp.ModeDisabled)
	return [3]bool{ws, imds, ws}
}

func (k *KeyKeeper) applyRedirect(m msp.Modes) error {
	p := policyOf(m)
	if k.opts.Redirector != nil {
		if err := k.opts.Redirector.SetPolicy(p[0], p[1], p[2]); err != nil {
			return err
		}
	}
	k.applied = &p
	return nil
}

func (k *KeyKeeper) setStatus(state status.ModuleState, msg string) {
	k.publish(func(s *State) { s.Module, s.Message = state, msg })
}

func (k *KeyKeeper) setMessage(msg string) {
	k.publish(func(s *State) { s.Message = msg })
}

// startupEvent publishes a start-up milestone as the status message and
// hands it to Options.Startup.
func (k *KeyKeeper) startupEvent(msg string) {
	k.setMessage(msg)
	if k.opts.Startup != nil {
		k.opts.Startup(msg)
	}
}

func (k *KeyKeeper) uptimeMS() int64 { return time.Since(k.opts.Start).Milliseconds() }

func (k *KeyKeeper) provision() Provisioning {
	if k.opts.Provisioning == nil {
		return nopProvisioning{}
	}
	return k.opts.Provisioning
}

type nopProvisioning struct{}

func (nopProvisioning) KeyLatched()       {}
func (nopProvisioning) KeyLatchReset()    {}
func (nopProvisioning) ProvisionTimeout() {}
func (nopProvisioning) StartEvents()      {}

// FirstPoll returns a channel that is closed once Run has finished its
// first poll, successful or not (so the rules, modes and any key the host
// already latched are in place: from the host, or, when it did not
// answer, from the key status it last gave, LastStatusFile, and the key
// file it names), or has returned. The agent starts its listener only
// then: a restarted agent whose pinned redirect is still active must not
// forward requests unsigned before it has reloaded its key, also while
// the host is unreachable.
func (k *KeyKeeper) FirstPoll() <-chan struct{} { return k.polled }

func (k *KeyKeeper) markPolled() { k.polledOnce.Do(func() { close(k.polled) }) }

// Run polls until ctx ends, then reports STOPPED and returns ctx's error.
func (k *KeyKeeper) Run(ctx context.Context) error {
	defer k.markPolled()
	for _, d := range []string{k.opts.KeyDir, filepath.Join(filepath.Dir(filepath.Clean(k.opts.KeyDir)), "rules")} {
		if err := ensureDir(d); err != nil {
			k.log.Warn("could not secure directory", "dir", d, "err", err)
		}
	}
	k.setStatus(status.Running, msgStarted)
	k.log.Info(msgStarted)

	first := true
	provStart := time.Now()
	provTimedOut := false
	eventsStarted := false
	for {
		if !first {
			sleep := k.opts.PollInterval
			if (k.State() == msp.StateUnknown || k.resumed) && time.Since(k.opts.Start) < k.opts.FastPollWindow {
				sleep = k.opts.FastPollInterval
			}
			started := time.Now()
			timer := time.NewTimer(sleep)
			select {
			case <-ctx.Done():
				timer.Stop()
				return k.stopped(ctx)
			case <-timer.C:
			case <-k.notify:
				timer.Stop()
				st := k.State()
				if k.resumed {
					// The state in force is the last key status, not the
					// host's answer: ask the host now (but not more often
					// than the fast poll), and tell provisioning only what
					// it says.
					k.log.Info("notified while the host has not answered since the start; polling now")
					if !pause.For(ctx, k.opts.FastPollInterval-time.Since(started)) {
						return k.stopped(ctx)
					}
				} else if st == msp.StateDisabled || st == msp.StateUnknown {
					k.log.Info("notified while not latched; polling now", "state", st)
					k.provision().KeyLatchReset()
					k.publish(func(s *State) { s.Modes.State = msp.StateUnknown })
					provStart, provTimedOut = time.Now(), false
				} else {
					k.provision().KeyLatched()
					if !pause.For(ctx, sleep-time.Since(started)) {
						return k.stopped(ctx)
					}
				}
			}
		}
		wasFirst := first
		first = false
		if !provTimedOut && time.Since(provStart) > k.opts.ProvisionTimeout {
			k.provision().ProvisionTimeout()
			provTimedOut = true
		}
		if !eventsStarted && time.Since(k.opts.Start) > k.opts.EventsDelay {
			k.provision().StartEvents()
			eventsStarted = true
		}
		if !k.poll(ctx) && wasFirst && ctx.Err() == nil {
			k.resume(ctx)
		}
		k.markPolled()
		if ctx.Err() != nil {
			return k.stopped(ctx)
		}
	}
}

func (k *KeyKeeper) stopped(ctx context.Context) error {
	k.setStatus(status.Stopped, msgCancelled)
	k.log.Info(msgCancelled)
	return ctx.Err()
}

// fetchStatus gets, syncs the clock from, decodes and validates the
// status; it also returns the decoded body.
func (k *KeyKeeper) fetchStatus(ctx context.Context) (*msp.KeyStatus, []byte, error) {
	r, err := k.client.status(ctx)
	if err != nil {
		return nil, nil, err
	}
	if k.clock.SyncFromHeaders(r.Header, k.opts.ClockResync) {
		k.log.Info("host clock synced", "host_time", msp.FormatDate(k.clock.Now()))
	}
	body, err := decodeBody(r.Header.Get("Content-Type"), r.Body)
	if err != nil {
		return nil, nil, err
	}
	ks, err := k.parseStatus(body)
	return ks, body, err
}

// parseStatus decodes and validates a key status document.
func (k *KeyKeeper) parseStatus(body []byte) (*msp.KeyStatus, error) {
	ks, err := msp.ParseKeyStatus(body)
	if err != nil {
		return nil, err
	}
	warn, err := ks.Validate()
	if err != nil {
		return nil, fmt.Errorf("Key status validation failed with the error: %v", err)
	}
	if warn != "" {
		k.log.Warn("key status warning", "warning", warn)
	}
	return ks, nil
}

// poll is one iteration of §1.6 after the sleep; it reports whether the
// host answered with a valid key status.
func (k *KeyKeeper) poll(ctx context.Context) bool {
	ks, body, err := k.fetchStatus(ctx)
	if k.opts.OnPoll != nil {
		k.opts.OnPoll(err)
	}
	if err != nil {
		msg := "Failed to get key status - " + err.Error()
		k.setMessage(msg)
		k.log.Warn("failed to get key status", "err", err)
		return false
	}
	k.apply(ctx, ks, nil)
	k.remember(body)
	return true
}

// LastStatusFile is the name, in the key directory, of what a restarted
// agent applies while the host does not answer its first poll: the key
// status the host last gave and the GUID of the key latched after it
// (lastStatus).
const LastStatusFile = "lastKeyStatus.json"

// lastStatus is LastStatusFile's content. KeyGUID is the key in memory
// when the status was applied: the host may still report it null (the
// key was just acquired).
type lastStatus struct {
	KeyGUID   string          `json:"keyGuid,omitempty"`
	KeyStatus json.RawMessage `json:"keyStatus"`
}

// remember writes the key status body, with the key now in memory, to
// LastStatusFile when that differs from what is there. A failure is
// logged: the file only bridges a host outage.
func (k *KeyKeeper) remember(body []byte) {
	last := lastStatus{KeyStatus: serdejson.TrimBOM(body)}
	if key := k.Key(); key != nil {
		last.KeyGUID = key.GUID
	}
	data, err := json.Marshal(last)
	if err != nil || bytes.Equal(data, k.saved) {
		return
	}
	if err := atomicfile.WriteFile(filepath.Join(k.opts.KeyDir, LastStatusFile), data, 0o600); err != nil {
		k.log.Warn("could not save the key status", "err", err)
		return
	}
	k.saved = data
}

// resume applies the key status the host last gave (LastStatusFile), with
// the key latched after it, from its file, and never a call to the host:
// the rules, modes, redirect policy and key of the agent's last run, so
// that a restart while the host does not answer neither forwards unsigned
// nor drops the rules. Provisioning is not told anything until the host
// answers.
func (k *KeyKeeper) resume(ctx context.Context) {
	data, err := os.ReadFile(filepath.Join(k.opts.KeyDir, LastStatusFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			k.log.Warn("could not read the last key status", "err", err)
		}
		return
	}
	var last lastStatus
	if err := json.Unmarshal(data, &last); err != nil {
		k.log.Warn("last key status unusable", "err", err)
		return
	}
	ks, err := k.parseStatus(last.KeyStatus)
	if err != nil {
		k.log.Warn("last key status unusable", "err", err)
		return
	}
	if last.KeyGUID != "" {
		ks.KeyGUID = &last.KeyGUID
	}
	off := &offline{}
	if ks.Derive().State != msp.StateDisabled {
		// Without its key the last status would only bring back rules and
		// modes; the state stays unknown instead.
		if ks.KeyGUID == nil || *ks.KeyGUID == "" {
			k.log.Warn("last key status names no latched key; not applied")
			return
		}
		sk, err := loadKey(k.opts.KeyDir, *ks.KeyGUID)
		if err == nil {
			_, err = msp.NewKey(sk.GUID, sk.Key)
		}
		if err != nil {
			k.log.Warn("key of the last key status not usable; not applied", "key_guid", *ks.KeyGUID, "err", err)
			return
		}
		off.key = sk
	}
	k.saved = data
	k.resumed = true
	k.log.Info("host did not answer; applying the key status it last gave until it does")
	k.apply(ctx, ks, off)
}

// offline is a key status applied without the host (resume): the key
// latched after it, already read and checked (nil when disabled).
type offline struct{ key *msp.IssuedKey }

// apply makes ks the state in force (§1.6 after the fetch). With off (a
// resumed status) it installs off's key, never asks the host, and tells
// provisioning nothing.
func (k *KeyKeeper) apply(ctx context.Context, ks *msp.KeyStatus, off *offline) {
	offline := off != nil
	// The first answer after a resumed status tells provisioning what the
	// resumed one could not (the key or the disabled state is in place).
	finishResume := k.resumed && !offline
	if !offline {
		k.resumed = false
	}
	modes := ks.Derive()
	guid := "<null>"
	if ks.KeyGUID != nil {
		guid = *ks.KeyGUID
	}
	summary := fmt.Sprintf("version=%s state=%s keyGuid=%s ws=%s imds=%s", ks.Version, modes.State, guid,
		modes.WireServerRaw, modes.IMDSRaw)
	newSummary := summary != k.summary && !offline
	if !offline {
		k.summary = summary
	}
	if newSummary {
		k.log.Info("Got key status successfully", "version", ks.Version, "state", modes.State, "key_guid", guid,
			"wireserver_mode", modes.WireServerRaw, "imds_mode", modes.IMDSRaw)
	}

	// Rules (§3.6): the applier decides what changed; raw ids are reported.
	ws, im := "", ""
	if r := ks.AuthorizationRules; r != nil {
		if r.WireServer != nil {
			ws = r.WireServer.ID
		}
		if r.IMDS != nil {
			im = r.IMDS.ID
		}
	}
	k.publish(func(s *State) { s.WireServerRuleID, s.IMDSRuleID = ws, im })
	if k.opts.Rules != nil {
		if changed, err := k.opts.Rules.Apply(ks.AuthorizationRules); err != nil {
			k.log.Error("failed to apply authorization rules", "err", err)
		} else if changed {
			k.log.Info("authorization rules updated", "wireserver_rule_id", ws, "imds_rule_id", im)
		}
	}

	stateChanged := modes.State != k.Modes().State
	k.publish(func(s *State) { s.Modes = modes })

	latchedNow := false
	if modes.State != msp.StateDisabled {
		cur := k.Key()
		switch {
		case ks.KeyGUID == nil || cur == nil || *ks.KeyGUID != cur.GUID:
			if offline {
				if off.key == nil || !k.install(off.key) {
					return
				}
				k.log.Info("resumed the last latched key from its file", "key_guid", off.key.GUID)
				break
			}
			if !k.acquireOrLoad(ctx, ks.KeyGUID) {
				return
			}
			latchedNow = true
		case finishResume:
			latchedNow = true
		}
	}

	// Redirects follow the modes: on a state change, and on any later poll
	// while the installed policy differs from the wanted one (a failed
	// update is retried; unlike upstream quirk 17 a change is never lost
	// because the key acquisition of its poll failed).
	want := policyOf(modes)
	stale := k.applied == nil || *k.applied != want
	if stateChanged || stale {
		if !stateChanged {
			k.log.Info("redirect policy was not update successfully before, retrying now")
		}
		if err := k.applyRedirect(modes); err != nil {
			k.log.Warn("failed to update redirect policy", "err", err)
		}
	}
	if offline {
		return
	}
	if latchedNow {
		k.provision().KeyLatched()
	}
	if finishResume && !stateChanged && modes.State == msp.StateDisabled {
		k.provision().KeyLatched()
	}
	if stateChanged && modes.State == msp.StateDisabled {
		k.startupEvent(fmt.Sprintf("Customer has not enforce the secure channel state. - %d", k.uptimeMS()))
		if k.Key() != nil {
			k.publish(func(s *State) { s.Key, s.KeyIncarnation = nil, nil })
			k.log.Info("secure channel disabled; key cleared from memory (files kept)")
		}
		k.provision().KeyLatched()
	}
}

// acquireOrLoad is §1.7: reload the host's key from disk, or acquire,
// save, verify and attest a new one. It reports whether a key is now in
// memory; the caller tells provisioning once the redirect policy is in
// place too.
func (k *KeyKeeper) acquireOrLoad(ctx context.Context, hostGUID *string) bool {
	if hostGUID != nil && *hostGUID != "" {
		if sk, err := loadKey(k.opts.KeyDir, *hostGUID); err == nil {
			if k.install(sk) {
				k.startupEvent(fmt.Sprintf("Found key details from local and ready to use. - %d", k.uptimeMS()))
				k.log.Info("found key details locally", "key_guid", sk.GUID)
				return true
			}
		} else {
			k.log.Warn("latched key not usable locally; acquiring from host", "key_guid", *hostGUID, "err", err)
		}
	}

	sk, err := k.client.acquire(ctx)
	if err == nil {
		if _, kerr := msp.NewKey(sk.GUID, sk.Key); kerr != nil {
			err = errors.New("key is not valid hex")
		}
	}
	if err != nil {
		k.setMessage("Failed to acquire key details: " + err.Error())
		k.log.Warn("failed to acquire key", "err", err)
		return false
	}
	if err := saveKey(k.opts.KeyDir, sk); err != nil {
		k.setMessage("Failed to save key details to file: " + err.Error())
		k.log.Warn("failed to save key", "key_guid", sk.GUID, "err", err)
		return false
	}
	if err := k.checkSaved(sk); err != nil {
		k.setMessage(fmt.Sprintf("Failed to check the key '%s' details saved locally: %v.", sk.GUID, err))
		k.log.Warn("saved key check failed", "key_guid", sk.GUID, "err", err)
		return false
	}
	signer, _ := msp.NewKey(sk.GUID, sk.Key)
	if err := k.client.attest(ctx, signer); err != nil {
		k.setMessage("Failed to attest the key: " + err.Error())
		k.log.Warn("failed to attest key", "key_guid", sk.GUID, "err", err)
		return false
	}
	k.install(sk)
	k.startupEvent(fmt.Sprintf("Successfully attest the key and ready to use. - %d", k.uptimeMS()))
	k.log.Info("key attested and latched", "key_guid", sk.GUID)
	return true
}

func (k *KeyKeeper) checkSaved(sk *msp.IssuedKey) error {
	local, err := loadKey(k.opts.KeyDir, sk.GUID)
	if err != nil {
		return err
	}
	if local.GUID != sk.GUID || local.Key != sk.Key {
		return errors.New("saved key differs from the acquired key")
	}
	return nil
}

// install publishes sk as the in-memory key; false if its hex is invalid.
func (k *KeyKeeper) install(sk *msp.IssuedKey) bool {
	signer, err := msp.NewKey(sk.GUID, sk.Key)
	if err != nil {
		k.log.Warn("key has invalid hex", "key_guid", sk.GUID)
		return false
	}
	k.publish(func(s *State) { s.Key, s.KeyIncarnation = signer, sk.IncarnationID })
	return true
}
