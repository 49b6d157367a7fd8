package console

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Each line has upstream's shape, lines from several goroutines never
// interleave, and every line is appended.
func TestLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	w := New(path, "1.2.3")
	w.now = time.Now
	if !w.Line("created") {
		t.Fatal("a missing file is not created")
	}
	if err := os.WriteFile(path, []byte("earlier\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.now = func() time.Time { return time.Date(2025, 4, 23, 12, 0, 0, 123e6, time.FixedZone("x", 3600)) }
	if !w.Line("Provision finished successfully") {
		t.Fatal("line not written")
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() { w.Line("milestone " + strconv.Itoa(i) + " " + strings.Repeat("x", 300)) })
	}
	wg.Wait()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 22 || lines[0] != "earlier" {
		t.Fatalf("%d lines, first %q", len(lines), lines[0])
	}
	want := "2025-04-23T11:00:00.123 azure-proxy-agent_1.2.3(" + strconv.Itoa(os.Getpid()) + ") - Provision finished successfully"
	if lines[1] != want {
		t.Errorf("line\n got %q\nwant %q", lines[1], want)
	}
	shape := regexp.MustCompile(`^2025-04-23T11:00:00\.123 azure-proxy-agent_1\.2\.3\(\d+\) - milestone \d+ x{300}$`)
	for _, l := range lines[2:] {
		if !shape.MatchString(l) {
			t.Errorf("interleaved or malformed line %q", l)
		}
	}
}

// A console that cannot be opened is reported, not fatal; a nil Writer
// writes nothing.
func TestLineNoConsole(t *testing.T) {
	if New(filepath.Join(t.TempDir(), "missing", "console"), "1").Line("x") {
		t.Error("line reported written to a missing console")
	}
	if w := New("", "1"); w != nil || w.Line("x") {
		t.Error("a Writer for no console wrote")
	}
}

func TestStartMessage(t *testing.T) {
	got := StartMessage("1.0.47", "Linux:Debian GNU/Linux-12", "x86_64", 1234567*time.Microsecond)
	want := "============== GuestProxyAgent (1.0.47) is starting on Linux:Debian GNU/Linux-12(x86_64), elapsed: 1234"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
