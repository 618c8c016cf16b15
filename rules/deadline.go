package rules

import (
	"context"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// minSteps is how many Lua instructions an evaluation must have run
	// for the deadline to stop it on time. The deadline is measured on the
	// wall clock, which also runs while the evaluating goroutine waits for
	// a processor (preempted, its thread descheduled by a busy host or a
	// container's CPU quota, assisting the garbage collector); on a loaded
	// machine a rule of a few hundred instructions can see its deadline
	// pass without being at fault. A runaway loop runs 100,000
	// instructions in a millisecond or two of processor time, so it is
	// stopped on time.
	minSteps = 100_000
	// stallAlloc and publishEvery tell an evaluation that is stalled from
	// one that is not when it has run fewer than minSteps instructions
	// past its deadline: looked at a deadline later, a stalled goroutine
	// has run no instruction and the process has allocated little. One
	// that runs few instructions because each is expensive is stopped:
	// it publishes its progress at least every publishEvery instructions
	// (string.gsub over a megabyte, a pattern match that backtracks), or
	// makes the process allocate more than stallAlloc per deadline
	// (s = s .. s doubles a string each time: a handful of instructions).
	// 16 MiB per 10 ms deadline is 1.6 GB/s, far above what the proxy
	// allocates itself (nothing per record, tens of KiB per connection).
	stallAlloc = 16 << 20
	// stallFactor bounds the time a stalled evaluation is given: after
	// stallFactor × the deadline (300 ms at the default) it is stopped
	// whatever it does. A container throttled for its CPU quota waits for
	// the next period, 100 ms by default; a goroutine descheduled by a
	// busy host, a few time slices of a few ms. It is also what a rule
	// gets that spends its time in Go code that neither checks the
	// deadline nor allocates (a pattern match that backtracks).
	stallFactor = 30
	// publishEvery is how often, in instructions, the evaluating goroutine
	// publishes its instruction count for the timer to read; an atomic
	// store per instruction would cost more than the check it feeds, one
	// per 16 costs nothing measurable (a Lua instruction takes 15 ns).
	publishEvery = 16
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
	// budget, when positive, bounds the evaluation by instructions
	// instead of the wall clock (see armSteps); evaluating goroutine only.
	budget int

	start   atomic.Int64 // monoNow of the evaluation in progress, idle, or stopped
	limit   atomic.Int64 // its deadline, in nanoseconds
	seen    atomic.Int64 // steps as last published
	ticking atomic.Bool  // the timer is scheduled
	timer   *time.Timer
	mu      sync.Mutex

	// Under mu: the evaluation found past its deadline with few
	// instructions run (its start), its instructions and the process's
	// allocations when last looked at (see stallAlloc).
	overdue  int64
	steps0   int64
	allocs   uint64
	allocsRd [1]metrics.Sample
}

func newDeadline() *deadline {
	d := &deadline{done: make(chan struct{})}
	d.allocsRd[0].Name = "/gc/heap/allocs:bytes"
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
	d.budget = 0
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

// armSteps starts an evaluation bounded by n instructions rather than by
// the wall clock: the replay's verdicts must not depend on how loaded the
// machine is. The timer is not involved: the evaluating goroutine stops
// itself in Done.
func (d *deadline) armSteps(n int) {
	if d.start.Load() == stopped {
		d.disarm()
	}
	d.steps = 0
	d.budget = n
	d.start.Store(monoNow())
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
	case d.seen.Load() < minSteps && elapsed < stallFactor*limit && d.stalled(s):
		// Few instructions, none since the last look, little
		// allocated: waiting for a processor, not running away. Look
		// again a deadline later.
		d.timer.Reset(time.Duration(limit))
	default:
		if d.start.CompareAndSwap(s, stopped) {
			close(d.done)
		}
		d.timer.Reset(time.Duration(limit))
	}
}

// stalled reports whether the evaluation that started at s, past its
// deadline with few instructions run, has published no progress and the
// process has allocated at most stallAlloc since the last look; the
// first look only takes note. Under mu.
func (d *deadline) stalled(s int64) bool {
	metrics.Read(d.allocsRd[:])
	allocs, steps := d.allocsRd[0].Value.Uint64(), d.seen.Load()
	prevAllocs, prevSteps := d.allocs, d.steps0
	d.allocs, d.steps0 = allocs, steps
	if d.overdue != s {
		d.overdue = s
		return true
	}
	return steps == prevSteps && allocs-prevAllocs <= stallAlloc
}

// Done implements context.Context.
func (d *deadline) Done() <-chan struct{} {
	d.steps++
	if d.budget > 0 {
		if d.steps > d.budget && d.start.Load() != stopped {
			d.mu.Lock()
			d.start.Store(stopped)
			close(d.done)
			d.mu.Unlock()
		}
		return d.done
	}
	if d.steps%publishEvery == 0 {
		d.seen.Store(int64(d.steps))
	}
	return d.done
}

// Err implements context.Context. It is called by the evaluating
// goroutine only — gopher-lua once Done is closed, the library functions
// that run long (string.gsub) as they go — and counts as a step: progress
// the timer sees.
func (d *deadline) Err() error {
	d.steps++
	if d.steps%publishEvery == 0 {
		d.seen.Store(int64(d.steps))
	}
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
