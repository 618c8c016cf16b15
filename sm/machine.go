package sm

import "time"

// Machine is a definition made by Builder.Build. It is immutable: one
// Machine serves every connection, each through its own Instance, from any
// number of goroutines, without locks.
type Machine[C, U, P any] struct {
	name        string
	states      []state[C, U, P]
	any         []*transition[C, U, P]
	initial     int32
	events      []EventInfo
	byName      map[string]EventID
	handled     []bool // by EventID: some transition names the event
	hook        Action[C, U, P]
	maxTimeouts int
	warnings    []Warning
}

type state[C, U, P any] struct {
	name string
	elem [2]*Element[C, U, P]
	pos  string
	// own are the state's transitions in declaration order (for DOT).
	own []*transition[C, U, P]
	// on holds, by EventID, the state's transitions on that event and then
	// any's: the search order, resolved at build.
	on [][]*transition[C, U, P]
	// timeouts are the timeout events armed on entry; the instance's
	// timer k is timeouts[k].
	timeouts []EventID
}

// Jump targets that are not states.
const (
	jumpNone   int32 = -1
	jumpFail   int32 = -2
	jumpFinish int32 = -3
)

type transition[C, U, P any] struct {
	events   []EventID
	when     Guard[C, U, P]
	execute  Action[C, U, P]
	jump     int32 // a state index or one of jumpNone, jumpFail, jumpFinish
	jumpName string
	pos      string // the transition's definition site, else its state's
	label    string // Transition.Label
}

// Name returns the machine's name.
func (m *Machine[C, U, P]) Name() string { return m.name }

// States returns the names of the states, in declaration order.
func (m *Machine[C, U, P]) States() []string {
	names := make([]string, len(m.states))
	for i := range m.states {
		names[i] = m.states[i].name
	}
	return names
}

// Initial returns the name of the initial state.
func (m *Machine[C, U, P]) Initial() string { return m.states[m.initial].name }

// Warnings returns what Build found suspicious but valid: unreachable
// states, transitions that can never run.
func (m *Machine[C, U, P]) Warnings() []Warning { return append([]Warning(nil), m.warnings...) }

// Events returns every event of the machine, by ID.
func (m *Machine[C, U, P]) Events() []EventInfo { return append([]EventInfo(nil), m.events[1:]...) }

// Event looks up a base or registered event by name; the rules use it to
// check the names they hook when they load.
func (m *Machine[C, U, P]) Event(name string) (EventID, bool) {
	id, ok := m.byName[name]
	return id, ok
}

// EventName returns the name of an event of this machine.
func (m *Machine[C, U, P]) EventName(id EventID) string {
	if id == 0 || int(id) >= len(m.events) {
		return id.String()
	}
	return m.events[id].Name
}

// New starts an instance for one connection at stream time now: it enters
// the initial state (enter), then dispatches init. ctx is given back by
// Instance.Context to every guard, action and element.
func (m *Machine[C, U, P]) New(ctx C, now time.Time) *Instance[C, U, P] {
	in := &Instance[C, U, P]{m: m, ctx: ctx, now: now, cur: m.initial}
	if m.maxTimeouts > 0 {
		in.deadline = make([]time.Time, m.maxTimeouts)
	}
	in.start()
	return in
}
