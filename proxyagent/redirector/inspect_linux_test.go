package redirector

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestInspect: the pinned links of a loaded redirector are reported with
// their attach types and the test cgroup's id; after Remove each pin is
// reported missing.
func TestInspect(t *testing.T) {
	e := newEnv(t)
	r := e.load()
	want, err := CgroupID(e.cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	got := Inspect(e.cfg.PinDir)
	if len(got) != 5 {
		t.Fatalf("%d attachments, want 5 (sockops, connect6, connect4, bind4, bind6)", len(got))
	}
	for _, a := range got {
		if a.Err != nil || a.Got != a.Want || a.CgroupID != want {
			t.Errorf("attachment %+v, want %s on cgroup %d", a, a.Want, want)
		}
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, a := range Inspect(e.cfg.PinDir) {
		if !errors.Is(a.Err, os.ErrNotExist) {
			t.Errorf("after Remove: %+v", a)
		}
	}
	// A pin that is not a link is reported, not trusted.
	os.MkdirAll(e.cfg.PinDir, 0o700)
	bogus := filepath.Join(e.cfg.PinDir, hooks[0].pin)
	if err := os.WriteFile(bogus, nil, 0o600); err == nil {
		defer os.Remove(bogus)
		if a := Inspect(e.cfg.PinDir)[0]; a.Err == nil {
			t.Errorf("a plain file was taken for a link: %+v", a)
		}
	}
}
