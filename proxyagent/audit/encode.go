package audit

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/claims"
)

// appendRecord appends rec's JSON line to dst: the bytes json.Marshal
// gives for it (field order, omitempty, HTML-safe string escaping, float
// format), written field by field without reflection, into the writer's
// reused buffer. The hash chain covers these bytes, so they must not
// differ from json.Marshal's; FuzzRecordJSON holds it to that. callerJSON
// is the caller's claims already encoded (from appendClaimsJSON); nil
// encodes rec.Caller.
func appendRecord(dst []byte, rec *Record, callerJSON []byte) []byte {
	if y := rec.Time.Year(); y < 0 || y > 9999 || math.IsNaN(rec.LatencyMs) || math.IsInf(rec.LatencyMs, 0) {
		// What json.Marshal refuses is never written by hand either.
		b, err := json.Marshal(rec)
		if err != nil {
			return dst
		}
		return append(dst, b...)
	}
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(rec.V), 10)
	dst = append(dst, `,"time":"`...)
	dst = rec.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, rec.Seq, 10)
	dst = append(dst, `,"httpId":`...)
	dst = strconv.AppendUint(dst, rec.HTTPID, 10)
	dst = append(dst, `,"tcpId":`...)
	dst = strconv.AppendUint(dst, rec.TCPID, 10)
	dst = append(dst, `,"caller":`...)
	if callerJSON != nil {
		dst = append(dst, callerJSON...)
	} else {
		dst = appendClaimsJSON(dst, rec.Caller)
	}
	dst = appendField(dst, "client", rec.Client)
	dst = append(dst, `,"destination":{"service":`...)
	dst = appendJSONString(dst, rec.Destination.Service)
	dst = appendField(dst, "addr", rec.Destination.Addr)
	dst = append(dst, '}')
	dst = appendField(dst, "method", rec.Method)
	dst = appendField(dst, "target", rec.Target)
	dst = appendField(dst, "decision", rec.Decision)
	dst = appendField(dst, "mode", rec.Mode)
	dst = appendField(dst, "ruleId", rec.RuleID)
	dst = append(dst, `,"epoch":`...)
	dst = strconv.AppendUint(dst, rec.Epoch, 10)
	dst = appendField(dst, "privilege", rec.Privilege)
	dst = appendField(dst, "identity", rec.Identity)
	dst = appendField(dst, "reason", rec.Reason)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(rec.Status), 10)
	dst = appendField(dst, "error", rec.Error)
	dst = append(dst, `,"latencyMs":`...)
	dst = appendJSONFloat(dst, rec.LatencyMs)
	if rec.Dropped != 0 {
		dst = append(dst, `,"dropped":`...)
		dst = strconv.AppendUint(dst, rec.Dropped, 10)
	}
	if rec.Suppressed != 0 {
		dst = append(dst, `,"suppressed":`...)
		dst = strconv.AppendUint(dst, rec.Suppressed, 10)
	}
	dst = appendField(dst, "prev", rec.Prev)
	return append(dst, '}')
}

// appendClaimsJSON appends c as json.Marshal writes a *claims.Claims.
func appendClaimsJSON(dst []byte, c *claims.Claims) []byte {
	if c == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, `{"userId":`...)
	dst = strconv.AppendUint(dst, c.UserID, 10)
	dst = appendField(dst, "userName", c.UserName)
	if c.GroupID != 0 {
		dst = append(dst, `,"groupId":`...)
		dst = strconv.AppendUint(dst, c.GroupID, 10)
	}
	dst = append(dst, `,"userGroups":`...)
	if c.UserGroups == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, g := range c.UserGroups {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, g)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"processId":`...)
	dst = strconv.AppendUint(dst, uint64(c.ProcessID), 10)
	dst = appendField(dst, "processName", c.ProcessName)
	dst = appendField(dst, "processFullPath", c.ProcessFullPath)
	dst = appendField(dst, "processCmdLine", c.ProcessCmdLine)
	dst = append(dst, `,"runAsElevated":`...)
	dst = strconv.AppendBool(dst, c.RunAsElevated)
	dst = appendField(dst, "clientIp", c.ClientIP)
	dst = append(dst, `,"clientPort":`...)
	dst = strconv.AppendUint(dst, uint64(c.ClientPort), 10)
	if len(c.Ancestry) > 0 {
		dst = append(dst, `,"ancestry":[`...)
		for i, p := range c.Ancestry {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"pid":`...)
			dst = strconv.AppendUint(dst, uint64(p.PID), 10)
			dst = appendField(dst, "exe", p.Exe)
			dst = appendField(dst, "cmdLine", p.CmdLine)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if c.CgroupPath != "" {
		dst = appendField(dst, "cgroupPath", c.CgroupPath)
	}
	if c.ContainerID != "" {
		dst = appendField(dst, "containerId", c.ContainerID)
	}
	if c.PodUID != "" {
		dst = appendField(dst, "podUid", c.PodUID)
	}
	if c.OtherNetns {
		dst = append(dst, `,"otherNetns":true`...)
	}
	if c.OtherUserNS {
		dst = append(dst, `,"otherUserns":true`...)
	}
	return append(dst, '}')
}

// appendField appends `,"name":` and the JSON string s.
func appendField(dst []byte, name, s string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendJSONString(dst, s)
}

const hexDigits = "0123456789abcdef"

// plainJSON marks the ASCII bytes json.Marshal writes as they are: not a
// control byte, quote or backslash, nor one of the HTML-unsafe <, > and &.
var plainJSON = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// appendJSONString appends s quoted as encoding/json does by default:
// '"' and '\\' backslashed, \b \f \n \r \t as such, other control bytes
// and '<', '>', '&' as \u00XX, invalid UTF-8 as \ufffd, U+2028 and U+2029
// escaped.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if plainJSON[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONFloat appends f as encoding/json writes a float64 (finite).
func appendJSONFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// "e-09" → "e-9", as encoding/json does.
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}
