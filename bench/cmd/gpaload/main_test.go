package main

import (
	"net/http"
	"testing"
)

func TestHeadersFlag(t *testing.T) {
	h := headers{}
	for _, v := range []string{"Metadata: true", "X-A:1", "X-A: 2"} {
		if err := h.Set(v); err != nil {
			t.Fatalf("%q: %v", v, err)
		}
	}
	hh := http.Header(h)
	if hh.Get("Metadata") != "true" || len(hh.Values("X-A")) != 2 {
		t.Errorf("got %v", hh)
	}
	for _, bad := range []string{"no colon", ": empty name"} {
		if err := h.Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRunUsage(t *testing.T) {
	if code := run([]string{}); code != 2 {
		t.Errorf("missing -url: exit %d, want 2", code)
	}
	if code := run([]string{"-url", "http://127.0.0.1:1/", "-c", "0"}); code != 2 {
		t.Errorf("-c 0: exit %d, want 2", code)
	}
}
