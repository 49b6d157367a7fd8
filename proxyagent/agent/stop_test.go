package agent

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/opengpa/gpa/proxyagent/status"
)

// After a stop, status.json says every component stopped: the key keeper
// (its own status, copied in by its change callback), the listener and the
// redirect. A registry entry bound to a live source used to ignore the
// final STOPPED.
func TestStatusAfterStopSaysStopped(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.stop()
	data, err := os.ReadFile(h.cfg.StatusFile())
	if err != nil {
		t.Fatal(err)
	}
	var agg status.Aggregate
	if err := json.Unmarshal(data, &agg); err != nil {
		t.Fatalf("status.json: %v\n%s", err, data)
	}
	s := agg.ProxyAgentStatus
	for name, m := range map[string]status.ModuleStatus{"keyLatchStatus": s.KeyLatchStatus,
		"ebpfProgramStatus": s.EbpfProgramStatus, "proxyListenerStatus": s.ProxyListenerStatus} {
		if m.Status != status.Stopped {
			t.Errorf("%s = %s %q after stop, want STOPPED", name, m.Status, m.Message)
		}
	}
	if s.Status != status.Error {
		t.Errorf("overall %s after stop, want ERROR", s.Status)
	}
	if s.KeyLatchStatus.States["secureChannelState"] == "" {
		t.Errorf("keyLatchStatus lost its states: %+v", s.KeyLatchStatus)
	}
}
