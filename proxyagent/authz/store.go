package authz

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/internal/pause"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// StoreConfig configures a Store. The zero value works: no local rules,
// no snapshot files, containers kept off the WireServer and HostGAPlugin.
type StoreConfig struct {
	// RootContainersToWireServer lets elevated callers in other network
	// namespaces (containers) reach the WireServer and HostGAPlugin, the
	// platform's own channels, which are otherwise denied to them.
	RootContainersToWireServer bool
	// RulesDir holds WireServer_Rules.json and IMDS_Rules.json
	// (production: DefaultRulesDir). Empty: local files are treated as
	// missing.
	RulesDir string
	// SnapshotDir receives AuthorizationRules_*.json on every change
	// (production: DefaultSnapshotDir). Empty: no files are written.
	SnapshotDir string
	// MaxSnapshots is how many snapshot files are kept; 0 means 5.
	MaxSnapshots int
	// ParseAttempts and ParseRetryDelay control how a local file that is
	// not valid JSON is re-read; 0 means 3 attempts, 50 ms apart.
	ParseAttempts   int
	ParseRetryDelay time.Duration
	// Logger receives rule-change and local-rules events; nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock for snapshot file names; nil means time.Now.
	Now func() time.Time
}

// ruleIDs are the raw rule ids of the last Apply, before local-rule
// rewriting: the store's own change detection (quirk 4). The ids reported
// in keyLatchStatus are the key keeper's. The HostGA id is the WireServer
// item's id (quirk 3).
type ruleIDs struct {
	WireServer string
	IMDS       string
	HostGA     string
}

// Store holds the installed rule sets. Apply is called by the key keeper
// on every poll; Authorize and Snapshot may be called from any goroutine
// at any time. Each Authorize uses one immutable Snapshot, so a request is
// judged against one version from start to end.
type Store struct {
	cur atomic.Pointer[Snapshot]

	cfg StoreConfig
	log *slog.Logger

	mu            sync.Mutex // serializes Apply; guards the fields below
	ids           ruleIDs
	wsLocal       localTracker
	imdsLocal     localTracker
	snapshotCount uint64
}

// NewStore returns a Store with no rule sets installed (epoch 0): the
// WireServer and HostGAPlugin are root-only and IMDS is open.
func NewStore(cfg StoreConfig) *Store {
	if cfg.MaxSnapshots <= 0 {
		cfg.MaxSnapshots = 5
	}
	if cfg.ParseAttempts <= 0 {
		cfg.ParseAttempts = 3
	}
	if cfg.ParseRetryDelay <= 0 {
		cfg.ParseRetryDelay = 50 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "authz")
	s.cur.Store(&Snapshot{rootContainers: cfg.RootContainersToWireServer})
	return s
}

// Snapshot returns the current snapshot.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Authorize decides a request against the current snapshot (see
// Snapshot.Authorize).
func (s *Store) Authorize(req Request) Decision { return s.cur.Load().Authorize(req) }

// Mode returns the compiled mode of a service's installed rule set; ok is
// false when none is installed. Quirk 19: this is the mode of the last
// compiled item, which only changes with the rule id, so it can differ
// from the mode in the latest status.
func (s *Store) Mode(svc msp.Service) (m msp.Mode, ok bool) {
	rs := s.cur.Load().RuleSet(svc)
	if rs == nil {
		return "", false
	}
	return rs.mode, true
}

// Apply installs the rules of one key-status poll (nil when the status
// has none) and reports whether any rule set changed. Following
// protocol.md §3.6:
//
//   - Quirk 4/19: a service's rule set is recompiled only when the host's
//     raw id changes or its local rules changed (§3.7); new content or a
//     new mode under the same id is ignored.
//   - Quirk 3: HostGAPlugin uses the host's wireserver item as sent (no
//     local merge), recompiled only when that id changes; the hostga item
//     is ignored.
//
// On a change the new snapshot (with the next epoch) is published
// atomically, a snapshot file is written, and the change is logged.
// Reading a local file that is not valid JSON is retried and may take
// ParseAttempts×ParseRetryDelay.
//
// Apply reports whether a rule set changed and returns the error of
// writing the snapshot file; the rules are installed even when that write
// fails.
func (s *Store) Apply(rules *msp.AuthorizationRules) (changed bool, err error) {
	return s.update(context.Background(), rules)
}

func (s *Store) update(ctx context.Context, rules *msp.AuthorizationRules) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	var wsWire, imdsWire *msp.AuthorizationItem
	if rules != nil {
		wsWire, imdsWire = rules.WireServer, rules.IMDS
	}
	ids := ruleIDs{WireServer: idOf(wsWire), IMDS: idOf(imdsWire)}
	ids.HostGA = ids.WireServer
	old := s.ids
	wsIDChanged, imdsIDChanged, hgaIDChanged := ids.WireServer != old.WireServer, ids.IMDS != old.IMDS, ids.HostGA != old.HostGA
	s.ids = ids
	for _, c := range []struct {
		svc      msp.Service
		changed  bool
		from, to string
	}{{msp.WireServer, wsIDChanged, old.WireServer, ids.WireServer}, {msp.IMDS, imdsIDChanged, old.IMDS, ids.IMDS}, {msp.HostGAPlugin, hgaIDChanged, old.HostGA, ids.HostGA}} {
		if c.changed {
			s.log.Info("rule id changed", "service", c.svc, "from", c.from, "to", c.to)
		}
	}

	wsRaw, imdsRaw := wsWire.Clone(), imdsWire.Clone()
	// Host-delivered rules keep upstream's schema: the workload selectors
	// of local rules files mean nothing there (upstream ignores them).
	for _, it := range []*msp.AuthorizationItem{wsRaw, imdsRaw} {
		if it != nil && it.Rules.StripLocalSelectors() {
			s.log.Warn("host rules name cgroupPath or containerId selectors; ignored as upstream does", "ruleId", it.ID)
		}
	}
	wsEff, wsLocalChanged := s.resolve(ctx, wsRaw, wsTarget, &s.wsLocal, wsIDChanged)
	imdsEff, imdsLocalChanged := s.resolve(ctx, imdsRaw, imdsTarget, &s.imdsLocal, imdsIDChanged)

	cur := s.cur.Load()
	next := *cur
	changed := false
	if wsIDChanged || wsLocalChanged {
		next.wireServer = s.compileLogged(msp.WireServer, wsEff)
		changed = true
	}
	if imdsIDChanged || imdsLocalChanged {
		next.imds = s.compileLogged(msp.IMDS, imdsEff)
		changed = true
	}
	if hgaIDChanged {
		next.hga = s.compileLogged(msp.HostGAPlugin, wsRaw)
		changed = true
	}
	if !changed {
		return false, nil
	}
	next.epoch = cur.epoch + 1
	s.cur.Store(&next)
	s.log.Info("authorization rules installed", "epoch", next.epoch,
		"wireServerRuleId", ruleID(next.wireServer), "imdsRuleId", ruleID(next.imds), "hostGARuleId", ruleID(next.hga))
	if s.cfg.SnapshotDir != "" {
		// The snapshot file carries this poll's effective items, as
		// upstream writes them.
		in := msp.AuthorizationRules{WireServer: wsEff, IMDS: imdsEff, HostGA: wsRaw}
		if err := writeSnapshotFile(s.cfg.SnapshotDir, s.cfg.MaxSnapshots, s.cfg.Now(), in, &next); err != nil {
			return true, err
		}
	}
	return true, nil
}

func idOf(it *msp.AuthorizationItem) string {
	if it == nil {
		return ""
	}
	return it.ID
}

func ruleID(rs *RuleSet) any {
	if rs == nil {
		return nil
	}
	return rs.id
}

func (s *Store) compileLogged(svc msp.Service, it *msp.AuthorizationItem) *RuleSet {
	rs := Compile(it)
	if rs == nil {
		s.log.Info("rule set removed", "service", svc)
		return nil
	}
	for _, w := range rs.warnings {
		s.log.Warn("rule compilation", "service", svc, "ruleId", rs.id, "warning", w)
	}
	s.log.Info("rule set compiled", "service", svc, "ruleId", rs.id, "mode", rs.mode,
		"defaultAllowed", rs.defaultAllowed, "privileges", len(rs.privs))
	return rs
}

// resolve computes a service's effective item from the host item and its
// local rules file, and whether the local-rules side changed (§3.7).
func (s *Store) resolve(ctx context.Context, remote *msp.AuthorizationItem, t target, tr *localTracker, remoteChanged bool) (*msp.AuthorizationItem, bool) {
	log := s.log.With("module", t.module)
	d := parseDescriptor(itemID(remote))
	norm := normalize(remote, d)
	useChanged := tr.useLocal != d.useLocal
	prevFailed := tr.parseFailed
	if useChanged {
		action := "disabled"
		if d.useLocal {
			action = "enabled"
		}
		log.Warn("local file rules "+action, "event", "LocalFileRulesStateChanged")
	}
	tr.useLocal = d.useLocal
	if !d.useLocal {
		tr.state, tr.parseFailed, tr.effective = fileState{}, false, norm
		return norm, useChanged || prevFailed
	}

	path := ""
	cur := fileState{kind: fileMissing}
	if s.cfg.RulesDir != "" {
		path = rulesFilePath(s.cfg.RulesDir, t)
		cur = statFile(path)
	}
	stateChanged := !tr.state.equal(cur)
	if stateChanged {
		switch {
		case cur.kind == filePresent && (tr.state.kind == fileUnknown || tr.state.kind == fileMissing):
			log.Warn("local rules file found", "event", "LocalFileRulesStateChanged", "path", path)
		case cur.kind == filePresent && tr.state.kind == filePresent:
			log.Warn("local rules file changed", "event", "LocalFileRulesStateChanged", "path", path)
		case cur.kind == fileMissing:
			log.Warn("local rules file deleted or not found", "event", "LocalFileRulesStateChanged", "path", path)
		case cur.kind == fileError:
			log.Error("local rules file metadata read failed", "event", "LocalFileRulesStateChanged", "path", path, "err", cur.err)
		}
	}
	tr.state = cur
	if !(remoteChanged || useChanged || stateChanged || prevFailed) {
		return tr.effective, false
	}
	switch cur.kind {
	case fileMissing:
		// No local file yet (e.g. a new VM before the customer payload
		// arrived): the host item applies.
		tr.parseFailed, tr.effective = false, norm
		return norm, useChanged || stateChanged || prevFailed
	case fileError:
		log.Error("local rules file metadata unreadable; applying fail-closed rules",
			"event", "LocalRulesFileMetadataReadFailed", "path", path, "err", cur.err)
		fc := failClosed(norm, d)
		tr.parseFailed, tr.effective = true, fc
		return fc, !prevFailed || stateChanged
	}
	lf, err := s.readLocal(ctx, path, log)
	if err != nil {
		log.Error("local rules file unusable; applying fail-closed rules",
			"event", "LocalRulesFileParseFailed", "path", path, "err", err)
		fc := failClosed(norm, d)
		tr.parseFailed, tr.effective = true, fc
		return fc, !prevFailed || stateChanged
	}
	eff := merge(norm, lf, d)
	tr.parseFailed, tr.effective = false, eff
	return eff, useChanged || stateChanged || prevFailed
}

func itemID(it *msp.AuthorizationItem) string {
	if it == nil {
		return ""
	}
	return it.ID
}

// readLocal reads and validates a local rules file. A read or JSON error
// is retried (the file may be mid-write); a validation error is final.
func (s *Store) readLocal(ctx context.Context, path string, log *slog.Logger) (*localFile, error) {
	var last error
	for attempt := 1; attempt <= s.cfg.ParseAttempts; attempt++ {
		data, err := os.ReadFile(path)
		if err == nil {
			var lf *localFile
			lf, err = parseLocal(data)
			if err == nil {
				id := "unknown"
				if lf.ID != nil {
					id = *lf.ID
				}
				log.Info("local rules file parsed", "event", "LocalRulesFileParseSuccess", "path", path, "localId", id, "attempt", attempt)
				return lf, nil
			}
			var ve *ValidationError
			if errors.As(err, &ve) {
				return nil, err
			}
		}
		last = err
		log.Debug("local rules file parse attempt failed", "path", path, "attempt", attempt, "err", err)
		if attempt < s.cfg.ParseAttempts {
			if !pause.For(ctx, s.cfg.ParseRetryDelay) {
				return nil, ctx.Err()
			}
		}
	}
	return nil, last
}
