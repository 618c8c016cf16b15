package sm

import (
	"errors"
	"fmt"
	"math/bits"
	"time"
)

// Errors returned by an Instance's methods. Failure reasons are
// *FailError values that wrap the cause.
var (
	// ErrFinished: the instance has ended (finish or fail); it takes no
	// more events.
	ErrFinished = errors.New("sm: event on a finished instance")
	// ErrReentrant: Feed or Advance was called from a guard, an action, a
	// hook or an element of the same instance. Those raise events with
	// Trigger.
	ErrReentrant = errors.New("sm: Feed or Advance called from inside the instance")
	// ErrInGuard: a guard tried to trigger, fail or finish.
	ErrInGuard = errors.New("sm: a guard cannot trigger, fail or finish")
	// ErrNotUserEvent: Trigger was given a base event, a timeout or an
	// unknown ID; those come from Feed, Advance, Fail and Finish.
	ErrNotUserEvent = errors.New("sm: only registered events can be triggered")
	// ErrDirection: Feed was given a direction other than Up or Down.
	ErrDirection = errors.New("sm: invalid direction")

	// ErrQueueFull: one step raised more than MaxPending events that
	// transitions wait for. The instance fails.
	ErrQueueFull = errors.New("too many events raised in one step")
	// ErrTooDeep: hooks triggered events from hooks more than
	// MaxHookDepth deep. The instance fails.
	ErrTooDeep = errors.New("hooks nested too deep")
	// ErrJumpLoop: enter transitions jumped more than MaxEnterJumps times
	// in a row. The instance fails.
	ErrJumpLoop = errors.New("enter transitions jump in a loop")
	// ErrEventLoop: one call ran more than MaxQueuedSteps queued steps:
	// transitions raise each other's events without end. The instance
	// fails.
	ErrEventLoop = errors.New("transitions raise events in a loop")
	// ErrNoGrammar is wrapped by the Err of missing_grammar.
	ErrNoGrammar = errors.New("no grammar element")
	// ErrJumpedToFail is the cause when a transition jumped to fail on an
	// event that carries no error of its own.
	ErrJumpedToFail = errors.New("jump to fail")
	// ErrFailed is the cause when Fail was given a nil reason.
	ErrFailed = errors.New("failed")
)

var errNoGrammar = [2]error{
	Up:   fmt.Errorf("%w for up", ErrNoGrammar),
	Down: fmt.Errorf("%w for down", ErrNoGrammar),
}

// FailError is why an instance failed: where it was and what caused it.
type FailError struct {
	Machine string
	State   string // the state that failed
	Event   string // the event being handled, "" when none was
	Pos     string // site of the transition that jumped to fail, if any
	Err     error  // the cause: a parse error, ErrJumpedToFail, the owner's reason...
}

func (e *FailError) Error() string {
	s := fmt.Sprintf("state machine %q: state %q", e.Machine, e.State)
	if e.Event != "" {
		s += ": on " + e.Event
	}
	if e.Pos != "" {
		s += " (" + e.Pos + ")"
	}
	return s + ": " + e.Err.Error()
}

func (e *FailError) Unwrap() error { return e.Err }

type request uint8

const (
	reqNone request = iota
	reqFail
	reqFinish
)

// Instance is the state of one connection in a Machine. It is owned by
// the connection: its methods must not be called concurrently (the owner
// serialises the two directions), and it starts no goroutine and no timer.
//
// # Stream time
//
// Every call that lets time pass takes now: the wall clock live, the packet
// timestamp in a replay. Time never goes back: an earlier now counts as the
// latest one seen. Entering a state arms its timeout(d) events at now+d,
// each to fire once (Haka's timers repeat; here a transition that jumps to
// its own state re-arms them for another period). Before
// Feed dispatches a unit and in Advance, the timeouts due by now fire in
// deadline order, each at its own deadline: a state entered by a timeout
// arms its timers from that deadline, so a replay reaches the verdicts of
// the live run whenever the owner calls. NextDeadline tells the owner
// when to call Advance.
//
// # Steps and re-entrancy
//
// A step is the dispatch of one event: the search of a transition, its
// action, its jump (leave, then enter and the jumps of enter transitions).
// Steps never nest:
//
//   - Trigger calls the hook at once, so rules see an event in the state
//     it was raised in. If transitions wait for the event and a step is
//     running, the event's own step is queued and runs when the current
//     one is over, in the state reached by then (first in, first out; the
//     owner's call returns when the queue is empty).
//   - Fail and Finish from an action, a hook or an element take effect when
//     the running action returns, instead of the transition's jump. Fail
//     wins over Finish.
//   - Feed and Advance from inside return ErrReentrant; guards may only
//     look (ErrInGuard).
//
// # Ending
//
// A jump to fail, Fail, or a parse_error or missing_grammar that no
// transition handles runs the fail action of the current state (the first
// of its transitions on fail, then of any's, whose guard passes, as for
// every event), then leave, then finish, and marks the instance failed with
// a *FailError. A jump to finish or Finish runs leave
// then finish. Events raised while ending reach the hook but no
// transition. Afterwards every call returns ErrFinished.
type Instance[C, U, P any] struct {
	m        *Machine[C, U, P]
	ctx      C
	cur      int32 // state index; jumpFail or jumpFinish once done
	now      time.Time
	deadline []time.Time // by timer: deadline[k] for m.states[cur].timeouts[k]
	armed    uint64      // bit k: timer k is armed
	next     int         // the armed timer due first, when armed != 0
	queue    []Event[U, P]
	qhead    int
	qlen     int
	busy     int     // > 0 while an action, a hook or an element runs
	hooks    int     // nesting of hook calls
	evID     EventID // the event being handled, for failure reasons
	inGuard  bool
	entered  bool // the current state's leave has not run
	ending   bool // the fail or finish sequence runs
	done     bool
	failed   bool
	req      request
	reqErr   *FailError
	reason   *FailError
}

// Context returns the ctx given to New.
func (in *Instance[C, U, P]) Context() C { return in.ctx }

// Machine returns the definition the instance runs.
func (in *Instance[C, U, P]) Machine() *Machine[C, U, P] { return in.m }

// State returns the name of the current state; "fail" or "finish" once
// the instance has ended.
func (in *Instance[C, U, P]) State() string {
	switch in.cur {
	case jumpFail:
		return Fail
	case jumpFinish:
		return Finish
	}
	return in.m.states[in.cur].name
}

// Now returns the instance's stream time.
func (in *Instance[C, U, P]) Now() time.Time { return in.now }

// Finished reports whether the instance has ended, normally or not.
func (in *Instance[C, U, P]) Finished() bool { return in.done }

// Failed reports whether the instance failed; the owner then drops the
// connection. It is true from the start of the fail action on.
func (in *Instance[C, U, P]) Failed() bool { return in.failed }

// Reason returns why the instance failed (a *FailError), or nil.
func (in *Instance[C, U, P]) Reason() error {
	if in.reason == nil {
		return nil
	}
	return in.reason
}

// Feed gives the instance a unit that arrived for dir at stream time now.
// Due timeouts fire first; then the current state's element for dir parses
// the unit and up or down is dispatched with the result, parse_error with
// the element's error, or missing_grammar if the state has no element for
// dir. It returns ErrFinished, without dispatching, if the instance had
// ended or a timeout ended it; the outcome of the unit itself is read from
// Finished, Failed and State.
func (in *Instance[C, U, P]) Feed(dir Direction, unit U, now time.Time) error {
	if err := in.enterCall(); err != nil {
		return err
	}
	if dir > Down {
		return ErrDirection
	}
	in.advance(now)
	if in.done {
		return ErrFinished
	}
	in.evID = 0
	var ev Event[U, P]
	if el := in.m.states[in.cur].elem[dir]; el == nil {
		ev = Event[U, P]{ID: EvMissingGrammar, Dir: dir, Unit: unit, Err: errNoGrammar[dir]}
	} else {
		in.busy++
		p, err := el.Parse(in.ctx, dir, unit)
		in.busy--
		if in.applyRequest() {
			return nil
		}
		if err != nil {
			ev = Event[U, P]{ID: EvParseError, Dir: dir, Unit: unit, Err: err}
		} else {
			ev = Event[U, P]{ID: EvUp + EventID(dir), Dir: dir, Unit: unit, Param: p}
		}
	}
	if in.qlen > 0 {
		// The element raised events that transitions wait for: they came
		// first.
		if in.enqueue(ev) != nil {
			in.applyRequest()
			return nil
		}
		in.drain()
		return nil
	}
	in.run(ev)
	return nil
}

// Advance lets stream time pass until now and fires the timeouts due by
// then.
func (in *Instance[C, U, P]) Advance(now time.Time) error {
	if err := in.enterCall(); err != nil {
		return err
	}
	in.advance(now)
	return nil
}

// NextDeadline returns when the next timeout is due, if one is armed. The
// owner arms its timer for it (live) or calls Advance when its stream time
// passes it (replay).
func (in *Instance[C, U, P]) NextDeadline() (time.Time, bool) {
	if in.done || in.armed == 0 {
		return time.Time{}, false
	}
	return in.deadline[in.next], true
}

// Trigger raises the registered event ev with param: the machine's hook
// gets it at once, then the transitions on ev run (see Instance for the
// order when a step is already running). It happens at the instance's
// stream time.
func (in *Instance[C, U, P]) Trigger(ev EventID, param P) error {
	if in.done {
		return ErrFinished
	}
	if in.inGuard {
		return ErrInGuard
	}
	if ev == 0 || int(ev) >= len(in.m.events) || in.m.events[ev].Kind != UserEvent {
		return ErrNotUserEvent
	}
	e := Event[U, P]{ID: ev, Param: param}
	top := in.busy == 0
	if top {
		in.evID = ev
	}
	if h := in.m.hook; h != nil {
		if in.hooks >= MaxHookDepth {
			in.Fail(ErrTooDeep)
			return ErrTooDeep
		}
		in.hooks++
		in.busy++
		h(in, e)
		in.busy--
		in.hooks--
	}
	handled := in.m.handled[ev]
	if !top {
		if handled && !in.ending {
			return in.enqueue(e)
		}
		return nil
	}
	if in.applyRequest() {
		return nil
	}
	if handled {
		in.step(e)
	}
	in.drain()
	return nil
}

// Fail fails the instance with reason (ErrFailed if nil): the fail
// action, leave and finish run, now or, from inside a step, when the
// running action returns.
func (in *Instance[C, U, P]) Fail(reason error) error {
	if in.done {
		return ErrFinished
	}
	if in.inGuard {
		return ErrInGuard
	}
	if reason == nil {
		reason = ErrFailed
	}
	if in.busy == 0 {
		in.evID = 0
	}
	fe := in.failure("", reason)
	switch {
	case in.ending:
		// Too late for a fail action; the owner still learns it.
		if !in.failed {
			in.failed, in.reason = true, fe
		}
	case in.busy > 0:
		if in.req != reqFail {
			in.req, in.reqErr = reqFail, fe
		}
	default:
		in.fail(fe)
	}
	return nil
}

// Finish ends the instance normally (the connection closed): leave and
// finish run, now or, from inside a step, when the running action returns.
func (in *Instance[C, U, P]) Finish() error {
	if in.done {
		return ErrFinished
	}
	if in.inGuard {
		return ErrInGuard
	}
	switch {
	case in.ending:
	case in.busy > 0:
		if in.req == reqNone {
			in.req = reqFinish
		}
	default:
		in.evID = 0
		in.finish()
	}
	return nil
}

func (in *Instance[C, U, P]) enterCall() error {
	switch {
	case in.busy > 0 || in.inGuard:
		return ErrReentrant
	case in.done:
		return ErrFinished
	}
	return nil
}

func (in *Instance[C, U, P]) start() {
	in.entered = true
	in.arm()
	in.evID = EvEnter
	ev := Event[U, P]{ID: EvEnter}
	if t := in.exec(ev); !in.applyRequest() && t != nil {
		in.jump(t, ev)
	}
	in.drain()
	if !in.done {
		in.run(Event[U, P]{ID: EvInit})
	}
}

// run is a step and the steps it queued.
func (in *Instance[C, U, P]) run(ev Event[U, P]) {
	in.step(ev)
	in.drain()
}

func (in *Instance[C, U, P]) drain() {
	for n := 0; in.qlen > 0 && !in.done; n++ {
		if n == MaxQueuedSteps {
			in.evID = 0
			in.fail(in.failure("", ErrEventLoop))
			return
		}
		ev := in.queue[in.qhead]
		in.queue[in.qhead] = Event[U, P]{} // let the unit and param go
		in.qhead = (in.qhead + 1) % len(in.queue)
		in.qlen--
		in.step(ev)
	}
}

func (in *Instance[C, U, P]) enqueue(ev Event[U, P]) error {
	if in.queue == nil {
		in.queue = make([]Event[U, P], MaxPending)
	}
	if in.qlen == len(in.queue) {
		in.Fail(ErrQueueFull)
		return ErrQueueFull
	}
	in.queue[(in.qhead+in.qlen)%len(in.queue)] = ev
	in.qlen++
	return nil
}

func (in *Instance[C, U, P]) step(ev Event[U, P]) {
	in.evID = ev.ID
	t := in.exec(ev)
	switch {
	case in.applyRequest():
	case t != nil:
		in.jump(t, ev)
	case ev.ID == EvParseError || ev.ID == EvMissingGrammar:
		// Bytes no grammar accepted must not pass unnoticed.
		in.fail(in.failure("", ev.Err))
	}
}

// match returns the first transition of the current state, then of any,
// on ev whose guard passes.
func (in *Instance[C, U, P]) match(ev Event[U, P]) *transition[C, U, P] {
	for _, t := range in.m.states[in.cur].on[ev.ID] {
		if t.when == nil {
			return t
		}
		in.inGuard = true
		ok := t.when(in, ev)
		in.inGuard = false
		if ok {
			return t
		}
	}
	return nil
}

func (in *Instance[C, U, P]) exec(ev Event[U, P]) *transition[C, U, P] {
	t := in.match(ev)
	if t != nil && t.execute != nil {
		in.busy++
		t.execute(in, ev)
		in.busy--
	}
	return t
}

// jump follows t's jump, then the jumps of the enter transitions it leads
// to.
func (in *Instance[C, U, P]) jump(t *transition[C, U, P], ev Event[U, P]) {
	for hops := 0; ; hops++ {
		switch t.jump {
		case jumpNone:
			return
		case jumpFail:
			err := ev.Err
			if err == nil {
				err = ErrJumpedToFail
			}
			in.fail(in.failure(t.pos, err))
			return
		case jumpFinish:
			in.finish()
			return
		}
		if hops == MaxEnterJumps {
			in.fail(in.failure(t.pos, ErrJumpLoop))
			return
		}
		in.leave()
		if in.applyRequest() {
			return
		}
		in.cur = t.jump
		in.entered = true
		in.arm()
		in.evID = EvEnter
		ev = Event[U, P]{ID: EvEnter}
		if t = in.exec(ev); in.applyRequest() || t == nil {
			return
		}
	}
}

func (in *Instance[C, U, P]) leave() {
	if !in.entered {
		return
	}
	in.entered = false
	in.armed = 0
	in.evID = EvLeave
	in.exec(Event[U, P]{ID: EvLeave})
}

func (in *Instance[C, U, P]) fail(reason *FailError) {
	in.ending, in.failed, in.reason = true, true, reason
	in.armed = 0
	in.evID = EvFail
	in.exec(Event[U, P]{ID: EvFail, Err: reason})
	in.leave()
	in.evID = EvFinish
	in.exec(Event[U, P]{ID: EvFinish, Err: reason})
	in.end()
}

func (in *Instance[C, U, P]) finish() {
	in.ending = true
	in.leave()
	in.evID = EvFinish
	in.exec(Event[U, P]{ID: EvFinish})
	in.end()
}

func (in *Instance[C, U, P]) end() {
	in.cur = jumpFinish
	if in.failed {
		in.cur = jumpFail
	}
	in.done = true
	in.armed = 0
	in.req, in.reqErr = reqNone, nil
	// Steps still queued have no state to run in; let their values go.
	clear(in.queue)
	in.qhead, in.qlen = 0, 0
}

// applyRequest carries out a Fail or Finish asked for by the action that
// just returned.
func (in *Instance[C, U, P]) applyRequest() bool {
	switch in.req {
	case reqFail:
		r := in.reqErr
		in.req, in.reqErr = reqNone, nil
		in.fail(r)
		return true
	case reqFinish:
		in.req = reqNone
		in.finish()
		return true
	}
	return false
}

func (in *Instance[C, U, P]) failure(pos string, err error) *FailError {
	if fe, ok := err.(*FailError); ok {
		return fe
	}
	ev := ""
	if in.evID != 0 {
		ev = in.m.events[in.evID].Name
	}
	return &FailError{Machine: in.m.name, State: in.State(), Event: ev, Pos: pos, Err: err}
}

func (in *Instance[C, U, P]) arm() {
	in.armed = 0
	for k, id := range in.m.states[in.cur].timeouts {
		in.deadline[k] = in.now.Add(in.m.events[id].Timeout)
		in.armed |= 1 << k
	}
	in.next = in.earliest()
}

func (in *Instance[C, U, P]) earliest() int {
	best := -1
	for a := in.armed; a != 0; a &= a - 1 {
		k := bits.TrailingZeros64(a)
		if best < 0 || in.deadline[k].Before(in.deadline[best]) {
			best = k
		}
	}
	return best
}

func (in *Instance[C, U, P]) advance(now time.Time) {
	target := in.now
	if now.After(target) {
		target = now
	}
	for n := 0; n < MaxTimeoutsPerAdvance && in.armed != 0 && !in.done; n++ {
		k := in.next
		d := in.deadline[k]
		if d.After(target) {
			break
		}
		in.armed &^= 1 << k
		in.next = in.earliest()
		if d.After(in.now) {
			in.now = d
		}
		in.run(Event[U, P]{ID: in.m.states[in.cur].timeouts[k]})
	}
	in.now = target
}
