package extension

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// waagentEnv is HandlerEnvironment.json exactly as waagent's
// create_handler_env writes it (python json.dumps, number version 1.0).
const waagentEnv = `[{"name": "Microsoft.CPlat.ProxyAgent.ProxyAgentLinux", "version": 1.0, "handlerEnvironment": {"logFolder": "/var/log/azure/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux", "configFolder": "/var/lib/waagent/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-1.0.1/config", "statusFolder": "/var/lib/waagent/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-1.0.1/status", "heartbeatFile": "/var/lib/waagent/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-1.0.1/heartbeat.log", "eventsFolder": "/var/log/azure/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux/events", "eventsFolder_preview": "/var/log/azure/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux/events"}}]`

func TestParseHandlerEnvironment(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantErr    bool
		wantEvents string
	}{
		{"waagent", waagentEnv, false, "/var/log/azure/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux/events"},
		{"bom", "\xef\xbb\xbf" + waagentEnv, false, "/var/log/azure/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux/events"},
		{"no events, windows fields", `[{"name":"x","version":"1.0","handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h","deploymentid":"d","rolename":"r","instance":"i","hostResolverAddress":"1.2.3.4"}}]`, false, ""},
		{"empty file", "", true, ""},
		{"blank", "  \n", true, ""},
		{"object not array", `{"name":"x"}`, true, ""},
		{"empty array", `[]`, true, ""},
		{"missing statusFolder", `[{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","heartbeatFile":"/h"}}]`, true, ""},
		{"missing heartbeat", `[{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s"}}]`, true, ""},
		{"garbage", `[{`, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ParseHandlerEnvironment([]byte(tc.in))
			if tc.wantErr {
				if !errors.Is(err, ErrNoHandlerEnvironment) {
					t.Fatalf("err = %v, want ErrNoHandlerEnvironment", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.HandlerEnvironment.EventsFolder != tc.wantEvents {
				t.Errorf("eventsFolder = %q, want %q", e.HandlerEnvironment.EventsFolder, tc.wantEvents)
			}
			if e.HandlerEnvironment.StatusFolder == "" {
				t.Error("statusFolder empty")
			}
		})
	}
	if _, err := LoadHandlerEnvironment(t.TempDir()); !errors.Is(err, ErrNoHandlerEnvironment) {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestSequenceNumber(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	os.WriteFile(filepath.Join(dir, "3.settings"), nil, 0o600)
	os.Chtimes(filepath.Join(dir, "3.settings"), old, old)
	os.WriteFile(filepath.Join(dir, "2.settings"), []byte("{}"), 0o600)
	os.WriteFile(filepath.Join(dir, "x.settings"), nil, 0o600)
	tests := []struct {
		name    string
		env     map[string]string
		folder  string
		want    int
		wantErr bool
	}{
		{"env", map[string]string{EnvSequenceNumber: "7"}, dir, 7, false},
		{"env zero", map[string]string{EnvSequenceNumber: "0"}, dir, 0, false},
		{"env negative", map[string]string{EnvSequenceNumber: "-1"}, dir, 0, true},
		{"env text", map[string]string{EnvSequenceNumber: "no seq no"}, dir, 0, true},
		{"env path traversal", map[string]string{EnvSequenceNumber: "../x"}, dir, 0, true},
		{"absent uses newest settings", nil, dir, 2, false},
		{"absent no settings", nil, t.TempDir(), 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SequenceNumber(func(k string) string { return tc.env[k] }, tc.folder)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("seq = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestParseSettings(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantPublic string
		wantThumb  string
		wantErr    bool
	}{
		{"empty 0-byte", "", "", "", false},
		{"waagent full", `{"runtimeSettings": [{"handlerSettings": {"publicSettings": {"a": 1}, "protectedSettings": "MIIB", "protectedSettingsCertThumbprint": "ABCD"}}]}`, `{"a": 1}`, "ABCD", false},
		{"no public/protected", `{"runtimeSettings":[{"handlerSettings":{}}]}`, "", "", false},
		{"null public", `{"runtimeSettings":[{"handlerSettings":{"publicSettings":null}}]}`, "", "", false},
		{"no runtimeSettings", `{}`, "", "", false},
		{"empty runtimeSettings", `{"runtimeSettings":[]}`, "", "", false},
		{"malformed", `{"runtimeSettings":`, "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs, err := ParseSettings([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if string(hs.PublicSettings) != tc.wantPublic || hs.ProtectedSettingsCertThumbprint != tc.wantThumb {
				t.Errorf("got %+v", hs)
			}
		})
	}
	if _, err := ReadSettings(t.TempDir(), 0); err != nil {
		t.Errorf("missing settings file: %v", err)
	}
}

func TestWriteStatus(t *testing.T) {
	now := time.Date(2025, 4, 23, 12, 0, 0, 123e6, time.UTC)
	tests := []struct {
		name    string
		st      Status
		wantErr bool
	}{
		{"transitioning no substatus", Status{Name: "ProxyAgentVMExtension", Operation: "Enable", Status: StatusTransitioning, FormattedMessage: Message("Enabling")}, false},
		{"success with substatus", Status{Name: "n", Operation: "Enable", Status: StatusSuccess, Substatus: []SubStatus{{Name: "a", Status: StatusSuccess, FormattedMessage: Message("m")}}}, false},
		{"error code", Status{Name: "n", Operation: "Enable", Status: StatusError, Code: 4}, false},
		{"capitalized rejected", Status{Status: "Success"}, true},
		{"bad substatus rejected", Status{Status: StatusSuccess, Substatus: []SubStatus{{Status: "ok"}}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "status")
			p, err := WriteStatus(dir, 5, tc.st, now)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want error")
				}
				if _, err := os.Stat(StatusPath(dir, 5)); err == nil {
					t.Error("invalid status was written")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p != filepath.Join(dir, "5.status") {
				t.Errorf("path = %s", p)
			}
			data, _ := os.ReadFile(p)
			var raw []map[string]any
			if err := json.Unmarshal(data, &raw); err != nil || len(raw) != 1 {
				t.Fatalf("not a one-element array: %s", data)
			}
			if raw[0]["version"] != "1.0" || raw[0]["timestampUTC"] != "2025-04-23T12:00:00.123" {
				t.Errorf("header = %v", raw[0])
			}
			st := raw[0]["status"].(map[string]any)
			if _, ok := st["code"].(float64); !ok {
				t.Errorf("code not a number: %v", st["code"])
			}
			if _, ok := st["substatus"].([]any); !ok {
				t.Errorf("substatus not an array: %v", st["substatus"])
			}
			if st["configurationAppliedTime"] != "2025-04-23T12:00:00Z" {
				t.Errorf("configurationAppliedTime = %v", st["configurationAppliedTime"])
			}
			fi, _ := os.Stat(p)
			if fi.Mode().Perm()&0o022 != 0 {
				t.Errorf("mode %v is group/world writable", fi.Mode())
			}
			di, _ := os.Stat(dir)
			if di.Mode().Perm() != 0o700 {
				t.Errorf("created folder mode %v", di.Mode().Perm())
			}
			got, err := ReadStatus(p)
			if err != nil || got.Status.Status != tc.st.Status {
				t.Errorf("ReadStatus = %+v, %v", got, err)
			}
		})
	}
}

// TestWriteStatusAtomic checks that a reader polling during rewrites never
// sees a partial file.
func TestWriteStatusAtomic(t *testing.T) {
	dir := t.TempDir()
	big := strings.Repeat("x", 64*1024)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			WriteStatus(dir, 0, Status{Status: StatusSuccess, FormattedMessage: Message(big[:1+i*100])}, time.Now())
		}
		close(stop)
	}()
	bad := 0
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		data, err := os.ReadFile(StatusPath(dir, 0))
		if err != nil {
			continue
		}
		var v []StatusItem
		if json.Unmarshal(data, &v) != nil {
			bad++
		}
	}
	wg.Wait()
	if bad != 0 {
		t.Errorf("reader saw %d partial files", bad)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("leftover files: %d entries", len(ents))
	}
}

func TestHeartbeat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "heartbeat.log")
	if err := WriteHeartbeat(p, Heartbeat{Status: HeartbeatReady, FormattedMessage: FormattedMessage{Message: "Extension is running"}}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	var raw []struct {
		Version   string
		Heartbeat map[string]any
	}
	if err := json.Unmarshal(data, &raw); err != nil || len(raw) != 1 {
		t.Fatalf("shape: %s", data)
	}
	if raw[0].Version != "1.0" || raw[0].Heartbeat["status"] != "Ready" {
		t.Errorf("got %s", data)
	}
	if c, ok := raw[0].Heartbeat["code"].(float64); !ok || c != 0 {
		t.Errorf("code must be numeric 0: %s", data)
	}
	fm := raw[0].Heartbeat["formattedMessage"].(map[string]any)
	if fm["lang"] != "en-US" || fm["message"] != "Extension is running" {
		t.Errorf("formattedMessage %v", fm)
	}
}

func TestEventWriter(t *testing.T) {
	tests := []struct {
		name      string
		writes    int
		msg       string
		maxFiles  int
		wantFiles int
	}{
		{"one", 1, "hello", 0, 1},
		{"pruned to max", 7, "m", 5, 5},
		{"default max 50", 55, "m", 0, 50},
		{"oversized message cut", 1, strings.Repeat("é", 10000), 0, 1},
		{"empty message", 1, "", 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := &EventWriter{Folder: dir, Version: "1.2.3", MaxFiles: tc.maxFiles}
			for i := 0; i < tc.writes; i++ {
				if err := w.Write(EventInformational, "task", "op", tc.msg); err != nil {
					t.Fatal(err)
				}
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != tc.wantFiles {
				t.Fatalf("files = %d, want %d", len(ents), tc.wantFiles)
			}
			for _, e := range ents {
				if !eventFileName.MatchString(e.Name()) {
					t.Errorf("bad name %s", e.Name())
				}
				data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
				if len(data) > MaxEventFileSize {
					t.Errorf("file too big")
				}
				var evs []map[string]any
				if err := json.Unmarshal(data, &evs); err != nil || len(evs) != 1 {
					t.Fatalf("bad file %s", data)
				}
				size := 0
				for _, k := range []string{"Version", "Timestamp", "TaskName", "EventLevel", "Message", "EventPid", "EventTid", "OperationId"} {
					s, ok := evs[0][k].(string)
					if !ok {
						t.Errorf("%s missing or not a string", k)
					}
					size += len(s)
				}
				if size > MaxEventSize || len(evs[0]["Message"].(string)) > MaxEventMessageSize || evs[0]["Message"] == "" {
					t.Errorf("event size %d", size)
				}
			}
		})
	}
	// Absent folder: skipped, no error, nothing created.
	missing := filepath.Join(t.TempDir(), "events")
	if err := (&EventWriter{Folder: missing}).Write(EventError, "t", "o", "m"); err != nil {
		t.Errorf("absent folder: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("absent events folder was created")
	}
}

func TestSequenceFile(t *testing.T) {
	f := SequenceFile(filepath.Join(t.TempDir(), "current_seq_no.txt"))
	steps := []struct {
		seq         int
		wantChanged bool
	}{{0, true}, {0, false}, {1, true}, {1, false}, {0, true}}
	for i, s := range steps {
		changed, err := f.Update(s.seq)
		if err != nil || changed != s.wantChanged {
			t.Fatalf("step %d: Update(%d) = %v, %v; want %v", i, s.seq, changed, err, s.wantChanged)
		}
		if n, ok := f.Read(); !ok || n != s.seq {
			t.Fatalf("step %d: Read = %d, %v", i, n, ok)
		}
	}
	bad := SequenceFile(filepath.Join(t.TempDir(), "missing-dir", "x"))
	if _, err := bad.Update(1); err == nil {
		t.Error("unwritable file: want error")
	}
}

func TestTruncateUTF8(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{{"abc", 5, "abc"}, {"abc", 2, "ab"}, {"éé", 3, "é"}, {"x", 0, ""}}
	for _, tc := range tests {
		if got := TruncateUTF8(tc.in, tc.max); got != tc.want {
			t.Errorf("TruncateUTF8(%q,%d) = %q", tc.in, tc.max, got)
		}
	}
}
