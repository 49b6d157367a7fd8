package serdejson

import (
	"encoding/json"
	"slices"
	"testing"
)

type doc struct {
	LogFolder string `json:"logFolder"`
	MaxConns  int    `json:"maxConnections,omitempty"`
	Skip      string `json:"-"`
}

// A mis-cased key is dropped (also under Unicode folding) and named; exact
// keys and unknown keys stay; a non-object is returned as it is.
func TestDropMiscased(t *testing.T) {
	n := Of[doc]()
	out, dropped := n.DropMiscased([]byte(`{"LogFolder":"/a","logFolder":"/b","maxConnectionſ":3,"other":1}`))
	var d doc
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatal(err)
	}
	if d.LogFolder != "/b" || d.MaxConns != 0 || !slices.Equal(dropped, []string{"LogFolder", "maxConnectionſ"}) {
		t.Errorf("got %+v, dropped %q", d, dropped)
	}
	var m map[string]any
	json.Unmarshal(out, &m)
	if _, ok := m["other"]; !ok {
		t.Errorf("unknown key dropped: %s", out)
	}
	for _, in := range []string{`[1]`, `not json`, `{"logFolder":"/x"}`} {
		if out, dropped := n.DropMiscased([]byte(in)); string(out) != in || dropped != nil {
			t.Errorf("%s: %s %q", in, out, dropped)
		}
	}
	if n.Like("MAXCONNECTIONS") != "maxConnections" || n.Like("nope") != "" || n.Like("Skip") != "" {
		t.Error("Like")
	}
}

// Marshal keeps '&', '<' and '>' and ends without a line feed.
func TestMarshal(t *testing.T) {
	b, err := Marshal(map[string]string{"url": "/a?x=1&b=<2>"})
	if err != nil || string(b) != `{"url":"/a?x=1&b=<2>"}` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
}

func TestTrimBOM(t *testing.T) {
	for in, want := range map[string]string{"\xef\xbb\xbf{}": "{}", "{}": "{}", "\xef\xbb{}": "\xef\xbb{}", "": ""} {
		if got := string(TrimBOM([]byte(in))); got != want {
			t.Errorf("TrimBOM(%q) = %q, want %q", in, got, want)
		}
	}
}
