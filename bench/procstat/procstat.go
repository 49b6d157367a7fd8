// Package procstat reads the resource figures of a running process from
// /proc: CPU time (utime and stime), resident memory (VmRSS, VmHWM), thread
// count and open file descriptors.
package procstat

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// UserHZ is the clock-tick rate of /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const UserHZ = 100

// Sample is one reading of a process.
type Sample struct {
	// CPU is user+system time consumed so far.
	CPU time.Duration `json:"cpu_ns"`
	// RSSKiB and HWMKiB are VmRSS and VmHWM (peak RSS) in KiB.
	RSSKiB int64 `json:"rss_kib"`
	HWMKiB int64 `json:"hwm_kib"`
	// Threads is the number of threads (Threads: in status).
	Threads int `json:"threads"`
	// FDs is the number of entries in /proc/<pid>/fd.
	FDs int `json:"fds"`
}

// Read returns the current Sample of pid.
func Read(pid int) (Sample, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	st, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: %w", err)
	}
	t, _, err := ParseStat(string(st))
	if err != nil {
		return Sample{}, err
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: %w", err)
	}
	s, err := ParseStatus(string(status))
	if err != nil {
		return Sample{}, err
	}
	s.CPU = t.Total()
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: %w", err)
	}
	s.FDs = len(fds)
	return s, nil
}

// CPU returns the user+system time of pid.
func CPU(pid int) (time.Duration, error) {
	t, err := SplitCPU(pid)
	return t.Total(), err
}

// SplitCPU returns the user and system time of pid.
func SplitCPU(pid int) (Times, error) {
	st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return Times{}, fmt.Errorf("procstat: %w", err)
	}
	t, _, err := ParseStat(string(st))
	return t, err
}

// TreeCPU returns the user+system time of pid and of its direct children
// (e.g. an nginx master and its workers).
func TreeCPU(pid int) (time.Duration, error) {
	total, err := CPU(pid)
	if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("procstat: %w", err)
	}
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		t, ppid, err := ParseStat(string(st))
		if err != nil || ppid != pid || child == pid {
			continue
		}
		total += t.Total()
	}
	return total, nil
}

// Times is a process's CPU time, split into user space and kernel.
type Times struct {
	User, Sys time.Duration
}

// Total is user plus system time.
func (t Times) Total() time.Duration { return t.User + t.Sys }

// ParseStat parses a /proc/<pid>/stat line and returns utime and stime and
// the parent pid. The command name may contain spaces and parentheses.
func ParseStat(line string) (t Times, ppid int, err error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return Times{}, 0, errors.New("procstat: stat line without ')'")
	}
	// Fields after the name start at field 3 (state).
	f := strings.Fields(line[i+1:])
	if len(f) < 13 {
		return Times{}, 0, fmt.Errorf("procstat: stat line has %d fields after the name", len(f))
	}
	ppid, err = strconv.Atoi(f[1]) // field 4
	if err != nil {
		return Times{}, 0, fmt.Errorf("procstat: ppid: %w", err)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)  // field 14
	stt, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return Times{}, 0, fmt.Errorf("procstat: utime/stime: %w", err)
	}
	tick := func(n uint64) time.Duration { return time.Duration(n) * time.Second / UserHZ }
	return Times{User: tick(ut), Sys: tick(stt)}, ppid, nil
}

// ParseStatus reads VmRSS, VmHWM and Threads from a /proc/<pid>/status
// text. A missing VmRSS or Threads line is an error (kernel threads and
// zombies have no memory lines).
func ParseStatus(text string) (Sample, error) {
	var s Sample
	var haveRSS, haveThreads bool
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSSKiB, haveRSS = n, true
		case "VmHWM":
			s.HWMKiB = n
		case "Threads":
			s.Threads, haveThreads = int(n), true
		}
	}
	if !haveRSS || !haveThreads {
		return Sample{}, errors.New("procstat: status without VmRSS or Threads")
	}
	return s, nil
}
