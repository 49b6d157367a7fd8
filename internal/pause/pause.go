// Package pause waits for a duration unless a context ends first: the one
// timed wait of the agent's retry and poll loops.
package pause

import (
	"context"
	"time"
)

// For waits d (none when d <= 0) and reports true, or reports false as
// soon as ctx is done.
func For(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
