package procstat

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		name, line string
		cpu        Times
		ppid       int
		bad        bool
	}{
		{"plain", "123 (azure-proxy-ag) S 7 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 1 2 3", Times{User: 2500 * time.Millisecond, Sys: 500 * time.Millisecond}, 7, false},
		{"name with spaces and parens", "9 (a) b (c)) R 1 9 9 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0", Times{User: 10 * time.Millisecond, Sys: 20 * time.Millisecond}, 1, false},
		{"no name", "123 S 7", Times{}, 0, true},
		{"truncated", "123 (x) S 7 1 2", Times{}, 0, true},
		{"non-numeric utime", "1 (x) S 0 1 1 0 -1 0 0 0 0 0 u 2 0 0 20 0 1 0", Times{}, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cpu, ppid, err := ParseStat(c.line)
			if c.bad {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil || cpu != c.cpu || ppid != c.ppid {
				t.Errorf("got %v %d %v, want %v %d", cpu, ppid, err, c.cpu, c.ppid)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	s, err := ParseStatus("Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n")
	if err != nil || s.RSSKiB != 10240 || s.HWMKiB != 20480 || s.Threads != 7 {
		t.Errorf("got %+v %v", s, err)
	}
	if _, err := ParseStatus("Name:\tkworker\nThreads:\t1\n"); err == nil {
		t.Error("status without VmRSS accepted")
	}
}

func TestReadSelf(t *testing.T) {
	s, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSSKiB <= 0 || s.HWMKiB < s.RSSKiB || s.Threads < 1 || s.FDs < 3 {
		t.Errorf("implausible reading of the test process: %+v", s)
	}
	if _, err := TreeCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if _, err := Read(-1); err == nil {
		t.Error("reading a non-existent pid succeeded")
	}
}
