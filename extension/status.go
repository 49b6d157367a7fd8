package extension

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
	"github.com/opengpa/gpa/internal/serdejson"
)

// Status values waagent accepts for a status and every substatus. Anything
// else makes waagent report error 1012 for the whole file.
const (
	StatusTransitioning = "transitioning"
	StatusWarning       = "warning"
	StatusError         = "error"
	StatusSuccess       = "success"
)

// ValidStatus reports whether s is one of the four values waagent accepts.
func ValidStatus(s string) bool {
	switch s {
	case StatusTransitioning, StatusWarning, StatusError, StatusSuccess:
		return true
	}
	return false
}

// Limits waagent applies when it reads a status file
// (exthandlers.py _MAX_STATUS_FILE_SIZE_IN_BYTES).
const MaxStatusFileSize = 128 * 1024

// DefaultLanguage is the formattedMessage language handlers report.
const DefaultLanguage = "en-US"

// FormattedMessage is a localized message; waagent requires both fields
// whenever the object is present.
type FormattedMessage struct {
	Lang    string `json:"lang"`
	Message string `json:"message"`
}

// Message returns a FormattedMessage in DefaultLanguage.
func Message(text string) *FormattedMessage {
	return &FormattedMessage{Lang: DefaultLanguage, Message: text}
}

// SubStatus is one element of status.substatus.
type SubStatus struct {
	Name             string            `json:"name"`
	Status           string            `json:"status"`
	Code             int               `json:"code"`
	FormattedMessage *FormattedMessage `json:"formattedMessage,omitempty"`
}

// Status is the status object of a status file.
type Status struct {
	Name                     string            `json:"name"`
	Operation                string            `json:"operation"`
	ConfigurationAppliedTime string            `json:"configurationAppliedTime,omitempty"`
	Status                   string            `json:"status"`
	Code                     int               `json:"code"`
	FormattedMessage         *FormattedMessage `json:"formattedMessage,omitempty"`
	Substatus                []SubStatus       `json:"substatus"`
}

// StatusItem is the single element of a status file's top-level array.
type StatusItem struct {
	Version      string `json:"version"`
	TimestampUTC string `json:"timestampUTC"`
	Status       Status `json:"status"`
}

// Time layouts used in status files: timestampUTC has milliseconds and no
// zone suffix; configurationAppliedTime is RFC 3339 in UTC with "Z".
const (
	TimestampLayout   = "2006-01-02T15:04:05.000"
	AppliedTimeLayout = "2006-01-02T15:04:05Z"
)

// StatusPath returns <statusFolder>/<seq>.status, the file waagent reads.
func StatusPath(statusFolder string, seq int) string {
	return filepath.Join(statusFolder, strconv.Itoa(seq)+".status")
}

// Validate checks s against the rules of waagent's parse_ext_status and
// parse_ext_substatus: a status value from the accepted set on the status
// and on every substatus, and lang plus message on every formattedMessage
// (guaranteed by the type when present).
func (s Status) Validate() error {
	if !ValidStatus(s.Status) {
		return fmt.Errorf("extension: invalid status %q", s.Status)
	}
	for i, ss := range s.Substatus {
		if !ValidStatus(ss.Status) {
			return fmt.Errorf("extension: substatus[%d] %q has invalid status %q", i, ss.Name, ss.Status)
		}
	}
	return nil
}

// MarshalStatus renders the status file contents for s: a one-element
// array with version "1.0" and timestampUTC taken from now. A nil
// Substatus is written as [] . It refuses a status waagent would reject.
func MarshalStatus(s Status, now time.Time) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.Substatus == nil {
		s.Substatus = []SubStatus{}
	}
	if s.ConfigurationAppliedTime == "" {
		s.ConfigurationAppliedTime = now.UTC().Format(AppliedTimeLayout)
	}
	items := []StatusItem{{
		Version:      "1.0",
		TimestampUTC: now.UTC().Format(TimestampLayout),
		Status:       s,
	}}
	b, err := serdejson.Marshal(items)
	if err != nil {
		return nil, fmt.Errorf("extension: encode status: %w", err)
	}
	return append(b, '\n'), nil
}

// WriteStatus atomically writes <statusFolder>/<seq>.status with mode 0644,
// creating the folder (0700) if it is missing, and returns the path.
func WriteStatus(statusFolder string, seq int, s Status, now time.Time) (string, error) {
	data, err := MarshalStatus(s, now)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(statusFolder, 0o700); err != nil {
		return "", fmt.Errorf("extension: create status folder: %w", err)
	}
	p := StatusPath(statusFolder, seq)
	if err := atomicfile.WriteFile(p, data, 0o644); err != nil {
		return "", err
	}
	return p, nil
}

// ReadStatus reads and parses a status file written by WriteStatus.
func ReadStatus(path string) (StatusItem, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return StatusItem{}, err
	}
	var items []StatusItem
	if err := json.Unmarshal(data, &items); err != nil {
		return StatusItem{}, fmt.Errorf("extension: parse status %s: %w", path, err)
	}
	if len(items) == 0 {
		return StatusItem{}, fmt.Errorf("extension: status %s is an empty array", path)
	}
	return items[0], nil
}
