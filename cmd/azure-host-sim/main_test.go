package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
)

var controlRE = regexp.MustCompile(`control=(127\.0\.0\.1:\d+)`)

func TestRunServesAndStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	settings := filepath.Join(dir, "settings.json")
	os.WriteFile(settings, []byte(`{"enabled": true, "keyIncarnationId": 1, "wireServer": {"mode": "Enforce"}, "imds": {"mode": "Audit"}}`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs testsupport.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-wireserver", "127.0.0.1:0", "-imds", "127.0.0.1:0", "-hostga", "127.0.0.1:0",
			"-control", "127.0.0.1:0", "-storage", "127.0.0.1:0", "-settings", settings, "-imds-rate-limit", "0"}, &logs)
	}()
	var control string
	for deadline := time.Now().Add(10 * time.Second); control == "" && time.Now().Before(deadline); {
		if m := controlRE.FindStringSubmatch(logs.String()); m != nil {
			control = m[1]
		} else {
			select {
			case err := <-done:
				t.Fatalf("run returned early: %v\n%s", err, logs.String())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	if control == "" {
		t.Fatalf("no control address logged:\n%s", logs.String())
	}
	resp, err := http.Get("http://" + control + "/state")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		SecureChannelState string `json:"secureChannelState"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.SecureChannelState != "WireServer Enforce -  IMDS Audit - HostGA Enforce" {
		t.Fatalf("state from settings file = %q", st.SecureChannelState)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	if !strings.Contains(logs.String(), "azure-host-sim stopping") {
		t.Fatalf("no stop message:\n%s", logs.String())
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"enabled": true, "wireServer": {"mode": "Sometimes"}}`), 0o600)
	loop := []string{"-wireserver", "127.0.0.1:0", "-imds", "127.0.0.1:0", "-hostga", "127.0.0.1:0", "-control", "127.0.0.1:0"}
	tests := [][]string{
		{"-no-such-flag"},
		{"-settings", bad},
		{"-settings", filepath.Join(dir, "missing.json")},
		{"-profiles", filepath.Join(dir, "missing")},
		{"-status-version", "3.0"},
		{"-control", "0.0.0.0:0"},
		{"-log-level", "loud"},
		{"-date-skew", "0s"},
		{"extra-arg"},
	}
	for _, args := range tests {
		var logs testsupport.SyncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := run(ctx, append(append([]string{}, loop...), args...), &logs)
		cancel()
		if err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}
