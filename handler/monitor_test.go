package handler

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/extension"
)

// fakeService is an in-memory Service whose ExecPath is the layout's
// installed binary when present.
type fakeService struct {
	l             Layout
	active        bool
	starts, stops int
	enabled       bool
}

func (f *fakeService) Kind() string   { return "fake" }
func (f *fakeService) Reload() error  { return nil }
func (f *fakeService) Enable() error  { f.enabled = true; return nil }
func (f *fakeService) Disable() error { f.enabled = false; return nil }
func (f *fakeService) Start() error   { f.starts++; f.active = true; return nil }
func (f *fakeService) Stop() error    { f.stops++; f.active = false; return nil }
func (f *fakeService) Active() bool   { return f.active }
func (f *fakeService) Enabled() bool  { return f.enabled }
func (f *fakeService) ExecPath() (string, error) {
	if _, err := os.Stat(f.l.AgentBinary()); err != nil {
		return "", err
	}
	return f.l.AgentBinary(), nil
}

type fakeFetcher struct {
	data []byte
	err  error
}

func (f *fakeFetcher) Fetch(context.Context) ([]byte, error) { return f.data, f.err }

func versionScript(v string) []byte { return []byte("#!/bin/sh\necho " + v + "\n") }

type monitorRig struct {
	t       *testing.T
	m       *Monitor
	env     *Env
	svc     *fakeService
	fetch   *fakeFetcher
	setups  []string
	setupRC int
}

func newMonitorRig(t *testing.T, bundled, installed string) *monitorRig {
	root := t.TempDir()
	ext := filepath.Join(root, "var/lib/waagent", HandlerName+"-"+bundled)
	l := Layout{Root: root}
	os.MkdirAll(filepath.Join(ext, "ProxyAgent/ProxyAgent"), 0o755)
	os.WriteFile(filepath.Join(ext, bundledAgent(ext)), versionScript(bundled), 0o755)
	if installed != "" {
		os.MkdirAll(filepath.Dir(l.AgentBinary()), 0o755)
		os.WriteFile(l.AgentBinary(), versionScript(installed), 0o755)
	}
	opts := DefaultOptions()
	opts.ErrorThreshold = 3
	opts.HeartbeatInterval = time.Hour
	env := &Env{ExtDir: ext, Exe: "/nonexistent", Version: bundled, Layout: l, Opts: opts, Log: discardLog(),
		Handler: extension.HandlerEnvironment{StatusFolder: filepath.Join(ext, "status"), HeartbeatFile: filepath.Join(ext, "heartbeat.log"), LogFolder: root}}
	svc := &fakeService{l: l, active: installed != ""}
	env.Service = svc
	r := &monitorRig{t: t, env: env, svc: svc, fetch: &fakeFetcher{err: errors.New("agent down")}}
	m := NewMonitor(env)
	m.Fetcher = r.fetch
	m.RunSetup = func(ctx context.Context, verb string) (int, string, error) {
		r.setups = append(r.setups, verb)
		if r.setupRC != 0 {
			return r.setupRC, "boom: agent exited", nil
		}
		os.MkdirAll(filepath.Dir(l.AgentBinary()), 0o755)
		os.WriteFile(l.AgentBinary(), versionScript(bundled), 0o755)
		svc.active = true
		return 0, "", nil
	}
	r.m = m
	extension.SequenceFile(env.SeqFile()).Update(0)
	return r
}

func (r *monitorRig) healthy(version string) {
	r.fetch.err = nil
	r.fetch.data = aggregateDoc(time.Now().UTC().Format(extension.TimestampLayout), version, "SUCCESS", 1, 0, 5)
}

func (r *monitorRig) status() extension.Status {
	it, err := extension.ReadStatus(extension.StatusPath(r.env.Handler.StatusFolder, 0))
	if err != nil {
		r.t.Fatal(err)
	}
	return it.Status
}

func TestMonitorUpgradeSuccessPurges(t *testing.T) {
	r := newMonitorRig(t, "1.0.1", "1.0.0")
	r.healthy("1.0.0")
	ctx := context.Background()
	r.m.Tick(ctx)
	if strings.Join(r.setups, ",") != "install" {
		t.Fatalf("setups = %v", r.setups)
	}
	if !r.m.Setup.HasBackup() {
		t.Fatal("no backup before upgrade")
	}
	b, _ := os.ReadFile(filepath.Join(r.env.ExtDir, BackupPackageDir, AgentBinaryName))
	if !strings.Contains(string(b), "1.0.0") {
		t.Error("backup is not the previous agent")
	}
	st := r.status()
	if st.Status != "transitioning" || st.Code != 0 || len(st.Substatus) != 0 || !strings.Contains(st.FormattedMessage.Message, "Successfully Executed Setup Tool Install Command") {
		t.Errorf("setup status = %+v", st)
	}
	r.healthy("1.0.1")
	r.m.Tick(ctx)
	st = r.status()
	if st.Status != "success" || len(st.Substatus) != 3 {
		t.Errorf("after healthy tick: %s with %d substatuses", st.Status, len(st.Substatus))
	}
	if r.m.Setup.HasBackup() {
		t.Error("backup not purged after first success")
	}
	if len(r.setups) != 1 {
		t.Errorf("setup ran again: %v", r.setups)
	}
}

// TestMonitorSetupFailureRestores: a failed setup install is one failure
// of the state machine (transitioning at first, error only once the status
// already is), reported with the setup tool's exit code and stderr and an
// empty substatus; the previous agent is restored at once.
func TestMonitorSetupFailureRestores(t *testing.T) {
	tests := []struct {
		name      string
		spawnErr  error // RunSetup cannot run the tool
		erroring  bool  // the status is already error before the install
		wantState string
		wantCode  int
		wantMsg   string
		wantLevel string
	}{
		{"exit 3: transitioning with code 3", nil, false, "transitioning", 3, setupInstallFailed + "boom: agent exited", extension.EventWarning},
		{"not run: transitioning with code 1", errors.New("exec format error"), false, "transitioning", 1, setupInstallSpawn + "exec format error", extension.EventWarning},
		{"exit 3 while error: error with code 3", nil, true, "error", 3, setupInstallFailed + "boom: agent exited", extension.EventError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newMonitorRig(t, "1.0.1", "1.0.0")
			events := filepath.Join(t.TempDir(), "events")
			os.MkdirAll(events, 0o700)
			r.m.Events = &extension.EventWriter{Folder: events, Version: "1.0.1", MaxFiles: 1000}
			r.setupRC = 3
			if tc.spawnErr != nil {
				r.m.RunSetup = func(context.Context, string) (int, string, error) { return -1, "", tc.spawnErr }
			}
			if tc.erroring {
				r.m.init()
				t0 := time.Now().Add(-time.Hour)
				for i := range r.env.Opts.ErrorThreshold {
					r.m.state.Failure(t0.Add(time.Duration(i)*r.env.Opts.MonitorInterval), "agent down")
				}
			}
			r.m.Tick(context.Background())
			st := r.status()
			if st.Status != tc.wantState || st.Code != tc.wantCode || len(st.Substatus) != 0 ||
				st.FormattedMessage.Message != tc.wantMsg+" (previous agent restored)" {
				t.Errorf("status = %s/%d %q with %d substatuses, want %s/%d %q", st.Status, st.Code, st.FormattedMessage.Message,
					len(st.Substatus), tc.wantState, tc.wantCode, tc.wantMsg)
			}
			if r.m.Setup.HasBackup() {
				t.Error("backup still present after restore")
			}
			b, _ := os.ReadFile(r.env.Layout.AgentBinary())
			if !strings.Contains(string(b), "1.0.0") {
				t.Errorf("previous agent not restored: %s", b)
			}
			if r.svc.starts == 0 {
				t.Error("restored service not started")
			}
			level := ""
			ents, _ := os.ReadDir(events)
			for _, e := range ents {
				data, _ := os.ReadFile(filepath.Join(events, e.Name()))
				var evs []extension.Event
				if json.Unmarshal(data, &evs) == nil && len(evs) == 1 && evs[0].TaskName == "setup" && evs[0].Message == tc.wantMsg {
					level = evs[0].EventLevel
				}
			}
			if level != tc.wantLevel {
				t.Errorf("setup install event at %q, want %q", level, tc.wantLevel)
			}
		})
	}
}

func TestMonitorRestoreOncePerCycle(t *testing.T) {
	tests := []struct {
		name        string
		ticks       int
		healthyAt   int // tick index from which the agent is healthy; -1 never
		wantRestore bool
		wantPurge   bool
	}{
		{"error restores", 5, -1, true, false},
		{"transitioning neither", 2, -1, false, false},
		{"success purges", 3, 1, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { // ticks at the normal interval, on the bubble's clock
				r := newMonitorRig(t, "1.0.1", "1.0.0")
				ctx := context.Background()
				r.m.Tick(ctx) // upgrade: backup + install
				startsAfterInstall := r.svc.starts
				for i := 0; i < tc.ticks; i++ {
					if tc.healthyAt >= 0 && i >= tc.healthyAt {
						r.healthy("1.0.1")
					} else {
						r.fetch.err, r.fetch.data = errors.New("agent down"), nil
					}
					time.Sleep(r.env.Opts.MonitorInterval)
					r.m.Tick(ctx)
				}
				restored := r.svc.starts > startsAfterInstall
				if restored != tc.wantRestore {
					t.Errorf("restored = %v (starts %d)", restored, r.svc.starts)
				}
				if tc.wantRestore && r.svc.starts != startsAfterInstall+1 {
					t.Errorf("restore ran %d times", r.svc.starts-startsAfterInstall)
				}
				purged := !r.m.Setup.HasBackup() && !restored
				if purged != tc.wantPurge {
					t.Errorf("purged = %v", purged)
				}
				if tc.name == "error restores" {
					if st := r.status(); st.Status != "error" || st.Code != 4 || len(st.Substatus) != 3 || st.Substatus[1].Code != 4 {
						t.Errorf("status = %s/%d", st.Status, st.Code)
					}
				}
			})
		})
	}
}

// A monitor that starts while an earlier one's update cycle is unfinished
// (the backup is still there: a reboot or a kill between the install and
// the first verdict) finishes it: the first success purges the backup, the
// first error restores it. With no backup it does neither.
func TestMonitorFinishesInterruptedCycle(t *testing.T) {
	for _, tc := range []struct {
		name                         string
		backup, healthy              bool
		wantRestore, wantBackupAfter bool
	}{
		{"success purges", true, true, false, false},
		{"error restores", true, false, true, false},
		{"no backup: nothing", false, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newMonitorRig(t, "1.0.1", "1.0.1") // installed by the earlier monitor
				if tc.backup {
					dir := filepath.Join(r.env.ExtDir, BackupPackageDir)
					os.MkdirAll(dir, 0o755)
					os.WriteFile(filepath.Join(dir, AgentBinaryName), versionScript("1.0.0"), 0o755)
				}
				m := NewMonitor(r.env) // the new monitor process
				m.Fetcher, m.RunSetup = r.fetch, r.m.RunSetup
				ctx := context.Background()
				starts := r.svc.starts
				for i := 0; i < 5; i++ {
					if tc.healthy {
						r.healthy("1.0.1")
					} else {
						r.fetch.err, r.fetch.data = errors.New("agent down"), nil
					}
					m.Tick(ctx)
					time.Sleep(r.env.Opts.MonitorInterval)
				}
				if restored := r.svc.starts > starts; restored != tc.wantRestore {
					t.Errorf("restored = %v", restored)
				}
				if got := m.Setup.HasBackup(); got != tc.wantBackupAfter {
					t.Errorf("backup left = %v, want %v", got, tc.wantBackupAfter)
				}
				if tc.healthy && len(r.setups) != 0 {
					t.Errorf("setups = %v with the agent running", r.setups)
				}
			})
		})
	}
}

func TestMonitorNoUpdateAndResume(t *testing.T) {
	tests := []struct {
		name       string
		running    string
		wantSetups int
	}{
		{"same version running", "1.0.0", 0},
		{"interrupted update: running reports another version", "0.9.0", 1},
		{"interrupted update: agent silent", "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newMonitorRig(t, "1.0.0", "1.0.0")
			if tc.running != "" {
				r.healthy(tc.running)
			}
			r.m.Tick(context.Background())
			if len(r.setups) != tc.wantSetups {
				t.Errorf("setups = %v", r.setups)
			}
			if r.m.Setup.HasBackup() {
				t.Error("backup taken without a version mismatch")
			}
			r.m.Tick(context.Background())
			if len(r.setups) != tc.wantSetups {
				t.Errorf("setup repeated without a new seq: %v", r.setups)
			}
		})
	}
}

func TestMonitorNewSeqAndHeartbeat(t *testing.T) {
	r := newMonitorRig(t, "1.0.0", "1.0.0")
	r.healthy("1.0.0")
	r.m.Tick(context.Background())
	if _, err := os.Stat(extension.StatusPath(r.env.Handler.StatusFolder, 0)); err != nil {
		t.Fatal(err)
	}
	extension.SequenceFile(r.env.SeqFile()).Update(4)
	r.m.Tick(context.Background())
	it, err := extension.ReadStatus(extension.StatusPath(r.env.Handler.StatusFolder, 4))
	if err != nil || it.Status.Status != "success" {
		t.Fatalf("status for new seq: %+v %v", it, err)
	}
	hb, err := extension.ReadHeartbeat(r.env.Handler.HeartbeatFile)
	if err != nil || hb.Status != "Ready" || hb.Code != 0 || !strings.Contains(hb.FormattedMessage.Message, "success") {
		t.Errorf("heartbeat %+v %v", hb, err)
	}
}

func TestMonitorBundledVersionUnreadable(t *testing.T) {
	r := newMonitorRig(t, "1.0.0", "1.0.0")
	os.Remove(filepath.Join(r.env.ExtDir, bundledAgent(r.env.ExtDir)))
	r.m.Tick(context.Background())
	st := r.status()
	if st.Status != "transitioning" || !strings.Contains(st.FormattedMessage.Message, "Failed to get GuestProxyAgent version") || len(st.Substatus) != 3 {
		t.Errorf("status = %+v", st)
	}
}

// TestMonitorRetriesFailedUpgrade: a failed upgrade is retried on a later
// tick without a new sequence number, after UpdateRetryInterval doubling
// per consecutive failure; a new seq or a healthy upgrade starts afresh.
func TestMonitorRetriesFailedUpgrade(t *testing.T) {
	t.Run("transient failure heals without a new goal state", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newMonitorRig(t, "1.0.1", "1.0.0")
			r.m.Env.Opts.UpdateRetryInterval = time.Millisecond
			r.healthy("1.0.0")
			r.setupRC = 3
			ctx := context.Background()
			r.m.Tick(ctx)
			if st := r.status(); st.Status != "transitioning" || st.Code != 3 || !strings.Contains(st.FormattedMessage.Message, "previous agent restored") {
				t.Fatalf("failed install status = %+v", st)
			}
			r.setupRC = 0
			time.Sleep(time.Millisecond) // the retry interval, on the bubble's clock
			r.m.Tick(ctx)
			if len(r.setups) != 2 {
				t.Fatalf("setups = %v, want a retry", r.setups)
			}
			if st := r.status(); st.Status != "transitioning" || !strings.Contains(st.FormattedMessage.Message, setupInstallOK) {
				t.Errorf("retry status = %+v", st)
			}
			r.healthy("1.0.1")
			time.Sleep(time.Millisecond) // the retry interval, on the bubble's clock
			r.m.Tick(ctx)
			if st := r.status(); st.Status != "success" {
				t.Errorf("after the retried upgrade: %s %q", st.Status, st.FormattedMessage.Message)
			}
			if r.m.Setup.HasBackup() {
				t.Error("backup not purged after the retried upgrade succeeded")
			}
			r.m.Tick(ctx)
			if len(r.setups) != 2 {
				t.Errorf("setup ran again after success: %v", r.setups)
			}
		})
	})

	t.Run("not before the interval", func(t *testing.T) {
		r := newMonitorRig(t, "1.0.1", "1.0.0")
		r.m.Env.Opts.UpdateRetryInterval = time.Hour
		r.setupRC = 3
		for i := 0; i < 3; i++ {
			r.m.Tick(context.Background())
		}
		if len(r.setups) != 1 {
			t.Errorf("setups = %v, want one attempt within the interval", r.setups)
		}
	})

	t.Run("new agent never healthy: restored, then retried", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newMonitorRig(t, "1.0.1", "1.0.0")
			r.m.Env.Opts.UpdateRetryInterval = time.Millisecond
			ctx := context.Background()
			r.m.Tick(ctx) // install succeeds, agent silent
			for i := 0; i < r.env.Opts.ErrorThreshold; i++ {
				time.Sleep(r.env.Opts.MonitorInterval) // the normal cadence, on the bubble's clock
				r.m.Tick(ctx)
			}
			b, _ := os.ReadFile(r.env.Layout.AgentBinary())
			if !strings.Contains(string(b), "1.0.0") {
				t.Fatalf("previous agent not restored after error: %s", b)
			}
			time.Sleep(time.Millisecond) // the retry interval, on the bubble's clock
			r.m.Tick(ctx)
			if len(r.setups) != 2 {
				t.Errorf("setups = %v, want a retry after the restore", r.setups)
			}
		})
	})

	t.Run("backoff doubles, capped, and a new seq resets it", func(t *testing.T) {
		r := newMonitorRig(t, "1.0.1", "1.0.0")
		base := time.Hour
		r.m.Env.Opts.UpdateRetryInterval = base
		r.setupRC = 3
		ctx := context.Background()
		for i := 0; i < 9; i++ {
			if i > 0 {
				r.m.retryAt = time.Now() // make the scheduled retry due
			}
			before := time.Now()
			r.m.Tick(ctx)
			shift := min(i, maxUpdateRetryShift)
			want := base << shift
			if got := r.m.retryAt.Sub(before); got < want || got > want+time.Minute {
				t.Errorf("after failure %d: next retry in %v, want %v", i+1, got, want)
			}
		}
		if len(r.setups) != 9 {
			t.Errorf("setups = %d, want 9", len(r.setups))
		}
		extension.SequenceFile(r.env.SeqFile()).Update(1)
		before := time.Now()
		r.m.Tick(ctx)
		if got := r.m.retryAt.Sub(before); got < base || got > base+time.Minute {
			t.Errorf("after a new seq: next retry in %v, want %v", got, base)
		}
	})
}

// Until the first success after start or an install, the monitor ticks
// every FastPollInterval; once healthy it ticks at the normal interval.
func TestMonitorFastPollsUntilFirstSuccess(t *testing.T) {
	r := newMonitorRig(t, "1.0.1", "1.0.0")
	ctx := context.Background()
	if w := r.m.Wait(); w != FastPollInterval {
		t.Fatalf("wait before the first tick = %v, want %v", w, FastPollInterval)
	}
	r.m.Tick(ctx) // installs 1.0.1; the agent has not reported yet
	if w := r.m.Wait(); w != FastPollInterval {
		t.Fatalf("wait after install = %v, want %v", w, FastPollInterval)
	}
	r.healthy("1.0.1")
	r.m.Tick(ctx)
	if st := r.status(); st.Status != "success" {
		t.Fatalf("status %s, want success", st.Status)
	}
	if w := r.m.Wait(); w != r.env.Opts.MonitorInterval {
		t.Fatalf("wait once healthy = %v, want %v", w, r.env.Opts.MonitorInterval)
	}
	// After the window, an unhealthy agent no longer causes fast polling.
	r.fetch.err, r.fetch.data = errors.New("agent down"), nil
	r.m.Tick(ctx)
	r.m.fastSince = time.Now().Add(-FastPollWindow)
	if w := r.m.Wait(); w != r.env.Opts.MonitorInterval {
		t.Fatalf("wait after the window = %v, want %v", w, r.env.Opts.MonitorInterval)
	}
}

// agentAt is a Fetcher for tests that run the monitor's own loop in a
// bubble: the agent does not answer before healthyAt (never when zero),
// then reports SUCCESS as version. It counts the fetches.
type agentAt struct {
	version   string
	healthyAt time.Time
	fetches   atomic.Int64
}

func (a *agentAt) Fetch(context.Context) ([]byte, error) {
	a.fetches.Add(1)
	now := time.Now()
	if a.healthyAt.IsZero() || now.Before(a.healthyAt) {
		return nil, errors.New("agent down")
	}
	return aggregateDoc(now.UTC().Format(extension.TimestampLayout), a.version, "SUCCESS", 1, 0, 5), nil
}

// TestMonitorErrorAfterFiveMinutes runs the monitor's loop (Run) on the
// bubble's clock with upstream's threshold and interval (20 × 15 s). While
// it waits for the agent's first success it polls every second, yet it
// reports error only after the agent has failed for as long as 20 failures
// take at 15 s (285 s from the first failure), as upstream does; so an
// upgraded agent that takes minutes to come up is not restored.
func TestMonitorErrorAfterFiveMinutes(t *testing.T) {
	never := time.Duration(0)
	tests := []struct {
		name             string
		bundled, before  string        // the extension's agent; the installed one
		healthyAfter     time.Duration // when the agent first reports SUCCESS; never if 0
		wantErrorAt      bool          // error first reported between 285 s and 290 s
		wantFinal        string        // status at the end (300 s)
		wantRestore      bool
		wantBackupPurged bool
	}{
		{"upgraded agent never healthy: error and restore at 5 min", "1.0.1", "1.0.0", never, true, "error", true, false},
		{"upgraded agent healthy at 2 min: kept", "1.0.1", "1.0.0", 2 * time.Minute, false, "success", false, true},
		{"upgraded agent healthy at 4 min 40 s: kept", "1.0.1", "1.0.0", 280 * time.Second, false, "success", false, true},
		{"agent never healthy, no upgrade: error at 5 min", "1.0.0", "1.0.0", never, true, "error", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newMonitorRig(t, tc.bundled, tc.before)
				r.env.Opts.ErrorThreshold = DefaultOptions().ErrorThreshold
				start := time.Now()
				agent := &agentAt{version: tc.bundled}
				if tc.healthyAfter > 0 {
					agent.healthyAt = start.Add(tc.healthyAfter)
				}
				r.m.Fetcher = agent
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { r.m.Run(ctx); close(done) }()
				// at returns the status the monitor has written by start+d.
				at := func(d time.Duration) extension.Status {
					time.Sleep(time.Until(start.Add(d)))
					synctest.Wait()
					return r.status()
				}

				if st := at(100 * time.Second); st.Status != "transitioning" || st.Code != 0 {
					t.Errorf("at 100 s: %s/%d %q, want transitioning/0", st.Status, st.Code, st.FormattedMessage.Message)
				}
				if n := agent.fetches.Load(); n < 90 {
					t.Errorf("%d fetches in 100 s, want fast polling (about 100)", n)
				}
				if st := at(4 * time.Minute); st.Status == "error" || st.Code != 0 {
					t.Errorf("at 4 min: %s/%d %q, want no error yet", st.Status, st.Code, st.FormattedMessage.Message)
				}
				errorAt := time.Duration(-1)
				for d := 280 * time.Second; d <= 290*time.Second; d += time.Second {
					if st := at(d); st.Status == "error" {
						if st.Code != 4 {
							t.Errorf("error at %v with code %d, want 4", d, st.Code)
						}
						errorAt = d
						break
					}
				}
				if tc.wantErrorAt && (errorAt < 285*time.Second || errorAt > 290*time.Second) {
					t.Errorf("error first reported at %v, want 285 s–290 s (-1: not by 290 s)", errorAt)
				}
				if !tc.wantErrorAt && errorAt >= 0 {
					t.Errorf("error reported at %v", errorAt)
				}
				if st := at(300 * time.Second); st.Status != tc.wantFinal {
					t.Errorf("at 5 min: %s/%d %q, want %s", st.Status, st.Code, st.FormattedMessage.Message, tc.wantFinal)
				}
				cancel()
				<-done

				if restored := r.svc.starts > 0; restored != tc.wantRestore {
					t.Errorf("restored = %v (starts %d)", restored, r.svc.starts)
				}
				if tc.wantRestore {
					if r.svc.starts != 1 {
						t.Errorf("restore ran %d times", r.svc.starts)
					}
					if b, _ := os.ReadFile(r.env.Layout.AgentBinary()); !strings.Contains(string(b), tc.before) {
						t.Errorf("installed agent after restore: %s", b)
					}
				}
				if purged := tc.bundled != tc.before && !r.m.Setup.HasBackup() && !tc.wantRestore; purged != tc.wantBackupPurged {
					t.Errorf("backup purged = %v", purged)
				}
				if tc.bundled != tc.before && len(r.setups) != 1 {
					t.Errorf("setups = %v, want one install", r.setups)
				}
			})
		})
	}
}

// TestMonitorDeadAgentNotHealthy: an agent whose service is not running
// is not reported healthy, though its last status.json still reads so.
func TestMonitorDeadAgentNotHealthy(t *testing.T) {
	r := newMonitorRig(t, "1.0.0", "1.0.0")
	r.healthy("1.0.0")
	r.m.Tick(context.Background())
	if st := r.status(); st.Status != extension.StatusSuccess {
		t.Fatalf("running agent: %s %q", st.Status, msgOf(st))
	}
	r.svc.active = false
	r.m.Tick(context.Background())
	if st := r.status(); st.Status == extension.StatusSuccess || !strings.Contains(msgOf(st), "not running") {
		t.Errorf("dead agent with a healthy last status: %s %q", st.Status, msgOf(st))
	}
	r.svc.active = true
	r.m.Tick(context.Background())
	if st := r.status(); st.Status != extension.StatusSuccess {
		t.Errorf("agent back: %s %q", st.Status, msgOf(st))
	}
}
