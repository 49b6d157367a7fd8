package pause

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		if !For(ctx, time.Second) || time.Since(start) != time.Second {
			t.Errorf("waited %v, want true after 1s", time.Since(start))
		}
		if !For(ctx, -time.Second) || time.Since(start) != time.Second {
			t.Error("a negative duration waited")
		}
		go func() { time.Sleep(100 * time.Millisecond); cancel() }()
		start = time.Now()
		if For(ctx, time.Hour) || time.Since(start) != 100*time.Millisecond {
			t.Errorf("ended context: true or waited %v", time.Since(start))
		}
	})
}
