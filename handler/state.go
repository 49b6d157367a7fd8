package handler

import "github.com/opengpa/gpa/extension"

// maxFailureCount saturates the consecutive-failure counter.
const maxFailureCount = 10000

// StatusState is the top-level status hysteresis (upstream StatusState):
// it starts transitioning; one success moves transitioning to success;
// one failure moves success to transitioning (code 0); threshold
// consecutive failures reach error (code 4); from error one success moves
// to transitioning and the next to success. The message always reflects
// the latest event. It is owned by the monitor goroutine.
type StatusState struct {
	Threshold int

	status   string
	code     int
	message  string
	failures int
}

// NewStatusState returns a state in transitioning.
func NewStatusState(threshold int) *StatusState {
	if threshold <= 0 {
		threshold = 20
	}
	return &StatusState{Threshold: threshold, status: extension.StatusTransitioning}
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

// Failure records an unhealthy observation.
func (s *StatusState) Failure(msg string) {
	if s.failures < maxFailureCount {
		s.failures++
	}
	s.message = msg
	if s.failures >= s.Threshold || s.status == extension.StatusError {
		s.status, s.code = extension.StatusError, CodeNotOK
		return
	}
	s.status, s.code = extension.StatusTransitioning, CodeOK
}

// Status returns the current status value, code and message.
func (s *StatusState) Status() (status string, code int, message string) {
	return s.status, s.code, s.message
}

// Failures is the count of consecutive failures (saturating).
func (s *StatusState) Failures() int { return s.failures }
