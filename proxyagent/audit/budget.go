package audit

import (
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/identity"
)

// An unprivileged caller could otherwise push everyone's records out of
// the size-bounded logs (5 × 10 MiB) within seconds by sending requests the
// agent refuses. Each caller may write Options.CallerBurst records at once
// and Options.CallerRate a second after that; records beyond are counted,
// not written, and the caller's next written record says how many
// ("suppressed"). The summary tables and metrics still count every
// request. Root in the agent's network namespace (waagent, the extension,
// an administrator) is not limited.

// Defaults for the per-caller record budget. IMDS serves a VM about five
// requests a second, so a caller that keeps above ten is flooding.
const (
	DefaultCallerBurst = 2000
	DefaultCallerRate  = 10
	// maxBudgetCallers bounds the callers tracked; beyond it full buckets
	// are forgotten first.
	maxBudgetCallers = 4096
)

// budgetKey names a caller as the budget counts it: a user in the agent's
// namespace or in another one (a container); unknown for a request
// without claims.
type budgetKey struct {
	uid     uint64
	other   bool
	unknown bool
}

// tokenBucket is one caller's token bucket and its suppressed records.
type tokenBucket struct {
	tokens     float64
	last       time.Time
	suppressed uint64
}

// budget is the per-caller record budget; owned by the writer goroutine.
type budget struct {
	burst, rate float64
	callers     map[budgetKey]*tokenBucket
}

func newBudget(burst, rate int) *budget {
	return &budget{burst: float64(burst), rate: float64(rate), callers: map[budgetKey]*tokenBucket{}}
}

// keyOf returns c's budget key; exempt is true for root in the agent's
// namespace.
func keyOf(c *claims.Claims) (k budgetKey, exempt bool) {
	if c == nil {
		return budgetKey{unknown: true}, false
	}
	if identity.VMRoot(c.UserID, c.OtherNetns) {
		return budgetKey{}, true
	}
	return budgetKey{uid: c.UserID, other: c.OtherNetns}, false
}

// take spends one record of c's budget at now. It returns whether the
// record may be written and, if so, how many of c's records were
// suppressed since its last written one.
func (b *budget) take(c *claims.Claims, now time.Time) (ok bool, suppressed uint64) {
	k, exempt := keyOf(c)
	if exempt {
		return true, 0
	}
	bk := b.callers[k]
	if bk == nil {
		if len(b.callers) >= maxBudgetCallers {
			b.prune(now)
		}
		bk = &tokenBucket{tokens: b.burst, last: now}
		b.callers[k] = bk
	}
	b.refill(bk, now)
	if bk.tokens < 1 {
		bk.suppressed++
		return false, 0
	}
	bk.tokens--
	suppressed, bk.suppressed = bk.suppressed, 0
	return true, suppressed
}

func (b *budget) refill(bk *tokenBucket, now time.Time) {
	if d := now.Sub(bk.last); d > 0 {
		bk.tokens = min(b.burst, bk.tokens+d.Seconds()*b.rate)
		bk.last = now
	}
}

// prune forgets callers whose bucket is full again and who have nothing
// suppressed; if none is, it forgets one caller (its suppressed count is
// lost, its budget starts full).
func (b *budget) prune(now time.Time) {
	var victim budgetKey
	for k, bk := range b.callers {
		victim = k
		b.refill(bk, now)
		if bk.tokens >= b.burst && bk.suppressed == 0 {
			delete(b.callers, k)
		}
	}
	if len(b.callers) >= maxBudgetCallers {
		delete(b.callers, victim)
	}
}
