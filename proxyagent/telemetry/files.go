package telemetry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
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
	name := ""
	for try := 0; ; try++ {
		// Two writes within one clock tick must not overwrite each other.
		name = filepath.Join(d.path, k.prefix+strconv.FormatInt(now.Add(time.Duration(try)).UnixNano(), 10)+".json")
		_, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return false, fmt.Errorf("telemetry: event file: %w", err)
		}
		if try == 1000 {
			return false, fmt.Errorf("telemetry: no free event file name near %s", name)
		}
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
		data, err := readEventFile(p)
		if err != nil {
			// Not a regular file of ours (a symlink, a device, too big):
			// dropped, as one that cannot be parsed.
			_ = os.Remove(p)
			bad++
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
		if len(items) > QueueSize {
			// More than a queue holds: it would never fit and block the
			// files after it. Not written by this agent.
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

// maxEventFileBytes bounds an event file read back: a full queue of
// events cut to MaxMessageBytes, JSON-escaped, is well below it.
const maxEventFileBytes = 32 << 20

// readEventFile reads the event file at p: a regular file (a symlink is
// not followed) of at most maxEventFileBytes.
func readEventFile(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxEventFileBytes {
		return nil, fmt.Errorf("telemetry: %s is not a regular file of at most %d bytes", p, maxEventFileBytes)
	}
	return io.ReadAll(io.LimitReader(f, maxEventFileBytes+1))
}
