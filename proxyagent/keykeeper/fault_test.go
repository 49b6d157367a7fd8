package keykeeper

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

func v1Body(state string) string {
	return `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","keyGuid":null,"secureChannelState":"` +
		state + `","version":"1.0"}`
}

// Conformance item 13 through the keeper: v1 states and modes; rule ids "".
func TestV1States(t *testing.T) {
	cases := []struct {
		state     string
		wantState string
		ws, imds  msp.Mode
		redirect  [3]bool
	}{
		{"Wireserver", "wireserver", msp.ModeEnforce, msp.ModeAudit, [3]bool{true, true, true}},
		{"WireserverAndImds", "wireserverandimds", msp.ModeEnforce, msp.ModeEnforce, [3]bool{true, true, true}},
		{"Disabled", "disabled", msp.ModeDisabled, msp.ModeDisabled, [3]bool{false, false, false}},
	}
	for _, tc := range cases {
		t.Run(tc.state, func(t *testing.T) {
			ws := newFakeWS(t, tc.state)
			h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
			testsupport.WaitFor(t, "state", func() bool { return h.kk.State() == tc.wantState })
			if tc.wantState != "disabled" {
				testsupport.WaitFor(t, "key", func() bool { return h.kk.Key() != nil })
			}
			m := h.kk.Modes()
			if m.WireServer != tc.ws || m.IMDS != tc.imds || m.HostGA != tc.ws {
				t.Errorf("modes %+v", m)
			}
			st := h.kk.Status().States
			if st["wireServerRuleId"] != "" || st["imdsRuleId"] != "" || st["hostGARuleId"] != "" {
				t.Errorf("v1 rule ids %v, want empty", st)
			}
			testsupport.WaitFor(t, "redirect", func() bool { p, n := h.redir.last(); return n > 0 && p == tc.redirect })
		})
	}
}

// A host that keeps reporting keyGuid null makes the keeper acquire and
// attest a fresh key on every poll.
func TestNullKeyGUIDReacquiresEveryPoll(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	ws.set(func(f *fakeWS) { f.nullGUID = true })
	dir := filepath.Join(t.TempDir(), "keys")
	h := startKeeper(t, ws.addr(), dir, nil)
	testsupport.WaitFor(t, "three attestations", func() bool {
		n := 0
		ws.get(func(f *fakeWS) { n = len(f.attested) })
		return n >= 3
	})
	var verified []bool
	ws.get(func(f *fakeWS) { verified = append(verified, f.verified...) })
	for i, ok := range verified {
		if !ok {
			t.Errorf("attestation %d did not verify", i)
		}
	}
	if n := len(keyFiles(t, dir)); n < 3 {
		t.Errorf("%d key files, want one per acquisition", n)
	}
	if h.kk.Key() == nil {
		t.Error("no key in memory")
	}
}

// A status that fails to fetch, parse or validate keeps state, key and
// rules, and reports "Failed to get key status - ...".
func TestBadStatusKeepsPreviousState(t *testing.T) {
	cases := []struct {
		name     string
		code     int
		ctype    string
		body     string
		validate bool
	}{
		{"http 500", 500, "", "", false},
		{"not json", 200, "application/json", "{", false},
		{"xml", 200, "text/xml", "<a/>", false},
		{"missing version", 200, "", `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"disabled"}`, false},
		{"v1 audit rejected", 200, "", v1Body("Audit"), true},
		{"v1 unknown state", 200, "", v1Body("bogus"), true},
		{"v1 without state", 200, "", `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"1.0","secureChannelEnabled":true}`, true},
		{"v2 without enabled", 200, "", `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0","secureChannelState":"disabled"}`, true},
		{"neither field", 200, "", `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0"}`, true},
		{"utf-32", 200, "application/json; charset=utf-32", v1Body("disabled"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ws := newFakeWS(t, "Wireserver")
			h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
			testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil && h.kk.State() == "wireserver" })
			// The poll that latched is over once the next one has asked
			// for the status (its redirect update included).
			latchedAt := 0
			ws.get(func(f *fakeWS) { latchedAt = f.statusN })
			testsupport.WaitFor(t, "the poll after the latch", func() bool {
				n := 0
				ws.get(func(f *fakeWS) { n = f.statusN })
				return n > latchedAt
			})
			guid := h.kk.Key().GUID
			_, nRedirect := h.redir.last()
			ws.set(func(f *fakeWS) {
				f.statusFn = func() (int, map[string]string, string) {
					hdr := map[string]string{}
					if tc.ctype != "" {
						hdr["Content-Type"] = tc.ctype
					}
					return tc.code, hdr, tc.body
				}
			})
			testsupport.WaitFor(t, "failure message", func() bool {
				return strings.HasPrefix(h.kk.Status().Message, "Failed to get key status - ")
			})
			msg := h.kk.Status().Message
			if tc.validate != strings.Contains(msg, "Key status validation failed with the error: ") {
				t.Errorf("message %q (validation error expected: %v)", msg, tc.validate)
			}
			if h.kk.State() != "wireserver" || h.kk.Key() == nil || h.kk.Key().GUID != guid {
				t.Errorf("state %q key %v changed after bad status", h.kk.State(), h.kk.Key())
			}
			if _, n := h.redir.last(); n != nRedirect {
				t.Errorf("redirect policy touched by a failed poll")
			}
		})
	}
}

func TestAcquisitionFailures(t *testing.T) {
	cases := []struct {
		name       string
		setup      func(f *fakeWS)
		wantPrefix string
		wantFiles  int
	}{
		{"key 503", func(f *fakeWS) { f.keyCode = 503 }, "Failed to acquire key details: ", 0},
		{"attest 403", func(f *fakeWS) { f.attestCode = 403 }, "Failed to attest the key: ", 1},
		{"unsafe guid", func(f *fakeWS) { f.issueGUID = "../../evil" }, "Failed to save key details to file: ", 0},
		{"guid with a space", func(f *fakeWS) { f.issueGUID = "key 1" }, "Failed to save key details to file: ", 0},
		{"guid with a line end", func(f *fakeWS) { f.issueGUID = "key\r\nx-evil: 1" }, "Failed to save key details to file: ", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ws := newFakeWS(t, "Wireserver")
			ws.set(tc.setup)
			root := t.TempDir()
			dir := filepath.Join(root, "a", "keys")
			h := startKeeper(t, ws.addr(), dir, func(o *Options) { o.PollInterval = time.Hour; o.FastPollWindow = time.Nanosecond })
			testsupport.WaitFor(t, "failure message", func() bool { return strings.HasPrefix(h.kk.Status().Message, tc.wantPrefix) })
			if h.kk.Key() != nil {
				t.Error("key installed after failure")
			}
			if l, _, _ := h.prov.counts(); l != 0 {
				t.Errorf("key_latched called %d times", l)
			}
			if n := len(keyFiles(t, dir)); n != tc.wantFiles {
				t.Errorf("%d key files, want %d", n, tc.wantFiles)
			}
			if _, err := os.Stat(filepath.Join(root, "evil.key")); err == nil {
				t.Error("key written outside the key directory")
			}
		})
	}
}

// The spec asks no GUID format of a key's name: a host that names its key
// "test-key_1.{a}~" gets it saved under that name, attested at its path and
// used to sign.
func TestNonGUIDKeyNameLatched(t *testing.T) {
	const name = "test-key_1.{a}~"
	ws := newFakeWS(t, "Wireserver")
	ws.set(func(f *fakeWS) { f.issueGUID = name })
	dir := filepath.Join(t.TempDir(), "keys")
	h := startKeeper(t, ws.addr(), dir, nil)
	testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil })
	if g := h.kk.Key().GUID; g != name {
		t.Fatalf("key %q latched, want %q", g, name)
	}
	if _, err := os.Stat(filepath.Join(dir, name+".key")); err != nil {
		t.Errorf("key file: %v", err)
	}
	var attested []string
	ws.get(func(f *fakeWS) { attested = append(attested, f.attested...) })
	if len(attested) != 1 || attested[0] != name {
		t.Errorf("attested %q, want one signed attestation of %q", attested, name)
	}
}

// A host GUID that is not a file name is never used as a path; the keeper
// acquires a key instead.
func TestUnsafeHostGUIDNotLoaded(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	bad := "../../../../etc/passwd"
	ws.set(func(f *fakeWS) { f.keyGUID = &bad })
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	testsupport.WaitFor(t, "acquired", func() bool { return h.kk.Key() != nil })
	if h.kk.Key().GUID == bad {
		t.Error("key loaded from a path outside the key dir")
	}
}

// A corrupt local key file for the host's GUID is replaced by a fresh
// acquisition (the "key lost" path).
func TestCorruptLocalKeyReacquired(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	guid := "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf"
	ws.set(func(f *fakeWS) { f.keyGUID = &guid })
	dir := filepath.Join(t.TempDir(), "keys")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, guid+".key"), []byte("{corrupt"), 0o600)
	h := startKeeper(t, ws.addr(), dir, func(o *Options) { o.PollInterval = time.Hour; o.FastPollWindow = time.Nanosecond })
	testsupport.WaitFor(t, "acquired", func() bool { return h.kk.Key() != nil })
	n := 0
	ws.get(func(f *fakeWS) { n = f.keyN })
	if n != 1 {
		t.Errorf("%d key requests, want 1", n)
	}
}

// The poll loop's reaction to Notify, in a synctest bubble: the poll
// interval is an hour, so any poll after the first is the notify's doing,
// and synctest.Wait returns once the keeper is idle again.
func TestNotify(t *testing.T) {
	hourly := func(o *Options) {
		o.PollInterval = time.Hour
		o.FastPollWindow = time.Nanosecond
	}
	t.Run("disabled resets and polls now", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ws := newBubbleWS(t, "Disabled")
			h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), withPipe(ws, hourly))
			<-h.kk.FirstPoll()
			synctest.Wait()
			if st := h.kk.State(); st != "disabled" {
				t.Fatalf("state %q after the first poll", st)
			}
			var before int
			ws.get(func(f *fakeWS) { before = f.statusN })
			h.kk.Notify()
			synctest.Wait()
			var after int
			ws.get(func(f *fakeWS) { after = f.statusN })
			if after != before+1 {
				t.Errorf("notify while disabled: %d polls, want 1", after-before)
			}
			if _, r, _ := h.prov.counts(); r != 1 {
				t.Errorf("KeyLatchReset called %d times", r)
			}
			if st := h.kk.State(); st != "disabled" {
				t.Errorf("state %q after the notify's poll", st)
			}
		})
	})
	t.Run("latched refreshes without polling", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ws := newBubbleWS(t, "Wireserver")
			h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), withPipe(ws, hourly))
			<-h.kk.FirstPoll()
			synctest.Wait()
			if h.kk.Key() == nil {
				t.Fatal("no key after the first poll")
			}
			l0, _, _ := h.prov.counts()
			var before int
			ws.get(func(f *fakeWS) { before = f.statusN })
			h.kk.Notify()
			time.Sleep(time.Minute) // well within the hour
			synctest.Wait()
			if l, _, _ := h.prov.counts(); l != l0+1 {
				t.Errorf("key_latched called %d times after the notify, want 1", l-l0)
			}
			var after int
			ws.get(func(f *fakeWS) { after = f.statusN })
			if after != before {
				t.Errorf("notify in a latched state polled (%d → %d)", before, after)
			}
			if _, r, _ := h.prov.counts(); r != 0 {
				t.Errorf("KeyLatchReset called %d times", r)
			}
		})
	})
}

// The provisioning timeout fires once, however long the polls keep failing
// after it (synctest: the bubble's clock runs the polls of 50 intervals).
func TestProvisionTimeoutOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ws := newBubbleWS(t, "Wireserver")
		ws.set(func(f *fakeWS) { f.statusFn = func() (int, map[string]string, string) { return 500, nil, "" } })
		h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), withPipe(ws, func(o *Options) {
			o.ProvisionTimeout = 50 * time.Millisecond
		}))
		time.Sleep(50*20*time.Millisecond + time.Millisecond)
		synctest.Wait()
		if _, _, n := h.prov.counts(); n != 1 {
			t.Errorf("ProvisionTimeout called %d times, want 1", n)
		}
		var polls int
		ws.get(func(f *fakeWS) { polls = f.statusN })
		if polls < 40 {
			t.Errorf("%d polls in 50 poll intervals", polls)
		}
	})
}

// The event threads start after the events delay of uptime (§1.6: one
// minute) even while provisioning is stuck, once, and not before
// (synctest: the host fails every poll; the timeout is far later).
func TestEventsStartAfterDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ws := newBubbleWS(t, "Wireserver")
		ws.set(func(f *fakeWS) { f.statusFn = func() (int, map[string]string, string) { return 500, nil, "" } })
		h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), withPipe(ws, func(o *Options) {
			o.Start = time.Now()
			o.EventsDelay = time.Second
			o.ProvisionTimeout = time.Hour
		}))
		events := func() int { h.prov.mu.Lock(); defer h.prov.mu.Unlock(); return h.prov.events }
		time.Sleep(990 * time.Millisecond)
		synctest.Wait()
		if n := events(); n != 0 {
			t.Fatalf("events started %d times before the delay", n)
		}
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if n := events(); n != 1 {
			t.Fatalf("events started %d times just after the delay, want 1", n)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := events(); n != 1 {
			t.Errorf("events started %d times, want once", n)
		}
		if _, _, n := h.prov.counts(); n != 0 {
			t.Errorf("provisioning timed out %d times", n)
		}
	})
}

// Every host call has a timeout: a WireServer that never answers yields a
// failed poll, not a stuck loop.
func TestHostCallTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	h := startKeeper(t, ln.Addr().String(), filepath.Join(t.TempDir(), "keys"), func(o *Options) { o.RequestTimeout = 50 * time.Millisecond })
	testsupport.WaitFor(t, "timeout failure", func() bool {
		return strings.HasPrefix(h.kk.Status().Message, "Failed to get key status - ")
	})
	if h.kk.State() != msp.StateUnknown {
		t.Errorf("state %q", h.kk.State())
	}
}

// A failed redirect update is retried on every poll until it succeeds, and
// not after (synctest: the bubble's clock runs 20 polls).
func TestRedirectRetriedUntilSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ws := newBubbleWS(t, "Wireserver")
		redir := &fakeRedir{fail: 3}
		startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), withPipe(ws, func(o *Options) { o.Redirector = redir }))
		time.Sleep(20*20*time.Millisecond + time.Millisecond)
		synctest.Wait()
		redir.mu.Lock()
		n, fail := len(redir.calls), redir.fail
		redir.mu.Unlock()
		if n != 4 || fail != 0 {
			t.Errorf("%d redirect calls (%d failures pending), want 3 failures and 1 success then none", n, fail)
		}
	})
}

func TestDecodeBody(t *testing.T) {
	utf16le := []byte{0xFF, 0xFE, '{', 0, '}', 0}
	cases := []struct {
		ctype, want string
		body        []byte
		err         bool
	}{
		{"application/json", "{}", []byte("{}"), false},
		{"", "{}", []byte("{}"), false},
		{"application/json; charset=UTF-16", "{}", utf16le, false},
		{"application/json; charset=utf-32", "", []byte("{}"), true},
		{"text/xml", "", []byte("<a/>"), true},
	}
	for _, c := range cases {
		got, err := decodeBody(c.ctype, c.body)
		if (err != nil) != c.err || (err == nil && string(got) != c.want) {
			t.Errorf("decodeBody(%q) = %q, %v", c.ctype, got, err)
		}
	}
}

func TestCancelReportsStopped(t *testing.T) {
	ws := newFakeWS(t, "Disabled")
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	if s := h.kk.Status(); s.Status != status.Running && s.Status != status.Unknown {
		t.Errorf("initial status %+v", s)
	}
	testsupport.WaitFor(t, "running", func() bool { return h.kk.Status().Status == status.Running })
	h.stop()
	if s := h.kk.Status(); s.Status != status.Stopped || s.Message != "poll_secure_channel_status task cancelled." {
		t.Errorf("after cancel %+v", s)
	}
}

func TestStatusMessageTruncated(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	ws.set(func(f *fakeWS) {
		f.statusFn = func() (int, map[string]string, string) { return 200, nil, v1Body(strings.Repeat("x", 3000)) }
	})
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	testsupport.WaitFor(t, "failure", func() bool { return strings.HasPrefix(h.kk.Status().Message, "Failed to get key status") })
	if m := h.kk.Status().Message; len(m) != 1027 || !strings.HasSuffix(m, "...") {
		t.Errorf("message length %d", len(m))
	}
}

// Conformance item 21: x-ms-azure-host-date is preferred over Date; an
// invalid custom header means no sync even if Date is valid.
func TestSyncFromHeaders(t *testing.T) {
	custom := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	std := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name   string
		header http.Header
		synced bool
		want   time.Time
	}{
		{"custom preferred", http.Header{"X-Ms-Azure-Host-Date": {msp.FormatDate(custom)}, "Date": {msp.FormatDate(std)}}, true, custom},
		{"date fallback", http.Header{"Date": {msp.FormatDate(std)}}, true, std},
		{"invalid custom, valid date", http.Header{"X-Ms-Azure-Host-Date": {"yesterday"}, "Date": {msp.FormatDate(std)}}, false, time.Time{}},
		{"empty custom", http.Header{"X-Ms-Azure-Host-Date": {""}, "Date": {msp.FormatDate(std)}}, false, time.Time{}},
		{"invalid date", http.Header{"Date": {"2024-01-02T03:04:05Z"}}, false, time.Time{}},
		{"none", http.Header{}, false, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			local := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			c := NewHostClock()
			c.localNow = func() time.Time { return local }
			if got := c.SyncFromHeaders(tc.header, DefaultClockResync); got != tc.synced {
				t.Fatalf("synced = %v, want %v", got, tc.synced)
			}
			want := local
			if tc.synced {
				want = tc.want
			}
			if !c.Now().Equal(want) {
				t.Errorf("Now = %v, want %v", c.Now(), want)
			}
			local = local.Add(90 * time.Second)
			if !c.Now().Equal(want.Add(90 * time.Second)) {
				t.Errorf("clock does not advance with local time: %v", c.Now())
			}
		})
	}
}

func TestSyncOnlyAfterResyncInterval(t *testing.T) {
	local := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewHostClock()
	c.localNow = func() time.Time { return local }
	t1 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if !c.SyncFromHeaders(http.Header{"Date": {msp.FormatDate(t1)}}, 15*time.Minute) {
		t.Fatal("first sync refused")
	}
	local = local.Add(time.Minute)
	if c.SyncFromHeaders(http.Header{"Date": {msp.FormatDate(t1.Add(time.Hour))}}, 15*time.Minute) {
		t.Error("re-synced within 15 minutes")
	}
	local = local.Add(15 * time.Minute)
	t2 := t1.Add(2 * time.Hour)
	if !c.SyncFromHeaders(http.Header{"Date": {msp.FormatDate(t2)}}, 15*time.Minute) || !c.Now().Equal(t2) {
		t.Errorf("no re-sync after 16 minutes: %v", c.Now())
	}
}

// The keeper syncs from the status response and stamps its own requests
// with the host time.
func TestKeeperUsesHostTime(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	hostTime := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	ws.set(func(f *fakeWS) {
		f.statusFn = func() (int, map[string]string, string) {
			return 200, map[string]string{"X-Ms-Azure-Host-Date": msp.FormatDate(hostTime), "Date": msp.FormatDate(time.Now())}, v1Body("Wireserver")
		}
	})
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil })
	if d := h.kk.Now().Sub(hostTime); d < 0 || d > time.Minute {
		t.Errorf("keeper clock %v, host %v", h.kk.Now(), hostTime)
	}
	var hdr http.Header
	ws.get(func(f *fakeWS) { hdr = f.attestHdrs[0] })
	sent, err := msp.ParseDate(hdr.Get(msp.HeaderDate))
	if err != nil {
		t.Fatal(err)
	}
	if d := sent.Sub(hostTime); d < 0 || d > time.Minute {
		t.Errorf("attestation dated %v, host time %v", sent, hostTime)
	}
}

func TestNewValidates(t *testing.T) {
	for _, o := range []Options{{}, {WireServer: "127.0.0.1"}, {WireServer: "127.0.0.1:1"}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// Deviation from upstream quirk 17: when the key acquisition of the poll
// that saw a state change fails, the redirect policy for the new state is
// still installed once a later poll latches the key.
func TestRedirectAppliedAfterFailedAcquisition(t *testing.T) {
	ws := newFakeWS(t, "Wireserver")
	ws.set(func(f *fakeWS) { f.keyCode = 503 })
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	testsupport.WaitFor(t, "acquisition failure", func() bool {
		return strings.HasPrefix(h.kk.Status().Message, "Failed to acquire key details: ")
	})
	if _, n := h.redir.last(); n != 0 {
		t.Fatalf("redirect installed without a key")
	}
	ws.set(func(f *fakeWS) { f.keyCode = 0 })
	testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil })
	testsupport.WaitFor(t, "redirect installed", func() bool { p, _ := h.redir.last(); return p == [3]bool{true, true, true} })
}

// A v2 service is redirected iff its item's mode is not "disabled"
// (§1.5, §4.3): also when the host turned the channel off but still sends
// the item (state "disabled", no key, rules still checked), and for an
// empty or unknown mode string (quirk 20).
func TestV2RedirectFollowsItemModes(t *testing.T) {
	v2 := func(enabled bool, wsMode, imdsMode string) string {
		return fmt.Sprintf(`{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","keyGuid":null,"version":"2.0",`+
			`"secureChannelEnabled":%t,"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":%q,"id":"ws-%s"},`+
			`"imds":{"defaultAccess":"allow","mode":%q,"id":"im-%s"}}}`, enabled, wsMode, wsMode, imdsMode, imdsMode)
	}
	ws := newFakeWS(t, "")
	serve := func(body string) {
		ws.set(func(f *fakeWS) {
			f.statusFn = func() (int, map[string]string, string) { return 200, nil, body }
		})
	}
	serve(v2(false, "enforce", "audit"))
	h := startKeeper(t, ws.addr(), filepath.Join(t.TempDir(), "keys"), nil)
	testsupport.WaitFor(t, "redirect with the channel off", func() bool { p, _ := h.redir.last(); return p == [3]bool{true, true, true} })
	if st := h.kk.State(); st != msp.StateDisabled || h.kk.Key() != nil {
		t.Fatalf("state %q, key %v; want disabled without a key", st, h.kk.Key())
	}
	serve(v2(false, "disabled", "disabled"))
	testsupport.WaitFor(t, "redirect removed", func() bool { p, _ := h.redir.last(); return p == [3]bool{} })
	serve(v2(true, "", "foo"))
	testsupport.WaitFor(t, "redirect for empty and unknown modes", func() bool { p, _ := h.redir.last(); return p == [3]bool{true, true, true} })
}
