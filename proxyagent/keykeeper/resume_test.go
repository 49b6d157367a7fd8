package keykeeper

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// hostDown makes the fake WireServer answer every status call with 503.
func hostDown(f *fakeWS) {
	f.statusFn = func() (int, map[string]string, string) { return 503, nil, "" }
}

// A keeper restarted while the host does not answer applies the key status
// the host last gave, with its latched key from the key file, before its
// first poll ends (the listener opens then), so nothing goes out unsigned
// or without the rules; provisioning hears of the key only once the host
// answers, and no new key is acquired.
func TestRestartWhileHostDownResumesLastStatus(t *testing.T) {
	ws := newFakeWS(t, "wireserverandimds")
	dir := filepath.Join(t.TempDir(), "keys")
	h := startKeeper(t, ws.addr(), dir, nil)
	testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil })
	guid := h.kk.Key().GUID
	h.stop()
	if fi, err := os.Stat(filepath.Join(dir, LastStatusFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("last key status file: %v", err)
	}

	ws.set(hostDown)
	var keysBefore int
	ws.get(func(f *fakeWS) { keysBefore = f.keyN })
	h2 := startKeeper(t, ws.addr(), dir, nil)
	<-h2.kk.FirstPoll()
	if k := h2.kk.Key(); k == nil || k.GUID != guid {
		t.Fatalf("after the first (failed) poll: key %v, want %s", k, guid)
	}
	if m := h2.kk.Modes(); m.WireServer != msp.ModeEnforce || m.IMDS != msp.ModeEnforce {
		t.Errorf("modes %+v, want the last status's", m)
	}
	if _, n := h2.rules.lastCall(); n != 1 {
		t.Errorf("rules applied %d times, want once", n)
	}
	if p, n := h2.redir.last(); n != 1 || p != [3]bool{true, true, true} {
		t.Errorf("redirect policy %v after %d calls", p, n)
	}
	// `azure-proxy-agent --status` notifies the keeper: it asks the host at
	// once, and tells provisioning nothing while the host is down.
	var polls int
	ws.get(func(f *fakeWS) { polls = f.statusN })
	h2.kk.Notify()
	testsupport.WaitFor(t, "two more polls", func() bool {
		n := 0
		ws.get(func(f *fakeWS) { n = f.statusN })
		return n >= polls+2
	})
	if l, _, _ := h2.prov.counts(); l != 0 {
		t.Errorf("provisioning told of a key %d times while the host was down", l)
	}

	ws.set(func(f *fakeWS) { f.statusFn = nil; f.keyGUID = &guid })
	testsupport.WaitFor(t, "provisioning told once the host answers", func() bool {
		l, _, _ := h2.prov.counts()
		return l == 1
	})
	ws.get(func(f *fakeWS) {
		if f.keyN != keysBefore {
			t.Errorf("%d keys acquired after the restart", f.keyN-keysBefore)
		}
	})
	if k := h2.kk.Key(); k == nil || k.GUID != guid {
		t.Errorf("key %v after the host answered", k)
	}
}

// Without a last key status (a first start), or with one whose key file
// is gone, a keeper whose host does not answer has no key after its first
// poll and its state stays unknown, as before.
func TestRestartWhileHostDownWithoutLastStatus(t *testing.T) {
	for _, name := range []string{"no last status", "key file gone", "key file without valid hex"} {
		t.Run(name, func(t *testing.T) {
			ws := newFakeWS(t, "wireserverandimds")
			dir := filepath.Join(t.TempDir(), "keys")
			h := startKeeper(t, ws.addr(), dir, nil)
			testsupport.WaitFor(t, "latched", func() bool { return h.kk.Key() != nil })
			h.stop()
			switch name {
			case "no last status":
				os.Remove(filepath.Join(dir, LastStatusFile))
			case "key file gone":
				for _, f := range keyFiles(t, dir) {
					os.Remove(f)
				}
			default:
				for _, f := range keyFiles(t, dir) {
					b, _ := os.ReadFile(f)
					var k map[string]any
					json.Unmarshal(b, &k)
					k["key"] = "not hex"
					b, _ = json.Marshal(k)
					os.WriteFile(f, b, 0o600)
				}
			}
			ws.set(hostDown)
			h2 := startKeeper(t, ws.addr(), dir, nil)
			<-h2.kk.FirstPoll()
			if k := h2.kk.Key(); k != nil {
				t.Errorf("key %s without a usable last status", k.GUID)
			}
			if st := h2.kk.State(); st != msp.StateUnknown {
				t.Errorf("state %q without a usable last status, want unknown", st)
			}
			if _, n := h2.rules.lastCall(); n != 0 {
				t.Errorf("rules applied %d times without a usable last status", n)
			}
		})
	}
}

// While a resumed status is in force, notifies (any local user can send
// them through /provision) poll the host at once but at most once per fast
// poll interval, in a synctest bubble.
func TestNotifyWhileResumedPollsAtFastRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ws := newBubbleWS(t, "wireserverandimds")
		dir := filepath.Join(t.TempDir(), "keys")
		slow := func(o *Options) {
			o.PollInterval = time.Hour
			o.FastPollInterval = 100 * time.Millisecond
			o.FastPollWindow = time.Hour
		}
		h := startKeeper(t, ws.addr(), dir, withPipe(ws, slow))
		<-h.kk.FirstPoll()
		synctest.Wait()
		if h.kk.Key() == nil {
			t.Fatal("no key latched")
		}
		h.stop()
		ws.set(hostDown)
		h2 := startKeeper(t, ws.addr(), dir, withPipe(ws, slow))
		<-h2.kk.FirstPoll()
		synctest.Wait()
		if h2.kk.Key() == nil {
			t.Fatal("not resumed")
		}
		var before int
		ws.get(func(f *fakeWS) { before = f.statusN })
		for range 100 { // one notify every 10 ms for a second
			h2.kk.Notify()
			time.Sleep(10 * time.Millisecond)
		}
		synctest.Wait()
		var after int
		ws.get(func(f *fakeWS) { after = f.statusN })
		if n := after - before; n > 11 {
			t.Errorf("%d polls in a second of notifies, want at most one per 100 ms", n)
		}
	})
}
