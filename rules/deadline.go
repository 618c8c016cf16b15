package rules

import (
	"context"
	"sync"
	"time"
)

// deadline is the context.Context of one interpreter state, re-armed for
// every evaluation instead of creating a context.WithTimeout per event
// (which costs a timer, a goroutine-safe cancel context and several
// allocations each time; see BenchmarkDeadline). gopher-lua polls Done
// before every instruction, so Done must be a plain field read.
//
// One time.AfterFunc timer per state closes the done channel when an
// evaluation overruns. The owner (the goroutine holding the state's lock)
// arms and disarms; only the timer's function runs elsewhere.
type deadline struct {
	// done is read by the owner on every instruction without a lock; it is
	// replaced only by the owner, in disarm, after the timer's function
	// has closed it and said so on fired.
	done  chan struct{}
	mu    sync.Mutex // orders the timer's close(done) with its replacement
	fired chan struct{}
	timer *time.Timer
}

func newDeadline() *deadline {
	d := &deadline{done: make(chan struct{}), fired: make(chan struct{}, 1)}
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
	return d
}

func (d *deadline) fire() {
	d.mu.Lock()
	close(d.done)
	d.mu.Unlock()
	d.fired <- struct{}{}
}

// arm starts the clock of one evaluation.
func (d *deadline) arm(limit time.Duration) { d.timer.Reset(limit) }

// disarm stops the clock and reports whether the deadline was hit. When it
// was, it waits for the timer's function to finish (Stop does not), so
// that a late firing can never cut the next evaluation short, and makes a
// fresh done channel.
func (d *deadline) disarm() (expired bool) {
	if d.timer.Stop() {
		return false
	}
	<-d.fired
	d.mu.Lock()
	d.done = make(chan struct{})
	d.mu.Unlock()
	return true
}

// stop releases the timer when the state closes.
func (d *deadline) stop() { d.timer.Stop() }

// Deadline implements context.Context; the deadline moves with every
// evaluation, so none is reported.
func (d *deadline) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done implements context.Context.
func (d *deadline) Done() <-chan struct{} { return d.done }

// Err implements context.Context.
func (d *deadline) Err() error {
	select {
	case <-d.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// Value implements context.Context; the state's context carries no values.
func (d *deadline) Value(any) any { return nil }
