package extension

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// Limits waagent applies to extension telemetry events
// (azurelinuxagent/ga/collect_telemetry_events.py).
const (
	MaxEventFileSize     = 4 * 1024 * 1024
	MaxEventSize         = 6 * 1024
	MaxEventMessageSize  = 3 * 1024
	DefaultMaxEventFiles = 50
)

// Event levels.
const (
	EventInformational = "Informational"
	EventWarning       = "Warning"
	EventError         = "Error"
)

// Event is one telemetry event in the schema waagent collects from
// eventsFolder. All values are strings, as waagent strips each one.
type Event struct {
	Version     string `json:"Version"`
	Timestamp   string `json:"Timestamp"`
	TaskName    string `json:"TaskName"`
	EventLevel  string `json:"EventLevel"`
	Message     string `json:"Message"`
	EventPid    string `json:"EventPid"`
	EventTid    string `json:"EventTid"`
	OperationId string `json:"OperationId"`
}

var eventFileName = regexp.MustCompile(`^\d+\.json$`)

// EventWriter writes telemetry events into an events folder, one file
// named <unix-nanoseconds>.json per call holding a one-element JSON array.
// It is safe for concurrent use (a mutex owns file naming and pruning).
// When the folder is empty or does not exist, writes are skipped without
// error: waagent only creates it when it collects events.
type EventWriter struct {
	Folder   string
	Version  string
	MaxFiles int
	Now      func() time.Time

	mu sync.Mutex
}

// Write records one event. The message is cut (at a UTF-8 boundary) so the
// event stays within MaxEventMessageSize and MaxEventSize; an empty
// message becomes "-" because waagent drops empty messages. After writing,
// the oldest event files beyond MaxFiles (DefaultMaxEventFiles when 0) are
// removed.
func (w *EventWriter) Write(level, task, operationID, message string) error {
	if w == nil || w.Folder == "" {
		return nil
	}
	if fi, err := os.Stat(w.Folder); err != nil || !fi.IsDir() {
		return nil
	}
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	t := now().UTC()
	if message == "" {
		message = "-"
	}
	ev := Event{
		Version:     w.Version,
		Timestamp:   t.Format(TimestampLayout),
		TaskName:    task,
		EventLevel:  level,
		EventPid:    strconv.Itoa(os.Getpid()),
		EventTid:    strconv.Itoa(os.Getpid()),
		OperationId: operationID,
	}
	fixed := len(ev.Version) + len(ev.Timestamp) + len(ev.TaskName) + len(ev.EventLevel) +
		len(ev.EventPid) + len(ev.EventTid) + len(ev.OperationId)
	limit := MaxEventMessageSize
	if MaxEventSize-fixed < limit {
		limit = MaxEventSize - fixed
	}
	if limit < 1 {
		return errors.New("extension: event fields other than the message exceed the event size limit")
	}
	ev.Message = TruncateUTF8(message, limit)
	data, err := json.Marshal([]Event{ev})
	if err != nil {
		return fmt.Errorf("extension: encode event: %w", err)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	n := t.UnixNano()
	var path string
	for {
		path = filepath.Join(w.Folder, strconv.FormatInt(n, 10)+".json")
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		n++
	}
	if err := atomicfile.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	w.prune()
	return nil
}

// prune removes the oldest event files beyond the limit. Caller holds mu.
func (w *EventWriter) prune() {
	max := w.MaxFiles
	if max <= 0 {
		max = DefaultMaxEventFiles
	}
	ents, err := os.ReadDir(w.Folder)
	if err != nil {
		return
	}
	var nums []int64
	for _, e := range ents {
		if !eventFileName.MatchString(e.Name()) {
			continue
		}
		n, err := strconv.ParseInt(e.Name()[:len(e.Name())-len(".json")], 10, 64)
		if err == nil {
			nums = append(nums, n)
		}
	}
	if len(nums) <= max {
		return
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	for _, n := range nums[:len(nums)-max] {
		os.Remove(filepath.Join(w.Folder, strconv.FormatInt(n, 10)+".json"))
	}
}

// TruncateUTF8 returns s cut to at most max bytes without splitting a
// UTF-8 sequence.
func TruncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max <= 0 {
		return ""
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
