package audit

import (
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
)

func TestBudget(t *testing.T) {
	b := newBudget(3, 2)
	user := &claims.Claims{UserID: 1000}
	root := &claims.Claims{UserID: 0, RunAsElevated: true}
	containerRoot := &claims.Claims{UserID: 0, OtherNetns: true}
	now := t0
	take := func(c *claims.Claims) (bool, uint64) { return b.take(c, now) }
	for i := range 3 {
		if ok, sup := take(user); !ok || sup != 0 {
			t.Fatalf("record %d within the burst: %v %d", i, ok, sup)
		}
	}
	for range 4 {
		if ok, _ := take(user); ok {
			t.Fatal("a record beyond the burst was allowed")
		}
	}
	for range 100 {
		if ok, _ := take(root); !ok {
			t.Fatal("root in the agent's namespace was limited")
		}
	}
	for i := range 4 {
		if ok, _ := take(containerRoot); ok != (i < 3) {
			t.Fatalf("a container's root, record %d: %v", i, ok)
		}
	}
	for i := range 4 {
		if ok, _ := take(nil); ok != (i < 3) {
			t.Fatalf("a request without claims, record %d: %v", i, ok)
		}
	}
	// One second refills two records; the first says how many were
	// suppressed before it.
	now = now.Add(time.Second)
	if ok, sup := take(user); !ok || sup != 4 {
		t.Fatalf("after a second: %v, suppressed %d; want true, 4", ok, sup)
	}
	if ok, sup := take(user); !ok || sup != 0 {
		t.Fatalf("second refilled record: %v %d", ok, sup)
	}
	if ok, _ := take(user); ok {
		t.Fatal("a third record within the second")
	}
	// Long idle refills to the burst, not beyond.
	now = now.Add(time.Hour)
	for i := range 4 {
		if ok, _ := take(user); ok != (i < 3) {
			t.Fatalf("after an hour, record %d: %v", i, ok)
		}
	}
}

// The callers tracked stay bounded: full buckets are forgotten first.
func TestBudgetBounded(t *testing.T) {
	b := newBudget(2, 1)
	for uid := range maxBudgetCallers + 10 {
		b.take(&claims.Claims{UserID: uint64(uid + 1)}, t0)
	}
	if n := len(b.callers); n > maxBudgetCallers {
		t.Fatalf("%d callers tracked, want at most %d", n, maxBudgetCallers)
	}
}

// A flooding caller cannot push others' records out of the log: its
// records beyond the budget are counted, not written; root's are all
// written; the caller's next record says how many were suppressed; the
// summaries count every request.
func TestRecorderCallerBudget(t *testing.T) {
	dir := t.TempDir()
	now := t0
	r, err := New(Options{Dir: dir, CallerBurst: 2, CallerRate: 1, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	user := &claims.Claims{UserID: 1000, UserName: "alice"}
	ev := func(c *claims.Claims, at time.Time) Event {
		e := allowEvent()
		e.Caller, e.Time = c, at
		return e
	}
	for range 5 {
		r.Record(ev(user, now))
		r.Record(allowEvent()) // root
	}
	r.Record(ev(user, now.Add(2*time.Second)))
	r.Close()
	recs, err := readAll(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	var users, roots int
	var last Record
	for _, rec := range recs {
		if rec.Caller.UserID == 1000 {
			users++
			last = rec
		} else {
			roots++
		}
	}
	if users != 3 || roots != 5 || r.Suppressed() != 3 || last.Suppressed != 3 {
		t.Errorf("written: %d of alice's 6 and %d of root's 5; suppressed %d, last record says %d; want 3, 5, 3, 3",
			users, roots, r.Suppressed(), last.Suppressed)
	}
	conn, _ := r.Summaries()
	var total uint64
	for _, e := range conn {
		total += e.Count
	}
	if total != 11 {
		t.Errorf("summaries count %d requests, want 11", total)
	}
}
