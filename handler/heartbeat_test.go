package handler

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/extension"
)

// TestHeartbeatFollowsTheMonitorsView: the heartbeat message is rewritten
// whenever the status the monitor reports changes, not once per
// HeartbeatInterval (the rig sets an hour), and never carries an empty
// detail.
func TestHeartbeatFollowsTheMonitorsView(t *testing.T) {
	r := newMonitorRig(t, "1.0.0", "1.0.0")
	read := func() string {
		t.Helper()
		hb, err := extension.ReadHeartbeat(r.env.Handler.HeartbeatFile)
		if err != nil {
			t.Fatal(err)
		}
		if hb.Status != extension.HeartbeatReady || hb.Code != 0 {
			t.Errorf("heartbeat %+v", hb)
		}
		return hb.FormattedMessage.Message
	}
	r.m.Tick(context.Background()) // the agent does not answer: setup install
	if got := read(); !strings.Contains(got, "transitioning: "+setupInstallOK) {
		t.Errorf("heartbeat after install: %q", got)
	}
	r.m.Tick(context.Background())
	if got := read(); !strings.Contains(got, "transitioning: ") || !strings.Contains(got, "agent down") {
		t.Errorf("heartbeat while the agent is down: %q", got)
	}
	r.healthy("1.0.0")
	r.m.Tick(context.Background())
	if got := read(); !strings.Contains(got, "success: "+SuccessMessage) {
		t.Errorf("heartbeat after success: %q", got)
	}
	r.fetch.data, r.fetch.err = nil, os.ErrDeadlineExceeded
	r.m.Tick(context.Background())
	if got := read(); !strings.Contains(got, "transitioning: ") || strings.Contains(got, SuccessMessage) {
		t.Errorf("heartbeat after a failed read: %q", got)
	}
}

// TestEnableWritesHeartbeat: enable leaves a Ready heartbeat with a true
// message when there is none (fresh install, upgrade), and keeps a running
// monitor's.
func TestEnableWritesHeartbeat(t *testing.T) {
	e := commandEnv(t, nil)
	ensureHeartbeat(e)
	hb, err := extension.ReadHeartbeat(e.Handler.HeartbeatFile)
	if err != nil || hb.Status != extension.HeartbeatReady || hb.Code != 0 || hb.FormattedMessage.Message != enabledHeartbeat {
		t.Fatalf("heartbeat %+v %v", hb, err)
	}
	WriteHeartbeat(e, "monitor view")
	ensureHeartbeat(e)
	if hb, _ := extension.ReadHeartbeat(e.Handler.HeartbeatFile); hb.FormattedMessage.Message != "monitor view" {
		t.Errorf("enable replaced the monitor's heartbeat: %q", hb.FormattedMessage.Message)
	}
}

// TestEventLevels: successful steps are Informational, failed ones
// Warning or Error (telemetry events as waagent collects them).
func TestEventLevels(t *testing.T) {
	synctest.Test(t, testEventLevels) // the failing ticks run at the normal interval on the bubble's clock
}

func testEventLevels(t *testing.T) {
	r := newMonitorRig(t, "1.0.1", "1.0.0")
	events := filepath.Join(t.TempDir(), "events")
	os.MkdirAll(events, 0o700)
	r.m.Events = &extension.EventWriter{Folder: events, Version: "1.0.1", MaxFiles: 1000}
	read := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		ents, _ := os.ReadDir(events)
		for _, e := range ents {
			data, _ := os.ReadFile(filepath.Join(events, e.Name()))
			var evs []extension.Event
			if err := json.Unmarshal(data, &evs); err != nil || len(evs) != 1 {
				t.Fatalf("event file %s: %v", e.Name(), err)
			}
			out[evs[0].Message] = evs[0].EventLevel
			os.Remove(filepath.Join(events, e.Name()))
		}
		return out
	}
	r.healthy("1.0.0")
	r.m.Tick(context.Background()) // upgrade: setup install succeeds
	got := read()
	if lvl := got[setupInstallOK]; lvl != extension.EventInformational {
		t.Errorf("setup install OK at %q: %v", lvl, got)
	}
	if lvl := got["transitioning: "+setupInstallOK]; lvl != extension.EventInformational {
		t.Errorf("status after a successful install at %q: %v", lvl, got)
	}
	r.healthy("1.0.1")
	r.m.Tick(context.Background())
	if lvl := read()["success: "+SuccessMessage]; lvl != extension.EventInformational {
		t.Errorf("success at %q", lvl)
	}
	r.fetch.data, r.fetch.err = nil, os.ErrDeadlineExceeded
	r.m.Tick(context.Background())
	for msg, lvl := range read() {
		if strings.HasPrefix(msg, "transitioning: ") && lvl != extension.EventWarning {
			t.Errorf("failed read at %q: %s", lvl, msg)
		}
	}
	for i := 0; i < 3; i++ {
		time.Sleep(r.env.Opts.MonitorInterval)
		r.m.Tick(context.Background())
	}
	found := false
	for msg, lvl := range read() {
		if strings.HasPrefix(msg, "error: ") {
			found = true
			if lvl != extension.EventError {
				t.Errorf("error at %q", lvl)
			}
		}
	}
	if !found {
		t.Error("no error event after the threshold")
	}
}

// TestDisableHeartbeat: disable leaves a heartbeat that says the monitor
// is stopped, and the next enable replaces it.
func TestDisableHeartbeat(t *testing.T) {
	e := commandEnv(t, nil)
	WriteHeartbeat(e, heartbeatPrefix+"success: fine")
	if _, err := runDisable(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	hb, err := extension.ReadHeartbeat(e.Handler.HeartbeatFile)
	if err != nil || hb.Status != extension.HeartbeatReady || !strings.Contains(hb.FormattedMessage.Message, "monitor is stopped") {
		t.Fatalf("heartbeat after disable %+v %v", hb, err)
	}
	ensureHeartbeat(e)
	if hb, _ := extension.ReadHeartbeat(e.Handler.HeartbeatFile); hb.FormattedMessage.Message != enabledHeartbeat {
		t.Errorf("enable kept disable's heartbeat: %q", hb.FormattedMessage.Message)
	}
}
