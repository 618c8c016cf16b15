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
	// a processor (preempted, its thread descheduled, assisting the
	// garbage collector); on a loaded machine a rule of a few hundred
	// instructions can see its deadline pass without being at fault. Such
	// an evaluation gets more time, up to graceFactor × the deadline. A
	// runaway loop runs 100,000 instructions in a millisecond or two of
	// processor time, so it is stopped on time.
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

// Values of deadline.start besides a start time.
const (
	idle    = 0
	stopped = -1 // the timer stopped the evaluation
)

// epoch is the origin of deadline.start: a monotonic clock reading taken
// once, so that a start time fits an atomic int64.
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) + 1 } // never idle

// deadline is the context.Context of one interpreter state, re-armed for
// every evaluation instead of creating a context.WithTimeout per event,
// which costs a timer and several allocations each time (see
// BenchmarkDeadline).
//
// gopher-lua calls Done before every instruction, so Done is a field read
// and a counter. Arming an evaluation is a clock read and a few atomic
// stores: the state's one timer is not reset per evaluation but runs
// while the state is busy, firing at the deadline of the evaluation in
// progress (or one deadline later when none is) and stopping once the
// state is idle. When it finds an evaluation over its deadline it claims
// it (start becomes stopped) and closes the done channel, under mu; the
// evaluating goroutine replaces the channel, under mu, when it sees its
// evaluation was claimed. So a timer firing late can never stop an
// evaluation other than the one that overran.
type deadline struct {
	// done is read on every instruction without a lock: only the
	// evaluating goroutine replaces it.
	done  chan struct{}
	steps int // instructions of this evaluation, evaluating goroutine only

	start   atomic.Int64 // monoNow of the evaluation in progress, idle, or stopped
	limit   atomic.Int64 // its deadline, in nanoseconds
	seen    atomic.Int64 // steps as last published
	ticking atomic.Bool  // the timer is scheduled
	timer   *time.Timer
	mu      sync.Mutex
}

func newDeadline() *deadline {
	d := &deadline{done: make(chan struct{})}
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
	return d
}

// arm starts the clock of one evaluation.
func (d *deadline) arm(limit time.Duration) {
	if d.start.Load() == stopped {
		// The last evaluation never reached disarm (a panic went through
		// it): its channel is closed.
		d.disarm()
	}
	d.steps = 0
	d.seen.Store(0)
	prev := d.limit.Swap(int64(limit))
	d.start.Store(monoNow())
	if !d.ticking.Load() && d.ticking.CompareAndSwap(false, true) {
		d.timer.Reset(limit)
	} else if int64(limit) < prev {
		// The timer is still ticking for a longer limit (the load's): bring
		// it forward, or this evaluation could overrun by the difference.
		// A fire that comes early only re-arms for the time left.
		d.timer.Reset(limit)
	}
}

// disarm ends an evaluation and prepares the next: a channel the timer
// closed is replaced.
func (d *deadline) disarm() {
	if d.start.Swap(idle) == stopped {
		// The timer claimed the evaluation under mu and closed done
		// before releasing it.
		d.mu.Lock()
		d.done = make(chan struct{})
		d.mu.Unlock()
	}
}

// hit reports whether the evaluation in progress was stopped.
func (d *deadline) hit() bool { return d.start.Load() == stopped }

func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.start.Load()
	limit := d.limit.Load()
	if s == idle || s == stopped {
		// Nothing to watch: stop ticking, unless an evaluation was armed
		// after the load above and saw the timer still ticking.
		d.ticking.Store(false)
		if d.start.Load() > idle && d.ticking.CompareAndSwap(false, true) {
			d.timer.Reset(time.Duration(limit))
		}
		return
	}
	elapsed := monoNow() - s
	switch {
	case elapsed < limit:
		d.timer.Reset(time.Duration(limit - elapsed))
	case d.seen.Load() < minSteps && elapsed < graceFactor*limit:
		d.timer.Reset(time.Duration(graceFactor*limit - elapsed))
	default:
		if d.start.CompareAndSwap(s, stopped) {
			close(d.done)
		}
		d.timer.Reset(time.Duration(limit))
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
