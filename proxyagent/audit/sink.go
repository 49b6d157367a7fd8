package audit

// Sink receives every audit record besides the JSON-lines file, e.g. a
// syslog writer.
type Sink interface {
	// WriteRecord is given the record and its JSON line (without line
	// feed; the file's bytes exactly, so a sink redacts exactly what the
	// file does). line and rec are reused after the call returns. It must
	// not block.
	WriteRecord(line []byte, rec *Record)
}

// Written returns how many audit records reached the JSON-lines file
// (its write buffer) since start.
func (r *Recorder) Written() uint64 { return r.written.Load() }
