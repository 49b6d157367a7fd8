package telemetry

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// DefaultMaxEventFiles is the cap on generic overflow files when
// maxEventFileCount is not configured (§6.1).
const DefaultMaxEventFiles = 30

// maxStatusEventFiles is the cap on extension-status overflow files.
const maxStatusEventFiles = 1000

// fileKind is one of the two overflow file families.
type fileKind struct {
	prefix string // "" (generic) or "extension_"
	name   *regexp.Regexp
}

var (
	genericFiles = fileKind{"", regexp.MustCompile(`^[0-9]+\.json$`)}
	statusFiles  = fileKind{"extension_", regexp.MustCompile(`^extension_[0-9]+\.json$`)}
)

// eventDir is the event folder: overflow is written there as
// <unixnanos>.json (a JSON array of Event) and extension_<unixnanos>.json
// (a JSON array of StatusEvent), and read back and deleted later.
type eventDir struct {
	path     string // "" = no folder: overflow is dropped
	maxFiles int    // generic files
}

// list returns the files of a kind, oldest first (by the number in the
// name; the names are Unix nanoseconds).
func (d eventDir) list(k fileKind) []string {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && k.name.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	num := func(s string) uint64 {
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(s, k.prefix), ".json"), 10, 64)
		return n
	}
	sort.Slice(names, func(i, j int) bool { return num(names[i]) < num(names[j]) })
	return names
}

// write stores events (a slice of Event or StatusEvent) as one new file of
// kind k, unless the folder is unset or already holds the kind's maximum
// number of files. It reports whether the events were kept.
func (d eventDir) write(k fileKind, events any, now time.Time) (bool, error) {
	if d.path == "" {
		return false, nil
	}
	limit := d.maxFiles
	if k.prefix == statusFiles.prefix {
		limit = maxStatusEventFiles
	}
	if err := os.MkdirAll(d.path, 0o700); err != nil {
		return false, fmt.Errorf("telemetry: event folder: %w", err)
	}
	if len(d.list(k)) >= limit {
		return false, nil
	}
	data, err := json.Marshal(events)
	if err != nil {
		return false, fmt.Errorf("telemetry: encode events: %w", err)
	}
	name := filepath.Join(d.path, k.prefix+strconv.FormatInt(now.UnixNano(), 10)+".json")
	for {
		// Two writes within one clock tick must not overwrite each other.
		if _, err := os.Lstat(name); os.IsNotExist(err) {
			break
		}
		now = now.Add(time.Nanosecond)
		name = filepath.Join(d.path, k.prefix+strconv.FormatInt(now.UnixNano(), 10)+".json")
	}
	if err := atomicfile.WriteFile(name, data, 0o600); err != nil {
		return false, fmt.Errorf("telemetry: %w", err)
	}
	return true, nil
}

// readInto re-ingests files of kind k, oldest first, while each fits in
// room events: every file read is deleted; a file that cannot be parsed is
// deleted and reported in bad. It stops at the first file that does not
// fit. Messages are cleaned again, so nothing written into the folder by
// another hand reaches the host unredacted.
func (d eventDir) readInto(k fileKind, room int, add func(item)) (read, bad int) {
	if d.path == "" {
		return 0, 0
	}
	for _, n := range d.list(k) {
		p := filepath.Join(d.path, n)
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var items []item
		if k.prefix == statusFiles.prefix {
			var evs []StatusEvent
			err = json.Unmarshal(data, &evs)
			for i := range evs {
				evs[i].clean()
				items = append(items, item{status: &evs[i]})
			}
		} else {
			var evs []Event
			err = json.Unmarshal(data, &evs)
			for i := range evs {
				evs[i].clean()
				items = append(items, item{generic: &evs[i]})
			}
		}
		if err != nil {
			_ = os.Remove(p)
			bad++
			continue
		}
		if len(items) > room {
			return read, bad
		}
		if err := os.Remove(p); err != nil {
			// Not removable: reading it again next time would duplicate it.
			continue
		}
		for _, it := range items {
			add(it)
		}
		room -= len(items)
		read += len(items)
	}
	return read, bad
}
