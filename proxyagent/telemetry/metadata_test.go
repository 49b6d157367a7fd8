package telemetry

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func TestParseGoalState(t *testing.T) {
	cases := []struct {
		name, doc         string
		container, target string
		err               bool
	}{
		{"fixture", fxGoalState, fxContainerID, fxSharedTarget, false},
		{"no role instance", `<GoalState><Container><ContainerId>c</ContainerId><RoleInstanceList/></Container></GoalState>`, "", "", true},
		{"no shared config", `<GoalState><Container><ContainerId>c</ContainerId><RoleInstanceList><RoleInstance/></RoleInstanceList></Container></GoalState>`, "", "", true},
		{"not XML", `{"goal":"state"}`, "", "", true},
		{"relative URL", `<GoalState><Container><ContainerId> c </ContainerId><RoleInstanceList><RoleInstance><Configuration><SharedConfig>/machine/x?comp=config&amp;type=sharedConfig</SharedConfig></Configuration></RoleInstance></RoleInstanceList></Container></GoalState>`, "c", "/machine/x?comp=config&type=sharedConfig", false},
		{"utf-16 declaration", `<?xml version="1.0" encoding="utf-16"?><GoalState><Container><ContainerId>c</ContainerId><RoleInstanceList><RoleInstance><Configuration><SharedConfig>http://h/s?a=b</SharedConfig></Configuration></RoleInstance></RoleInstanceList></Container></GoalState>`, "c", "/s?a=b", false},
	}
	for _, c := range cases {
		container, target, err := parseGoalState([]byte(c.doc))
		if (err != nil) != c.err || container != c.container || target != c.target {
			t.Errorf("%s: parseGoalState = %q, %q, %v", c.name, container, target, err)
		}
	}
}

func TestParseSharedConfig(t *testing.T) {
	tenant, role, inst, err := parseSharedConfig([]byte(fxSharedConfig))
	if err != nil || tenant != fxTenant || role != fxRole || inst != fxInstance {
		t.Errorf("parseSharedConfig = %q, %q, %q, %v", tenant, role, inst, err)
	}
	if _, _, inst, err := parseSharedConfig([]byte(`<SharedConfig><Deployment name="d"/><Role name="r"/></SharedConfig>`)); err != nil || inst != "" {
		t.Errorf("no instances: %q, %v", inst, err)
	}
	if _, _, _, err := parseSharedConfig([]byte(`<SharedConfig>`)); err == nil {
		t.Error("truncated shared config parsed")
	}
}

// The metadata refresh against the fake host on loopback (httptest):
// the three calls with their headers, signed when a key is given, and the
// fields of §6.2 read from the answers.
func TestFetchMetadataLoopback(t *testing.T) {
	key, err := msp.NewKey("8e1cb3b4-4e0b-4b4f-9a1e-3cfd6a3a1b2c", strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, signWith := range []*msp.Key{nil, key} {
		f := &fakeHost{key: signWith}
		md, err := fetchOverLoopback(t, f, signWith)
		if err != nil {
			t.Fatal(err)
		}
		if md != fxMetadata {
			t.Errorf("metadata %+v, want %+v", md, fxMetadata)
		}
		f.checkNoViolations(t)
		_, _, calls, _ := f.snapshot()
		want := []string{"ws GET " + msp.GoalStatePath, "ws GET " + fxSharedTarget, "imds GET " + msp.IMDSInstancePath}
		if strings.Join(calls, "\n") != strings.Join(want, "\n") {
			t.Errorf("calls %q, want %q", calls, want)
		}
	}
}

// Failures of any of the three calls fail the refresh; a UTF-16 goal
// state (charset in Content-Type) is read; an offer-less image is origin 0.
func TestFetchMetadataAnswers(t *testing.T) {
	utf16le := func(s string) []byte {
		b := []byte{0xFF, 0xFE}
		for _, u := range utf16.Encode([]rune(s)) {
			b = append(b, byte(u), byte(u>>8))
		}
		return b
	}
	cases := []struct {
		name string
		edit func(*fakeHost)
		err  bool
	}{
		{"goal state 500", func(f *fakeHost) { f.goalStateCode = 500 }, true},
		{"shared config 404", func(f *fakeHost) { f.sharedConfigCode = 404 }, true},
		{"imds 429", func(f *fakeHost) { f.imdsCode = 429 }, true},
		{"goal state 202 is 2xx", func(f *fakeHost) { f.goalStateCode = 202 }, false},
		{"goal state utf-16", func(f *fakeHost) {
			f.goalStateCT = "text/xml; charset=utf-16"
			f.goalStateBody = utf16le(strings.Replace(fxGoalState, "utf-8", "utf-16", 1))
		}, false},
		{"goal state utf-32", func(f *fakeHost) { f.goalStateCT = "text/xml; charset=utf-32" }, true},
	}
	for _, c := range cases {
		f := &fakeHost{}
		c.edit(f)
		ws := httptest.NewServer(f.wireServer())
		imds := httptest.NewServer(f.imds())
		client := func(addr string) *hostconn.Client {
			return &hostconn.Client{Addr: addr, Timeout: 5 * time.Second, Dial: hostconn.Dialer(0, 5*time.Second).DialContext, Now: time.Now}
		}
		md, err := fetchMetadata(context.Background(), client(ws.Listener.Addr().String()), client(imds.Listener.Addr().String()), nil)
		if (err != nil) != c.err || (err == nil && md != fxMetadata) {
			t.Errorf("%s: %+v, %v", c.name, md, err)
		}
		ws.Close()
		imds.Close()
	}
}

// A metadata value far longer than any id or name fails the refresh
// instead of being repeated in every event.
func TestFetchMetadataRefusesHugeValues(t *testing.T) {
	f := &fakeHost{goalStateBody: []byte(strings.Replace(fxGoalState, fxContainerID, strings.Repeat("c", MaxMetadataBytes+1), 1))}
	_, err := fetchOverLoopback(t, f, nil)
	if err == nil || !strings.Contains(err.Error(), "1025 bytes") {
		t.Fatalf("err %v, want the value refused", err)
	}
}

// fetchOverLoopback serves f's WireServer and IMDS on loopback HTTP
// servers and refreshes the metadata from them over real sockets.
func fetchOverLoopback(t *testing.T, f *fakeHost, key *msp.Key) (Metadata, error) {
	t.Helper()
	ws := httptest.NewServer(f.wireServer())
	t.Cleanup(ws.Close)
	imds := httptest.NewServer(f.imds())
	t.Cleanup(imds.Close)
	client := func(addr string) *hostconn.Client {
		return &hostconn.Client{Addr: addr, Timeout: 5 * time.Second, Dial: hostconn.Dialer(0, 5*time.Second).DialContext, Now: time.Now}
	}
	return fetchMetadata(context.Background(), client(ws.Listener.Addr().String()), client(imds.Listener.Addr().String()), key)
}
