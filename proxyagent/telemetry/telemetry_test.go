package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/serdejson"
	"github.com/opengpa/gpa/proxyagent/logfile"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// start runs a pipeline against f over in-memory connections inside the
// current synctest bubble; the pipeline stops when the test ends.
func start(t *testing.T, f *fakeHost, edit func(*Options)) *Telemetry {
	t.Helper()
	m := fxMachine
	o := Options{Queue: NewQueue("1.2.3"), Version: "1.2.3", WireServer: pipeWS, IMDS: pipeIMDS, Dial: servePipes(t, f), Machine: &m, Logger: discard}
	if edit != nil {
		edit(&o)
	}
	tel := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tel.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return tel
}

// after lets d of fake time pass and waits until every goroutine is idle.
func after(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func events(t *testing.T, posts [][]byte) []parsedEvent {
	t.Helper()
	var out []parsedEvent
	for _, p := range posts {
		out = append(out, parseDoc(t, p)...)
	}
	return out
}

// Events queued before and after Run are sent at the first drain, 60 s
// after Run starts, not before: metadata refreshed first (unsigned without
// a key), then one unsigned upload carrying the fixtures' metadata.
func TestSendsAtDrainInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeHost{}
		tel := start(t, f, nil)
		tel.opts.Queue.Add(Event{EventLevel: "INFO", Message: "first", TaskName: TaskCommonLogger, OperationId: ModuleProxyAgent})
		after(DrainInterval - time.Millisecond)
		if posts, _, calls, _ := f.snapshot(); len(posts) != 0 || len(calls) != 0 {
			t.Fatalf("before the first drain: %d posts, calls %q", len(posts), calls)
		}
		tel.opts.Queue.Add(Event{EventLevel: "WARN", Message: "second"})
		after(time.Millisecond)
		posts, _, calls, _ := f.snapshot()
		want := []string{"ws GET " + msp.GoalStatePath, "ws GET " + fxSharedTarget, "imds GET " + msp.IMDSInstancePath, "ws POST " + msp.TelemetryDataPath}
		if strings.Join(calls, "\n") != strings.Join(want, "\n") {
			t.Errorf("calls %q, want %q", calls, want)
		}
		evs := events(t, posts)
		if len(evs) != 2 {
			t.Fatalf("%d events sent, want 2", len(evs))
		}
		for i, msg := range []string{"first", "second"} {
			e := evs[i]
			if got, _ := e.value("Context1"); got != msg || e.Provider != GenericProviderID || e.ID != "7" {
				t.Errorf("event %d: provider %s id %s message %q", i, e.Provider, e.ID, got)
			}
			if names := paramNames(e); names != "KeywordName,TenantName,RoleName,RoleInstanceName,ContainerId,ResourceGroupName,SubscriptionId,VMId,ImageOrigin,OSVersion,RAM,Processors,EventPid,EventTid,GAVersion,ExecutionMode,TaskName,OpcodeName,EventName,CapabilityUsed,Context1,Context2,Context3" {
				t.Errorf("param order %s", names)
			}
			for name, want := range map[string]string{"TenantName": fxTenant, "RoleInstanceName": fxInstance, "ContainerId": fxContainerID,
				"VMId": fxVMID, "SubscriptionId": fxSubscription, "ResourceGroupName": fxGroup, "ImageOrigin": "1",
				"GAVersion": "1.2.3", "EventPid": fmt.Sprint(os.Getpid())} {
				if got, _ := e.value(name); got != want {
					t.Errorf("event %d: %s = %q, want %q", i, name, got, want)
				}
			}
		}
		if c := tel.Counts(); c.Sent != 2 || c.Queued != 0 || c.Dropped != 0 || c.Failed != 0 {
			t.Errorf("counts %+v", c)
		}
		// Nothing more to send: later drains make no calls.
		after(3 * DrainInterval)
		if _, _, later, _ := f.snapshot(); len(later) != len(calls) {
			t.Errorf("idle drains made calls: %q", later[len(calls):])
		}
		f.checkNoViolations(t)
	})
}

// With a latched key the three metadata calls are signed with it (the
// host verifies them); the upload never is.
func TestMetadataSignedUploadNot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		key, err := msp.NewKey("8e1cb3b4-4e0b-4b4f-9a1e-3cfd6a3a1b2c", strings.Repeat("5a", 32))
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeHost{key: key}
		tel := start(t, f, func(o *Options) { o.Key = func() *msp.Key { return key } })
		tel.opts.Queue.Add(Event{Message: "m"})
		after(DrainInterval)
		if posts, _, _, _ := f.snapshot(); len(posts) != 1 {
			t.Fatalf("%d posts", len(posts))
		}
		f.checkNoViolations(t)
	})
}

// Without metadata (refresh failed, none earlier) nothing is sent and the
// events wait; once the host answers they go, with later ones. A later
// failed refresh reuses the earlier metadata.
func TestNoMetadataKeepsEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeHost{goalStateCode: 503}
		tel := start(t, f, nil)
		tel.opts.Queue.Add(Event{Message: "a"})
		after(DrainInterval)
		tel.opts.Queue.Add(Event{Message: "b"})
		after(DrainInterval)
		posts, attempts, _, _ := f.snapshot()
		if len(posts) != 0 || len(attempts) != 0 {
			t.Fatalf("sent without metadata: %d posts", len(posts))
		}
		if c := tel.Counts(); c.Queued != 2 || c.Dropped != 0 {
			t.Fatalf("counts %+v, want both events queued", c)
		}
		f.set(func(f *fakeHost) { f.goalStateCode = 0 })
		after(DrainInterval)
		posts, _, _, _ = f.snapshot()
		evs := events(t, posts)
		if len(evs) != 2 {
			t.Fatalf("%d events after recovery, want 2", len(evs))
		}
		f.set(func(f *fakeHost) { f.imdsCode = 500 })
		tel.opts.Queue.Add(Event{Message: "c"})
		after(DrainInterval)
		posts, _, _, _ = f.snapshot()
		evs = events(t, posts)
		if len(evs) != 3 {
			t.Fatalf("%d events, want 3: earlier metadata not reused", len(evs))
		}
		if got, _ := evs[2].value("VMId"); got != fxVMID {
			t.Errorf("VMId %q from earlier metadata", got)
		}
		f.checkNoViolations(t)
	})
}

// A refused upload is tried again 15 s later, up to 5 attempts; any 2xx
// is success; after 5 failures the batch is dropped and counted.
func TestUploadRetries(t *testing.T) {
	cases := []struct {
		name     string
		codes    []int
		attempts int
		sent     int
		failed   uint64
	}{
		{"first 2xx", []int{204}, 1, 1, 0},
		{"fifth attempt", []int{500, 503, 400, 404}, 5, 1, 0},
		{"five failures", []int{500, 500, 500, 500, 500}, 5, 0, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fakeHost{postCodes: c.codes}
				tel := start(t, f, nil)
				tel.opts.Queue.Add(Event{Message: "x"})
				after(DrainInterval + 10*RetryDelay)
				posts, attempts, _, _ := f.snapshot()
				if len(attempts) != c.attempts || len(posts) != c.sent {
					t.Fatalf("%d attempts, %d accepted; want %d, %d", len(attempts), len(posts), c.attempts, c.sent)
				}
				for i := 1; i < len(attempts); i++ {
					if d := attempts[i].Sub(attempts[i-1]); d != RetryDelay {
						t.Errorf("attempt %d came %v after the previous, want %v", i+1, d, RetryDelay)
					}
				}
				if got := tel.Counts(); got.Failed != c.failed || got.Sent != uint64(c.sent) || got.Queued != 0 {
					t.Errorf("counts %+v", got)
				}
				f.checkNoViolations(t)
			})
		})
	}
}

// The producers' queue holds 1000 events; more are dropped and counted.
// Without an event folder, what the sender's queue cannot take is dropped
// too.
func TestQueuesBoundedWithoutFolder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeHost{goalStateCode: 500} // nothing is ever sent
		tel := start(t, f, nil)
		for i := range QueueSize + 500 {
			tel.opts.Queue.Add(Event{Message: fmt.Sprint(i)})
		}
		if c := tel.Counts(); c.Dropped != 500 || c.Queued != QueueSize {
			t.Fatalf("counts %+v, want 500 dropped and %d queued", c, QueueSize)
		}
		after(DrainInterval) // all 1000 move to the sender's queue
		for i := range 300 {
			tel.opts.Queue.Add(Event{Message: fmt.Sprint(i)})
		}
		after(DrainInterval) // no room, no folder: 300 more dropped
		if c := tel.Counts(); c.Dropped != 800 || c.Queued != QueueSize {
			t.Errorf("counts %+v, want 800 dropped and %d queued", c, QueueSize)
		}
	})
}

// Overflow goes to <eventFolder>/<unixnanos>.json (a JSON array of
// events) up to maxEventFileCount files, beyond which it is dropped; the
// files are read back (first with the first drain, then every 300 s) and
// deleted once the sender's queue has room, and their events sent.
func TestOverflowFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "events")
		f := &fakeHost{goalStateCode: 500}
		tel := start(t, f, func(o *Options) { o.EventFolder = dir; o.MaxEventFiles = 2 })
		fill := func(tag string, n int) {
			for i := range n {
				tel.opts.Queue.Add(Event{Message: fmt.Sprintf("%s-%04d", tag, i)})
			}
		}
		fill("a", QueueSize)
		after(DrainInterval) // drain 1: a → sender's queue
		for _, tag := range []string{"b", "c", "d"} {
			fill(tag, 10)
			after(DrainInterval) // drains 2–4: b, c to files; d finds 2 files and is dropped
		}
		files := eventDir{path: dir}.list(genericFiles)
		if len(files) != 2 {
			t.Fatalf("files %q, want 2", files)
		}
		var stored []Event
		data, err := os.ReadFile(filepath.Join(dir, files[0]))
		if err != nil || json.Unmarshal(data, &stored) != nil || len(stored) != 10 || stored[0].Message != "b-0000" {
			t.Fatalf("first file: %v %.200s", err, data)
		}
		if fi, _ := os.Stat(filepath.Join(dir, files[0])); fi.Mode().Perm() != 0o600 {
			t.Errorf("file mode %v", fi.Mode().Perm())
		}
		if c := tel.Counts(); c.Dropped != 10 {
			t.Errorf("counts %+v, want d's 10 dropped", c)
		}
		f.set(func(f *fakeHost) { f.goalStateCode = 0 })
		after(DrainInterval) // drain 5: sends a
		if left := (eventDir{path: dir}).list(genericFiles); len(left) != 2 {
			t.Fatalf("files read before the 300 s period: %q", left)
		}
		after(DrainInterval) // drain 6 (300 s after drain 1): files read, deleted, sent
		if left := (eventDir{path: dir}).list(genericFiles); len(left) != 0 {
			t.Errorf("files left: %q", left)
		}
		posts, _, _, _ := f.snapshot()
		var msgs []string
		for _, e := range events(t, posts) {
			m, _ := e.value("Context1")
			msgs = append(msgs, m)
		}
		if len(msgs) != QueueSize+20 || msgs[0] != "a-0000" || msgs[QueueSize] != "b-0000" || msgs[QueueSize+10] != "c-0000" {
			t.Errorf("%d events sent, first %q", len(msgs), msgs[:1])
		}
		if c := tel.Counts(); c.Sent != QueueSize+20 || c.Queued != 0 {
			t.Errorf("counts %+v", c)
		}
	})
}

// MaxEventFiles < 0 (maxEventFileCount 0): overflow is dropped, no
// generic file is written.
func TestNoOverflowFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "events")
		f := &fakeHost{goalStateCode: 500}
		tel := start(t, f, func(o *Options) { o.EventFolder = dir; o.MaxEventFiles = -1 })
		for i := range QueueSize + 10 {
			tel.opts.Queue.Add(Event{Message: fmt.Sprint(i)})
		}
		after(DrainInterval)
		for range 2 {
			tel.opts.Queue.Add(Event{Message: "more"})
			after(DrainInterval)
		}
		if files := (eventDir{path: dir}).list(genericFiles); len(files) != 0 {
			t.Errorf("files %q, want none", files)
		}
		if c := tel.Counts(); c.Dropped == 0 {
			t.Errorf("counts %+v, want overflow dropped", c)
		}
	})
}

// Files another hand left in the folder are re-ingested too, redacted
// again; unreadable ones are deleted.
func TestReingestCleansAndDropsBadFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "100.json"), []byte(`[{"EventLevel":"INFO","Message":"pwd=hunter2;","EventPid":"7","EventTid":"8","TimeStamp":"t"}]`), 0o600)
		os.WriteFile(filepath.Join(dir, "200.json"), []byte(`not json`), 0o600)
		os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(`ignored`), 0o600)
		if m := onlyMessageFrom(t, dir); m != "[REDACTED];" {
			t.Errorf("message %q", m)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 || ents[0].Name() != "notes.txt" {
			t.Errorf("folder holds %v", ents)
		}
	})
}

// Every 15 minutes the proxyAgentStatus object goes out as an
// extension-status event (§5.2), the first 15 minutes after Run starts.
func TestStatusEvent(t *testing.T) {
	for _, overall := range []status.OverallState{status.Success, status.Error} {
		t.Run(string(overall), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := status.AgentStatus{Version: "1.2.3", Status: overall,
					KeyLatchStatus:        status.ModuleStatus{Status: status.Running, Message: "key pwd=hunter2;", States: map[string]string{"keyGuid": "g"}},
					TelemetryLoggerStatus: status.ModuleStatus{Status: status.Unknown, Message: StartedMessage}}
				f := &fakeHost{}
				start(t, f, func(o *Options) { o.Status = func() status.AgentStatus { return st } })
				after(StatusInterval - time.Second)
				if posts, _, _, _ := f.snapshot(); len(posts) != 0 {
					t.Fatalf("status event before 15 minutes")
				}
				after(time.Second + DrainInterval)
				posts, _, _, _ := f.snapshot()
				evs := events(t, posts)
				if len(evs) != 1 {
					t.Fatalf("%d events", len(evs))
				}
				e := evs[0]
				if e.Provider != StatusProviderID || e.ID != "1" {
					t.Errorf("provider %s id %s", e.Provider, e.ID)
				}
				raw, _ := json.Marshal(st)
				wantMsg := strings.Replace(string(raw), "pwd=hunter2", "[REDACTED]", 1)
				success := "False"
				if overall == status.Success {
					success = "True"
				}
				for name, want := range map[string]string{"Name": "azure-proxy-agent", "Version": "1.2.3", "ExtensionType": "Monitoring",
					"IsInternal": "True", "Operation": "report_proxy_agent_status", "TaskName": "loop_status",
					"OperationSuccess": success, "Message": wantMsg, "Duration": "900000", "GAVersion": "1.2.3", "ExecutionMode": "ProxyAgent"} {
					if got, _ := e.value(name); got != want {
						t.Errorf("%s = %q, want %q", name, got, want)
					}
				}
				if names := paramNames(e); !strings.HasSuffix(names, "Processors,EventPid,EventTid,GAVersion,ExecutionMode,TaskName,OpcodeName,ExtensionType,IsInternal,Name,Version,Operation,OperationSuccess,Message,Duration") {
					t.Errorf("param order %s", names)
				}
				after(StatusInterval)
				if posts, _, _, _ := f.snapshot(); len(events(t, posts)) != 2 {
					t.Errorf("no second status event after 30 minutes")
				}
			})
		})
	}
}

// Log records at or above the configured level become generic events with
// the text ProxyAgent.log shows, redacted.
func TestLogHandler(t *testing.T) {
	q := NewQueue("1.2.3")
	log := slog.New(LogHandler(q, slog.LevelInfo)).With("module", "keykeeper")
	log.Debug("not an event")
	log.Info("key latched", "guid", "g-1")
	log.WithGroup("req").Warn("upload failed", "url", "https://a/b?sig=SECRETSIG&x=1", "status", 503)
	log.Error("line\nbreak")
	// The pipeline's own lines are never events (a refusing host would
	// get the warnings about it posted, again and again).
	slog.New(LogHandler(q, slog.LevelInfo)).With(moduleKey, pipelineModule).Warn("telemetry events dropped after failed sends")
	got := q.take()
	want := []struct{ level, msg string }{
		{"INFO", "key latched module=keykeeper guid=g-1"},
		{"WARN", "upload failed module=keykeeper req.url=\"https://a/b?[REDACTED]&x=1\" req.status=503"},
		{"ERROR", `line\nbreak module=keykeeper`},
	}
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d", len(got), len(want))
	}
	for i, w := range want {
		e := got[i].generic
		if e.EventLevel != w.level || e.Message != w.msg || e.TaskName != TaskCommonLogger || e.OperationId != ModuleProxyAgent ||
			e.Version != "1.2.3" || len(e.EventTid) < 8 || len(e.TimeStamp) != len("2006-01-02T15:04:05.000") {
			t.Errorf("event %d: %+v, want %s %q", i, *e, w.level, w.msg)
		}
	}
}

// A connection-log line becomes an event of task ConnectionLogger, module
// ProxyAgent, at its level and time, redacted (§4.8); past a full queue
// it is counted as dropped.
func TestAddConnectionLine(t *testing.T) {
	q := NewQueue("1.2.3")
	at := time.Date(2025, 4, 23, 12, 0, 0, 123456789, time.UTC)
	q.AddConnectionLine(logfile.Warn, at, []byte("7[3] - GET /x?sig=SECRETSIG&a=1 - 403 Forbidden"))
	got := q.take()
	if len(got) != 1 || got[0].generic == nil {
		t.Fatalf("queued %+v", got)
	}
	e := got[0].generic
	if e.EventLevel != "WARN" || e.TaskName != "ConnectionLogger" || e.OperationId != "ProxyAgent" ||
		e.Message != "7[3] - GET /x?[REDACTED]&a=1 - 403 Forbidden" || e.TimeStamp != "2025-04-23T12:00:00.123" ||
		e.Version != "1.2.3" || e.EventPid == "" || len(e.EventTid) < 8 {
		t.Errorf("event %+v", *e)
	}
	for range QueueSize + 5 {
		q.AddConnectionLine(logfile.Info, at, []byte("line"))
	}
	if n, dropped := q.counts(); n != QueueSize || dropped != 5 {
		t.Errorf("queued %d dropped %d, want %d and 5", n, dropped, QueueSize)
	}
}

// Log lines past a full queue are counted as dropped, and many goroutines
// may log at once (run with -race).
func TestLogHandlerFullQueue(t *testing.T) {
	q := NewQueue("1.2.3")
	log := slog.New(LogHandler(q, slog.LevelInfo))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range QueueSize/2 + 10 {
				log.Info("line", "g", g, "i", i)
			}
		})
	}
	wg.Wait()
	if n, dropped := q.counts(); n != QueueSize || dropped != 4*(QueueSize/2+10)-QueueSize {
		t.Fatalf("queued %d dropped %d", n, dropped)
	}
}

// Generic overflow files are read with the first drain and then every
// 300 s; extension-status files with every drain.
func TestFileReadPeriods(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		f := &fakeHost{}
		start(t, f, func(o *Options) { o.EventFolder = dir })
		after(DrainInterval + time.Second) // drain 1 is over
		if _, err := (eventDir{path: dir, maxFiles: 30}).write(genericFiles, []Event{{Message: "generic"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := (eventDir{path: dir}).write(statusFiles, []StatusEvent{{Name: "n", Message: "status"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		after(DrainInterval) // drain 2
		posts, _, _, _ := f.snapshot()
		if evs := events(t, posts); len(evs) != 1 || evs[0].Provider != StatusProviderID {
			t.Fatalf("after drain 2: %d events, want the status file's", len(evs))
		}
		after(3 * DrainInterval) // drains 3–5
		if posts, _, _, _ := f.snapshot(); len(posts) != 1 {
			t.Fatalf("generic file read before 300 s")
		}
		after(DrainInterval) // drain 6
		posts, _, _, _ = f.snapshot()
		evs := events(t, posts)
		if len(evs) != 2 {
			t.Fatalf("%d events after drain 6, want the generic file's too", len(evs))
		}
		if m, _ := evs[1].value("Context1"); m != "generic" {
			t.Errorf("message %q", m)
		}
	})
}

// A full producer queue drops log lines, never the status event, whose
// message (the proxyAgentStatus JSON) is redacted but not cut: cut, it
// would no longer be JSON.
func TestStatusEventSurvivesFullQueue(t *testing.T) {
	q := NewQueue("1.2.3")
	for i := range QueueSize + 10 {
		q.Add(Event{Message: fmt.Sprint(i)})
	}
	long := `{"keyLatchStatus":{"message":"` + strings.Repeat("x", 2*MaxMessageBytes) + ` pwd=hunter2;"}}`
	q.AddStatus(StatusEvent{Name: "azure-proxy-agent", Message: long})
	if n, dropped := q.counts(); n != QueueSize+1 || dropped != 10 {
		t.Fatalf("queued %d dropped %d, want %d and 10", n, dropped, QueueSize+1)
	}
	items := q.take()
	st := items[len(items)-1].status
	if st == nil {
		t.Fatal("status event not queued")
	}
	if !json.Valid([]byte(st.Message)) || strings.Contains(st.Message, "hunter2") || len(st.Message) <= MaxMessageBytes {
		t.Errorf("status message %d bytes, valid JSON %v, redacted %v", len(st.Message), json.Valid([]byte(st.Message)),
			!strings.Contains(st.Message, "hunter2"))
	}
}

// Files in the event folder that are not this agent's (a symlink, a file
// with more events than a queue holds) are never read and never block the
// files after them.
func TestReingestDropsForeignFiles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		secret := filepath.Join(t.TempDir(), "secret.json")
		os.WriteFile(secret, []byte(`[{"EventLevel":"INFO","Message":"from elsewhere","EventPid":"1","EventTid":"1","TimeStamp":"t"}]`), 0o600)
		os.Symlink(secret, filepath.Join(dir, "100.json"))
		big := make([]Event, QueueSize+1)
		for i := range big {
			big[i] = Event{EventLevel: "INFO", Message: "big", EventPid: "1", EventTid: "1", TimeStamp: "t"}
		}
		data, _ := json.Marshal(big)
		os.WriteFile(filepath.Join(dir, "200.json"), data, 0o600)
		os.WriteFile(filepath.Join(dir, "300.json"), []byte(`[{"EventLevel":"INFO","Message":"kept","EventPid":"7","EventTid":"8","TimeStamp":"t"}]`), 0o600)
		if m := onlyMessageFrom(t, dir); m != "kept" {
			t.Errorf("message %q, want the one of 300.json", m)
		}
		// The symlink is ignored (neither followed nor counted); the rest
		// is gone.
		if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "100.json" {
			t.Errorf("folder holds %v, want only the symlink", ents)
		}
		if _, err := os.Stat(secret); err != nil {
			t.Errorf("the symlink's target was touched: %v", err)
		}
	})
}

// onlyMessageFrom runs a pipeline with the event folder dir for one drain
// (in a synctest bubble), requires that exactly one event was sent and
// returns its message.
func onlyMessageFrom(t *testing.T, dir string) string {
	t.Helper()
	f := &fakeHost{}
	start(t, f, func(o *Options) { o.EventFolder = dir })
	after(DrainInterval)
	posts, _, _, _ := f.snapshot()
	evs := events(t, posts)
	if len(evs) != 1 {
		t.Fatalf("%d events sent, want 1", len(evs))
	}
	m, _ := evs[0].value("Context1")
	return m
}

// An event's JSON message keeps '&', '<' and '>' as upstream's serde_json
// does (serdejson.Marshal), so redacting "sig=" stops at the '&' after it.
func TestJSONMessageKeepsAmpersands(t *testing.T) {
	b, err := serdejson.Marshal(map[string]string{"url": "/a?x=1&sig=SECRET&b=<2>"})
	if err != nil || string(b) != `{"url":"/a?x=1&sig=SECRET&b=<2>"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	if got := CleanMessage(string(b)); got != `{"url":"/a?x=1&[REDACTED]&b=<2>"}` {
		t.Errorf("redacted %s", got)
	}
}
