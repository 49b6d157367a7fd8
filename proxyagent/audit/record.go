package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
)

// SchemaVersion is the "v" of every Record this package writes. A reader
// accepts records of this version; a new version is introduced only for a
// change that an old reader would misread (removing or re-typing a field);
// new optional fields do not change it.
const SchemaVersion = 1

// Record is one line of the JSON-lines audit log (ProxyAgent.Audit.jsonl):
// one authorization decision, or one request that never reached
// authorization. Schema version 1, field by field:
//
//	v            always 1
//	time         request start, RFC 3339 with nanoseconds, UTC
//	seq          record number within one agent run, from 1; a reset
//	             marks a restart
//	httpId       request id (proxyConnectionsCount at the time); 0 for a
//	             request answered before the request flow (413)
//	tcpId        client connection id
//	caller       the caller's claims (with "ancestry"); null without identity
//	client       client address "ip:port"
//	destination  {"service": WireServer|IMDS|HostGAPlugin|ProxyAgent|Default,
//	             "addr": "ip:port"}; both "" when the connection had no
//	             original destination (a direct connection)
//	method, target  request line as received
//	decision     "allow", "audit-deny", "deny", or "none" when the request
//	             never reached authorization
//	mode         "disabled", "audit", "enforce" or "" (decision "none")
//	ruleId, epoch  rule set id and snapshot version used
//	privilege, identity  the matching privilege and identity names ("" when none)
//	reason       short explanation of the decision
//	status       HTTP status the client got (0 if none was sent)
//	error        error detail ("" when none)
//	latencyMs    time to answer, milliseconds (microsecond precision)
//	dropped      records lost just before this one because the writer
//	             queue was full (omitted when 0)
//	suppressed   records of this caller not written since its previous
//	             one because it exceeded its record budget (omitted when 0;
//	             see Options.CallerBurst)
//	prev         hex SHA-256 of the previous line's bytes (without its line
//	             feed); "" for the first line written by an agent with no
//	             earlier log. Editing or deleting a line breaks the chain.
//
// Every string is JSON-escaped, so no caller-controlled text (command
// lines, targets) can start a new line.
type Record struct {
	V           int            `json:"v"`
	Time        time.Time      `json:"time"`
	Seq         uint64         `json:"seq"`
	HTTPID      uint64         `json:"httpId"`
	TCPID       uint64         `json:"tcpId"`
	Caller      *claims.Claims `json:"caller"`
	Client      string         `json:"client"`
	Destination Destination    `json:"destination"`
	Method      string         `json:"method"`
	Target      string         `json:"target"`
	Decision    string         `json:"decision"`
	Mode        string         `json:"mode"`
	RuleID      string         `json:"ruleId"`
	Epoch       uint64         `json:"epoch"`
	Privilege   string         `json:"privilege"`
	Identity    string         `json:"identity"`
	Reason      string         `json:"reason"`
	Status      int            `json:"status"`
	Error       string         `json:"error"`
	LatencyMs   float64        `json:"latencyMs"`
	Dropped     uint64         `json:"dropped,omitempty"`
	Suppressed  uint64         `json:"suppressed,omitempty"`
	Prev        string         `json:"prev"`
}

// Destination names where a request was going.
type Destination struct {
	Service string `json:"service"`
	Addr    string `json:"addr"`
}

// DecisionNone is Record.Decision for a request that was not authorized.
const DecisionNone = "none"

// chainHash returns the value of the next record's Prev for line (without
// its line feed).
func chainHash(line []byte) string {
	sum := sha256.Sum256(line)
	var text [2 * sha256.Size]byte
	hex.Encode(text[:], sum[:])
	return string(text[:])
}

// LineError is one unusable or suspicious line of an audit log.
type LineError struct {
	Line   int    // 1-based line number
	Reason string // e.g. "truncated", "invalid JSON: …", "hash chain broken"
}

// Error names the line and what is wrong with it.
func (e LineError) Error() string { return "line " + strconv.Itoa(e.Line) + ": " + e.Reason }

// CorruptError lists the problems ReadLog found. Lines holds at most
// maxReportedLines entries; Count is the total.
type CorruptError struct {
	Lines []LineError
	Count int
}

// Error says how many lines were bad and which was first.
func (e *CorruptError) Error() string {
	if len(e.Lines) == 0 {
		return "audit log: corrupt"
	}
	return fmt.Sprintf("audit log: %d bad line(s), first %s", e.Count, e.Lines[0].Error())
}

const (
	maxReportedLines = 1000
	// MaxLineBytes bounds one audit line for ReadLog; longer lines are
	// reported as corrupt.
	MaxLineBytes = 1 << 20
)

// ReadLog reads an audit log and calls fn for each record, in order, with
// its 1-based line number. It never stops at a bad line: a line that is
// not a version-1 record (invalid JSON, a line cut short at the end of the
// input, an unknown schema version, a line over MaxLineBytes) is skipped,
// and a record whose prev does not match the preceding line is still
// passed to fn; all such lines are reported together in a *CorruptError
// returned after the last line. The first line's prev cannot be checked
// (it refers to a line in an older file). If fn returns an error, ReadLog
// stops and returns it; a read error is returned as is.
func ReadLog(r io.Reader, fn func(lineNo int, rec Record) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var bad CorruptError
	report := func(line int, reason string) {
		bad.Count++
		if len(bad.Lines) < maxReportedLines {
			bad.Lines = append(bad.Lines, LineError{Line: line, Reason: reason})
		}
	}
	var prevHash string
	havePrev := false
	var long []byte
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		tooLong := false
		for err == bufio.ErrBufferFull {
			// Keep reading the line; remember at most MaxLineBytes+1.
			if len(long) <= MaxLineBytes {
				long = append(long, line...)
			}
			line, err = br.ReadSlice('\n')
		}
		if long != nil {
			long = append(long, line...)
			line, long = long, nil
			tooLong = len(line) > MaxLineBytes
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(line) == 0 && err == io.EOF {
			break
		}
		complete := bytes.HasSuffix(line, []byte{'\n'})
		text := bytes.TrimSuffix(line, []byte{'\n'})
		hash := chainHash(text)
		switch {
		case tooLong:
			report(lineNo, "line longer than "+strconv.Itoa(MaxLineBytes)+" bytes")
		default:
			var rec Record
			if jerr := json.Unmarshal(text, &rec); jerr != nil {
				if !complete {
					report(lineNo, "truncated (no line feed at end of input)")
				} else {
					report(lineNo, "invalid JSON: "+jerr.Error())
				}
				break
			}
			if rec.V != SchemaVersion {
				report(lineNo, "unsupported schema version "+strconv.Itoa(rec.V))
				break
			}
			if havePrev && rec.Prev != prevHash {
				report(lineNo, "hash chain broken (prev does not match the preceding line)")
			}
			if ferr := fn(lineNo, rec); ferr != nil {
				return ferr
			}
		}
		prevHash, havePrev = hash, true
		if err == io.EOF {
			break
		}
	}
	if bad.Count > 0 {
		return &bad
	}
	return nil
}

// IsCorrupt reports whether err (from ReadLog) only lists bad lines, so
// that the records passed to fn are all there is to read.
func IsCorrupt(err error) bool {
	var c *CorruptError
	return errors.As(err, &c)
}
