package handler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/opengpa/gpa/extension"
)

// UpdateAction is what the monitor does to the installed service when it
// sees a new sequence number.
type UpdateAction int

const (
	// NoUpdate: the installed and running agent are the bundled version.
	NoUpdate UpdateAction = iota
	// VersionMismatch: the installed agent is another version (or none):
	// back it up, then install the bundled one.
	VersionMismatch
	// ResumeInterruptedUpdate: the installed file is the bundled version
	// but the running agent reports another version or nothing: install
	// again without a backup.
	ResumeInterruptedUpdate
)

// String names the action for logs.
func (a UpdateAction) String() string {
	return [...]string{"NoUpdate", "VersionMismatch", "ResumeInterruptedUpdate"}[a]
}

// DetermineUpdateAction decides from the bundled version, the installed
// service binary's version ("" if none) and the version the running agent
// reports ("" if it cannot be asked).
func DetermineUpdateAction(bundled, installed, running string) UpdateAction {
	switch {
	case installed != bundled:
		return VersionMismatch
	case running != bundled:
		return ResumeInterruptedUpdate
	}
	return NoUpdate
}

// Setup-install messages (upstream's text).
const (
	setupInstallOK     = "Successfully Executed Setup Tool Install Command for Proxy Agent Version Upgrade"
	setupInstallFailed = "Execute Install Command in Proxy Agent Setup Tool Output Status Not Success: "
	setupInstallSpawn  = "Failed to execute Install Proxy Agent Command Through Setup Tool with error: "
)

// SetupRunner runs one setup verb ("install") and returns its exit code
// and standard error; err is set only when it could not be run at all.
type SetupRunner func(ctx context.Context, verb string) (code int, stderr string, err error)

// Monitor is the long-running ProxyAgentExt process: every interval it
// reads the agent's aggregate status and writes the extension status file
// for the current sequence number, upgrades the service when the
// extension carries a new agent, and keeps the heartbeat fresh. All its
// state is owned by the goroutine that calls Run (or Tick).
//
// The upgrade check runs on every new sequence number, as upstream's does.
// Unlike upstream, a failed upgrade is not final until the next goal
// state: when setup install fails, or the new agent never becomes healthy
// and the previous one is restored, the monitor checks again after
// Opts.UpdateRetryInterval, doubling the wait after every further failure
// (up to 64 times the interval) and starting afresh on a new sequence
// number or a healthy upgrade. A transient failure (a loaded machine, a
// slow start) therefore heals by itself, while a broken release costs the
// running agent at most one restart per backoff period; each attempt and
// its result are logged, sent as events and shown in the status file.
type Monitor struct {
	Env     *Env
	Setup   *Setup
	Fetcher Fetcher
	Events  *extension.EventWriter
	// RunSetup defaults to running "<exe> setup <verb>" in the extension
	// directory.
	RunSetup SetupRunner

	state            *StatusState
	seq              int
	seqKnown         bool
	bundled          string
	restorePurgeDone bool
	lastHeartbeat    time.Time
	lastHeartbeatMsg string
	// lastStatus and lastMessage are what the status file says now.
	lastStatus, lastMessage string
	lastReported            string
	// updateFailures counts consecutive failed upgrades; retryAt is when
	// the next attempt is due (zero: none scheduled).
	updateFailures int
	retryAt        time.Time
	// fastSince is when fast polling last began: at start and after each
	// install (see Wait).
	fastSince time.Time
}

// Fast polling: until the status first reaches success after the monitor
// starts or installs the agent, it ticks every FastPollInterval instead of
// Opts.MonitorInterval, for at most FastPollWindow. A fresh enable then
// reports success within seconds of the agent coming up instead of one
// full interval later; once healthy, the monitor ticks at the normal rate.
// Fast polling does not bring error sooner: the status state machine
// reaches error only after a failure streak as long as ErrorThreshold
// failures take at MonitorInterval (see StatusState).
const (
	FastPollInterval = time.Second
	FastPollWindow   = 5 * time.Minute
)

// maxUpdateRetryShift caps the retry backoff at 64 × UpdateRetryInterval.
const maxUpdateRetryShift = 6

// NewMonitor wires a monitor for env.
func NewMonitor(env *Env) *Monitor {
	setup := env.NewSetup()
	redirected, dial := setup.aggregateAccess(env.Opts.AggregateURL)
	m := &Monitor{
		Env:   env,
		Setup: setup,
		Fetcher: &AggregateFetcher{
			URL:        env.Opts.AggregateURL,
			File:       func() string { return StatusJSONPath(env.Layout) },
			Timeout:    env.Opts.HTTPTimeout,
			Redirected: redirected,
			Dial:       dial,
		},
		Events: &extension.EventWriter{Folder: env.Handler.EventsFolder, Version: env.Version},
	}
	m.RunSetup = m.runSetupProcess
	return m
}

func (m *Monitor) init() {
	if m.state == nil {
		m.state = m.newState()
		// A backup left behind is an update cycle an earlier monitor did
		// not finish (a reboot, a kill, a re-enable between the install
		// and the first success or error): this one restores or purges it.
		// Without one there is nothing to do until a version mismatch.
		m.restorePurgeDone = !m.Setup.HasBackup()
		m.fastSince = time.Now()
	}
}

// newState returns a fresh status state machine. Its error threshold is
// counted at Opts.MonitorInterval, so fast polling (FastPollInterval)
// reaches error no sooner than the normal cadence would.
func (m *Monitor) newState() *StatusState {
	return NewStatusState(m.Env.Opts.ErrorThreshold, m.Env.Opts.MonitorInterval)
}

func (m *Monitor) runSetupProcess(ctx context.Context, verb string) (int, string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, m.Env.Exe, "setup", verb)
	cmd.Dir = m.Env.ExtDir
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String(), nil
	}
	if err != nil {
		return -1, "", err
	}
	return 0, stderr.String(), nil
}

// Run writes the heartbeat and runs Tick every Opts.MonitorInterval until
// ctx is done.
func (m *Monitor) Run(ctx context.Context) error {
	m.init()
	m.Env.Log.Info("monitor started", "version", m.Env.Version, "exe", m.Env.Exe, "pid", os.Getpid())
	m.Events.Write(extension.EventInformational, "monitor", "start", "ProxyAgent extension monitor started, version "+m.Env.Version)
	m.writeHeartbeat(monitorStartedMessage)
	for {
		m.Tick(ctx)
		select {
		case <-ctx.Done():
			m.Env.Log.Info("monitor stopping")
			return nil
		case <-time.After(m.Wait()):
		}
	}
}

// Wait is the time until the next tick: FastPollInterval while fast
// polling (see FastPollWindow), else Opts.MonitorInterval.
func (m *Monitor) Wait() time.Duration {
	m.init()
	interval := m.Env.Opts.MonitorInterval
	if st, _, _ := m.state.Status(); st != extension.StatusSuccess && time.Since(m.fastSince) < FastPollWindow &&
		FastPollInterval < interval {
		return FastPollInterval
	}
	return interval
}

// Tick performs one monitoring pass.
func (m *Monitor) Tick(ctx context.Context) {
	m.init()
	defer m.heartbeat()
	log := m.Env.Log

	seq, ok := extension.SequenceFile(m.Env.SeqFile()).Read()
	if !ok {
		seq = m.Env.Seq
	}
	seqChanged := !m.seqKnown || seq != m.seq
	m.seq, m.seqKnown = seq, true

	if m.bundled == "" {
		v, err := m.Setup.BundledVersion(ctx)
		if err != nil {
			msg := fmt.Sprintf("Failed to get GuestProxyAgent version from file %s with error: %v", m.Setup.ext(bundledAgent(m.Setup.ExtDir)), err)
			m.state.Failure(time.Now(), msg)
			m.write(ErrorShape(msg))
			m.seqKnown = false // retry the seq-change work once the version is known
			return
		}
		m.bundled = v
	}

	retryDue := !m.retryAt.IsZero() && !time.Now().Before(m.retryAt)
	if seqChanged || retryDue {
		if seqChanged {
			m.updateFailures = 0 // a new goal state starts afresh
		} else {
			log.Info("retrying the agent upgrade", "attempt", m.updateFailures+1)
		}
		m.retryAt = time.Time{}
		if m.checkUpdate(ctx) {
			return
		}
	}

	if s, ok := m.Setup.Service.(*Supervisor); ok && s.Enabled() && !s.Active() {
		log.Warn("supervised agent not running; starting it")
		if err := s.Start(); err != nil {
			log.Error("start supervised agent", "err", err)
		}
	}

	data, ferr := m.Fetcher.Fetch(ctx)
	ev := Evaluate(data, ferr, m.bundled, time.Now(), m.Env.Opts.StaleAfter)
	if ev.Healthy && !m.Setup.Service.Active() {
		// A status that reads healthy is the agent's last word before it
		// stopped (its status.json outlives it): not a healthy agent.
		ev.Healthy = false
		ev.Message = "the azure-proxy-agent service is not running (" + m.Setup.Service.Kind() +
			"); the status below is its last, from before it stopped"
	}
	if ev.Healthy {
		m.state.Success(ev.Message)
	} else {
		m.state.Failure(time.Now(), ev.Message)
	}
	m.restoreOrPurge(ctx)
	m.write(ev.Substatus)
}

// checkUpdate compares versions and installs the bundled agent when
// needed. It reports true when it wrote a setup status for this tick.
func (m *Monitor) checkUpdate(ctx context.Context) bool {
	log := m.Env.Log
	installed := ""
	if p, err := m.Setup.Service.ExecPath(); err == nil {
		if v, err := AgentVersion(ctx, p); err == nil {
			installed = v
		} else {
			log.Warn("installed agent version unknown", "err", err)
		}
	}
	running := ""
	if data, err := m.Fetcher.Fetch(ctx); err == nil {
		if _, st, err := ParseAggregate(data); err == nil {
			running = st.Version
		}
	}
	action := DetermineUpdateAction(m.bundled, installed, running)
	log.Info("update check", "seq", m.seq, "bundled", m.bundled, "installed", installed, "running", running, "action", action.String())
	if action == NoUpdate {
		m.updateFailures = 0
		return false
	}
	if action == VersionMismatch {
		if err := m.Setup.Backup(); err != nil {
			log.Error("backup failed", "err", err)
		}
		m.restorePurgeDone = false
	}
	code, stderr, err := m.RunSetup(ctx, "install")
	m.fastSince = time.Now()
	if err == nil && code == 0 {
		// A new agent runs: judge its health afresh, so an error reached
		// before this attempt does not restore it on its first bad tick.
		// It is installed but not yet heard from, so the status is
		// transitioning, not upstream's success.
		m.state = m.newState()
		m.Events.Write(extension.EventInformational, "setup", "install", setupInstallOK)
		m.writeStatus(m.baseStatus(extension.StatusTransitioning, CodeOK, setupInstallOK))
		return true
	}
	// A failed install is one failure of the state machine (transitioning
	// at first, as upstream's), reported with the setup tool's exit code.
	msg := setupInstallFailed + strings.TrimSpace(stderr)
	if err != nil {
		msg, code = setupInstallSpawn+err.Error(), 1
	}
	m.state.Failure(time.Now(), msg)
	status, _, _ := m.state.Status()
	m.Events.Write(levelFor(status, true), "setup", "install", msg)
	if m.Setup.HasBackup() {
		log.Warn("new agent did not come up; restoring the previous one")
		if rerr := m.Setup.Restore(ctx); rerr != nil {
			log.Error("restore failed", "err", rerr)
		} else {
			msg += " (previous agent restored)"
		}
		m.restorePurgeDone = true
	}
	m.scheduleRetry()
	m.writeStatus(m.baseStatus(status, code, msg))
	return true
}

// scheduleRetry records a failed upgrade and schedules the next attempt
// UpdateRetryInterval × 2^(failures-1) from now (capped).
func (m *Monitor) scheduleRetry() {
	m.updateFailures++
	delay := m.Env.Opts.UpdateRetryInterval
	if delay <= 0 {
		delay = DefaultOptions().UpdateRetryInterval
	}
	for i := 1; i < m.updateFailures && i <= maxUpdateRetryShift && delay <= math.MaxInt64/2; i++ {
		delay *= 2
	}
	m.retryAt = time.Now().Add(delay)
	m.Env.Log.Warn("agent upgrade failed; will retry", "failures", m.updateFailures, "retryIn", delay.String())
	m.Events.Write(extension.EventWarning, "setup", "retry", fmt.Sprintf("agent upgrade to %s failed %d time(s); retrying in %s", m.bundled, m.updateFailures, delay))
}

// restoreOrPurge runs once per update cycle: restore the previous agent
// when the status first reaches error, purge the backup when it first
// reaches success.
func (m *Monitor) restoreOrPurge(ctx context.Context) {
	if m.restorePurgeDone {
		return
	}
	status, _, _ := m.state.Status()
	switch status {
	case extension.StatusError:
		m.restorePurgeDone = true
		if err := m.Setup.Restore(ctx); err != nil {
			m.Env.Log.Error("restore after error", "err", err)
		} else {
			m.Events.Write(extension.EventWarning, "setup", "restore", "restored the previous agent after the new one reached error")
		}
		m.scheduleRetry()
	case extension.StatusSuccess:
		m.restorePurgeDone = true
		m.updateFailures = 0
		if err := m.Setup.Purge(); err != nil {
			m.Env.Log.Error("purge backup", "err", err)
		}
	}
}

// levelFor is the telemetry level of a status report: Error for error,
// Warning for warning or for a transitioning status that records a failed
// observation, Informational for success and for progress (transitioning
// after a successful step).
func levelFor(status string, failed bool) string {
	switch {
	case status == extension.StatusError:
		return extension.EventError
	case status == extension.StatusWarning, status == extension.StatusTransitioning && failed:
		return extension.EventWarning
	}
	return extension.EventInformational
}

func (m *Monitor) baseStatus(status string, code int, msg string) extension.Status {
	return extension.Status{
		Name:             StatusName,
		Operation:        OperationEnable,
		Status:           status,
		Code:             code,
		FormattedMessage: extension.Message(extension.TruncateUTF8(msg, MaxStatusMessage)),
		Substatus:        []extension.SubStatus{},
	}
}

// write reports the state machine's status with subs.
func (m *Monitor) write(subs []extension.SubStatus) {
	status, code, msg := m.state.Status()
	st := m.baseStatus(status, code, msg)
	st.Substatus = subs
	m.writeStatus(st)
}

// BoundStatus returns st with its longest substatus messages shortened
// until the encoded status file fits waagent's 128 KiB limit (JSON
// escaping can make a message grow when it is written).
func BoundStatus(st extension.Status, now time.Time) extension.Status {
	const limit = extension.MaxStatusFileSize - 1024
	subs := append([]extension.SubStatus(nil), st.Substatus...)
	st.Substatus = subs
	for i := 0; i < 10; i++ {
		data, err := extension.MarshalStatus(st, now)
		if err != nil || len(data) <= limit {
			return st
		}
		longest := -1
		for j := range subs {
			if subs[j].FormattedMessage != nil && (longest < 0 || len(subs[j].FormattedMessage.Message) > len(subs[longest].FormattedMessage.Message)) {
				longest = j
			}
		}
		if longest < 0 {
			return st
		}
		msg := subs[longest].FormattedMessage.Message
		cut := len(msg) - (len(data)-limit)*2
		if cut < 0 {
			cut = 0
		}
		subs[longest].FormattedMessage = extension.Message(extension.TruncateUTF8(msg, cut))
	}
	return st
}

func (m *Monitor) writeStatus(st extension.Status) {
	st = BoundStatus(st, time.Now())
	if _, err := extension.WriteStatus(m.Env.Handler.StatusFolder, m.seq, st, time.Now()); err != nil {
		m.Env.Log.Error("write status", "err", err)
		return
	}
	m.lastStatus, m.lastMessage = st.Status, st.FormattedMessage.Message
	key := st.Status + "|" + st.FormattedMessage.Message
	if key != m.lastReported {
		m.lastReported = key
		m.Env.Log.Info("status reported", "seq", m.seq, "status", st.Status, "code", st.Code, "message", st.FormattedMessage.Message)
		m.Events.Write(levelFor(st.Status, m.state.Failures() > 0), "monitor", "status", st.Status+": "+st.FormattedMessage.Message)
	}
}

// Heartbeat messages. waagent copies the heartbeat's status (and, from
// 2.14, its message) into the handler status it reports to Azure, so the
// message always says what is known now.
const (
	monitorStartedMessage = "ProxyAgent extension monitor started; checking the agent's status."
	heartbeatPrefix       = "ProxyAgent extension monitor is running. Agent status "
)

// heartbeat rewrites the heartbeat file whenever the monitor's view (its
// status and message) changes, and at least every HeartbeatInterval so
// waagent sees the monitor responsive.
func (m *Monitor) heartbeat() {
	text := monitorStartedMessage
	if m.lastStatus != "" {
		text = heartbeatPrefix + m.lastStatus + ": " + m.lastMessage
	}
	if text == m.lastHeartbeatMsg && time.Since(m.lastHeartbeat) < m.Env.Opts.HeartbeatInterval {
		return
	}
	m.writeHeartbeat(text)
}

func (m *Monitor) writeHeartbeat(text string) {
	if err := WriteHeartbeat(m.Env, text); err != nil {
		m.Env.Log.Error("write heartbeat", "err", err)
		return
	}
	m.lastHeartbeat, m.lastHeartbeatMsg = time.Now(), text
}

// WriteHeartbeat writes e's heartbeat file: Ready, code 0 and text (cut
// to 512 bytes). The handler is ready whenever it runs; the agent's
// health is in the status file and the message.
func WriteHeartbeat(e *Env, text string) error {
	return extension.WriteHeartbeat(e.Handler.HeartbeatFile, extension.Heartbeat{
		Status: extension.HeartbeatReady,
		Code:   0,
		FormattedMessage: extension.FormattedMessage{Lang: extension.DefaultLanguage,
			Message: extension.TruncateUTF8(text, 512)},
	})
}
