package rules

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// minSteps is how many Lua instructions an evaluation must have run
	// for the deadline to stop it on time. The deadline is measured on the
	// wall clock, which also runs while the evaluating goroutine waits for
	// a processor (preempted, or assisting the garbage collector); on a
	// loaded machine a rule of a few hundred instructions can see its
	// deadline pass without being at fault. Such an evaluation gets more
	// time, up to graceFactor × the deadline. A runaway loop runs 100,000
	// instructions in a millisecond or two of processor time, so it is
	// stopped on time.
	minSteps = 100_000
	// graceFactor bounds the extra time: some rules spend their time in
	// few expensive instructions (s = s .. s doubles a string each time),
	// and what they allocate grows with the time they are given.
	graceFactor = 2
	// publishEvery is how often, in instructions, the evaluating goroutine
	// publishes its instruction count for the timer to read; an atomic
	// store per instruction would cost more than the check it feeds.
	publishEvery = 256
)

// deadline is the context.Context of one interpreter state, re-armed for
// every evaluation instead of creating a context.WithTimeout per event,
// which costs a timer, a goroutine-safe cancel context and several
// allocations each time (see BenchmarkDeadline).
//
// gopher-lua calls Done before every instruction, so Done is a field read
// and a counter. One time.AfterFunc timer per state closes the channel
// when the evaluation is over its deadline; the closing, and the
// replacement of a closed channel, happen under mu, so that a timer firing
// late for an evaluation that already ended cannot cut the next one short.
type deadline struct {
	// done is read on every instruction without a lock: only disarm,
	// run by the evaluating goroutine itself, replaces it.
	done  chan struct{}
	steps int // instructions of this evaluation, evaluating goroutine only
	seen  atomic.Int64
	timer *time.Timer

	mu      sync.Mutex
	armed   bool
	expired bool
	start   time.Time
	soft    time.Duration
}

func newDeadline() *deadline {
	d := &deadline{done: make(chan struct{})}
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
	return d
}

// arm starts the clock of one evaluation.
func (d *deadline) arm(limit time.Duration) {
	d.steps = 0
	d.seen.Store(0)
	d.mu.Lock()
	d.armed, d.start, d.soft = true, time.Now(), limit
	d.mu.Unlock()
	d.timer.Reset(limit)
}

// disarm ends an evaluation and reports whether it was stopped; a closed
// channel is replaced for the next one.
func (d *deadline) disarm() bool {
	d.timer.Stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armed = false
	expired := d.expired
	if expired {
		d.done = make(chan struct{})
		d.expired = false
	}
	return expired
}

// hit reports whether the running evaluation was stopped.
func (d *deadline) hit() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.armed || d.expired {
		return
	}
	elapsed := time.Since(d.start)
	switch {
	case elapsed < d.soft:
		// Fired for an earlier evaluation, late.
		d.timer.Reset(d.soft - elapsed)
	case d.seen.Load() < minSteps && elapsed < graceFactor*d.soft:
		d.timer.Reset(graceFactor*d.soft - elapsed)
	default:
		d.expired = true
		close(d.done)
	}
}

// Done implements context.Context.
func (d *deadline) Done() <-chan struct{} {
	d.steps++
	if d.steps%publishEvery == 0 {
		d.seen.Store(int64(d.steps))
	}
	return d.done
}

// Err implements context.Context.
func (d *deadline) Err() error {
	select {
	case <-d.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// Deadline implements context.Context; the deadline moves with every
// evaluation and depends on its progress, so none is reported.
func (d *deadline) Deadline() (time.Time, bool) { return time.Time{}, false }

// Value implements context.Context; the state's context carries no values.
func (d *deadline) Value(any) any { return nil }
