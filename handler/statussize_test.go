package handler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
)

func TestWaagentEncodedLen(t *testing.T) {
	for s, want := range map[string]int{
		"":               0,
		"abc":            3,
		`a"b\c`:          7,
		"\n\t\x01":       10,
		"é":              6,
		"😀":              12,
		"<script>&":      9,
		`{"k":"v"}`:      13,
		"\u2028\x7f\x1f": 13,
	} {
		if got := WaagentEncodedLen(s); got != want {
			t.Errorf("WaagentEncodedLen(%q) = %d, want %d", s, got, want)
		}
	}
	if got := truncateEncoded(`ab"é`, 4); got != `ab"` {
		t.Errorf("truncateEncoded = %q", got)
	}
}

// blobLen is the length of data (a JSON document) once waagent re-encodes
// it with json.dumps: every non-ASCII character becomes \uXXXX.
func blobLen(data []byte) int {
	n := 0
	for _, r := range string(data) {
		switch {
		case r < 0x80:
			n++
		case r > 0xffff:
			n += 12
		default:
			n += 6
		}
	}
	return n
}

// TestStatusStaysSmallInWaagentsUpload: the largest status the monitor
// writes — 100 callers and 50 failed ones with long command lines full of
// quotes and non-ASCII, every module message at its limit — costs well
// under the 100 KiB signed-body limit in waagent's HostGAPlugin PUT
// /status (the blob base64-encoded, about 1.34x), leaving room for every
// other extension's status.
func TestStatusStaysSmallInWaagentsUpload(t *testing.T) {
	const budget = 64 << 10
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	cmd := strings.Repeat(`"é\`, 400)
	mk := func(n int) []ConnectionSummary {
		var l []ConnectionSummary
		for i := range n {
			l = append(l, ConnectionSummary{UserName: "user" + strings.Repeat("ü", 30), IP: "168.63.129.16", Port: 80,
				ProcessCmdLine: cmd, ResponseStatus: "200 OK", Count: uint64(i + 1), UserGroups: []string{"g\"1", "g2"}, ProcessFullPath: "/usr/bin/" + cmd[:60]})
		}
		return l
	}
	for _, tc := range []struct{ conn, failed int }{{100, 0}, {0, 50}, {100, 50}, {3, 50}} {
		msg := strings.Repeat(`"ß`, 512)
		mod := map[string]any{"status": "RUNNING", "message": msg}
		doc := map[string]any{
			"timestamp": now.Format(extension.TimestampLayout),
			"proxyAgentStatus": map[string]any{"version": "1.0.0", "status": "SUCCESS",
				"monitorStatus": mod, "keyLatchStatus": map[string]any{"status": "RUNNING", "message": msg,
					"states": map[string]string{"secureChannelState": "WireServer Enforce -  IMDS Enforce - HostGA Enforce"}},
				"ebpfProgramStatus": mod, "proxyListenerStatus": mod, "telemetryLoggerStatus": mod, "proxyConnectionsCount": 1},
			"proxyConnectionSummary":    mk(tc.conn),
			"failedAuthenticateSummary": mk(tc.failed),
		}
		data, _ := json.Marshal(doc)
		ev := Evaluate(data, nil, "1.0.0", now, 5*time.Minute)
		if !ev.Healthy {
			t.Fatalf("not healthy: %s", ev.Message)
		}
		st := BoundStatus(extension.Status{Name: StatusName, Operation: OperationEnable, Status: extension.StatusSuccess,
			FormattedMessage: extension.Message(ev.Message), Substatus: ev.Substatus}, now)
		file, err := extension.MarshalStatus(st, now)
		if err != nil {
			t.Fatal(err)
		}
		put := (blobLen(file)+2)/3*4 + 1024 // base64 and the JSON wrapper
		t.Logf("%d callers, %d failed: status file %d bytes, in the PUT /status body about %d bytes", tc.conn, tc.failed, len(file), put)
		if put > budget {
			t.Errorf("%d callers, %d failed: our status costs %d bytes of waagent's PUT /status, want <= %d", tc.conn, tc.failed, put, budget)
		}
	}
}
