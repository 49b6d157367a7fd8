package handler

import (
	"math"
	"time"

	"github.com/opengpa/gpa/extension"
)

// maxFailureCount saturates the consecutive-failure counter.
const maxFailureCount = 10000

// StatusState is the top-level status hysteresis (upstream StatusState):
// it starts transitioning; one success moves transitioning to success;
// one failure moves success to transitioning (code 0); a streak of
// consecutive failures reaches error (code 4); from error one success
// moves to transitioning and the next to success. The message always
// reflects the latest event. It is owned by the monitor goroutine.
//
// Upstream reaches error on the Threshold-th consecutive failure of a
// monitor that looks every Interval (20 × 15 s: about 5 minutes). The
// monitor here looks more often while it waits for the agent's first
// success, so a failure streak reaches error only when it holds at least
// Threshold failures and has lasted at least (Threshold−1) × Interval
// from its first failure to the latest: the time Threshold failures take
// at the normal cadence. At that cadence the two conditions coincide, as
// upstream's; faster polling reports success sooner but error no sooner.
type StatusState struct {
	// Threshold is how many consecutive failures, observed at the normal
	// cadence, reach error.
	Threshold int
	// Interval is the normal time between observations; zero counts
	// failures only.
	Interval time.Duration

	status   string
	code     int
	message  string
	failures int
	// firstFailure is when the current failure streak began.
	firstFailure time.Time
}

// NewStatusState returns a state in transitioning that reaches error
// after threshold consecutive failures spanning (threshold−1) × interval.
// A threshold ≤ 0 means 20.
func NewStatusState(threshold int, interval time.Duration) *StatusState {
	if threshold <= 0 {
		threshold = 20
	}
	return &StatusState{Threshold: threshold, Interval: interval, status: extension.StatusTransitioning}
}

// Success records a healthy observation.
func (s *StatusState) Success(msg string) {
	s.failures = 0
	s.message = msg
	s.code = CodeOK
	if s.status == extension.StatusError {
		s.status = extension.StatusTransitioning
	} else {
		s.status = extension.StatusSuccess
	}
}

// Failure records an unhealthy observation made at now.
func (s *StatusState) Failure(now time.Time, msg string) {
	if s.failures == 0 {
		s.firstFailure = now
	}
	if s.failures < maxFailureCount {
		s.failures++
	}
	s.message = msg
	if s.status == extension.StatusError ||
		s.failures >= s.Threshold && now.Sub(s.firstFailure) >= s.errorAfter() {
		s.status, s.code = extension.StatusError, CodeNotOK
		return
	}
	s.status, s.code = extension.StatusTransitioning, CodeOK
}

// errorAfter is how long a failure streak must last, first failure to
// latest, before it can reach error: (Threshold−1) × Interval, saturated.
func (s *StatusState) errorAfter() time.Duration {
	n := time.Duration(s.Threshold - 1)
	if s.Interval <= 0 || n <= 0 {
		return 0
	}
	if n > math.MaxInt64/s.Interval {
		return math.MaxInt64
	}
	return n * s.Interval
}

// Status returns the current status value, code and message.
func (s *StatusState) Status() (status string, code int, message string) {
	return s.status, s.code, s.message
}

// Failures is the count of consecutive failures (saturating).
func (s *StatusState) Failures() int { return s.failures }
