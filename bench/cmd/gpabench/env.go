package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"

	"github.com/opengpa/gpa/bench/load"
	"github.com/opengpa/gpa/bench/procstat"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/proxyagent/provision"
)

// Addresses inside the benchmark namespace.
const (
	nginxAddr    = "127.0.0.1:8081" // the reference reverse proxy
	nginxLogAddr = "127.0.0.1:8084" // the same nginx, writing its access log
	relayAddr    = "127.0.0.1:8082" // the Go floor (bench/cmd/gorelay)
	relayRawAddr = "127.0.0.1:8083" // the Go floor with the agent's socket calls (gorelay -raw)
	instancePath = "/metadata/instance?api-version=2021-02-01"
)

var (
	listenerAddr = msp.ListenerAddr.String()                // the agent's listener (config default)
	imdsBase     = "http://" + msp.IMDSAddr.Addr().String() // IMDS as clients call it
)

// benchEnv is an e2eenv.Env plus what the suite adds: the load generator
// binary, the nginx reference proxy and a CPU-quota group.
type benchEnv struct {
	*e2eenv.Env
	gpaload string

	nginx     *exec.Cmd
	nginxDone chan struct{}
	gorelay   string              // the Go floor's binary
	relays    map[string]*process // running floors by path name
	quotaDir  string              // cgroup v1 cpu group holding the agent, "" if none
}

// hostSettings returns the host's proxyAgentSettings for an IMDS mode,
// keeping the host's current keyIncarnationId (changing it would make the
// host forget the latched key).
func (b *benchEnv) hostSettings(ctx context.Context, imdsMode string) (string, error) {
	st, err := b.HostState(ctx)
	if err != nil {
		return "", err
	}
	inc := 1
	if st.KeyIncarnationID != nil {
		inc = *st.KeyIncarnationID
	}
	return fmt.Sprintf(`{"enabled":true,"keyIncarnationId":%d,"wireServer":{"mode":"Enforce"},"imds":{"mode":%q}}`, inc, imdsMode), nil
}

// setIMDSMode switches the host's IMDS mode and, for Audit and Enforce,
// waits until a request from inside the attached group is answered through
// the agent in that mode.
func (b *benchEnv) setIMDSMode(ctx context.Context, mode string) error {
	s, err := b.hostSettings(ctx, mode)
	if err != nil {
		return err
	}
	if err := b.SetSettings(ctx, s); err != nil {
		return err
	}
	_, _ = b.Control(ctx, http.MethodDelete, "/journal", nil)
	if mode == "Disabled" {
		time.Sleep(1500 * time.Millisecond) // let the agent drop the IMDS redirect (poll 500 ms)
		return nil
	}
	want := strings.ToLower(mode)
	deadline := time.Now().Add(20 * time.Second)
	for {
		seq, _ := b.LastSeq(ctx)
		r, err := b.Curl(ctx, e2eenv.Root, imdsBase+instancePath, "Metadata: true")
		if err == nil && r.Status == http.StatusOK && r.Marked() {
			j, _ := b.Journal(ctx, seq)
			if len(j) > 0 && strings.EqualFold(string(j[len(j)-1].Mode), want) {
				time.Sleep(time.Second) // one more poll so the agent's own view has settled
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IMDS mode %s not in effect through the agent after 20 s (last: status %d, err %v)", mode, r.Status, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sysctl sets a sysctl inside the benchmark namespace only (nsenter: the
// network namespace alone, no remount of /sys as `ip netns exec` does).
func (b *benchEnv) sysctl(key, value string) error {
	out, err := exec.Command("nsenter", "--net="+b.Netns.Path, "sysctl", "-q", "-w", key+"="+value).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl %s in netns: %w: %s", key, err, bytes.TrimSpace(out))
	}
	return nil
}

// loadRun is one gpaload run with the CPU the processes on the path used.
type loadRun struct {
	load.Result
	AgentCPU time.Duration `json:"agent_cpu_ns"`
	HostCPU  time.Duration `json:"host_cpu_ns"`
	NginxCPU time.Duration `json:"nginx_cpu_ns"`
	RelayCPU time.Duration `json:"go_relay_cpu_ns"`
}

// runLoad runs gpaload with args as caller, measuring agent, host, nginx
// and Go relay CPU around it.
func (b *benchEnv) runLoad(ctx context.Context, caller e2eenv.Caller, args ...string) (loadRun, error) {
	agentPID, hostPID := b.AgentPID(), b.hostPID()
	a0, _ := procstat.CPU(agentPID)
	h0, _ := procstat.CPU(hostPID)
	n0, g0 := b.nginxCPU(), b.relayCPU()
	cmd := exec.CommandContext(ctx, b.gpaload, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := b.Start(cmd, caller); err != nil {
		return loadRun{}, err
	}
	err := cmd.Wait()
	var r loadRun
	if err != nil {
		return r, fmt.Errorf("gpaload %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &r.Result); err != nil {
		return r, fmt.Errorf("gpaload output: %w", err)
	}
	if agentPID != 0 && agentPID == b.AgentPID() {
		a1, _ := procstat.CPU(agentPID)
		r.AgentCPU = a1 - a0
	}
	h1, _ := procstat.CPU(hostPID)
	r.HostCPU = h1 - h0
	r.NginxCPU = b.nginxCPU() - n0
	r.RelayCPU = b.relayCPU() - g0
	return r, nil
}

// hostPID finds the host simulator among the namespace's processes.
func (b *benchEnv) hostPID() int {
	return findProc(b.Bin.HostSim)
}

// findProc returns the pid of a running process whose executable is path.
func findProc(path string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && exe == path {
			return pid
		}
	}
	return 0
}

// waitProvisioned polls the agent's GET /provision every millisecond from
// inside the namespace until it reports finished, and returns when that
// answer arrived.
func (b *benchEnv) waitProvisioned(ctx context.Context, limit time.Duration) (time.Time, error) {
	client := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return b.Netns.Dial(ctx, network, addr)
			},
		},
	}
	deadline := time.Now().Add(limit)
	last := ""
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listenerAddr+provision.Path, nil)
		req.Header.Set("Metadata", "true")
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var st provision.State
			if json.Unmarshal(body, &st) == nil && st.Finished {
				now := time.Now()
				if st.ErrorMessage != "" {
					return now, fmt.Errorf("provisioning finished with error: %s", st.ErrorMessage)
				}
				return now, nil
			}
			last = string(body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("agent not provisioned after %v (last: %s)", limit, last)
		}
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		time.Sleep(time.Millisecond)
	}
}

// imdsJournal returns the host's IMDS journal entries after seq.
func (b *benchEnv) imdsJournal(ctx context.Context, seq uint64) ([]hostsim.Entry, error) {
	all, err := b.Journal(ctx, seq)
	if err != nil {
		return nil, err
	}
	var out []hostsim.Entry
	for _, e := range all {
		if e.Service == hostsim.IMDS {
			out = append(out, e)
		}
	}
	return out, nil
}

// nginxConf is the reference reverse proxy: plain proxy_pass with upstream
// keep-alive, no logging; %[5]d worker processes (by default as many as the
// agent's processors). The second server (%[6]s) is the same proxy writing
// one access-log line per request, buffered (256 KiB, flushed each
// second; the agent's logs buffer 256 KiB and flush within 50 ms): what
// nginx costs when, like the agent, it records every request.
const nginxConf = `daemon off;
master_process on;
user root;
worker_processes %[5]d;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    upstream imds { server %[3]s; keepalive 64; }
    server {
        listen %[2]s;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://imds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host %[4]s;
        }
    }
    server {
        listen %[6]s;
        keepalive_requests 1000000;
        access_log %[1]s/access.log combined buffer=256k flush=1s;
        location / {
            proxy_pass http://imds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host %[4]s;
        }
    }
}
`

// startNginx writes the config and starts nginx (master in the
// foreground) inside the namespace, outside the attached group.
func (b *benchEnv) startNginx(ctx context.Context, bin string, workers int) error {
	dir := filepath.Join(b.Dir, "nginx")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, dir, nginxAddr, msp.IMDSAddr, msp.IMDSAddr.Addr(), workers, nginxLogAddr), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	done, err := b.startServer(ctx, cmd, filepath.Join(dir, "nginx.out"), filepath.Join(dir, "nginx-error.log"), nginxAddr)
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	b.nginx, b.nginxDone = cmd, done
	return nil
}

// startServer starts the reference server cmd inside the namespace,
// outside the attached group, with its output in logPath, and waits until
// it answers IMDS's instance path on addr with 200. done is closed when
// it exits; if it exits early, the error quotes errPath.
func (b *benchEnv) startServer(ctx context.Context, cmd *exec.Cmd, logPath, errPath, addr string) (done chan struct{}, err error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := b.Start(cmd, e2eenv.Root.Outside()); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start: %w", err)
	}
	done = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := b.Curl(ctx, e2eenv.Root.Outside(), "http://"+addr+instancePath, "Metadata: true")
		if err == nil && r.Status == http.StatusOK {
			return done, nil
		}
		select {
		case <-done:
			out, _ := os.ReadFile(errPath)
			return nil, fmt.Errorf("exited: %s", bytes.TrimSpace(out))
		default:
		}
		if time.Now().After(deadline) {
			stopServer(cmd, done, syscall.SIGTERM) // nginx's master ends its workers
			return nil, fmt.Errorf("not answering 200 on %s (status %d, %v)", addr, r.Status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nginxCPU is the CPU used so far by the nginx master and its workers.
func (b *benchEnv) nginxCPU() time.Duration {
	if b.nginx == nil || b.nginx.Process == nil {
		return 0
	}
	d, _ := procstat.TreeCPU(b.nginx.Process.Pid)
	return d
}

// stopNginx ends nginx (SIGQUIT = graceful, then SIGKILL).
func (b *benchEnv) stopNginx() {
	if b.nginx == nil {
		return
	}
	stopServer(b.nginx, b.nginxDone, syscall.SIGQUIT)
	b.nginx = nil
}

// stopServer sends sig to a server startServer started and waits until it
// exited (done closed), killing it after 5 s.
func stopServer(cmd *exec.Cmd, done <-chan struct{}, sig os.Signal) {
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// process is a reference server the suite started.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
}

// startRelay starts a Go floor (gorelay, GOMAXPROCS=procs; with raw, -raw)
// for path p inside the namespace, outside the attached group, relaying to
// IMDS.
func (b *benchEnv) startRelay(ctx context.Context, p pathSpec, addr string, raw bool, procs int) error {
	args := []string{"-listen", addr, "-upstream", msp.IMDSAddr.String()}
	if raw {
		args = append(args, "-raw")
	}
	cmd := exec.Command(b.gorelay, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GOMAXPROCS=" + strconv.Itoa(procs)}
	log := filepath.Join(b.Dir, p.name+".log")
	done, err := b.startServer(ctx, cmd, log, log, addr)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	if b.relays == nil {
		b.relays = map[string]*process{}
	}
	b.relays[p.name] = &process{cmd: cmd, done: done}
	return nil
}

// relayCPU is the CPU used so far by the Go floors (only the one under
// load uses any to speak of).
func (b *benchEnv) relayCPU() time.Duration {
	var d time.Duration
	for _, p := range b.relays {
		c, _ := procstat.CPU(p.cmd.Process.Pid)
		d += c
	}
	return d
}

// stopRelays ends the Go floors.
func (b *benchEnv) stopRelays() {
	for name, p := range b.relays {
		stopServer(p.cmd, p.done, syscall.SIGTERM)
		delete(b.relays, name)
	}
}

// cpuV1 is the cgroup v1 cpu controller mount, where CFS quotas are set
// on this machine (its cgroup2 mount carries no cpu controller).
const cpuV1 = "/sys/fs/cgroup/cpu"

// quotaAgent moves the agent into a new cpu group limited to pct percent
// of one CPU (as systemd's CPUQuota=). The group is a child of the v1 cpu
// hierarchy; the cgroup2 root is never touched.
func (b *benchEnv) quotaAgent(pct int) error {
	if _, err := os.Stat(filepath.Join(cpuV1, "cpu.cfs_quota_us")); err != nil {
		return fmt.Errorf("no cgroup v1 cpu controller at %s: %w", cpuV1, err)
	}
	dir := filepath.Join(cpuV1, fmt.Sprintf("gpa-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	b.quotaDir = dir
	if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte("100000"), 0); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(pct*1000)), 0); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(b.AgentPID())), 0)
}

// unquotaAgent moves the agent back to the cpu hierarchy's root group
// (where it started) and removes the quota group.
func (b *benchEnv) unquotaAgent() error {
	if b.quotaDir == "" {
		return nil
	}
	var errs []error
	if pids, err := os.ReadFile(filepath.Join(b.quotaDir, "cgroup.procs")); err == nil {
		for _, p := range strings.Fields(string(pids)) {
			if err := os.WriteFile(filepath.Join(cpuV1, "cgroup.procs"), []byte(p), 0); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, err)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(b.quotaDir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.quotaDir = ""
	return errors.Join(errs...)
}

// close removes everything the suite added and then the environment.
func (b *benchEnv) close() error {
	b.stopNginx()
	b.stopRelays()
	err := b.unquotaAgent()
	return errors.Join(err, b.Env.Close())
}
