package audit

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
)

func checkRecordJSON(t *testing.T, rec *Record) {
	t.Helper()
	want, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendRecord(nil, rec, nil); !bytes.Equal(got, want) {
		t.Fatalf("hand encoder\n got %s\nwant %s", got, want)
	}
}

// The hand-written encoder gives json.Marshal's bytes for every shape of
// record: no caller, a full caller with ancestry and workload, empty and
// nil groups, escapes of every kind, small and large latencies.
func TestRecordJSONMatchesMarshal(t *testing.T) {
	full := &claims.Claims{UserID: 1000, UserName: "a<b>&\"c\"", UserGroups: []string{"g1", "\u2028x\u2029"}, ProcessID: 42,
		ProcessName: "curl", ProcessFullPath: "/usr/bin/curl", ProcessCmdLine: "curl \x00\x01\x1f\b\f\n\r\t\\ \xff\xfe é",
		RunAsElevated: true, ClientIP: "127.0.0.1", ClientPort: 5000,
		Ancestry: []claims.Process{{PID: 1, Exe: "/bin/sh", CmdLine: "sh"}, {PID: 2}},
		Workload: claims.Workload{CgroupPath: "/docker/x", ContainerID: "abc", PodUID: "p"}, OtherNetns: true, OtherUserNS: true}
	empty := claims.Empty("", 0)
	base := Record{V: 1, Time: time.Date(2026, 12, 1, 11, 0, 0, 123456789, time.UTC), Seq: 7, HTTPID: 3, TCPID: 2,
		Client: "127.0.0.1:5000", Destination: Destination{"IMDS", "169.254.169.254:80"}, Method: "GET",
		Target: "/metadata?a=<b>&c", Decision: "allow", Mode: "enforce", RuleID: "r", Epoch: 9, Privilege: "p",
		Identity: "i", Reason: "ok", Status: 200, LatencyMs: 0.123, Prev: "ab"}
	for _, c := range []*claims.Claims{nil, full, &empty, {}} {
		for _, lat := range []float64{0, 0.001, 1e-7, 12.5, 1e21, 3e-10, -0} {
			for _, dropped := range []uint64{0, 5} {
				for _, suppressed := range []uint64{0, 7} {
					rec := base
					rec.Caller, rec.LatencyMs, rec.Dropped, rec.Suppressed = c, lat, dropped, suppressed
					checkRecordJSON(t, &rec)
				}
			}
		}
	}
	rec := base
	rec.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	checkRecordJSON(t, &rec)
	rec.LatencyMs = math.Round(float64(1234567*time.Nanosecond)/1e3) / 1e3
	checkRecordJSON(t, &rec)
}

// FuzzRecordJSON compares the hand encoder with json.Marshal on arbitrary
// strings and numbers.
func FuzzRecordJSON(f *testing.F) {
	f.Add("curl -H x", "/a?b=<c>", "\xff\u2028", uint64(1), 0.5, false)
	f.Fuzz(func(t *testing.T, cmd, target, other string, n uint64, lat float64, root bool) {
		if math.IsNaN(lat) || math.IsInf(lat, 0) {
			return
		}
		c := &claims.Claims{UserID: n, UserName: other, UserGroups: []string{other, cmd}, ProcessCmdLine: cmd, RunAsElevated: root,
			Ancestry: []claims.Process{{PID: uint32(n), Exe: other, CmdLine: cmd}}, Workload: claims.Workload{ContainerID: other}, OtherNetns: root, OtherUserNS: !root}
		rec := Record{V: 1, Time: time.Unix(0, int64(n%(1<<62))).UTC(), Seq: n, Caller: c, Target: target, Error: other,
			Reason: cmd, LatencyMs: lat, Dropped: n, Suppressed: n / 2, Prev: other}
		checkRecordJSON(t, &rec)
	})
}

// fill sets every field reachable from v (a pointer) to a non-zero value
// that differs per field, so a field the hand encoder does not know
// shows up as a difference from json.Marshal.
func fill(v reflect.Value, n *int) {
	*n++
	switch v.Kind() {
	case reflect.Pointer:
		if v.Type() == reflect.TypeFor[*time.Location]() {
			return
		}
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Unix(int64(*n)*1e6, int64(*n)).UTC()))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		fill(v.Index(0), n)
		fill(v.Index(1), n)
	case reflect.String:
		v.SetString("s<" + string(rune('a'+*n%26)) + ">")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		v.SetUint(uint64(*n))
	case reflect.Float64:
		v.SetFloat(float64(*n) + 0.25)
	default:
		panic("fill: add a case for " + v.Kind().String())
	}
}

// Every field of Record and of the claims it carries, now and whenever
// one is added, is written exactly as json.Marshal writes it.
func TestRecordJSONCoversEveryField(t *testing.T) {
	var rec Record
	n := 0
	fill(reflect.ValueOf(&rec).Elem(), &n)
	checkRecordJSON(t, &rec)
}

// Summaries print a status as upstream's http crate does, where its phrase
// differs from Go's too.
func TestResponseStatusMatchesUpstream(t *testing.T) {
	for code, want := range map[int]string{
		200: "200 OK", 203: "203 Non Authoritative Information", 403: "403 Forbidden",
		413: "413 Payload Too Large", 414: "414 URI Too Long", 416: "416 Range Not Satisfiable",
		421: "421 Misdirected Request", 422: "422 Unprocessable Entity", 502: "502 Bad Gateway",
		299: "299 <unknown status code>", 600: "600 <unknown status code>",
	} {
		if got := ResponseStatus(code); got != want {
			t.Errorf("ResponseStatus(%d) = %q, want %q", code, got, want)
		}
	}
}
