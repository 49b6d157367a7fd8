package main

import (
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/bench/procstat"
)

// perf stat -x, output as perf 6.x prints it, shortened.
const perfStatSample = `# started on Tue Dec  1 15:10:58 2026

1167.17,msec,task-clock,1167167008,100.00,0.355,CPUs utilized
36850,,context-switches,1167167008,100.00,31.572,K/sec
154367,,raw_syscalls:sys_enter,1167167008,100.00,132.258,K/sec
48891,,syscalls:sys_enter_epoll_pwait,1167167008,100.00,41.889,K/sec
0,,syscalls:sys_enter_epoll_wait,1167167008,100.00,0.000,/sec
<not counted>,,syscalls:sys_enter_dup3,0,100.00,,
31142,,syscalls:sys_enter_write,1167167008,100.00,26.681,K/sec
`

func TestCountTable(t *testing.T) {
	counts, err := parsePerfStat(strings.NewReader(perfStatSample))
	if err != nil {
		t.Fatal(err)
	}
	want := eventCounts{"task-clock": 1167.17, "context-switches": 36850, "raw_syscalls:sys_enter": 154367,
		"syscalls:sys_enter_epoll_pwait": 48891, "syscalls:sys_enter_epoll_wait": 0, "syscalls:sys_enter_write": 31142}
	if len(counts) != len(want) {
		t.Fatalf("parsed %v, want %v", counts, want)
	}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%s = %v, want %v", k, counts[k], v)
		}
	}
	var sb strings.Builder
	writeCountTable(&sb, []countRow{{name: "agent keep-alive c=1", requests: 15571, counts: counts,
		cpu: procstat.Times{User: 450 * time.Millisecond, Sys: 720 * time.Millisecond}}, {name: "nginx", requests: 0}})
	var lines []string // the header's comment lines, then one per row
	for _, l := range strings.Split(strings.TrimSpace(sb.String()), "\n") {
		if !strings.HasPrefix(l, "#") || len(lines) == 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", sb.String())
	}
	// 1167.17 ms / 15571 requests = 75.0 µs; 36850 / 15571 = 2.37; only
	// calls that occurred are listed.
	for _, part := range []string{"req  15571", "cpu   75.0 µs", "user  28.9 sys  46.2", "ctxsw  2.37", "syscalls   9.9", "epoll_pwait 3.14", "write 2.00"} {
		if !strings.Contains(lines[1], part) {
			t.Errorf("row %q lacks %q", lines[1], part)
		}
	}
	if strings.Contains(lines[1], "epoll_wait") || strings.Contains(lines[1], "dup3") {
		t.Errorf("row %q lists a call that did not occur", lines[1])
	}
	if !strings.Contains(lines[2], "no successful requests") {
		t.Errorf("row without requests: %q", lines[2])
	}
	if _, err := parsePerfStat(strings.NewReader("perf: not found\n")); err == nil {
		t.Error("output without counts accepted")
	}
}
