package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/bench/procstat"
)

// countEvents are the kernel events counted per request (perf stat): CPU,
// context switches, system calls, and the calls that tell a server's own
// work (accept, read, write, ...) from its runtime's (futex, nanosleep,
// sched_yield, the poller's epoll calls).
var countEvents = []string{
	"task-clock", "context-switches", "raw_syscalls:sys_enter",
	"syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_ctl",
	"syscalls:sys_enter_futex", "syscalls:sys_enter_nanosleep", "syscalls:sys_enter_sched_yield",
	"syscalls:sys_enter_accept4", "syscalls:sys_enter_close", "syscalls:sys_enter_dup3",
	"syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_write", "syscalls:sys_enter_writev", "syscalls:sys_enter_sendmmsg",
	"syscalls:sys_enter_getsockname", "syscalls:sys_enter_setsockopt", "syscalls:sys_enter_fcntl",
	"syscalls:sys_enter_bpf", "syscalls:sys_enter_pidfd_send_signal",
}

// eventCounts is one perf stat run: per event, the count over the run.
type eventCounts map[string]float64

// parsePerfStat reads `perf stat -x,` output: value,unit,event,...;
// events perf could not count are left out.
func parsePerfStat(r io.Reader) (eventCounts, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	out := eventCounts{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // "<not counted>", "<not supported>"
		}
		out[f[2]] = v
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("perf stat printed no counts: %q", tail(string(b), 200))
	}
	return out, nil
}

// countRow is one server and load pattern.
type countRow struct {
	name     string
	requests int
	counts   eventCounts
	// cpu is the CPU time the processes spent in user space and in the
	// kernel during the run (/proc/PID/stat).
	cpu procstat.Times
}

// procCPU sums the CPU times of the processes pids (comma-separated).
func procCPU(pids string) (procstat.Times, error) {
	var sum procstat.Times
	for _, pid := range strings.Split(pids, ",") {
		n, err := strconv.Atoi(pid)
		if err != nil {
			return procstat.Times{}, err
		}
		t, err := procstat.SplitCPU(n)
		if err != nil {
			return procstat.Times{}, err
		}
		sum.User += t.User
		sum.Sys += t.Sys
	}
	return sum, nil
}

// writeCountTable prints per request: CPU µs (task-clock) and its user
// and kernel parts, context switches, all system calls, then each counted
// call that occurred.
func writeCountTable(w io.Writer, rows []countRow) {
	fmt.Fprintln(w, "# per request; perf stat of the server's processes during a 3 s gpaload run (countEvents, from 300 ms before the")
	fmt.Fprintln(w, "# run until it ended); user and sys from /proc/PID/stat over the run itself, in 10 ms ticks, so they need not add up to cpu")
	for _, r := range rows {
		if r.requests == 0 {
			fmt.Fprintf(w, "%-34s no successful requests\n", r.name)
			continue
		}
		per := func(ev string) float64 { return r.counts[ev] / float64(r.requests) }
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(r.requests) }
		fmt.Fprintf(w, "%-34s req %6d  cpu %6.1f µs (user %5.1f sys %5.1f)  ctxsw %5.2f  syscalls %5.1f ", r.name, r.requests,
			per("task-clock")*1000, us(r.cpu.User), us(r.cpu.Sys), per("context-switches"), per("raw_syscalls:sys_enter"))
		for _, ev := range countEvents {
			name, ok := strings.CutPrefix(ev, "syscalls:sys_enter_")
			if !ok || per(ev) < 0.005 {
				continue
			}
			fmt.Fprintf(w, " %s %.2f", name, per(ev))
		}
		fmt.Fprintln(w)
	}
}

// countPerRequest runs c=1 and c=16, keep-alive and new connection, for
// the agent in Enforce and for nginx, counting countEvents in the server's
// processes, and writes the table to o.perfDir/counts.txt.
func countPerRequest(ctx context.Context, b *benchEnv, o options) error {
	paths := []pathSpec{pathEnforce}
	if b.nginx != nil && b.nginx.Process != nil {
		paths = append(paths, pathNginx, pathNginxLog)
	}
	for _, f := range goFloors {
		if b.relays[f.name] != nil {
			paths = append(paths, f)
		}
	}
	var rows []countRow
	for _, p := range paths {
		if err := b.setIMDSMode(ctx, p.imdsMode); err != nil {
			return err
		}
		for _, c := range []int{1, 16} {
			for _, ka := range keepAlives {
				pids := strconv.Itoa(b.AgentPID())
				if r := b.relays[p.name]; r != nil {
					pids = strconv.Itoa(r.cmd.Process.Pid)
				}
				if isNginx(p.name) {
					out, err := exec.CommandContext(ctx, "pgrep", "-P", strconv.Itoa(b.nginx.Process.Pid)).Output()
					if err != nil {
						return fmt.Errorf("nginx workers: %w", err)
					}
					pids = strings.Join(strings.Fields(string(out)), ",")
				}
				file := filepath.Join(o.perfDir, fmt.Sprintf("%s-c%d-keepalive-%v.stat", p.name, c, ka))
				stat := exec.CommandContext(ctx, "perf", "stat", "-x,", "-o", file, "-e", strings.Join(countEvents, ","), "-p", pids)
				if err := stat.Start(); err != nil {
					return err
				}
				time.Sleep(300 * time.Millisecond) // perf attached
				before, perr := procCPU(pids)
				var run loadRun
				var lerr error
				var after procstat.Times
				if perr == nil {
					run, lerr = b.runLoad(ctx, p.caller, "-url", p.url, "-H", "Metadata: true",
						"-c", strconv.Itoa(c), "-d", "3s", "-warmup", "0s", "-keepalive="+strconv.FormatBool(ka))
					after, perr = procCPU(pids)
				}
				_ = stat.Process.Signal(os.Interrupt)
				_ = stat.Wait()
				if err := errors.Join(perr, lerr); err != nil {
					return err
				}
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				counts, err := parsePerfStat(f)
				f.Close()
				if err != nil {
					return err
				}
				pattern := "new-conn"
				if ka {
					pattern = "keep-alive"
				}
				rows = append(rows, countRow{name: fmt.Sprintf("%s %s c=%d", p.name, pattern, c), requests: run.Result.OK, counts: counts,
					cpu: procstat.Times{User: after.User - before.User, Sys: after.Sys - before.Sys}})
			}
		}
	}
	var sb strings.Builder
	writeCountTable(&sb, rows)
	return os.WriteFile(filepath.Join(o.perfDir, "counts.txt"), []byte(sb.String()), 0o644)
}
