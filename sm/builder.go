package sm

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Names of the pseudo-states, to use as a Transition's Jump. They and
// "any" cannot name a state.
const (
	// Fail runs the fail action of the current state, then leave and
	// finish, and marks the instance failed.
	Fail = "fail"
	// Finish runs leave and finish and ends the instance normally.
	Finish = "finish"
	// anyName names the defaults in DOT and in errors.
	anyName = "any"
)

// Limits of a definition and of an instance.
const (
	// MaxEvents bounds the events of one machine (base, registered and
	// timeouts). Every state holds a transition list per event, so the
	// table is paid per state; a protocol needs tens.
	MaxEvents = 1024
	// MaxTimeoutsPerState bounds the distinct timeout(d) events armed in
	// one state (its own and any's): the armed timers of an instance are
	// the bits of a uint64.
	MaxTimeoutsPerState = 64
	// MaxPending bounds the events raised by the transitions of one step
	// and waiting for their own step (see Instance). A step raises a few;
	// more means a definition that feeds itself, and the instance fails
	// instead of losing events.
	MaxPending = 32
	// MaxQueuedSteps bounds the queued steps one call of the owner runs: a
	// transition on e that raises e again keeps the queue short and never
	// empties it. A unit or a trigger leads to a handful of steps; the
	// instance fails with ErrEventLoop beyond.
	MaxQueuedSteps = 1024
	// MaxEnterJumps bounds a chain of jumps made by enter and init
	// transitions without input in between (A's enter jumps to B whose
	// enter jumps to A...). A protocol chains two or three; the instance
	// fails with ErrJumpLoop beyond.
	MaxEnterJumps = 64
	// MaxHookDepth bounds hooks that trigger events whose hook triggers
	// events... Beyond it Trigger fails the instance with ErrTooDeep
	// rather than overflow the goroutine's stack.
	MaxHookDepth = 16
	// MaxTimeoutsPerAdvance bounds the timeouts fired by one call. Stream
	// time can leap (a replayed capture with an hour-long gap); a
	// definition whose timeouts chain into each other would otherwise fire
	// without end. The ones still due fire on the next call, which takes
	// its own now as the time they fire at.
	MaxTimeoutsPerAdvance = 64
)

// Guard decides whether a transition runs (Haka's `when`). It must not
// change the instance: Trigger, Fail and Finish return ErrInGuard from a
// guard.
type Guard[C, U, P any] func(in *Instance[C, U, P], ev Event[U, P]) bool

// Action is a transition's `execute`, and the machine's hook.
type Action[C, U, P any] func(in *Instance[C, U, P], ev Event[U, P])

// Element is a grammar element: a named parse function that a state binds
// to a direction. Given a unit that arrived for that direction, it returns
// its result, which the up or down event carries, or an error, which
// parse_error carries. The element decides whether the unit matches.
type Element[C, U, P any] struct {
	Name  string
	Parse func(ctx C, dir Direction, unit U) (P, error)
}

// Transition is Haka's `on{event=, events=, when=, execute=, jump=}`. It
// needs Execute or Jump. Jump names a state, Fail or Finish; a transition
// on leave, fail or finish cannot jump: the instance is already going
// somewhere.
type Transition[C, U, P any] struct {
	// Event and Events are the events it reacts to (either or both).
	Event  EventID
	Events []EventID
	// When, if set, must return true for the transition to run; otherwise
	// the search goes on with the next transition.
	When Guard[C, U, P]
	// Execute runs first; Jump after it.
	Execute Action[C, U, P]
	Jump    string
	// Pos is the definition site ("tls.lua:12"), prefixed to its errors.
	Pos string
	// Label names the guard in DOT ("[server_hello]" instead of
	// "[when]"); it changes nothing else.
	Label string
}

// Builder collects a definition. A Go definition calls it once at init; the
// Lua binding calls it when a script is loaded. Its methods record problems
// instead of returning them: Build reports all of them at once.
type Builder[C, U, P any] struct {
	name     string
	events   []EventInfo
	byName   map[string]EventID
	timeouts map[time.Duration]EventID
	states   []*StateDef[C, U, P]
	any      *StateDef[C, U, P]
	initial  []string
	hook     Action[C, U, P]
	errs     []error
}

// StateDef is a state under definition.
type StateDef[C, U, P any] struct {
	name  string
	elem  [2]*Element[C, U, P]
	pos   string
	trans []Transition[C, U, P]
}

// NewBuilder starts the definition of the machine called name.
func NewBuilder[C, U, P any](name string) *Builder[C, U, P] {
	b := &Builder[C, U, P]{
		name:     name,
		events:   make([]EventInfo, numBaseEvents),
		byName:   make(map[string]EventID, numBaseEvents),
		timeouts: make(map[time.Duration]EventID),
	}
	for id := EventID(1); id < numBaseEvents; id++ {
		b.events[id] = EventInfo{ID: id, Name: baseEventNames[id], Kind: BaseEvent}
		b.byName[baseEventNames[id]] = id
	}
	b.any = &StateDef[C, U, P]{name: anyName}
	return b
}

// RegisterEvent declares an event that the definition raises with
// Instance.Trigger. It reaches the machine's hook (the rules, for the TLS
// machine) and the transitions that name it. A name used twice, or the
// name of a base event, is a build error.
func (b *Builder[C, U, P]) RegisterEvent(name string) EventID {
	if id, ok := b.byName[name]; ok {
		b.errs = append(b.errs, b.errorf("", "", name, "event %q registered twice", name))
		return id
	}
	if name == "" {
		b.errs = append(b.errs, b.errorf("", "", "", "event with an empty name"))
	}
	return b.addEvent(EventInfo{Name: name, Kind: UserEvent})
}

// Timeout returns the event timeout(d): raised when d of stream time has
// passed since the current state was entered, once per entry. d must be
// positive.
func (b *Builder[C, U, P]) Timeout(d time.Duration) EventID {
	if id, ok := b.timeouts[d]; ok {
		return id
	}
	name := "timeout(" + d.String() + ")"
	if d <= 0 {
		b.errs = append(b.errs, b.errorf("", "", name, "timeout must be positive"))
	}
	id := b.addEvent(EventInfo{Name: name, Kind: TimeoutEvent, Timeout: d})
	b.timeouts[d] = id
	return id
}

func (b *Builder[C, U, P]) addEvent(e EventInfo) EventID {
	if len(b.events) >= MaxEvents {
		b.errs = append(b.errs, b.errorf("", "", e.Name, "more than %d events", MaxEvents))
		return 0
	}
	e.ID = EventID(len(b.events))
	b.events = append(b.events, e)
	if e.Kind == UserEvent {
		b.byName[e.Name] = e.ID
	}
	return e.ID
}

// Event looks up a base or registered event by name (the Lua binding's
// `events.name`).
func (b *Builder[C, U, P]) Event(name string) (EventID, bool) {
	id, ok := b.byName[name]
	return id, ok
}

// Hook sets the function that receives every registered event when it is
// triggered, before any transition on it runs.
func (b *Builder[C, U, P]) Hook(h Action[C, U, P]) { b.hook = h }

// State declares a state bound to no grammar element.
func (b *Builder[C, U, P]) State(name string) *StateDef[C, U, P] {
	return b.BidirectionalState(name, nil, nil)
}

// BidirectionalState declares a state that parses up units with up and
// down units with down; either may be nil (then such a unit raises
// missing_grammar).
func (b *Builder[C, U, P]) BidirectionalState(name string, up, down *Element[C, U, P]) *StateDef[C, U, P] {
	s := &StateDef[C, U, P]{name: name, elem: [2]*Element[C, U, P]{up, down}}
	b.states = append(b.states, s)
	return s
}

// Any returns the defaults: transitions tried in every state after the
// state's own.
func (b *Builder[C, U, P]) Any() *StateDef[C, U, P] { return b.any }

// Initial names the state an instance starts in.
func (b *Builder[C, U, P]) Initial(name string) { b.initial = append(b.initial, name) }

// Name returns the state's name.
func (s *StateDef[C, U, P]) Name() string { return s.name }

// At records the state's definition site ("tls.lua:7"), prefixed to its
// errors.
func (s *StateDef[C, U, P]) At(pos string) *StateDef[C, U, P] {
	s.pos = pos
	return s
}

// On adds a transition; the state's transitions are tried in the order
// they were added.
func (s *StateDef[C, U, P]) On(t Transition[C, U, P]) *StateDef[C, U, P] {
	s.trans = append(s.trans, t)
	return s
}

// DefinitionError is a problem of a definition, found by Build.
type DefinitionError struct {
	Pos     string // definition site, "" when the definition gave none
	Machine string
	State   string // "" for the machine itself, "any" for the defaults
	Event   string // "" when no event is involved
	Msg     string
}

func (e *DefinitionError) Error() string {
	s := ""
	if e.Pos != "" {
		s = e.Pos + ": "
	}
	s += fmt.Sprintf("state machine %q", e.Machine)
	if e.State != "" {
		s += fmt.Sprintf(": state %q", e.State)
	}
	if e.Event != "" {
		s += ": on " + e.Event
	}
	return s + ": " + e.Msg
}

// Warning is a suspicious but valid part of a definition, such as an
// unreachable state.
type Warning struct {
	Pos   string
	State string
	Msg   string
}

func (w Warning) String() string {
	s := ""
	if w.Pos != "" {
		s = w.Pos + ": "
	}
	return s + fmt.Sprintf("state %q: %s", w.State, w.Msg)
}

func (b *Builder[C, U, P]) errorf(pos, state, event, format string, args ...any) error {
	return &DefinitionError{Pos: pos, Machine: b.name, State: state, Event: event, Msg: fmt.Sprintf(format, args...)}
}

// Build checks the definition and compiles it. The error joins every
// *DefinitionError found. The builder may be changed and built again; the
// machine does not change with it.
func (b *Builder[C, U, P]) Build() (*Machine[C, U, P], error) {
	errs := append([]error(nil), b.errs...)
	fail := func(pos, state, event, format string, args ...any) {
		errs = append(errs, b.errorf(pos, state, event, format, args...))
	}
	if b.name == "" {
		fail("", "", "", "machine with an empty name")
	}

	m := &Machine[C, U, P]{
		name:    b.name,
		events:  append([]EventInfo(nil), b.events...),
		handled: make([]bool, len(b.events)),
		hook:    b.hook,
		byName:  make(map[string]EventID, len(b.byName)),
		initial: -1,
	}
	for k, v := range b.byName {
		m.byName[k] = v
	}

	// States and their names.
	index := make(map[string]int32, len(b.states))
	for _, sd := range b.states {
		switch {
		case sd.name == "":
			fail(sd.pos, "", "", "state with an empty name")
			continue
		case sd.name == Fail || sd.name == Finish || sd.name == anyName:
			fail(sd.pos, sd.name, "", "%q is reserved and cannot name a state", sd.name)
			continue
		}
		if first, dup := index[sd.name]; dup {
			where := ""
			if p := m.states[first].pos; p != "" {
				where = " (first at " + p + ")"
			}
			fail(sd.pos, sd.name, "", "duplicate state%s", where)
			continue
		}
		for dir, el := range sd.elem {
			if el != nil && (el.Parse == nil || el.Name == "") {
				fail(sd.pos, sd.name, "", "%s grammar element %q needs a name and a Parse function", Direction(dir), el.Name)
			}
		}
		index[sd.name] = int32(len(m.states))
		m.states = append(m.states, state[C, U, P]{name: sd.name, elem: sd.elem, pos: sd.pos})
	}

	switch {
	case len(b.initial) == 0:
		fail("", "", "", "no initial state")
	case len(b.initial) > 1:
		fail("", "", "", "initial state set %d times (%q)", len(b.initial), b.initial)
	default:
		if i, ok := index[b.initial[0]]; ok {
			m.initial = i
		} else {
			fail("", "", "", "initial state %q is not defined", b.initial[0])
		}
	}

	// Transitions.
	compile := func(sd *StateDef[C, U, P]) []*transition[C, U, P] {
		var out []*transition[C, U, P]
		for _, t := range sd.trans {
			pos := t.Pos
			if pos == "" {
				pos = sd.pos
			}
			evs := t.Events
			if t.Event != 0 {
				evs = append([]EventID{t.Event}, evs...)
			}
			if len(evs) == 0 {
				fail(pos, sd.name, "", "transition without an event")
				continue
			}
			ok := true
			seen := make(map[EventID]bool, len(evs))
			for _, id := range evs {
				switch {
				case id == 0 || int(id) >= len(m.events):
					fail(pos, sd.name, id.String(), "unknown event")
					ok = false
				case seen[id]:
					fail(pos, sd.name, m.events[id].Name, "event listed twice in one transition")
					ok = false
				}
				seen[id] = true
			}
			if !ok {
				continue
			}
			evName := m.events[evs[0]].Name
			if t.Execute == nil && t.Jump == "" {
				fail(pos, sd.name, evName, "transition needs execute or jump")
				continue
			}
			ct := &transition[C, U, P]{
				events:   append([]EventID(nil), evs...),
				when:     t.When,
				execute:  t.Execute,
				jump:     jumpNone,
				jumpName: t.Jump,
				pos:      pos,
				label:    t.Label,
			}
			if t.Jump != "" {
				for _, id := range evs {
					if id == EvLeave || id == EvFail || id == EvFinish {
						fail(pos, sd.name, m.events[id].Name, "a transition on %s cannot jump: the instance is already leaving the state", m.events[id].Name)
						ok = false
					}
				}
				switch t.Jump {
				case Fail:
					ct.jump = jumpFail
				case Finish:
					ct.jump = jumpFinish
				default:
					i, known := index[t.Jump]
					if !known {
						fail(pos, sd.name, evName, "jump to unknown state %q", t.Jump)
						ok = false
					}
					ct.jump = i
				}
			}
			if ok {
				out = append(out, ct)
			}
		}
		return out
	}
	m.any = compile(b.any)
	compiled := make([]bool, len(m.states))
	for _, sd := range b.states {
		i, ok := index[sd.name]
		if !ok || compiled[i] {
			// A state rejected above (empty, reserved or duplicate name):
			// its transitions would only repeat that error.
			continue
		}
		compiled[i] = true
		m.states[i].own = compile(sd)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Per-state tables: own transitions first, then any's, by event.
	for i := range m.states {
		st := &m.states[i]
		st.on = make([][]*transition[C, U, P], len(m.events))
		for _, list := range [2][]*transition[C, U, P]{st.own, m.any} {
			for _, t := range list {
				for _, id := range t.events {
					st.on[id] = append(st.on[id], t)
					m.handled[id] = true
					if m.events[id].Kind == TimeoutEvent && !slices.Contains(st.timeouts, id) {
						st.timeouts = append(st.timeouts, id)
					}
				}
			}
		}
		if len(st.timeouts) > MaxTimeoutsPerState {
			errs = append(errs, b.errorf(st.pos, st.name, "", "%d timeouts armed in one state, more than %d", len(st.timeouts), MaxTimeoutsPerState))
		}
		m.maxTimeouts = max(m.maxTimeouts, len(st.timeouts))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	m.warnings = m.lint()
	return m, nil
}

// lint finds the states no jump reaches from the initial state, and
// transitions on up or down in a state with no element for it.
func (m *Machine[C, U, P]) lint() []Warning {
	var ws []Warning
	reached := make([]bool, len(m.states))
	queue := []int32{m.initial}
	reached[m.initial] = true
	visit := func(t *transition[C, U, P]) {
		if t.jump >= 0 && !reached[t.jump] {
			reached[t.jump] = true
			queue = append(queue, t.jump)
		}
	}
	for _, t := range m.any {
		visit(t)
	}
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		for _, t := range m.states[i].own {
			visit(t)
		}
	}
	for i, st := range m.states {
		if !reached[i] {
			ws = append(ws, Warning{Pos: st.pos, State: st.name,
				Msg: fmt.Sprintf("unreachable from the initial state %q", m.states[m.initial].name)})
		}
		for _, t := range st.own {
			for _, id := range t.events {
				if (id == EvUp || id == EvDown) && st.elem[id-EvUp] == nil {
					ws = append(ws, Warning{Pos: t.pos, State: st.name,
						Msg: fmt.Sprintf("transition on %s never runs: the state has no %s grammar element", id, Direction(id-EvUp))})
				}
			}
		}
	}
	return ws
}
