// Package sm is the state machine engine of haka-proxy, with the semantics
// of Haka's state machines. It knows nothing of TLS: the TLS machine
// (package dissect/tlssm) and the machines users write in Lua are
// definitions built with it.
//
//	b := sm.NewBuilder[*Conn, Unit, Result]("ssl")
//	clientHello := b.RegisterEvent("client_hello")
//	b.Hook(forwardToRules)
//
//	hello := b.BidirectionalState("hello_request", clientHelloElement, nil)
//	b.BidirectionalState("client_hello_done", nil, serverHelloElement)
//	hello.On(sm.Transition[*Conn, Unit, Result]{Event: sm.EvParseError, Jump: sm.Fail})
//	hello.On(sm.Transition[*Conn, Unit, Result]{
//		Event: sm.EvUp,
//		Execute: func(in *sm.Instance[*Conn, Unit, Result], ev sm.Event[Unit, Result]) {
//			in.Trigger(clientHello, ev.Param)
//		},
//		Jump: "client_hello_done",
//	})
//	b.Initial("hello_request")
//	m, err := b.Build() // one immutable Machine for every connection
//
//	in := m.New(conn, now)     // one Instance per connection
//	in.Feed(sm.Up, unit, now)  // parse with the state's up element, dispatch up
//	if in.Failed() {
//		drop(conn, in.Reason())
//	}
//
// # Definitions
//
// A machine is a set of named states, the pseudo-states fail and finish,
// an initial state and the defaults of the `any` pseudo-state. A
// bidirectional state binds at most one grammar Element per direction. A
// Transition reacts to events, may be guarded (When), and executes an
// action, jumps, or both. Build checks the whole definition at once: no
// initial state, a jump to an unknown state, a duplicate name, a transition
// with neither execute nor jump are errors naming the state, the event and
// the definition site when one was given (Pos, StateDef.At: the Lua binding
// gives file:line); unreachable states are Warnings.
//
// The events are typed by the definition: C is the per-connection context,
// U the unit the owner feeds (bytes, a record), P the parameter events carry
// (an element's result, a Trigger's argument). Events have small integer
// IDs: the Ev* base events, the ones the definition registers, and
// timeout(d). The per-event path looks nothing up by name, holds no lock
// and allocates nothing.
//
// # Running
//
// For an event, the current state's transitions on it are tried in the
// order they were declared, then any's; the first whose guard passes runs
// and ends the search. A jump runs leave of the old state then enter of the
// new one. Instance documents the order of nested events, stream time and
// the end of an instance.
package sm
