package rawio

import (
	"errors"
	"os"
	"testing"
	"testing/synctest"
	"time"
)

// Queued descriptors are closed together releaseDelay after the first of
// a batch, or at once by Flush; a new batch starts a new delay.
func TestFDReleaser(t *testing.T) {
	pipe := func(t *testing.T) *os.File {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		return r
	}
	closed := func(f *os.File) bool {
		_, err := f.Stat()
		return errors.Is(err, os.ErrClosed)
	}
	synctest.Test(t, func(t *testing.T) {
		var r Releaser
		a, b := pipe(t), pipe(t)
		r.add(a)
		time.Sleep(releaseDelay / 2)
		r.add(b)
		time.Sleep(releaseDelay/2 - time.Millisecond)
		synctest.Wait()
		if closed(a) || closed(b) {
			t.Fatal("closed before the delay")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if !closed(a) || !closed(b) {
			t.Fatalf("after the delay: a closed %v, b closed %v; want both", closed(a), closed(b))
		}
		c := pipe(t)
		r.add(c)
		time.Sleep(releaseDelay - time.Millisecond)
		synctest.Wait()
		if closed(c) {
			t.Fatal("a new batch was closed before its own delay")
		}
		d := pipe(t)
		r.add(d)
		r.Flush()
		if !closed(c) || !closed(d) {
			t.Fatal("flush left files open")
		}
	})
}
