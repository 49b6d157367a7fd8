package redirector

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/opengpa/gpa/bpf"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Defaults for Config.
const (
	// DefaultBPFFS is where bpffs is mounted (and mounted by Load if needed).
	DefaultBPFFS = "/sys/fs/bpf"
	// DefaultPinDir holds the pinned links and maps.
	DefaultPinDir = DefaultBPFFS + "/azure-proxy-agent"
)

// Config says where and how the programs are attached. The zero value is
// the production configuration.
type Config struct {
	// CgroupPath is the cgroup v2 directory the programs attach to; every
	// process below it is subject to redirection. Empty: the root of the
	// cgroup v2 mount found in /proc/self/mounts (see Cgroup2Root).
	CgroupPath string
	// PinDir is the bpffs directory for pinned links and maps; empty:
	// DefaultPinDir. Load mounts bpffs on DefaultBPFFS when PinDir lies
	// under it and nothing is mounted there.
	PinDir string
	// Endpoints are the redirectable services and the listener redirected
	// connections go to; all must be IPv4. Zero fields take the production
	// addresses, except ContainerListener: where connects from sockets in
	// other network namespaces go (a local address of the agent's
	// namespace); zero refuses them (EPERM), never sends them on.
	Endpoints msp.Endpoints
	// Netns is the agent's network namespace cookie; 0 reads it at Load
	// (NetnsCookie). When it cannot be read every socket counts as the
	// agent's namespace, as before container support.
	Netns uint64
	// Mark is the SO_MARK of the agent's own sockets, which are never
	// redirected. 0: hostconn.Mark.
	Mark uint32
	// MaxConnsPerCaller is the most redirected connections one caller (a
	// user in a network namespace; root in the agent's namespace is
	// exempt) holds at once; the kernel refuses (EPERM) a connect beyond
	// it. 0: no limit; more than fits in 32 bits: 2³²−1. The agent
	// passes maxConnectionsPerCaller, which its listener also enforces.
	MaxConnsPerCaller int
	// MaxLimitedConns is the most redirected connections all callers the
	// per-caller limit applies to hold together; the kernel refuses a
	// connect beyond it. 0: no limit. The agent passes its listener's
	// limit of the same callers (their share, proxy.ConnShares).
	MaxLimitedConns int
	// Logger receives one message per event; nil: slog.Default().
	Logger *slog.Logger
	// Started is the moment the status message's milliseconds count from
	// (upstream: process start); zero: when Load is called.
	Started time.Time
}

// State is a module state as reported in ebpfProgramStatus.
type State string

// States.
const (
	Running State = "RUNNING"
	Stopped State = "STOPPED"
)

// Status is the redirector's ebpfProgramStatus (protocol.md §5.1).
type Status struct {
	State   State  `json:"status"`
	Message string `json:"message"`
}

// ErrorStatus is the status to report when Load fails: STOPPED with the
// error text (which carries the verifier log for a rejected program).
func ErrorStatus(err error) Status {
	return Status{State: Stopped, Message: fmt.Sprintf("Failed to start Redirector: %v", err)}
}

// hook is one program attachment and the name of its pinned link.
type hook struct {
	pin    string
	attach ebpf.AttachType
	prog   func(*bpf.RedirectObjects) *ebpf.Program
}

// hooks in attach order: the sockops program first, so no connect is
// redirected before its record can be published.
var hooks = []hook{
	{"link_sockops", ebpf.AttachCGroupSockOps, func(o *bpf.RedirectObjects) *ebpf.Program { return o.SockopsConnect }},
	{"link_connect6", ebpf.AttachCGroupInet6Connect, func(o *bpf.RedirectObjects) *ebpf.Program { return o.Connect6 }},
	{"link_connect4", ebpf.AttachCGroupInet4Connect, func(o *bpf.RedirectObjects) *ebpf.Program { return o.Connect4 }},
	{"link_bind4", ebpf.AttachCGroupInet4Bind, func(o *bpf.RedirectObjects) *ebpf.Program { return o.Bind4 }},
	{"link_bind6", ebpf.AttachCGroupInet6Bind, func(o *bpf.RedirectObjects) *ebpf.Program { return o.Bind6 }},
}

// pinnedMaps are the map names pinned by name in the pin dir.
var pinnedMaps = []string{bpf.RedirectMapPolicyMap, bpf.RedirectMapConnRecords, bpf.RedirectMapSkRecords}

// Redirector is a loaded, attached and pinned set of redirect programs.
// Its methods are safe for concurrent use.
type Redirector struct {
	cfg Config
	log *slog.Logger
	// noRawTake: the raw lookup-and-delete failed once (an old kernel);
	// records are taken through the library from then on.
	noRawTake atomic.Bool

	mu     sync.RWMutex // guards everything below; Lookup and SetPolicy hold it shared
	objs   *bpf.RedirectObjects
	links  []link.Link
	status Status
}

var _ identity.Source = (*Redirector)(nil)

func (c *Config) setDefaults() error {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	c.PinDir = filepath.Clean(c.PinDir)
	if !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("pin dir %q is not absolute", c.PinDir)
	}
	c.Endpoints = c.Endpoints.WithDefaults()
	if c.Mark == 0 {
		c.Mark = hostconn.Mark
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxConnsPerCaller < 0 || c.MaxLimitedConns < 0 {
		return fmt.Errorf("connection limits %d (per caller) and %d (all) must not be negative", c.MaxConnsPerCaller, c.MaxLimitedConns)
	}
	d := c.Endpoints
	if !d.Listener.Addr().Is4() {
		return fmt.Errorf("listener %s is not an IPv4 address", d.Listener)
	}
	if d.ContainerListener.IsValid() && !d.ContainerListener.Addr().Is4() {
		return fmt.Errorf("container listener %s is not an IPv4 address", d.ContainerListener)
	}
	for _, ap := range []netip.AddrPort{d.WireServer, d.IMDS, d.HostGAPlugin} {
		if !ap.Addr().Is4() {
			return fmt.Errorf("destination %s is not an IPv4 address", ap)
		}
		if ap == d.Listener {
			return fmt.Errorf("destination %s is the listener", ap)
		}
	}
	if d.WireServer == d.IMDS || d.WireServer == d.HostGAPlugin || d.IMDS == d.HostGAPlugin {
		return fmt.Errorf("destinations %s, %s, %s are not distinct", d.WireServer, d.IMDS, d.HostGAPlugin)
	}
	return nil
}

// Load loads the programs, attaches them to the configured cgroup and pins
// links and maps under the pin dir. If pinned objects from an earlier run
// exist it takes them over: the pinned maps (policy and pending records)
// are reused and each pinned link's program is replaced atomically, so
// redirection never pauses. A fresh install starts with an empty policy
// (nothing redirected) until SetPolicy. If attaching fails part way, the
// links already attached or updated stay pinned (the next Load completes
// the set); the error of a program the verifier rejected carries its log.
func Load(cfg Config) (*Redirector, error) {
	start := time.Now()
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("redirector: %w", err)
	}
	if cfg.Started.IsZero() {
		cfg.Started = start
	}
	r := &Redirector{cfg: cfg, log: cfg.Logger}

	if cfg.CgroupPath == "" {
		p, err := Cgroup2Root()
		if err != nil {
			return nil, fmt.Errorf("redirector: find cgroup v2 root: %w", err)
		}
		r.cfg.CgroupPath = p
	}
	cgID, err := cgroupID(r.cfg.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("redirector: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("redirector: %w", explainBPFRefusal(fmt.Errorf("raise memlock limit: %w", err)))
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, fmt.Errorf("redirector: %w", err)
	}

	var netnsNote string
	if r.cfg.Netns == 0 {
		c, err := NetnsCookie()
		if err != nil {
			netnsNote = "; network namespaces not told apart: " + err.Error()
			r.log.Warn("containers cannot be told apart from the agent's namespace", "err", err)
		}
		r.cfg.Netns = c
	}
	pidns, pidnsNote := agentPidNS(r.log)
	objs, migrated, err := loadObjects(r.cfg, pidns)
	var ve *ebpf.VerifierError
	if err != nil && !pidns.IsInitial() && errors.As(err, &ve) {
		// Kernels before 6.10 do not offer bpf_get_ns_current_pid_tgid to
		// cgroup programs: record initial-namespace pids, which the
		// resolver's start-time check keeps from naming another process.
		r.log.Warn("caller pids cannot be translated to the agent's PID namespace", "err", err)
		pidnsNote = "; caller pids not translated to the agent's PID namespace (kernel 6.10 or later needed)"
		objs, migrated, err = loadObjects(r.cfg, PidNS{})
	}
	if err != nil {
		return nil, fmt.Errorf("redirector: %w", explainBPFRefusal(err))
	}
	netnsNote += pidnsNote
	r.objs = objs
	if migrated {
		// The pinned maps had another layout (upgrade). Until the agent sets
		// the real policy, redirect everything rather than let a connection
		// bypass the proxy.
		if err := r.SetPolicy(true, true, true); err != nil {
			objs.Close()
			return nil, fmt.Errorf("redirector: seed policy of new maps: %w", err)
		}
	}

	takeover := false
	for _, h := range hooks {
		l, replaced, err := attach(h, h.prog(objs), r.cfg.CgroupPath, cgID, filepath.Join(cfg.PinDir, h.pin))
		if err != nil {
			r.closeLocked()
			return nil, fmt.Errorf("redirector: %w", explainBPFRefusal(err))
		}
		takeover = takeover || replaced
		r.links = append(r.links, l)
	}

	ms := time.Since(cfg.Started).Milliseconds()
	r.status = Status{State: Running, Message: fmt.Sprintf("Started Redirector with eBPF maps - %d", ms) + netnsNote}
	r.log.Info("redirector started", "cgroup", r.cfg.CgroupPath, "pinDir", cfg.PinDir,
		"listener", cfg.Endpoints.Listener.String(), "tookOverPinned", takeover, "loadMillis", time.Since(start).Milliseconds())
	return r, nil
}

// canSetRetval reports whether the connect hooks may choose the error of
// a connect they refuse (bpf_set_retval in cgroup sock_addr programs,
// Linux 6.1): then a connect the agent is not listening for fails with
// ECONNREFUSED instead of EPERM. A variable so that tests can take the
// older kernels' path.
var canSetRetval = func() bool {
	return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil
}

// loadObjects loads the collection for cfg (defaults set, Netns
// resolved) with its maps pinned by name in cfg.PinDir, reusing compatible
// pinned maps. Incompatible pinned maps (another layout) are unpinned and
// recreated; migrated reports that.
func loadObjects(cfg Config, pidns PidNS) (objs *bpf.RedirectObjects, migrated bool, err error) {
	pinDir, ep, log := cfg.PinDir, cfg.Endpoints, cfg.Logger
	spec, err := bpf.LoadRedirect()
	if err != nil {
		return nil, false, err
	}
	// The bind guard's listeners (an IPv6 one is not guarded).
	for _, g := range []struct {
		ap         netip.AddrPort
		addr, port string
	}{
		{ep.Listener, bpf.RedirectVarListenAddr, bpf.RedirectVarListenPort},
		{ep.ContainerListener, bpf.RedirectVarNsListenAddr, bpf.RedirectVarNsListenPort},
	} {
		if !g.ap.IsValid() || !g.ap.Addr().Is4() {
			continue
		}
		a := g.ap.Addr().As4()
		if err := spec.Variables[g.addr].Set(binary.NativeEndian.Uint32(a[:])); err != nil {
			return nil, false, fmt.Errorf("set bind guard: %w", err)
		}
		if err := spec.Variables[g.port].Set(g.ap.Port()); err != nil {
			return nil, false, fmt.Errorf("set bind guard: %w", err)
		}
	}
	if err := spec.Variables[bpf.RedirectVarAgentMark].Set(cfg.Mark); err != nil {
		return nil, false, fmt.Errorf("set agent mark: %w", err)
	}
	for _, l := range []struct {
		name string
		n    int
	}{{bpf.RedirectVarMaxCallerConns, cfg.MaxConnsPerCaller}, {bpf.RedirectVarMaxLimitedConns, cfg.MaxLimitedConns}} {
		if err := spec.Variables[l.name].Set(uint32(min(l.n, math.MaxUint32))); err != nil {
			return nil, false, fmt.Errorf("set connection limit: %w", err)
		}
	}
	if err := spec.Variables[bpf.RedirectVarAgentNetns].Set(cfg.Netns); err != nil {
		return nil, false, fmt.Errorf("set agent netns: %w", err)
	}
	if canSetRetval() {
		if err := spec.Variables[bpf.RedirectVarCanSetRetval].Set(uint8(1)); err != nil {
			return nil, false, fmt.Errorf("set connect error: %w", err)
		}
	}
	if !pidns.IsInitial() {
		if err := spec.Variables[bpf.RedirectVarAgentPidnsDev].Set(pidns.Dev); err != nil {
			return nil, false, fmt.Errorf("set agent pid namespace: %w", err)
		}
		if err := spec.Variables[bpf.RedirectVarAgentPidnsIno].Set(pidns.Ino); err != nil {
			return nil, false, fmt.Errorf("set agent pid namespace: %w", err)
		}
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	objs = new(bpf.RedirectObjects)
	err = spec.LoadAndAssign(objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		log.Warn("pinned eBPF maps have another layout; recreating them", "pinDir", pinDir, "err", err)
		for _, name := range pinnedMaps {
			if rerr := os.Remove(filepath.Join(pinDir, name)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				return nil, false, fmt.Errorf("unpin incompatible map %s: %w", name, rerr)
			}
		}
		migrated = true
		objs = new(bpf.RedirectObjects)
		err = spec.LoadAndAssign(objs, opts)
	}
	if err != nil {
		return nil, false, withVerifierLog("load eBPF objects", err)
	}
	return objs, migrated, nil
}

// withVerifierLog wraps err and appends the full verifier log if err
// carries one.
func withVerifierLog(what string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && len(ve.Log) > 0 {
		return fmt.Errorf("%s: %w\nverifier log:\n%s", what, err, strings.Join(ve.Log, "\n"))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// attach makes prog the program behind the link pinned at pin, attached to
// cgroup (id cgID). A pinned link on the same cgroup gets its program
// replaced atomically (replaced is true); one on another cgroup is replaced
// by a new link (attached before the old one is detached); without a pin a
// new link is attached and pinned.
func attach(h hook, prog *ebpf.Program, cgroup string, cgID uint64, pin string) (l link.Link, replaced bool, err error) {
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		info, ierr := old.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID && ebpf.AttachType(info.Cgroup().AttachType) == h.attach {
			if err := old.Update(prog); err != nil {
				old.Close()
				return nil, false, fmt.Errorf("replace program of pinned link %s: %w", pin, err)
			}
			return old, true, nil
		}
	case errors.Is(err, os.ErrNotExist):
		old = nil
	default:
		// Not a usable link (e.g. left by something else): replace the pin.
		if rerr := os.Remove(pin); rerr != nil {
			return nil, false, fmt.Errorf("remove unusable pin %s: %w (%v)", pin, rerr, err)
		}
		old = nil
	}

	nl, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: h.attach, Program: prog})
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, false, fmt.Errorf("attach %s to %s: %w", h.attach, cgroup, err)
	}
	if old != nil {
		// Attached elsewhere before (cgroup changed in the config): the new
		// link is in place, now retire the old one.
		if err := old.Unpin(); err != nil {
			nl.Close()
			old.Close()
			return nil, false, fmt.Errorf("unpin %s: %w", pin, err)
		}
		if err := old.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			old.Close()
			nl.Close()
			return nil, false, fmt.Errorf("detach old link %s: %w", pin, err)
		}
		old.Close()
	}
	if err := nl.Pin(pin); err != nil {
		nl.Close()
		return nil, false, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return nl, false, nil
}

// policyKey converts a destination to the policy map's key.
func policyKey(ap netip.AddrPort) bpf.RedirectPolicyKey {
	return bpf.RedirectPolicyKey{Addr: ap.Addr().As4(), Port: ap.Port()}
}

// SetPolicy decides which destinations are redirected: WireServer iff ws,
// IMDS iff imds, HostGAPlugin iff hgap (protocol.md §4.3: each while its
// service is not Disabled). A destination not redirected is connected to
// directly and never reaches the proxy. The entries are updated one by one;
// on error the policy may be partly applied and the call should be
// retried.
func (r *Redirector) SetPolicy(ws, imds, hgap bool) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.objs == nil {
		return errors.New("redirector: closed")
	}
	to := r.policyValue()
	d := r.cfg.Endpoints
	for _, e := range []struct {
		dst netip.AddrPort
		on  bool
	}{{d.WireServer, ws}, {d.IMDS, imds}, {d.HostGAPlugin, hgap}} {
		key := policyKey(e.dst)
		if e.on {
			if err := r.objs.PolicyMap.Put(key, to); err != nil {
				return fmt.Errorf("redirector: redirect %s: %w", e.dst, err)
			}
			continue
		}
		if err := r.objs.PolicyMap.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("redirector: stop redirecting %s: %w", e.dst, err)
		}
	}
	r.log.Info("redirect policy set", "wireserver", ws, "imds", imds, "hostgaplugin", hgap)
	return nil
}

// policyValue is where a redirected destination's connects go: the
// listener, or from other namespaces the container listener (zero when
// there is none: refused).
func (r *Redirector) policyValue() bpf.RedirectPolicyValue {
	v := bpf.RedirectPolicyValue{Addr: r.cfg.Endpoints.Listener.Addr().As4(), Port: r.cfg.Endpoints.Listener.Port()}
	if c := r.cfg.Endpoints.ContainerListener; c.IsValid() {
		v.NsAddr, v.NsPort = c.Addr().As4(), c.Port()
	}
	return v
}

// Policy reports which destinations are redirected to the configured
// listener right now (as pinned in the kernel, so it survives restarts).
func (r *Redirector) Policy() (ws, imds, hgap bool, err error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.objs == nil {
		return false, false, false, errors.New("redirector: closed")
	}
	want := r.policyValue()
	on := func(dst netip.AddrPort) (bool, error) {
		var v bpf.RedirectPolicyValue
		err := r.objs.PolicyMap.Lookup(policyKey(dst), &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return err == nil && v == want, err
	}
	d := r.cfg.Endpoints
	if ws, err = on(d.WireServer); err != nil {
		return
	}
	if imds, err = on(d.IMDS); err != nil {
		return
	}
	hgap, err = on(d.HostGAPlugin)
	return
}

// Lookup implements identity.Source: it returns and deletes the record the
// kernel filed for the connection whose client (peer) address is client:
// a redirected one, or one made straight to a listener (OrigDst zero). ok
// is false for any other connection, one whose record was evicted, or
// after Close.
//
// A record marked as a collision (another network namespace's connect used
// the same client address and port before this one was accepted) is
// consumed and refused: the kernel cannot tell which namespace this
// connection came from.
func (r *Redirector) Lookup(client, local netip.AddrPort) (identity.Record, bool) {
	rec, ok := r.take(client, local)
	if !ok {
		return identity.Record{}, false
	}
	if rec.Collision != 0 {
		r.log.Warn("connection record claimed by two network namespaces; refusing the connection", "client", client.String())
		return identity.Record{}, false
	}
	return toIdentity(rec, r.cfg.Netns), true
}

// toIdentity converts the kernel's record; agentNetns is the agent's
// namespace cookie (0: unknown).
func toIdentity(rec bpf.RedirectConnRecord, agentNetns uint64) identity.Record {
	comm := rec.Comm[:]
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	return identity.Record{
		PID:         rec.Pid,
		UID:         rec.Uid,
		GID:         rec.Gid,
		CgroupID:    rec.CgroupId,
		Netns:       rec.Netns,
		OtherNetns:  agentNetns != 0 && rec.Netns != agentNetns,
		StartTime:   rec.StartTime,
		ExecID:      rec.ExecId,
		ExeIno:      rec.ExeIno,
		ExeMnt:      rec.ExeMnt & 0xffffffff,
		ExeMntKnown: rec.ExeMnt>>32 != 0,
		Comm:        string(comm),
		OrigDst:     origDst(rec),
	}
}

// origDst is the record's original destination; zero for a connect
// straight to a listener (recorded with port 0).
func origDst(rec bpf.RedirectConnRecord) netip.AddrPort {
	if rec.OrigPort == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.AddrFrom4(rec.OrigAddr), rec.OrigPort)
}

// take looks up and deletes the raw record for the connection from client
// to local.
func (r *Redirector) take(client, local netip.AddrPort) (bpf.RedirectConnRecord, bool) {
	var rec bpf.RedirectConnRecord
	addr, laddr := client.Addr().Unmap(), local.Addr().Unmap()
	if !addr.Is4() || !laddr.Is4() {
		return rec, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.objs == nil {
		return rec, false
	}
	key := bpf.RedirectConnKey{Addr: addr.As4(), Port: client.Port(), DstAddr: laddr.As4(), DstPort: local.Port()}
	if !r.noRawTake.Load() {
		switch takeRaw(r.objs.ConnRecords, &key, &rec) {
		case rawTaken:
			return rec, true
		case rawMissing:
			return rec, false
		}
		r.noRawTake.Store(true)
	}
	err := r.objs.ConnRecords.LookupAndDelete(key, &rec)
	if errors.Is(err, ebpf.ErrNotSupported) {
		// Kernels before 5.14 cannot look up and delete in one step.
		if err = r.objs.ConnRecords.Lookup(key, &rec); err == nil {
			_ = r.objs.ConnRecords.Delete(key)
		}
	}
	if err != nil {
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			r.log.Warn("connection record lookup failed", "client", client.String(), "err", err)
		}
		return rec, false
	}
	return rec, true
}

// Status returns the current ebpfProgramStatus.
func (r *Redirector) Status() Status {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.status
}

// Close releases the agent's handles. The pinned links and maps stay: the
// programs keep redirecting, so until the agent runs again redirected
// connects are refused instead of going direct. Close is idempotent.
func (r *Redirector) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.objs == nil && r.links == nil {
		return nil
	}
	r.closeLocked()
	r.status = Status{State: Stopped, Message: "Redirector stopped; pinned programs keep redirecting until the agent restarts"}
	r.log.Info("redirector closed; programs stay pinned", "pinDir", r.cfg.PinDir)
	return nil
}

func (r *Redirector) closeLocked() {
	for _, l := range r.links {
		l.Close()
	}
	r.links = nil
	if r.objs != nil {
		r.objs.Close()
		r.objs = nil
	}
}

// Remove detaches the programs and deletes every pinned object (uninstall):
// afterwards connections go directly to the endpoints.
func (r *Redirector) Remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeLocked()
	err := RemovePinned(r.cfg.PinDir)
	if err != nil {
		r.status = Status{State: Stopped, Message: fmt.Sprintf("Redirector removal failed: %v", err)}
		return err
	}
	r.status = Status{State: Stopped, Message: "Redirector removed"}
	r.log.Info("redirector removed", "pinDir", r.cfg.PinDir)
	return nil
}

// RemovePinned detaches every link pinned in pinDir (also if another
// process still holds it) and deletes all pins and pinDir itself (unless
// it is a bpffs mount root, which is left empty). A missing pinDir is not
// an error. It is what the agent's uninstall runs; no Redirector is needed.
func RemovePinned(pinDir string) error {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("redirector: remove pins: %w", err)
	}
	var errs []error
	// Links first, so no program runs against maps being removed.
	for _, h := range hooks {
		p := filepath.Join(pinDir, h.pin)
		l, err := link.LoadPinnedLink(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			if derr := l.Detach(); derr != nil && !errors.Is(derr, link.ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detach %s: %w", p, derr))
			}
			l.Close()
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".debug") { // bpffs preload iterators in a mount root
			continue
		}
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && !isMountRoot(pinDir) {
		if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirector: remove pins: %w", err)
	}
	return nil
}

// isMountRoot reports whether dir is the root of a mount (its parent is
// on another device).
func isMountRoot(dir string) bool {
	a, errA := os.Stat(dir)
	b, errB := os.Stat(filepath.Dir(filepath.Clean(dir)))
	if errA != nil || errB != nil {
		return false
	}
	return devOf(a) != devOf(b)
}
