// Package extension implements the waagent side of the Linux VM extension
// handler protocol as a handler sees it: HandlerEnvironment.json, the
// config/<seq>.settings files, the environment variables waagent sets on
// every command, status files, the heartbeat file, the sequence-number
// file and the telemetry events folder.
//
// Every file this package writes is written atomically (temporary file,
// fsync, rename), so a reader polling the file never sees partial JSON.
package extension

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/opengpa/gpa/internal/serdejson"
)

// Environment variable names waagent sets on handler commands
// (azurelinuxagent/ga/exthandlers.py ExtCommandEnvVariable).
const (
	EnvSequenceNumber      = "ConfigSequenceNumber"
	EnvExtensionPath       = "AZURE_GUEST_AGENT_EXTENSION_PATH"
	EnvExtensionVersion    = "AZURE_GUEST_AGENT_EXTENSION_VERSION"
	EnvWireProtocolAddress = "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS"
	EnvSupportedFeatures   = "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES"
	EnvUninstallExitCode   = "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"
	EnvDisableExitCode     = "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"
	EnvUpdatingFromVersion = "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"
	EnvVersion             = "VERSION"
)

// HandlerEnvironmentFile is the file name waagent writes into the handler
// root.
const HandlerEnvironmentFile = "HandlerEnvironment.json"

// HandlerEnvironment is the handlerEnvironment object of
// HandlerEnvironment.json. The first four fields are required; the rest
// are optional (eventsFolder only exists when waagent supports the
// extension telemetry pipeline; the others only the Windows agent writes).
type HandlerEnvironment struct {
	LogFolder           string `json:"logFolder"`
	ConfigFolder        string `json:"configFolder"`
	StatusFolder        string `json:"statusFolder"`
	HeartbeatFile       string `json:"heartbeatFile"`
	EventsFolder        string `json:"eventsFolder,omitempty"`
	EventsFolderPreview string `json:"eventsFolder_preview,omitempty"`
	DeploymentID        string `json:"deploymentid,omitempty"`
	RoleName            string `json:"rolename,omitempty"`
	Instance            string `json:"instance,omitempty"`
	HostResolverAddress string `json:"hostResolverAddress,omitempty"`
}

// HandlerEnvironmentEntry is one element of the HandlerEnvironment.json
// array. Version is kept as raw JSON because waagent writes the number 1.0
// while other tools write the string "1.0".
type HandlerEnvironmentEntry struct {
	Name               string             `json:"name"`
	Version            json.RawMessage    `json:"version,omitempty"`
	HandlerEnvironment HandlerEnvironment `json:"handlerEnvironment"`
}

// ErrNoHandlerEnvironment reports a missing, empty or unusable
// HandlerEnvironment.json.
var ErrNoHandlerEnvironment = errors.New("extension: handler environment unavailable")

// ParseHandlerEnvironment parses the contents of HandlerEnvironment.json. It
// accepts a one-or-more element array (only [0] is used, as waagent does)
// and a leading UTF-8 byte-order mark, and requires logFolder,
// configFolder, statusFolder and heartbeatFile to be non-empty. Every error
// wraps ErrNoHandlerEnvironment.
func ParseHandlerEnvironment(data []byte) (HandlerEnvironmentEntry, error) {
	data = serdejson.TrimBOM(data)
	if len(bytes.TrimSpace(data)) == 0 {
		return HandlerEnvironmentEntry{}, fmt.Errorf("%w: file is empty", ErrNoHandlerEnvironment)
	}
	var entries []HandlerEnvironmentEntry
	if err := json.Unmarshal(data, &entries); err != nil {
		return HandlerEnvironmentEntry{}, fmt.Errorf("%w: not a JSON array of handler environments: %v", ErrNoHandlerEnvironment, err)
	}
	if len(entries) == 0 {
		return HandlerEnvironmentEntry{}, fmt.Errorf("%w: empty array", ErrNoHandlerEnvironment)
	}
	e := entries[0]
	he := e.HandlerEnvironment
	for _, f := range []struct{ name, val string }{
		{"logFolder", he.LogFolder},
		{"configFolder", he.ConfigFolder},
		{"statusFolder", he.StatusFolder},
		{"heartbeatFile", he.HeartbeatFile},
	} {
		if strings.TrimSpace(f.val) == "" {
			return HandlerEnvironmentEntry{}, fmt.Errorf("%w: handlerEnvironment.%s is missing", ErrNoHandlerEnvironment, f.name)
		}
	}
	return e, nil
}

// LoadHandlerEnvironment reads and parses <dir>/HandlerEnvironment.json.
// Every error wraps ErrNoHandlerEnvironment.
func LoadHandlerEnvironment(dir string) (HandlerEnvironmentEntry, error) {
	p := filepath.Join(dir, HandlerEnvironmentFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return HandlerEnvironmentEntry{}, fmt.Errorf("%w: %v", ErrNoHandlerEnvironment, err)
	}
	e, err := ParseHandlerEnvironment(data)
	if err != nil {
		return HandlerEnvironmentEntry{}, fmt.Errorf("%s: %w", p, err)
	}
	return e, nil
}

// SequenceNumber returns the configuration sequence number a command runs
// under. When ConfigSequenceNumber is set (getenv returns it) it must be a
// non-negative decimal integer, otherwise an error is returned (never a
// made-up file name). When it is absent, the number of the most recently
// modified <n>.settings file in configFolder is used, as waagent itself
// does for status; with no settings file at all the result is 0, the
// number waagent uses for a handler without settings.
func SequenceNumber(getenv func(string) string, configFolder string) (int, error) {
	if v, ok := lookup(getenv, EnvSequenceNumber); ok {
		return ParseSequenceNumber(v)
	}
	n, ok := LatestSettingsSequence(configFolder)
	if !ok {
		return 0, nil
	}
	return n, nil
}

func lookup(getenv func(string) string, key string) (string, bool) {
	if getenv == nil {
		getenv = os.Getenv
	}
	v := getenv(key)
	return v, v != ""
}

// ParseSequenceNumber parses a sequence number: a decimal integer in
// [0, 2^31).
func ParseSequenceNumber(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("extension: invalid sequence number %q: must be a non-negative decimal integer", s)
	}
	return int(n), nil
}

// LatestSettingsSequence returns the sequence number of the most recently
// modified <n>.settings file in configFolder, and false when there is none.
// Ties on modification time go to the larger number.
func LatestSettingsSequence(configFolder string) (int, bool) {
	ents, err := os.ReadDir(configFolder)
	if err != nil {
		return 0, false
	}
	type cand struct {
		n   int
		mod int64
	}
	var cands []cand
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".settings") {
			continue
		}
		n, err := ParseSequenceNumber(strings.TrimSuffix(name, ".settings"))
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		cands = append(cands, cand{n, info.ModTime().UnixNano()})
	}
	if len(cands) == 0 {
		return 0, false
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].mod != cands[j].mod {
			return cands[i].mod > cands[j].mod
		}
		return cands[i].n > cands[j].n
	})
	return cands[0].n, true
}
