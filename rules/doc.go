// Package rules is haka-proxy's Lua rule engine (gopher-lua, Lua 5.1) and
// its stock rule set. It owns the rule API that users' scripts see, the
// sandbox they run in, the registry of the events dissectors raise, and
// the per-connection evaluation path the TLS state machine calls.
//
//	var hbObject = rules.NewObject("hb", map[string]func(*lua.LState, *Heartbeat) lua.LValue{
//		"overflow": func(L *lua.LState, hb *Heartbeat) lua.LValue { return lua.LBool(hb.Overflow) },
//		...
//	})
//
//	e, err := rules.New(rules.Options{Dir: dir, Logger: log, Alerts: alerts})
//	f := e.NewFlow(&inspect.Flow{ID: id, Src: src, Dst: dst}, inspector)
//	if f.Hooked(rules.TLS(tlssm.EvHeartbeat)) {
//		d := f.Eval(rules.TLS(tlssm.EvHeartbeat), func(L *lua.LState) lua.LValue {
//			return hbObject.Value(L, hb) // the caller makes the parameter
//		})
//		if d.Verdict.Kills() { ... }
//	}
//	f.Close()
//
// # Rules
//
// A rule set is the *.lua files of a directory, loaded in name order (the
// stock rules, embedded from this directory, when none is given). A file
// declares rules with haka.rule{on = tls.events.NAME, eval = function(flow,
// param) ... end}; for an event, rules run in file order, then declaration
// order, until one drops or resets the flow. See DESIGN.md for the API
// (flow fields and methods, haka.alert, haka.log) and the event contract,
// which is tlssm.Events. The caller makes each event's parameter, best as
// an Object, whose fields cost nothing until a rule reads them.
//
// # State machines in Lua
//
// A rule file may define a dissector written in Lua, with Haka's state
// machine language (haka.dissector.new, haka.state_machine.new, state,
// st:on{...}, tls.grammar.NAME elements; see luasm.go and the README).
// Its events are registered while the set loads and hooked like the tls
// dissector's; its machine is built with package sm when the file loads
// and checked then, every mistake at its file and line. Installed, it
// runs per connection beside the TLS machine, on the interpreter state of
// the connection's rules, fed the units the TLS machine accepted through
// tlssm.UnitHandler: NewTLSHandler returns a handler that implements it
// only for connections an installed machine applies to.
//
// # Concurrency model
//
// A loaded rule set owns a fixed pool of interpreter states (PoolSize,
// GOMAXPROCS × 4 by default). Every file is compiled once to a
// FunctionProto that all states share; each state runs the files'
// top-level code, so each has its own closures for the same rules.
// States are created only while a set loads (New, Reload), never while
// an event is evaluated.
//
// A connection's Flow is pinned, when NewFlow creates it, to the set that
// is current then and to one state of that set, chosen by connection id.
// All events of the connection are evaluated on that state, which is
// where the connection's flow.data table lives (referenced from the Flow,
// dropped at Close). Many connections share a state; a state is used by
// one evaluation at a time, under its own mutex, so two connections
// contend only when they share a state and are evaluated at the same
// moment. Nothing else is locked on the per-connection path: NewFlow pins
// the set with an atomic reference count, Hooked and the decision are
// read from the flow, which its connection uses from one goroutine at a
// time.
//
// Reload compiles and loads the new set completely, then swaps it in with
// an atomic pointer: later connections use it, connections in flight
// finish with their own. A replaced set's states are closed when the last
// flow pinned to it closes.
//
// # Sandbox
//
// States open only the base, table, string and math libraries, without
// dofile, loadfile, load, loadstring, module, getfenv, setfenv,
// collectgarbage, string.dump and math.randomseed; print goes to the debug
// log; require loads modules of the rules directory only.
//
// Each evaluation runs under a deadline (Options.Deadline), checked before
// every Lua instruction through the state's context, which is re-armed
// per evaluation rather than made per event. The deadline is wall-clock
// time, which also runs while the goroutine waits for a processor (a busy
// host, a container throttled for its CPU quota): an evaluation that ran
// fewer than 100,000 instructions by its deadline is presumed stalled
// rather than runaway, and goes on, a deadline at a time, as long as it
// runs no instruction and the process allocates less than 16 MiB per
// deadline, for at most 30 times the deadline. A runaway loop runs its
// 100,000 instructions in a millisecond or two; few expensive
// instructions (string.gsub over a megabyte, s = s .. s) are stopped a
// deadline after the first.
//
// Library functions run in Go and cannot be interrupted, so those that
// could allocate without bound in one call (string.rep, string.gsub,
// string.format, table.concat, assignment far past the end of a table,
// unpack) are capped, and string.gsub checks the deadline as it goes; the
// value stack and the call depth are bounded. What remains bounded only by
// the deadline is what a loop of instructions allocates before it is
// stopped (s = s .. s doubles a string per instruction: tens of megabytes
// at the default deadline), and one Lua pattern match on a pathological
// pattern runs to its end (gopher-lua's matcher backtracks in Go).
//
// A rule that raises an error, overruns the deadline or hits a limit is
// logged with its file and line and the connection is dropped or passed
// according to Options.ErrorPolicy; the state stays usable.
package rules
