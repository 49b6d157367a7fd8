package logfile

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 4, 23, 12, 0, 0, 123456789, time.UTC)

func TestAppendLineGolden(t *testing.T) {
	tests := []struct {
		level Level
		msg   string
		want  string
	}{
		{Info, "5[3] - hello", "2025-04-23T12:00:00.123 [INFO]    5[3] - hello\n"},
		{Warn, "x", "2025-04-23T12:00:00.123 [WARN]    x\n"},
		{Error, "x", "2025-04-23T12:00:00.123 [ERROR]   x\n"},
		{Debug, "x", "2025-04-23T12:00:00.123 [DEBUG]   x\n"},
		{Trace, "x", "2025-04-23T12:00:00.123 [TRACE]   x\n"},
		{Info, "a\nb\r\nc", "2025-04-23T12:00:00.123 [INFO]    a\\nb\\r\\nc\n"},
	}
	for _, tc := range tests {
		got := string(AppendLine(nil, t0, tc.level, tc.msg))
		if got != tc.want {
			t.Errorf("AppendLine(%v, %q)\n got %q\nwant %q", tc.level, tc.msg, got, tc.want)
		}
		if hdr := string(AppendHeader(nil, t0, tc.level)); len(hdr) != HeaderWidth {
			t.Errorf("header %q is %d bytes", hdr, len(hdr))
		}
	}
	// A non-UTC time is written in UTC.
	east := t0.In(time.FixedZone("X", 3600))
	if got := string(AppendHeader(nil, east, Info)); !strings.HasPrefix(got, "2025-04-23T12:00:00.123") {
		t.Errorf("header %q not in UTC", got)
	}
}

func TestParseLevel(t *testing.T) {
	for _, s := range []string{"Error", "warn", "INFO", " Debug ", "trace"} {
		l, err := ParseLevel(s)
		if err != nil || !strings.EqualFold(l.String(), strings.TrimSpace(s)) {
			t.Errorf("ParseLevel(%q) = %v, %v", s, l, err)
		}
	}
	if _, err := ParseLevel("verbose"); err == nil {
		t.Error("ParseLevel(verbose) succeeded")
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ProxyAgent.Connection.log")
	// Unrelated files with a similar name are never touched.
	other := filepath.Join(dir, "ProxyAgent.log")
	if err := os.WriteFile(other, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	now := t0
	w, err := Open(path, Options{MaxSize: 100, MaxFiles: 3, Now: func() time.Time { now = now.Add(time.Second); return now }})
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 39) + "\n" // 40 bytes
	for i := 0; i < 20; i++ {
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		// Flush after each line so that the size check sees every write.
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	old, err := RotatedFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != 2 {
		t.Fatalf("rotated files %v, want 2 (3 files in all)", old)
	}
	// 20 lines of 40 bytes, rotated at >= 100 bytes: 3 lines per file,
	// the last file holds the remaining 20 % 3 = 2 lines.
	for _, f := range old {
		b, _ := os.ReadFile(f)
		if len(b) != 120 {
			t.Errorf("%s has %d bytes, want 120", f, len(b))
		}
		name := filepath.Base(f)
		if !strings.HasPrefix(name, "ProxyAgent.Connection.log.2025-04-23T12.00.") || !strings.HasSuffix(name, ".log") {
			t.Errorf("rotated name %q", name)
		}
	}
	if b, _ := os.ReadFile(path); len(b) != 80 {
		t.Errorf("current file has %d bytes, want 80", len(b))
	}
	if b, err := os.ReadFile(other); err != nil || string(b) != "keep\n" {
		t.Errorf("unrelated file changed: %q %v", b, err)
	}
	// Rotations happen before lines 4, 7, …, 19: six in all, one clock
	// reading each.
	want := fmt.Sprintf("ProxyAgent.Connection.log.2025-04-23T12.00.%02d.123-%d.log", 6, t0.Add(6*time.Second).UnixNano())
	if got := filepath.Base(old[len(old)-1]); got != want {
		t.Errorf("newest rotated file %q, want %q", got, want)
	}
}

func TestOpenRepairsPartialLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	if err := os.WriteFile(path, []byte("complete\npartial"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("next\n"))
	w.Close()
	if b, _ := os.ReadFile(path); string(b) != "complete\npartial\nnext\n" {
		t.Errorf("file %q", b)
	}
	if _, err := w.Write([]byte("late\n")); err == nil {
		t.Error("write after Close succeeded")
	}
}

func TestOpenRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o600)
	path := filepath.Join(dir, "a.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); err == nil {
		t.Error("Open followed a symbolic link")
	}
}

func TestFlushReopensRemovedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	w, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("one\n"))
	w.Flush()
	os.Remove(path)
	w.Write([]byte("two\n"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two\n" {
		t.Errorf("file %q, want the line written after removal", b)
	}
}

func TestConcurrentWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := Open(path, Options{MaxSize: 4096, MaxFiles: 100})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				w.Write(AppendLine(nil, t0, Info, fmt.Sprintf("g%d line %d", g, i)))
				if i%50 == 0 {
					w.Flush()
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := RotatedFiles(path)
	files = append(files, path)
	lines := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if !strings.HasPrefix(l, "2025-04-23T12:00:00.123 [INFO]    g") {
				t.Fatalf("mangled line %q in %s", l, f)
			}
			lines++
		}
	}
	if lines != 800 {
		t.Errorf("%d lines, want 800", lines)
	}
}

func TestHandler(t *testing.T) {
	var buf strings.Builder
	log := slog.New(NewHandler(&buf, slog.LevelDebug))
	rec := func(l slog.Level, msg string, args ...any) {
		r := slog.NewRecord(t0, l, msg, 0)
		r.Add(args...)
		log.Handler().Handle(context.Background(), r)
	}
	rec(slog.LevelInfo, "Started proxy listener", "port", 3080, "addr", "127.0.0.1")
	rec(slog.LevelError, "key fetch failed", "err", "line1\nline2")
	sub := log.With("module", "keykeeper").WithGroup("g")
	sub.Handler().Handle(context.Background(), func() slog.Record {
		r := slog.NewRecord(t0, slog.LevelWarn, "x", 0)
		r.Add("k", "v")
		return r
	}())
	if log.Enabled(context.Background(), LevelTrace) {
		t.Error("trace enabled at debug level")
	}
	want := "2025-04-23T12:00:00.123 [INFO]    Started proxy listener port=3080 addr=127.0.0.1\n" +
		"2025-04-23T12:00:00.123 [ERROR]   key fetch failed err=\"line1\\nline2\"\n" +
		"2025-04-23T12:00:00.123 [WARN]    x module=keykeeper g.k=v\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
	for _, l := range []Level{Error, Warn, Info, Debug, Trace} {
		if LevelOf(SlogLevel(l)) != l {
			t.Errorf("level %v does not round-trip", l)
		}
	}
}
