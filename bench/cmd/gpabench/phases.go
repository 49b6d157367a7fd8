package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opengpa/gpa/bench/load"
	"github.com/opengpa/gpa/bench/procstat"
	"github.com/opengpa/gpa/internal/e2eenv"
)

// benchStart measures agent start to provisioning finished, cold (no key
// on disk, the host has forgotten the key, no pinned eBPF objects) and
// warm (key on disk and latched, pins present), alternating.
func benchStart(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	for i := 0; i < o.starts; i++ {
		for _, cold := range []bool{true, false} {
			if err := b.StopAgent(); err != nil {
				return err
			}
			if cold {
				if _, err := b.Control(ctx, http.MethodPost, "/rotate", nil); err != nil {
					return err
				}
				if err := clearDir(b.KeyFolder); err != nil {
					return err
				}
				if err := os.RemoveAll(filepath.Join(b.BPFFS, "azure-proxy-agent")); err != nil {
					return fmt.Errorf("remove pins: %w", err)
				}
			}
			t0 := time.Now()
			if err := b.StartAgent(); err != nil {
				return err
			}
			done, err := b.waitProvisioned(ctx, 60*time.Second)
			if err != nil {
				return err
			}
			ms := float64(done.Sub(t0)) / float64(time.Millisecond)
			if cold {
				rep.Start.ColdMs = append(rep.Start.ColdMs, ms)
			} else {
				rep.Start.WarmMs = append(rep.Start.WarmMs, ms)
			}
		}
	}
	rep.Start.ColdMedianMs = median(rep.Start.ColdMs)
	rep.Start.WarmMedianMs = median(rep.Start.WarmMs)
	return nil
}

// clearDir removes everything inside dir (not dir itself).
func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// benchIdle reads the agent's idle figures after o.idle without traffic.
func benchIdle(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.idle):
	}
	s, err := procstat.Read(b.AgentPID())
	if err != nil {
		return err
	}
	rep.Memory.IdleAfter = o.idle.String()
	rep.Memory.Idle = s
	return nil
}

// pathSpec is one way a client reaches IMDS.
type pathSpec struct {
	name     string
	imdsMode string // host IMDS mode (and so the agent's)
	url      string
	caller   e2eenv.Caller
	c1Only   bool // only the c=1 cells (token path)
}

// tokenPath is a managed-identity token request (the host simulator
// returns a fake token, ~0.5 KB).
const tokenPath = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

var (
	pathDirect       = pathSpec{"direct", "Disabled", imdsBase + instancePath, e2eenv.Root.Outside(), false}
	pathDirectToken  = pathSpec{"direct-token", "Disabled", imdsBase + tokenPath, e2eenv.Root.Outside(), true}
	pathNginx        = pathSpec{"nginx", "Disabled", "http://" + nginxAddr + instancePath, e2eenv.Root.Outside(), false}
	pathNginxLog     = pathSpec{"nginx-log", "Disabled", "http://" + nginxLogAddr + instancePath, e2eenv.Root.Outside(), false}
	pathGoRelay      = pathSpec{"go-relay", "Disabled", "http://" + relayAddr + instancePath, e2eenv.Root.Outside(), false}
	pathGoRelayRaw   = pathSpec{"go-relay-raw", "Disabled", "http://" + relayRawAddr + instancePath, e2eenv.Root.Outside(), false}
	goFloors         = []pathSpec{pathGoRelay, pathGoRelayRaw}
	pathAudit        = pathSpec{"agent-audit", "Audit", imdsBase + instancePath, e2eenv.Root, false}
	pathAuditToken   = pathSpec{"agent-audit-token", "Audit", imdsBase + tokenPath, e2eenv.Root, true}
	pathEnforce      = pathSpec{"agent-enforce", "Enforce", imdsBase + instancePath, e2eenv.Root, false}
	pathEnforceToken = pathSpec{"agent-enforce-token", "Enforce", imdsBase + tokenPath, e2eenv.Root, true}
)

// isNginx reports the reference nginx's paths (without and with its
// access log; one nginx serves both).
func isNginx(path string) bool { return path == pathNginx.name || path == pathNginxLog.name }

// proxyCPU is the CPU per 10k requests of the server on path (the agent,
// nginx or a Go floor); false for the direct paths.
func (s Summary) proxyCPU(path string) (float64, bool) {
	switch {
	case strings.HasPrefix(path, "agent"):
		return s.AgentCPU, true
	case isNginx(path):
		return s.NginxCPU, true
	case path == pathGoRelay.name || path == pathGoRelayRaw.name:
		return s.RelayCPU, true
	}
	return 0, false
}

// baseline is the direct path a path's added latency is measured against.
func baseline(path string) string {
	switch {
	case strings.HasSuffix(path, "-token"):
		return "direct-token"
	case strings.HasSuffix(path, "-container"):
		return "direct-container"
	}
	return "direct"
}

// Concurrencies and connection modes of the B-lat/B-rps matrix.
var (
	concurrencies = []int{1, 16, 64}
	keepAlives    = []bool{true, false}
)

// benchLatency runs the B-lat/B-rps matrix o.runs times, all paths in each
// repetition, and stores per-cell medians.
func benchLatency(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	paths := []pathSpec{pathDirect, pathDirectToken}
	// direct and nginx need the host's IMDS in Disabled (nginx's probe too).
	if err := b.setIMDSMode(ctx, "Disabled"); err != nil {
		return err
	}
	mode := "Disabled"
	if !o.skipNginx {
		bin, err := ensureNginx(ctx)
		if err == nil {
			err = b.startNginx(ctx, bin, o.nginxWorkersOrDefault())
		}
		if err != nil {
			rep.Notes = append(rep.Notes, "nginx reference not measured: "+err.Error())
		} else {
			paths = append(paths, pathNginx, pathNginxLog)
			defer b.stopNginx()
		}
	}
	if !o.skipRelay {
		defer b.stopRelays()
		for _, f := range []struct {
			p    pathSpec
			addr string
			raw  bool
		}{{pathGoRelay, relayAddr, false}, {pathGoRelayRaw, relayRawAddr, true}} {
			if err := b.startRelay(ctx, f.p, f.addr, f.raw, o.agentProcsOrDefault()); err != nil {
				rep.Notes = append(rep.Notes, "Go floor not measured: "+err.Error())
			} else {
				paths = append(paths, f.p)
			}
		}
	}
	paths = append(paths, pathAudit, pathAuditToken, pathEnforce, pathEnforceToken)
	// The container path: a client in its own network namespace and cgroup
	// (veth into the VM), through the agent's container listener, against
	// the same client going direct (outside the attached group).
	if k, err := b.AddContainer(0); err != nil {
		rep.Notes = append(rep.Notes, "container path not measured: "+err.Error())
	} else {
		url := imdsBase + instancePath
		paths = append([]pathSpec{{"direct-container", "Disabled", url, e2eenv.Root.In(k).Outside(), true}}, paths...)
		paths = append(paths, pathSpec{"agent-audit-container", "Audit", url, e2eenv.Root.In(k), true})
	}

	cells := map[string]*Cell{}
	var order []string
	for r := 0; r < o.runs; r++ {
		for _, p := range paths {
			if p.imdsMode != mode {
				if err := b.setIMDSMode(ctx, p.imdsMode); err != nil {
					return err
				}
				mode = p.imdsMode
			}
			for _, c := range concurrencies {
				if p.c1Only && c != 1 {
					continue
				}
				for _, ka := range keepAlives {
					key := fmt.Sprintf("%s/%d/%v", p.name, c, ka)
					if o.cells != nil && !o.cells.MatchString(key) {
						continue
					}
					cell := cells[key]
					if cell == nil {
						cell = &Cell{Path: p.name, Concurrency: c, KeepAlive: ka}
						cells[key] = cell
						order = append(order, key)
					}
					res, err := b.runLoad(ctx, p.caller, "-url", p.url, "-H", "Metadata: true",
						"-c", strconv.Itoa(c), "-d", o.cell.String(), "-warmup", o.warmup.String(),
						"-keepalive="+strconv.FormatBool(ka))
					if err != nil {
						return err
					}
					cell.Runs = append(cell.Runs, res)
				}
			}
		}
	}
	if o.perfDir != "" {
		if err := profileAgent(ctx, b, o); err != nil {
			rep.Notes = append(rep.Notes, "perf profile failed: "+err.Error())
		}
		if err := countPerRequest(ctx, b, o); err != nil {
			rep.Notes = append(rep.Notes, "perf counts failed: "+err.Error())
		} else {
			rep.Notes = append(rep.Notes, "kernel events per request (perf stat): "+filepath.Join(o.perfDir, "counts.txt"))
		}
	}
	for _, k := range order {
		c := cells[k]
		c.Median = summarize(c.Runs)
		rep.Latency = append(rep.Latency, *c)
		if c.Path == pathNginxLog.name && b.nginx != nil {
			// A reference that wrote no log would measure nothing.
			if fi, err := os.Stat(filepath.Join(b.Dir, "nginx", "access.log")); err != nil || fi.Size() == 0 {
				rep.Notes = append(rep.Notes, "nginx-log wrote no access log: its figures are nginx's without one")
			}
		}
	}
	if s, err := procstat.Read(b.AgentPID()); err == nil {
		rep.Memory.PeakHWMKiB = s.HWMKiB
		rep.Memory.AfterLoad = s
	}
	return nil
}

// ensureNginx returns nginx's path, installing nginx-light with apt-get
// when it is missing.
func ensureNginx(ctx context.Context) (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", nil
	}
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "nginx-light")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get install nginx-light: %w: %s", err, tail(string(out), 300))
	}
	// The package starts its own service; the suite runs its own instance.
	_ = exec.Command("systemctl", "disable", "--now", "nginx").Run()
	return "/usr/sbin/nginx", nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// benchQuota runs the agent (Enforce) under a CPU quota: saturated
// keep-alive throughput, and Azure's 20 req/s (5 concurrent) token budget
// paced, new connection per request.
func benchQuota(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	if o.quota <= 0 {
		return nil
	}
	if err := b.setIMDSMode(ctx, "Enforce"); err != nil {
		return err
	}
	q := &Quota{Percent: o.quota}
	rep.Quota = q
	if err := b.quotaAgent(o.quota); err != nil {
		q.Error = err.Error()
		_ = b.unquotaAgent()
		return nil
	}
	defer b.unquotaAgent()
	sat, err := b.runLoad(ctx, pathEnforce.caller, "-url", pathEnforce.url, "-H", "Metadata: true",
		"-c", "16", "-d", (2 * o.cell).String(), "-warmup", o.warmup.String())
	if err != nil {
		return err
	}
	q.Saturated = summarize([]loadRun{sat})
	paced, err := b.runLoad(ctx, pathEnforce.caller, "-url", pathEnforce.url, "-H", "Metadata: true",
		"-c", "5", "-rate", "20", "-d", "5s", "-warmup", "500ms", "-keepalive=false")
	if err != nil {
		return err
	}
	q.Paced20 = summarize([]loadRun{paced})
	return nil
}

// benchSoak runs paced mixed load (keep-alive and new connections) for
// o.soak and samples the agent's RSS, FDs and threads every 5 s.
func benchSoak(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	if o.soak <= 0 {
		return nil
	}
	if err := b.setIMDSMode(ctx, "Enforce"); err != nil {
		return err
	}
	pid := b.AgentPID()
	soak := &Soak{Duration: o.soak.String(), Load: "2×4 clients (keep-alive and new connection per request), 100 req/s each, Enforce"}
	rep.Memory.Soak = soak
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if s, err := procstat.Read(pid); err == nil {
					soak.Samples = append(soak.Samples, SoakSample{At: time.Since(start).Round(time.Second).Seconds(), Sample: s})
				}
			}
		}
	})
	var runs [2]loadRun
	var errs [2]error
	var lg sync.WaitGroup
	for i, ka := range []bool{true, false} {
		lg.Go(func() {
			runs[i], errs[i] = b.runLoad(ctx, pathEnforce.caller, "-url", pathEnforce.url, "-H", "Metadata: true",
				"-c", "4", "-rate", "100", "-d", o.soak.String(), "-warmup", "0s", "-keepalive="+strconv.FormatBool(ka))
		})
	}
	lg.Wait()
	close(stop)
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	for _, r := range runs {
		soak.Requests += r.OK
		soak.Failed += r.Requests - r.OK
	}
	time.Sleep(2 * time.Second)
	after, err := procstat.Read(pid)
	if err != nil {
		return err
	}
	soak.After = after
	return nil
}

// benchRestart kills the agent with SIGKILL under load (Enforce, new
// connection per request), restarts it at once and reads the host's
// journal for requests served unsigned.
func benchRestart(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	if err := b.setIMDSMode(ctx, "Enforce"); err != nil {
		return err
	}
	seq, err := b.LastSeq(ctx)
	if err != nil {
		return err
	}
	rr := &Restart{Load: "4 clients, new connection per request, Enforce"}
	rep.Restart = rr
	var res loadRun
	var lerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, lerr = b.runLoad(ctx, pathEnforce.caller, "-url", pathEnforce.url, "-H", "Metadata: true",
			"-c", "4", "-d", "4s", "-warmup", "0s", "-keepalive=false", "-trace", "-timeout", "2s")
	}()
	time.Sleep(1500 * time.Millisecond)
	tKill := time.Now()
	if err := b.KillAgent(); err != nil {
		<-done
		return err
	}
	tRestart := time.Now()
	if err := b.StartAgent(); err != nil {
		<-done
		return err
	}
	<-done
	if lerr != nil {
		return lerr
	}
	rr.KillToRestartMs = ms(tRestart.Sub(tKill))
	rr.Requests, rr.OK = res.Requests, res.OK
	var firstOK time.Time
	for _, s := range res.Trace {
		start := time.Unix(0, s.Start)
		if start.Before(tKill) {
			continue
		}
		if !s.OK {
			rr.FailedAfterKill++
			continue
		}
		end := start.Add(time.Duration(s.Latency))
		if firstOK.IsZero() || end.Before(firstOK) {
			firstOK = end
		}
	}
	if firstOK.IsZero() {
		rr.Error = "no request succeeded after the restart within the load run"
	} else {
		rr.KillToSuccessMs = ms(firstOK.Sub(tKill))
		rr.RestartToSuccessMs = ms(firstOK.Sub(tRestart))
	}
	j, err := b.imdsJournal(ctx, seq)
	if err != nil {
		return err
	}
	rr.HostIMDSRequests = len(j)
	for _, e := range j {
		if e.Verdict == "unsigned" {
			rr.HostUnsigned++
		}
		if e.ServedUnaccepted() {
			rr.HostServedUnaccepted++
		}
	}
	if _, err := b.waitProvisioned(ctx, 30*time.Second); err != nil {
		return err
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// profileAgent records the agent with perf(1) during extra (unreported)
// Enforce runs — c=1 keep-alive and new connection, c=16 keep-alive — and
// the raw Go floor (go-relay-raw) in the same runs against it, so the two
// profiles show where the agent's time beyond the floor goes; it writes
// `perf report` text into o.perfDir.
func profileAgent(ctx context.Context, b *benchEnv, o options) error {
	if err := os.MkdirAll(o.perfDir, 0o755); err != nil {
		return err
	}
	paths := []pathSpec{pathEnforce}
	if b.relays[pathGoRelayRaw.name] != nil {
		paths = append(paths, pathGoRelayRaw)
	}
	for _, p := range paths {
		if err := b.setIMDSMode(ctx, p.imdsMode); err != nil {
			return err
		}
		pid := b.AgentPID()
		if r := b.relays[p.name]; r != nil {
			pid = r.cmd.Process.Pid
		}
		for _, run := range []struct {
			c  int
			ka bool
		}{{1, true}, {1, false}, {16, true}} {
			name := fmt.Sprintf("%s-c%d-keepalive", p.name, run.c)
			if !run.ka {
				name = fmt.Sprintf("%s-c%d-newconn", p.name, run.c)
			}
			data := filepath.Join(o.perfDir, name+".data")
			rec := exec.CommandContext(ctx, "perf", "record", "-F", "999", "-g", "-o", data, "-p", strconv.Itoa(pid))
			if err := rec.Start(); err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
			_, lerr := b.runLoad(ctx, p.caller, "-url", p.url, "-H", "Metadata: true",
				"-c", strconv.Itoa(run.c), "-d", "3s", "-warmup", "0s", "-keepalive="+strconv.FormatBool(run.ka))
			_ = rec.Process.Signal(os.Interrupt)
			_ = rec.Wait()
			if lerr != nil {
				return lerr
			}
			for _, mode := range []struct{ suffix, args string }{
				{"self", "--no-children"}, {"children", "--children"},
			} {
				out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", mode.args, "-g", "none",
					"--sort", "symbol", "--percent-limit", "0.7").CombinedOutput()
				if err != nil {
					return fmt.Errorf("perf report: %w: %s", err, tail(string(out), 200))
				}
				if err := os.WriteFile(filepath.Join(o.perfDir, name+"."+mode.suffix+".txt"), out, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// floods are the B-flood loads (threats-and-benchmarks.md §3): 200 and
// 2,000 connections from one user, and 2,000 from 40 users (50 each, each
// within maxConnectionsPerCaller, together far beyond maxConnections).
var floods = []struct{ conns, users int }{{200, 1}, {2000, 1}, {2000, 40}}

// floodUID is the first uid of a many-user flood (no such user exists).
const floodUID = 20000

// benchFlood is B-flood: a well-behaved client (root, IMDS in Enforce, a
// new connection per request as curl makes them, c=1) measured alone and
// then while unprivileged users flood the agent with connections, each an
// unfinished request head reopened as soon as the agent closes it.
// Goal: the agent survives and the client's latency stays within 2× of
// its baseline.
func benchFlood(ctx context.Context, b *benchEnv, o options, rep *Report) error {
	if !o.flood {
		return nil
	}
	if err := b.setIMDSMode(ctx, "Enforce"); err != nil {
		return err
	}
	// client runs the well-behaved client and returns its run and the
	// agent's CPU use meanwhile (CPU time over wall time).
	client := func() (loadRun, float64, error) {
		pid, start := b.AgentPID(), time.Now()
		cpu0, cerr := procstat.CPU(pid)
		run, err := b.runLoad(ctx, pathEnforce.caller, "-url", pathEnforce.url, "-H", "Metadata: true",
			"-c", "1", "-d", o.cell.String(), "-warmup", o.warmup.String(), "-keepalive=false")
		cpu1, cerr2 := procstat.CPU(pid)
		if cerr != nil || cerr2 != nil {
			return run, 0, err
		}
		return run, float64(cpu1-cpu0) / float64(time.Since(start)), err
	}
	base, baseCPU, err := client()
	if err != nil {
		return err
	}
	for _, fl := range floods {
		type flooder struct {
			cmd         *exec.Cmd
			out, errOut bytes.Buffer
		}
		flooders := make([]*flooder, fl.users)
		for i := range flooders {
			fd := &flooder{cmd: exec.CommandContext(ctx, b.gpaload, "-hold", strconv.Itoa(fl.conns/fl.users), "-url", pathEnforce.url,
				"-d", (o.cell + o.warmup + 2*time.Second).String())}
			fd.cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
			fd.cmd.Stdout, fd.cmd.Stderr = &fd.out, &fd.errOut
			who := e2eenv.Nobody
			if fl.users > 1 {
				uid := uint32(floodUID + i)
				who = e2eenv.Caller{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
			}
			if err := b.Start(fd.cmd, who); err != nil {
				return err
			}
			flooders[i] = fd
		}
		time.Sleep(time.Second) // the flood takes what it can first
		under, cpu, lerr := client()
		f := Flood{Connections: fl.conns, Users: fl.users, Baseline: summarize([]loadRun{base}),
			AgentCPUAlone: baseCPU, AgentCPUFlooded: cpu}
		for _, fd := range flooders {
			var h load.HoldResult
			if werr := fd.cmd.Wait(); werr != nil {
				f.Error += fmt.Sprintf("; flood: %v: %s", werr, bytes.TrimSpace(fd.errOut.Bytes()))
			} else if err := json.Unmarshal(fd.out.Bytes(), &h); err != nil {
				f.Error += "; flood output: " + err.Error()
			}
			f.Hold.Wanted += h.Wanted
			f.Hold.Opened += h.Opened
			f.Hold.Closed += h.Closed
			f.Hold.Failed += h.Failed
			f.Hold.HeldAtEnd += h.HeldAtEnd
		}
		f.AgentAlive = b.AgentPID() != 0
		if lerr != nil {
			f.Error = lerr.Error() + f.Error
		} else {
			f.Flooded = summarize([]loadRun{under})
		}
		f.Error = strings.TrimPrefix(f.Error, "; ")
		rep.Flood = append(rep.Flood, f)
		if !f.AgentAlive {
			return fmt.Errorf("agent gone after a flood of %d connections from %d users", fl.conns, fl.users)
		}
	}
	return nil
}
