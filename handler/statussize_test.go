package handler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
)

// The summaries' budget is upstream's (§2.5, check 5): [0] and [2]
// together up to 80 KiB are kept whole; above that [0] becomes upstream's
// note and [2] is cut to 80 KiB only when it is longer by itself.
func TestSummaryBudgetMatchesUpstream(t *testing.T) {
	kib := func(n int) string { return strings.Repeat("x", n<<10) }
	for _, tc := range []struct {
		name                 string
		conn, failed         string
		wantConn, wantFailed string
	}{
		{"70 KiB and 10 KiB kept", kib(70), kib(10), kib(70), kib(10)},
		{"30 KiB kept (more than the old 24 KiB)", kib(30), "", kib(30), ""},
		{"one byte over drops [0]", kib(70), kib(10) + "y", SummaryDroppedNote, kib(10) + "y"},
		{"[2] alone over is cut, to go with the note", kib(1), kib(90), SummaryDroppedNote, kib(80)[len(SummaryDroppedNote):]},
	} {
		c, f := TrimSummaries(tc.conn, tc.failed)
		if c != tc.wantConn || f != tc.wantFailed {
			t.Errorf("%s: got %d and %d bytes (%.40q), want %d and %d", tc.name, len(c), len(f), c, len(tc.wantConn), len(tc.wantFailed))
		}
		if len(c)+len(f) > MaxSummaryBytes {
			t.Errorf("%s: %d bytes together, over %d", tc.name, len(c)+len(f), MaxSummaryBytes)
		}
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

// TestStatusWithinWaagentsLimits: the largest status the monitor writes —
// 100 callers and 50 failed ones with long command lines full of quotes
// and non-ASCII, every module message at its limit — stays within
// waagent's 128 KiB status file, keeps [1] whole, and costs far less than
// the agent's 8 MiB upload limit in waagent's HostGAPlugin PUT /status
// (the blob base64-encoded, about 1.34x).
func TestStatusWithinWaagentsLimits(t *testing.T) {
	const budget = 1 << 20
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
		if len(file) > extension.MaxStatusFileSize {
			t.Errorf("%d callers, %d failed: status file %d bytes > %d", tc.conn, tc.failed, len(file), extension.MaxStatusFileSize)
		}
		var ps map[string]any
		if err := json.Unmarshal([]byte(st.Substatus[1].FormattedMessage.Message), &ps); err != nil {
			t.Errorf("%d callers, %d failed: [1] is not whole JSON: %v", tc.conn, tc.failed, err)
		}
		put := (blobLen(file)+2)/3*4 + 1024 // base64 and the JSON wrapper
		t.Logf("%d callers, %d failed: status file %d bytes, in the PUT /status body about %d bytes", tc.conn, tc.failed, len(file), put)
		if put > budget {
			t.Errorf("%d callers, %d failed: our status costs %d bytes of waagent's PUT /status, want <= %d", tc.conn, tc.failed, put, budget)
		}
	}
}

// Substatus [1] stays one JSON object within MaxAgentStatusBytes however
// long the module messages: they are cut, in upstream's field order, not
// the JSON text.
func TestAgentStatusBoundedStaysJSON(t *testing.T) {
	msg := strings.Repeat(`"ß\`, 400)
	mod := map[string]any{"status": "RUNNING", "message": msg}
	st := map[string]any{"version": "1.0.0", "status": "SUCCESS", "monitorStatus": mod,
		"keyLatchStatus":    map[string]any{"status": "RUNNING", "message": msg, "states": map[string]string{"keyGuid": "g"}},
		"ebpfProgramStatus": mod, "proxyListenerStatus": mod, "telemetryLoggerStatus": mod, "proxyConnectionsCount": 7}
	raw, _ := json.Marshal(st)
	if len(raw) <= MaxAgentStatusBytes {
		t.Fatalf("test document only %d bytes", len(raw))
	}
	got := boundAgentStatus(raw)
	var back map[string]any
	if len(got) > MaxAgentStatusBytes || json.Unmarshal([]byte(got), &back) != nil {
		t.Fatalf("%d bytes, JSON %v", len(got), json.Unmarshal([]byte(got), &back))
	}
	kl := back["keyLatchStatus"].(map[string]any)
	if back["status"] != "SUCCESS" || back["proxyConnectionsCount"] != float64(7) || kl["states"].(map[string]any)["keyGuid"] != "g" ||
		!strings.HasSuffix(kl["message"].(string), "...") || !strings.HasPrefix(got, `{"version":"1.0.0","status":"SUCCESS","monitorStatus":`) {
		t.Errorf("bounded status %.200s", got)
	}
	if small := `{"version":"1.0.0"}`; boundAgentStatus([]byte(small)) != small {
		t.Error("a short status was changed")
	}
}
