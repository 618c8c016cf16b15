package rules

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The state machines written in Lua, with Haka's vocabulary:
//
//	ssl.states = haka.state_machine.new("ssl", function ()
//	  state_type(BidirectionalState)
//	  hello = state(tls.grammar.client_hello, nil)
//	  hello:on{ event = events.up, execute = function (self, h) self:trigger("client_hello", h) end, jump = wait }
//	  ...
//	  initial(hello)
//	end)
//
// The definition function runs when the machine becomes a dissector's
// states, in a fresh environment of its own: the vocabulary (state,
// state_type, initial, any, events, fail, finish, BidirectionalState,
// State), then the names the function assigns, then the globals. A state
// is named after the name it is assigned to, or by state(...):name("x").
// A name the function reads and nothing defines reads as an undefined
// name rather than nil, so that `jump = typo` is reported as a jump to an
// undefined state where it is written instead of silently becoming a
// transition without a jump; a state may so be named before it is
// defined. Once the function returns, the definition is compiled with
// package sm (sm.Builder.Build), every mistake reported at its file and
// line; the functions of the machine (execute, when) keep the
// environment, where the names defined read as they were and other
// globals as the rules' globals.
//
// Each interpreter state of a rule set runs the files, so each has its own
// machine, whose functions are closures of that state: a connection's
// instances run on the state its rules run on.

// The instantiation of package sm for the Lua machines: a luaConn is the
// context, a tlssm.Unit the unit, a luaParam what events carry.
type (
	luaMachine    = sm.Machine[*luaConn, *tlssm.Unit, luaParam]
	luaInstance   = sm.Instance[*luaConn, *tlssm.Unit, luaParam]
	luaTransition = sm.Transition[*luaConn, *tlssm.Unit, luaParam]
	luaEvent      = sm.Event[*tlssm.Unit, luaParam]
	luaSMElement  = sm.Element[*luaConn, *tlssm.Unit, luaParam]
	luaBuilder    = sm.Builder[*luaConn, *tlssm.Unit, luaParam]
)

// luaParam is the parameter of an event: an element's result (up, down,
// the alert and heartbeat events), or what self:trigger was given. The
// result of an element is made when a function of the machine first takes
// it (part says which element made it): a unit no function looks at
// costs no Lua value.
type luaParam struct {
	v    lua.LValue
	more []lua.LValue // the parameters after the first, when several
	part *grammarPart
}

// Names of the events every Lua machine has besides sm's base events: an
// alert or heartbeat record the state's element does not take (see
// luaConn.feed).
const (
	evNameAlert     = "alert"
	evNameHeartbeat = "heartbeat"
)

// machineVocabulary are the names the definition function of a machine
// reads from its environment (and lint accepts inside it).
var machineVocabulary = map[string]bool{
	"state_type": true, "state": true, "initial": true, "any": true, "events": true,
	"fail": true, "finish": true, "BidirectionalState": true, "State": true,
}

// reservedEventNames cannot be registered by a dissector written in Lua:
// its machine has them already.
var reservedEventNames = map[string]bool{
	"init": true, "enter": true, "leave": true, "fail": true, "finish": true, "up": true, "down": true,
	"parse_error": true, "missing_grammar": true, "timeout": true, evNameAlert: true, evNameHeartbeat: true,
}

// maxTimeoutSeconds bounds events.timeout(s): a day of stream time is far
// beyond any protocol step, and keeps s*1e9 within a time.Duration.
const maxTimeoutSeconds = 86400

// luaSM is what a state keeps of the dissectors and machines its files
// define.
type luaSM struct {
	dissectors []*luaDissector
	machines   []*machineDef
	// haka.dissectors, where the dissectors written in Lua are added.
	dissectorsTable *lua.LTable

	// The metatables of the vocabulary's values: dissectors, machines,
	// states (and any), self, grammar elements, the others (events, fail,
	// finish, the state types, undefined names).
	dissectorMeta *lua.LTable
	machineMeta   *lua.LTable
	stateMeta     *lua.LTable
	selfMeta      *lua.LTable
	elementMeta   *lua.LTable
	valueMeta     *lua.LTable

	// protos are the definition functions' prototypes (for lint);
	// reported, the undefined names already reported as such, by file.
	protos   map[*lua.FunctionProto]bool
	reported map[LoadError]bool
	// warnings are the suspicious but valid parts of the definitions.
	warnings LoadErrors
}

// machineDef is the value of haka.state_machine.new(name, fn).
type machineDef struct {
	name string
	fn   *lua.LFunction
	file string
	line int
	// bound: the machine was made a dissector's states.
	bound bool
}

func (md *machineDef) pos() string { return md.file + ":" + strconv.Itoa(md.line) }

// Values of the vocabulary that are neither states nor events.
type (
	// pseudoState is fail or finish as a jump target.
	pseudoState string
	// stateType is BidirectionalState or State.
	stateType bool // true: bidirectional
	// undefinedName is what a name nothing defines reads as while a
	// definition function runs.
	undefinedName string
	// smEventRef is events.NAME.
	smEventRef struct {
		id   sm.EventID
		name string
	}
)

// stateDecl is a state (or any) under definition.
type stateDecl struct {
	mb       *machineBuild
	name     string
	explicit bool // named by :name()
	isAny    bool
	up, down *grammarElement
	file     string
	line     int
	trans    []*transDecl
}

// transDecl is st:on{...} under definition.
type transDecl struct {
	events  []sm.EventID
	when    lua.LValue // nil, a function or a grammar element
	execute *lua.LFunction
	jump    lua.LValue // nil, a state, a pseudo-state or an undefined name
	file    string
	line    int
}

// machineBuild is a machine whose definition function runs.
type machineBuild struct {
	st  *state
	def *machineDef
	b   *luaBuilder
	cm  *compiledMachine
	// bidi: state_type is BidirectionalState.
	bidi   bool
	states []*stateDecl
	any    *stateDecl
	inits  []initDecl
	// vars are the names the function assigned, in the environment.
	vars *lua.LTable
	// defining: the definition function runs.
	defining bool
	// undefined are the values of the undefined names read, by name.
	undefined map[string]lua.LValue
	// initReported: compile reported the initial state's mistake, which
	// Build would report again as none.
	initReported bool
}

type initDecl struct {
	v    lua.LValue
	file string
	line int
}

// problem records a mistake of a definition at file:line.
func (st *state) problem(file string, line int, format string, args ...any) {
	st.problems = append(st.problems, LoadError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// openMachines installs haka.dissector and haka.state_machine.
func (st *state) openMachines(haka, dissectors *lua.LTable) {
	L := st.L
	x := &st.lsm
	x.protos = make(map[*lua.FunctionProto]bool)
	x.reported = make(map[LoadError]bool)
	x.dissectorsTable = dissectors

	dt := L.NewTable()
	dt.RawSetString("new", L.NewFunction(st.luaDissectorNew))
	st.strict(dt, "haka.dissector")
	haka.RawSetString("dissector", dt)
	mt := L.NewTable()
	mt.RawSetString("new", L.NewFunction(st.luaMachineNew))
	st.strict(mt, "haka.state_machine")
	haka.RawSetString("state_machine", mt)

	x.machineMeta = L.NewTable()
	x.machineMeta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		md := L.CheckUserData(1).Value.(*machineDef)
		L.Push(lua.LString(fmt.Sprintf("state machine %q", md.name)))
		return 1
	}))
	x.machineMeta.RawSetString("__metatable", lua.LString("state machine"))

	x.stateMeta = L.NewTable()
	methods := L.NewTable()
	methods.RawSetString("on", L.NewFunction(st.luaStateOn))
	methods.RawSetString("name", L.NewFunction(st.luaStateName))
	x.stateMeta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		key := L.CheckString(2)
		if fn := methods.RawGetString(key); fn != lua.LNil {
			L.Push(fn)
			return 1
		}
		L.RaiseError("state.%s: no such method (a state has on and name)", key)
		return 0
	}))
	x.stateMeta.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("state.%s: states have no fields to set", L.ToString(2))
		return 0
	}))
	x.stateMeta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		sd := L.CheckUserData(1).Value.(*stateDecl)
		switch {
		case sd.isAny:
			L.Push(lua.LString("any"))
		case sd.name == "":
			L.Push(lua.LString(fmt.Sprintf("state (unnamed, %s:%d)", sd.file, sd.line)))
		default:
			L.Push(lua.LString("state " + sd.name))
		}
		return 1
	}))
	x.stateMeta.RawSetString("__metatable", lua.LString("state"))

	x.valueMeta = L.NewTable()
	x.valueMeta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		switch v := L.CheckUserData(1).Value.(type) {
		case pseudoState:
			L.Push(lua.LString(string(v)))
		case stateType:
			if v {
				L.Push(lua.LString("BidirectionalState"))
			} else {
				L.Push(lua.LString("State"))
			}
		case undefinedName:
			L.Push(lua.LString("undefined name " + string(v)))
		case smEventRef:
			L.Push(lua.LString("events." + v.name))
		default:
			L.Push(lua.LString("?"))
		}
		return 1
	}))
	x.valueMeta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		if name, ok := L.CheckUserData(1).Value.(undefinedName); ok {
			L.RaiseError("%s: undefined name (nothing in the machine or the globals defines it; a state is defined by %s = state(...))", name, name)
		}
		L.RaiseError("%s has no field %s", L.ToStringMeta(L.Get(1)).String(), L.ToString(2))
		return 0
	}))
	x.valueMeta.RawSetString("__metatable", lua.LString("state machine value"))

	st.openDissectorMeta()
	st.openSelfMeta()
}

// userValue wraps a vocabulary value.
func (st *state) userValue(v any, meta *lua.LTable) *lua.LUserData {
	ud := st.L.NewUserData()
	ud.Value = v
	ud.Metatable = meta
	return ud
}

// luaMachineNew is haka.state_machine.new(name, function () ... end).
// The function runs when the machine is made a dissector's states.
func (st *state) luaMachineNew(L *lua.LState) int {
	file, line := callerPos(L)
	if !st.loading {
		L.RaiseError("haka.state_machine.new: machines are defined when their file loads")
	}
	name, ok := L.Get(1).(lua.LString)
	fn, fok := L.Get(2).(*lua.LFunction)
	if !ok || !fok || L.GetTop() != 2 {
		L.RaiseError("haka.state_machine.new takes a name and a function: haka.state_machine.new(\"ssl\", function () ... end)")
	}
	if fn.Proto == nil {
		L.RaiseError("haka.state_machine.new: the definition must be a Lua function")
	}
	md := &machineDef{name: string(name), fn: fn, file: file, line: line}
	st.lsm.machines = append(st.lsm.machines, md)
	st.lsm.protos[fn.Proto] = true
	L.Push(st.userValue(md, st.lsm.machineMeta))
	return 1
}

// buildMachine runs md's definition function for d and compiles it. It
// reports every mistake as a problem and returns nil if there was one.
func (st *state) buildMachine(L *lua.LState, d *luaDissector, md *machineDef) *compiledMachine {
	b := sm.NewBuilder[*luaConn, *tlssm.Unit, luaParam](md.name)
	cm := &compiledMachine{name: md.name, pos: md.pos(), d: d, byName: make(map[string]sm.EventID, len(d.events))}
	mb := &machineBuild{st: st, def: md, b: b, cm: cm, bidi: true, defining: true,
		vars: L.NewTable(), undefined: make(map[string]lua.LValue)}
	mb.any = &stateDecl{mb: mb, name: "any", isAny: true, file: md.file, line: md.line}
	var ruleEvents []Event
	for _, name := range d.events {
		id := b.RegisterEvent(name)
		cm.byName[name] = id
		for int(id) >= len(ruleEvents) {
			ruleEvents = append(ruleEvents, noRuleEvent)
		}
		ruleEvents[id] = d.evIDs[name]
	}
	cm.evAlert = b.RegisterEvent(evNameAlert)
	cm.evHeartbeat = b.RegisterEvent(evNameHeartbeat)
	cm.toRule = ruleEvents
	b.Hook(cm.hook)
	st.checkTriggers(d, md)

	// The events table: base events, the alert and heartbeat events, the
	// dissector's, and timeout(seconds).
	events := L.NewTable()
	addEvent := func(name string, id sm.EventID) {
		events.RawSetString(name, st.userValue(smEventRef{id: id, name: name}, st.lsm.valueMeta))
	}
	for _, n := range []string{"init", "enter", "leave", "fail", "finish", "up", "down", "parse_error", "missing_grammar", evNameAlert, evNameHeartbeat} {
		id, _ := b.Event(n)
		addEvent(n, id)
	}
	for _, n := range d.events {
		addEvent(n, cm.byName[n])
	}
	events.RawSetString("timeout", L.NewFunction(func(L *lua.LState) int {
		if !mb.defining {
			L.RaiseError("events.timeout: timeouts are made while the machine's definition runs")
		}
		secs, ok := L.Get(1).(lua.LNumber)
		if !ok || !(secs > 0) || secs > maxTimeoutSeconds {
			L.RaiseError("events.timeout(seconds): seconds must be a number above 0 and at most %d, not %s", maxTimeoutSeconds, L.ToStringMeta(L.Get(1)))
		}
		d := time.Duration(math.Round(float64(secs) * float64(time.Second)))
		id := b.Timeout(d)
		L.Push(st.userValue(smEventRef{id: id, name: "timeout(" + d.String() + ")"}, st.lsm.valueMeta))
		return 1
	}))
	st.strict(events, "events")

	vocab := L.NewTable()
	vocab.RawSetString("state_type", L.NewFunction(mb.luaStateType))
	vocab.RawSetString("state", L.NewFunction(mb.luaState))
	vocab.RawSetString("initial", L.NewFunction(mb.luaInitial))
	vocab.RawSetString("any", st.userValue(mb.any, st.lsm.stateMeta))
	vocab.RawSetString("events", events)
	fail := st.userValue(pseudoState(sm.Fail), st.lsm.valueMeta)
	finish := st.userValue(pseudoState(sm.Finish), st.lsm.valueMeta)
	vocab.RawSetString("fail", fail)
	vocab.RawSetString("finish", finish)
	vocab.RawSetString("BidirectionalState", st.userValue(stateType(true), st.lsm.valueMeta))
	vocab.RawSetString("State", st.userValue(stateType(false), st.lsm.valueMeta))

	env := L.NewTable()
	meta := L.NewTable()
	globals := L.G.Global
	meta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		key := L.Get(2)
		for _, t := range [...]*lua.LTable{vocab, mb.vars, globals} {
			if v := t.RawGet(key); v != lua.LNil {
				L.Push(v)
				return 1
			}
		}
		name, ok := key.(lua.LString)
		if !ok || !mb.defining {
			L.Push(lua.LNil)
			return 1
		}
		u, ok := mb.undefined[string(name)]
		if !ok {
			u = st.userValue(undefinedName(name), st.lsm.valueMeta)
			mb.undefined[string(name)] = u
		}
		L.Push(u)
		return 1
	}))
	meta.RawSetString("__newindex", L.NewFunction(mb.luaAssign))
	env.Metatable = meta

	prev := md.fn.Env
	md.fn.Env = env
	L.Push(md.fn)
	err := L.PCall(0, 0, nil)
	md.fn.Env = prev
	mb.defining = false
	if err != nil {
		st.problems = append(st.problems, locate(md.file, luaErrorMessage(err)))
		return nil
	}

	// The functions of the machine keep env: make it a plain table of
	// what the definition set, over the globals.
	env.Metatable = nil
	mb.vars.ForEach(func(k, v lua.LValue) { env.RawSet(k, v) })
	env.RawSetString("events", events)
	env.RawSetString("fail", fail)
	env.RawSetString("finish", finish)
	rt := L.NewTable()
	rt.RawSetString("__index", globals)
	env.Metatable = rt

	before := len(st.problems)
	mb.compile()
	m, err := b.Build()
	if err != nil {
		var des []*sm.DefinitionError
		collectDefinitionErrors(err, &des)
		for _, de := range des {
			if de.Msg == "no initial state" && mb.initReported {
				continue
			}
			file, line := md.file, md.line
			if f, l, ok := splitPos(de.Pos); ok {
				file, line = f, l
			}
			de2 := *de
			de2.Pos = ""
			st.problem(file, line, "%s", de2.Error())
		}
		if len(des) == 0 {
			st.problem(md.file, md.line, "state machine %q: %v", md.name, err)
		}
		return nil
	}
	if len(st.problems) > before {
		return nil
	}
	if !st.quiet {
		for _, w := range m.Warnings() {
			file, line := md.file, md.line
			if f, l, ok := splitPos(w.Pos); ok {
				file, line = f, l
			}
			st.lsm.warnings = append(st.lsm.warnings, LoadError{File: file, Line: line,
				Msg: fmt.Sprintf("state machine %q: state %q: %s", md.name, w.State, w.Msg)})
		}
	}
	cm.finish(m)
	return cm
}

func collectDefinitionErrors(err error, out *[]*sm.DefinitionError) {
	var de *sm.DefinitionError
	if errors.As(err, &de) && de == err {
		*out = append(*out, de)
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			collectDefinitionErrors(e, out)
		}
	}
}

// splitPos reads "file.lua:12".
func splitPos(pos string) (string, int, bool) {
	i := strings.LastIndexByte(pos, ':')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(pos[i+1:])
	if err != nil {
		return "", 0, false
	}
	return pos[:i], n, true
}

// luaAssign is the environment's __newindex while the definition runs:
// a state takes the name it is first assigned to.
func (mb *machineBuild) luaAssign(L *lua.LState) int {
	key, v := L.Get(2), L.Get(3)
	name, isName := key.(lua.LString)
	if ud, ok := v.(*lua.LUserData); ok && isName && mb.defining {
		if sd, ok := ud.Value.(*stateDecl); ok && sd.mb == mb && !sd.isAny {
			file, line := callerPos(L)
			switch {
			case sd.name == "":
				sd.name = string(name)
			case sd.name != string(name) && !sd.explicit:
				mb.st.problem(file, line, "state %q is also assigned to %s: a state has one name (name it with :name(\"...\") to use it under other names)", sd.name, name)
			}
		}
	}
	mb.vars.RawSet(key, v)
	return 0
}

// luaStateType is state_type(BidirectionalState | State).
func (mb *machineBuild) luaStateType(L *lua.LState) int {
	ud, ok := L.Get(1).(*lua.LUserData)
	t, tok := stateType(false), false
	if ok {
		t, tok = ud.Value.(stateType)
	}
	if !tok {
		L.RaiseError("state_type takes BidirectionalState or State, not %s", L.ToStringMeta(L.Get(1)))
	}
	mb.bidi = bool(t)
	return 0
}

// luaState is state(up, down) (state() for the State type).
func (mb *machineBuild) luaState(L *lua.LState) int {
	file, line := callerPos(L)
	if !mb.defining {
		L.RaiseError("state: states are defined while the machine's definition runs")
	}
	sd := &stateDecl{mb: mb, file: file, line: line}
	if !mb.bidi {
		if L.GetTop() > 0 && (L.Get(1) != lua.LNil || L.Get(2) != lua.LNil) {
			mb.st.problem(file, line, "state: states of state_type(State) take no grammar element; use state_type(BidirectionalState)")
		}
	} else {
		if L.GetTop() > 2 {
			mb.st.problem(file, line, "state takes at most two grammar elements, up and down (name a state by assigning it, or with :name(\"...\"))")
		}
		sd.up = mb.element(L, 1, "up", file, line)
		sd.down = mb.element(L, 2, "down", file, line)
	}
	mb.states = append(mb.states, sd)
	L.Push(mb.st.userValue(sd, mb.st.lsm.stateMeta))
	return 1
}

// element reads a grammar element argument: nil, or an element.
func (mb *machineBuild) element(L *lua.LState, i int, dir, file string, line int) *grammarElement {
	v := L.Get(i)
	if v == lua.LNil {
		return nil
	}
	if ud, ok := v.(*lua.LUserData); ok {
		switch e := ud.Value.(type) {
		case *grammarElement:
			return e
		case undefinedName:
			mb.reportUndefined(file, line, string(e), "the %s grammar element is the undefined name %q", dir, string(e))
			return nil
		}
	}
	mb.st.problem(file, line, "state: the %s grammar element must be nil or an element such as tls.grammar.client_hello, not %s", dir, describeValue(L, v))
	return nil
}

// reportUndefined reports the use of the undefined name, with a state
// name close to it, and notes it for lint (which would report it again as
// an undefined global).
func (mb *machineBuild) reportUndefined(file string, line int, name, format string, args ...any) {
	msg := fmt.Sprintf(format, args...) + mb.suggestState(name)
	mb.st.problems = append(mb.st.problems, LoadError{File: file, Line: line, Msg: msg})
	mb.st.lsm.reported[LoadError{File: file, Msg: name}] = true
}

// suggestState returns ` (did you mean "x"?)` for a state name close to
// name.
func (mb *machineBuild) suggestState(name string) string {
	var names []string
	for _, sd := range mb.states {
		if sd.name != "" {
			names = append(names, sd.name)
		}
	}
	return suggestFrom(name, names)
}

func describeValue(L *lua.LState, v lua.LValue) string {
	if ud, ok := v.(*lua.LUserData); ok && ud.Metatable != nil {
		return L.ToStringMeta(v).String()
	}
	return "a " + v.Type().String()
}

// luaInitial is initial(state).
func (mb *machineBuild) luaInitial(L *lua.LState) int {
	file, line := callerPos(L)
	if !mb.defining {
		L.RaiseError("initial: the initial state is set while the machine's definition runs")
	}
	mb.inits = append(mb.inits, initDecl{v: L.Get(1), file: file, line: line})
	return 0
}

// checkState returns the state that st:method was called on.
func (st *state) checkState(L *lua.LState, method string) *stateDecl {
	ud, ok := L.Get(1).(*lua.LUserData)
	if ok {
		if sd, ok := ud.Value.(*stateDecl); ok {
			if !sd.mb.defining {
				L.RaiseError("%s: transitions and names are given while the machine's definition runs", method)
			}
			return sd
		}
	}
	L.RaiseError("%s: call it as a method of a state, st:%s{...}", method, method)
	return nil
}

// luaStateName is st:name("x"): names a state that is not assigned to a
// name of the machine (a local), or gives it another name.
func (st *state) luaStateName(L *lua.LState) int {
	sd := st.checkState(L, "name")
	file, line := callerPos(L)
	name, ok := L.Get(2).(lua.LString)
	switch {
	case sd.isAny:
		st.problem(file, line, "any cannot be named")
	case !ok || name == "":
		st.problem(file, line, "name: takes the state's name, a string")
	default:
		sd.name, sd.explicit = string(name), true
	}
	L.Push(L.Get(1))
	return 1
}

// transitionKeys are the keys st:on{} accepts.
var transitionKeys = []string{"event", "events", "when", "execute", "jump"}

// luaStateOn is st:on{event = | events = {...}, when =, execute =, jump =}.
func (st *state) luaStateOn(L *lua.LState) int {
	sd := st.checkState(L, "on")
	mb := sd.mb
	file, line := callerPos(L)
	problem := func(format string, args ...any) { st.problem(file, line, "on: "+format, args...) }
	t, ok := L.Get(2).(*lua.LTable)
	if !ok || L.GetTop() != 2 {
		problem("takes one table: st:on{event = events.up, execute = function (self, res) ... end, jump = next}")
		L.Push(L.Get(1))
		return 1
	}
	td := &transDecl{file: file, line: line}
	var unknown []string
	event := func(v lua.LValue, key string) {
		if ud, ok := v.(*lua.LUserData); ok {
			switch e := ud.Value.(type) {
			case smEventRef:
				td.events = append(td.events, e.id)
				return
			case undefinedName:
				mb.reportUndefined(file, line, string(e), "on: %s is the undefined name %q", key, string(e))
				return
			}
		}
		problem("%s must be an event such as events.up, not %s", key, describeValue(L, v))
	}
	t.ForEach(func(k, v lua.LValue) {
		switch k {
		case lua.LString("event"):
			event(v, "event")
		case lua.LString("events"):
			list, ok := v.(*lua.LTable)
			if !ok {
				problem("events must be a list of events, {events.up, events.down}, not %s", describeValue(L, v))
				return
			}
			for i := 1; i <= list.Len(); i++ {
				event(list.RawGetInt(i), fmt.Sprintf("events[%d]", i))
			}
		case lua.LString("when"):
			switch w := v.(type) {
			case *lua.LFunction:
				td.when = w
			case *lua.LUserData:
				if _, ok := w.Value.(*grammarElement); ok {
					td.when = w
					return
				}
				if name, ok := w.Value.(undefinedName); ok {
					mb.reportUndefined(file, line, string(name), "on: when is the undefined name %q", string(name))
					return
				}
				problem("when must be a function (self, ...) or a grammar element, not %s", describeValue(L, v))
			default:
				problem("when must be a function (self, ...) or a grammar element, not %s", describeValue(L, v))
			}
		case lua.LString("execute"):
			fn, ok := v.(*lua.LFunction)
			if !ok {
				problem("execute must be a function (self, ...), not %s", describeValue(L, v))
				return
			}
			td.execute = fn
		case lua.LString("jump"):
			td.jump = v
		default:
			unknown = append(unknown, k.String())
		}
	})
	sort.Strings(unknown)
	for _, k := range unknown {
		problem("unknown key %q%s; a transition takes event (or events), when, execute and jump", k, suggestFrom(k, transitionKeys))
	}
	sd.trans = append(sd.trans, td)
	L.Push(L.Get(1))
	return 1
}

// compile turns the declarations into the builder's definition, once the
// definition function has returned and every name is known.
func (mb *machineBuild) compile() {
	st, b := mb.st, mb.b
	byName := make(map[string]*stateDecl, len(mb.states))
	for _, sd := range mb.states {
		if sd.name == "" {
			st.problem(sd.file, sd.line, "state without a name: assign it to a name of the machine (hello = state(...)) or name it (state(...):name(\"hello\"))")
			continue
		}
		if _, dup := byName[sd.name]; !dup {
			byName[sd.name] = sd
		}
	}
	stateName := func(v lua.LValue, file string, line int, what string) (string, bool) {
		if ud, ok := v.(*lua.LUserData); ok {
			switch s := ud.Value.(type) {
			case *stateDecl:
				switch {
				case s.isAny:
					st.problem(file, line, "%s: any is not a state", what)
				case s.mb != mb:
					st.problem(file, line, "%s: state %q belongs to another machine", what, s.name)
				case s.name == "":
					// Reported as a state without a name.
				default:
					return s.name, true
				}
				return "", false
			case pseudoState:
				if what == "initial" {
					st.problem(file, line, "initial: %s is not a state", s)
					return "", false
				}
				return string(s), true
			case undefinedName:
				if _, ok := byName[string(s)]; ok {
					return string(s), true // named before it was defined
				}
				if what == "initial" {
					mb.reportUndefined(file, line, string(s), "initial: %q is not a state of the machine", string(s))
				} else {
					mb.reportUndefined(file, line, string(s), "jump to an undefined state %q", string(s))
				}
				return "", false
			}
		}
		st.problem(file, line, "%s must be a state, fail or finish, not %s", what, describeValue(st.L, v))
		return "", false
	}
	cm := mb.cm
	add := func(sdef *sm.StateDef[*luaConn, *tlssm.Unit, luaParam], sd *stateDecl) {
		for _, td := range sd.trans {
			pos := td.file + ":" + strconv.Itoa(td.line)
			t := luaTransition{Events: td.events, Pos: pos}
			r := &rule{loc: pos, file: td.file, line: td.line}
			ok := true
			if td.jump != nil {
				t.Jump, ok = stateName(td.jump, td.file, td.line, "jump")
			}
			switch w := td.when.(type) {
			case *lua.LFunction:
				t.When = cm.guard(w, r)
			case *lua.LUserData:
				el := w.Value.(*grammarElement)
				t.When = el.guard
				t.Label = el.name
			}
			if td.execute != nil {
				t.Execute = cm.action(td.execute, r)
			}
			if ok && len(td.events) > 0 {
				sdef.On(t)
			} else if ok {
				st.problem(td.file, td.line, "on: a transition needs an event: event = events.NAME or events = {...}")
			}
		}
	}
	for _, sd := range mb.states {
		if sd.name == "" {
			continue
		}
		sdef := b.BidirectionalState(sd.name, sd.up.smElement(), sd.down.smElement())
		sdef.At(sd.file + ":" + strconv.Itoa(sd.line))
		add(sdef, sd)
	}
	add(b.Any(), mb.any)
	for _, in := range mb.inits {
		if name, ok := stateName(in.v, in.file, in.line, "initial"); ok {
			b.Initial(name)
		} else {
			mb.initReported = true
		}
	}
	if len(mb.inits) == 0 {
		// Build says so too, without a place: this one has the machine's.
		st.problem(mb.def.file, mb.def.line, "state machine %q: no initial state: call initial(st) in its definition", mb.def.name)
		mb.initReported = true
	}
	cm.states = make(map[string]*[2]*grammarElement, len(byName))
	for name, sd := range byName {
		cm.states[name] = &[2]*grammarElement{sd.up, sd.down}
	}
}

// checkTriggers reports self:trigger("name", ...) calls, with a constant
// name, in the definition function of md whose name d does not register:
// a typo there would otherwise fail only when the transition runs.
func (st *state) checkTriggers(d *luaDissector, md *machineDef) {
	known := make(map[string]bool, len(d.events))
	for _, n := range d.events {
		known[n] = true
	}
	var walk func(p *lua.FunctionProto)
	walk = func(p *lua.FunctionProto) {
		for pc := 0; pc+1 < len(p.Code); pc++ {
			inst := p.Code[pc]
			if int(inst>>26) != lua.OP_SELF {
				continue
			}
			c := int(inst>>9) & 0x1ff
			if c&opBitRK == 0 {
				continue
			}
			if k, ok := p.Constants[c&^opBitRK].(lua.LString); !ok || k != "trigger" {
				continue
			}
			a := int(inst>>18) & 0xff
			next := p.Code[pc+1]
			if int(next>>26) != lua.OP_LOADK || int(next>>18)&0xff != a+2 {
				continue
			}
			name, ok := p.Constants[next&0x3ffff].(lua.LString)
			if !ok || known[string(name)] {
				continue
			}
			line := 0
			if pc < len(p.DbgSourcePositions) {
				line = p.DbgSourcePositions[pc]
			}
			hint := suggestFrom(string(name), d.events)
			if hint == "" {
				hint = fmt.Sprintf(" (register it with %s:register_event(%q) before its states are set)", d.name, string(name))
			}
			st.problem(p.SourceName, line, "self:trigger(%q): dissector %s registers no event %q%s", string(name), d.name, string(name), hint)
		}
		for _, c := range p.FunctionPrototypes {
			walk(c)
		}
	}
	walk(md.fn.Proto)
}

// opBitRK marks a constant in an RK operand of gopher-lua's instructions.
const opBitRK = 1 << 8
