package extension

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// Heartbeat status values. waagent copies the heartbeat status verbatim
// into the handler status; Ready is the value in waagent's own list of
// handler statuses.
const (
	HeartbeatReady    = "Ready"
	HeartbeatNotReady = "NotReady"
)

// Heartbeat is the heartbeat object of the heartbeat file. Code is a JSON
// number.
type Heartbeat struct {
	Status           string           `json:"status"`
	Code             int              `json:"code"`
	FormattedMessage FormattedMessage `json:"formattedMessage"`
}

type heartbeatItem struct {
	Version   string    `json:"version"`
	Heartbeat Heartbeat `json:"heartbeat"`
}

// HeartbeatStaleAfterSeconds is the heartbeat-file age after which waagent
// reports the handler Unresponsive (exthandlers.py is_responsive).
const HeartbeatStaleAfterSeconds = 600

// WriteHeartbeat atomically writes path as
// [{"version":"1.0","heartbeat":{status,code,formattedMessage}}], creating
// the parent directory if needed. Each call refreshes the file's mtime,
// which is what waagent checks for responsiveness.
func WriteHeartbeat(path string, hb Heartbeat) error {
	if hb.FormattedMessage.Lang == "" {
		hb.FormattedMessage.Lang = DefaultLanguage
	}
	data, err := json.Marshal([]heartbeatItem{{Version: "1.0", Heartbeat: hb}})
	if err != nil {
		return fmt.Errorf("extension: encode heartbeat: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("extension: heartbeat folder: %w", err)
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadHeartbeat parses a heartbeat file.
func ReadHeartbeat(path string) (Heartbeat, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Heartbeat{}, err
	}
	var items []heartbeatItem
	if err := json.Unmarshal(data, &items); err != nil || len(items) == 0 {
		return Heartbeat{}, fmt.Errorf("extension: malformed heartbeat file %s", path)
	}
	return items[0].Heartbeat, nil
}
