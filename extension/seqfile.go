package extension

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// SequenceFile is the handler's record of the last sequence number enable
// processed (upstream's current_seq_no.txt). waagent keeps no such record;
// idempotency is the handler's job.
type SequenceFile string

// Read returns the recorded number and true, or false when the file is
// absent or does not hold a valid number.
func (f SequenceFile) Read() (int, bool) {
	data, err := os.ReadFile(string(f))
	if err != nil {
		return 0, false
	}
	n, err := ParseSequenceNumber(string(data))
	if err != nil {
		return 0, false
	}
	return n, true
}

// Update records seq. It reports changed=true when the file was absent or
// held another value (and was rewritten), false when it already held seq.
// A write failure is returned as an error and leaves changed false.
func (f SequenceFile) Update(seq int) (changed bool, err error) {
	if cur, ok := f.Read(); ok && cur == seq {
		return false, nil
	}
	if err := atomicfile.WriteFile(string(f), []byte(strconv.Itoa(seq)), 0o600); err != nil {
		return false, fmt.Errorf("extension: record sequence number: %w", err)
	}
	return true, nil
}

// Remove deletes the file; a missing file is not an error.
func (f SequenceFile) Remove() error {
	if err := os.Remove(string(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
