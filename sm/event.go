package sm

import (
	"strconv"
	"time"
)

// EventID names an event of one machine. The base events below have the
// same ID in every machine; registered events and timeouts are numbered
// after them, in the order the definition declared them. Names are for
// building, DOT and errors; the per-event path uses the ID only.
type EventID uint16

// The base events. The zero EventID names no event, so a Transition whose
// event was forgotten is a build error instead of a hook on init.
const (
	// EvInit is dispatched once, after the initial state was entered.
	EvInit EventID = iota + 1
	// EvEnter is dispatched when a state is entered.
	EvEnter
	// EvLeave is dispatched when a state is left (by a jump, fail or
	// finish).
	EvLeave
	// EvFail is the fail action: dispatched on the state that failed.
	// Event.Err is the reason.
	EvFail
	// EvFinish is dispatched last, when the instance ends, normally or
	// after a failure (then Event.Err is the reason).
	EvFinish
	// EvUp carries the result of the up grammar element of the state:
	// Event.Param is the element's result and Event.Unit what it parsed.
	EvUp
	// EvDown is EvUp for the down direction.
	EvDown
	// EvParseError reports that the state's element for Event.Dir
	// rejected Event.Unit; Event.Err is the element's error. Unhandled,
	// it fails the instance.
	EvParseError
	// EvMissingGrammar reports a unit for a direction that the state has
	// no element for; Event.Dir and Event.Unit say which. Unhandled, it
	// fails the instance.
	EvMissingGrammar

	numBaseEvents = iota + 1
)

var baseEventNames = [numBaseEvents]string{
	EvInit:           "init",
	EvEnter:          "enter",
	EvLeave:          "leave",
	EvFail:           "fail",
	EvFinish:         "finish",
	EvUp:             "up",
	EvDown:           "down",
	EvParseError:     "parse_error",
	EvMissingGrammar: "missing_grammar",
}

// String returns the name of a base event, or "event(N)" for the IDs a
// machine assigns; Machine.EventName knows those.
func (e EventID) String() string {
	if e > 0 && e < numBaseEvents {
		return baseEventNames[e]
	}
	return "event(" + strconv.Itoa(int(e)) + ")"
}

// EventKind tells base events, events registered by the definition and
// timeouts apart.
type EventKind uint8

const (
	// BaseEvent is one of the Ev* constants.
	BaseEvent EventKind = iota
	// UserEvent is registered by the definition (Builder.RegisterEvent),
	// raised with Instance.Trigger and delivered to the machine's hook.
	UserEvent
	// TimeoutEvent is timeout(d) (Builder.Timeout), raised when d of
	// stream time has passed since the current state was entered.
	TimeoutEvent
)

func (k EventKind) String() string {
	switch k {
	case BaseEvent:
		return "base"
	case UserEvent:
		return "user"
	case TimeoutEvent:
		return "timeout"
	}
	return "invalid"
}

// EventInfo describes one event of a machine.
type EventInfo struct {
	ID      EventID
	Name    string
	Kind    EventKind
	Timeout time.Duration // TimeoutEvent only
}

// Direction tells the two streams of a connection apart. The values are
// those of dissect.Direction, so a conversion is all a TLS owner needs.
type Direction uint8

const (
	// Up is client to server.
	Up Direction = iota
	// Down is server to client.
	Down
)

// String returns "up" or "down".
func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return "invalid"
}

// Event is what a transition's guard and action, and the machine's hook,
// are given. Which fields are set depends on the event:
//
//   - up, down: Dir, Unit (what was parsed) and Param (the element's result);
//   - parse_error: Dir, Unit and Err (the element's error);
//   - missing_grammar: Dir, Unit and Err (wrapping ErrNoGrammar);
//   - fail: Err, the reason; finish: Err, the reason when the instance failed;
//   - a registered event: Param, as given to Trigger;
//   - init, enter, leave, timeouts: nothing but ID.
//
// It is passed by value: a guard or action may keep it, but Unit and Param
// are owned by whoever produced them (the owner's buffer, the element).
type Event[U, P any] struct {
	ID    EventID
	Dir   Direction
	Unit  U
	Param P
	Err   error
}
