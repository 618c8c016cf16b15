package rules

import (
	"fmt"
	"slices"
	"sort"

	lua "github.com/yuin/gopher-lua"
)

// Dissectors written in Lua:
//
//	local ssl = haka.dissector.new{ name = "ssl" }
//	ssl:register_event("client_hello")     -- rules hook ssl.events.client_hello
//	ssl.states = haka.state_machine.new("ssl", function () ... end)
//	ssl:install()                          -- or ssl:install{ ports = {443} }
//
// A dissector registers its name and events in the rule set's registry
// while its file loads, so rules hook its events like the tls dissector's
// (haka.rule{on = ssl.events.client_hello}), in its file or in any file
// loaded after it (haka.dissectors.ssl.events.client_hello): files load in
// name order, and an event is hooked by its value. Its events must be
// registered before its states are set, which runs the machine's
// definition (the definition's events table holds them). Installed, its
// machine runs on every TLS connection, or on those to the given
// destination ports.

// maxPorts bounds the ports of an install: a port list is written by hand.
const maxPorts = 1024

// luaDissector is a dissector written in Lua, in one interpreter state.
type luaDissector struct {
	name   string
	file   string
	line   int
	entry  *dissectorEntry // nil when the name was refused
	events []string        // in registration order
	evIDs  map[string]Event
	table  *lua.LTable // .events
	ud     *lua.LUserData

	def     *machineDef
	states  lua.LValue // the value of .states
	machine *compiledMachine
	// installed: install was called; ports, if any, are the destination
	// ports it applies to.
	installed bool
	ports     []uint16
}

func (d *luaDissector) appliesTo(port uint16) bool {
	if !d.installed || d.machine == nil {
		return false
	}
	if d.ports == nil {
		return true
	}
	for _, p := range d.ports {
		if p == port {
			return true
		}
	}
	return false
}

// dissectorKeys are the keys haka.dissector.new accepts.
var dissectorKeys = []string{"name"}

// luaDissectorNew is haka.dissector.new{name = "ssl"}.
func (st *state) luaDissectorNew(L *lua.LState) int {
	file, line := callerPos(L)
	if !st.loading {
		L.RaiseError("haka.dissector.new: dissectors are defined when their file loads")
	}
	t, ok := L.Get(1).(*lua.LTable)
	if !ok || L.GetTop() != 1 {
		L.RaiseError("haka.dissector.new takes one table: haka.dissector.new{ name = \"ssl\" }")
	}
	var unknown []string
	t.ForEach(func(k, _ lua.LValue) {
		if k != lua.LString("name") {
			unknown = append(unknown, k.String())
		}
	})
	sort.Strings(unknown)
	for _, k := range unknown {
		st.problem(file, line, "haka.dissector.new: unknown key %q%s; a dissector takes a name", k, suggestFrom(k, dissectorKeys))
	}
	name, ok := t.RawGetString("name").(lua.LString)
	if !ok {
		L.RaiseError("haka.dissector.new: name must be a string, the dissector's name")
	}
	d := &luaDissector{name: string(name), file: file, line: line, evIDs: make(map[string]Event), table: L.NewTable()}
	reg := st.set.reg
	if st.quiet {
		// A further state: the first registered the dissector.
		if e, ok := reg.byName[d.name]; ok && e.lua && !st.lsm.has(d.name) {
			d.entry = e
		} else {
			st.problem(file, line, "haka.dissector.new: dissector %q was not defined the same way in every interpreter state: definitions must not depend on anything but the files", d.name)
		}
	} else if e, err := reg.registerLua(d.name); err != nil {
		st.problem(file, line, "haka.dissector.new: %v", err)
	} else {
		d.entry = e
	}
	st.strict(d.table, d.name+".events")
	d.ud = st.userValue(d, st.lsm.dissectorMeta)
	st.lsm.dissectors = append(st.lsm.dissectors, d)
	if d.entry != nil {
		st.lsm.dissectorsTable.RawSetString(d.name, d.ud)
	}
	L.Push(d.ud)
	return 1
}

// has reports whether a dissector of that name was defined in this state.
func (x *luaSM) has(name string) bool {
	for _, d := range x.dissectors {
		if d.name == name && d.entry != nil {
			return true
		}
	}
	return false
}

func (st *state) openDissectorMeta() {
	L := st.L
	methods := map[string]*lua.LFunction{
		"register_event": L.NewFunction(st.luaRegisterEvent),
		"install":        L.NewFunction(st.luaInstall),
	}
	meta := L.NewTable()
	meta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		d := L.CheckUserData(1).Value.(*luaDissector)
		key := L.ToString(2)
		switch key {
		case "name":
			L.Push(lua.LString(d.name))
		case "events":
			L.Push(d.table)
		case "states":
			if d.states == nil {
				L.Push(lua.LNil)
			} else {
				L.Push(d.states)
			}
		default:
			fn, ok := methods[key]
			if !ok {
				L.RaiseError("%s.%s: no such field (a dissector has name, events, states, register_event and install)", d.name, key)
			}
			L.Push(fn)
		}
		return 1
	}))
	meta.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		d := L.CheckUserData(1).Value.(*luaDissector)
		key := L.ToString(2)
		if key != "states" {
			L.RaiseError("%s.%s: only states can be set on a dissector", d.name, key)
		}
		st.setStates(L, d, L.Get(3))
		return 0
	}))
	meta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString("dissector " + L.CheckUserData(1).Value.(*luaDissector).name))
		return 1
	}))
	meta.RawSetString("__metatable", lua.LString("dissector"))
	st.lsm.dissectorMeta = meta
}

// checkDissector returns the dissector a method was called on.
func (st *state) checkDissector(L *lua.LState, method string) *luaDissector {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if d, ok := ud.Value.(*luaDissector); ok {
			if !st.loading {
				L.RaiseError("%s:%s: dissectors are defined when their file loads", d.name, method)
			}
			return d
		}
	}
	L.RaiseError("%s: call it as a method of a dissector, d:%s(...)", method, method)
	return nil
}

// luaRegisterEvent is d:register_event(name).
func (st *state) luaRegisterEvent(L *lua.LState) int {
	d := st.checkDissector(L, "register_event")
	file, line := callerPos(L)
	name, ok := L.Get(2).(lua.LString)
	switch {
	case !ok:
		st.problem(file, line, "%s:register_event takes the event's name, a string", d.name)
		return 0
	case reservedEventNames[string(name)]:
		st.problem(file, line, "%s:register_event(%q): every state machine has an event of that name", d.name, name)
		return 0
	case d.def != nil:
		st.problem(file, line, "%s:register_event(%q): register events before setting %s.states, whose definition uses them", d.name, name, d.name)
		return 0
	case d.entry == nil:
		return 0 // the dissector was refused
	}
	var ev Event
	if st.quiet {
		e, ok := d.entry.events[string(name)]
		if !ok {
			st.problem(file, line, "%s:register_event(%q): not registered the same way in every interpreter state: definitions must not depend on anything but the files", d.name, name)
			return 0
		}
		ev = e
	} else {
		e, err := st.set.reg.addEvent(d.entry, string(name))
		if err != nil {
			st.problem(file, line, "%s:register_event: %v", d.name, err)
			return 0
		}
		ev = e
	}
	if _, dup := d.evIDs[string(name)]; dup {
		st.problem(file, line, "%s:register_event(%q): registered twice", d.name, name)
		return 0
	}
	d.events = append(d.events, string(name))
	d.evIDs[string(name)] = ev
	ref := st.userValue(&eventRef{ev: ev, dissector: d.name, name: string(name)}, st.eventMeta)
	d.table.RawSetString(string(name), ref)
	return 0
}

// setStates is d.states = machine: the machine's definition runs with
// d's events, and is compiled.
func (st *state) setStates(L *lua.LState, d *luaDissector, v lua.LValue) {
	file, line := callerPos(L)
	ud, ok := v.(*lua.LUserData)
	var md *machineDef
	if ok {
		md, ok = ud.Value.(*machineDef)
	}
	switch {
	case !st.loading:
		L.RaiseError("%s.states: dissectors are defined when their file loads", d.name)
	case !ok:
		st.problem(file, line, "%s.states must be a state machine, haka.state_machine.new(name, function () ... end), not %s", d.name, describeValue(L, v))
		return
	case d.def != nil:
		st.problem(file, line, "%s.states is set twice", d.name)
		return
	}
	d.def, d.states = md, v
	md.bound = true
	d.machine = st.buildMachine(L, d, md)
}

// luaInstall is d:install() or d:install{ports = {443, ...}}.
func (st *state) luaInstall(L *lua.LState) int {
	d := st.checkDissector(L, "install")
	file, line := callerPos(L)
	problem := func(format string, args ...any) {
		st.problem(file, line, "%s:install: %s", d.name, fmt.Sprintf(format, args...))
	}
	switch {
	case d.installed:
		problem("installed twice")
		return 0
	case d.def == nil:
		problem("no state machine: set %s.states = haka.state_machine.new(...) first", d.name)
		return 0
	}
	d.installed = true
	switch opts := L.Get(2).(type) {
	case *lua.LNilType:
	case *lua.LTable:
		opts.ForEach(func(k, v lua.LValue) {
			if k != lua.LString("ports") {
				problem("unknown key %q%s; install takes ports", k.String(), suggestFrom(k.String(), []string{"ports"}))
				return
			}
			list, ok := v.(*lua.LTable)
			if !ok || list.Len() == 0 {
				problem("ports must be a list of port numbers, {443, 8443}")
				return
			}
			if list.Len() > maxPorts {
				problem("more than %d ports", maxPorts)
				return
			}
			d.ports = make([]uint16, 0, list.Len())
			for i := 1; i <= list.Len(); i++ {
				n, ok := list.RawGetInt(i).(lua.LNumber)
				if !ok || n < 1 || n > 65535 || n != lua.LNumber(int(n)) {
					problem("ports[%d] is not a port number (1-65535)", i)
					continue
				}
				d.ports = append(d.ports, uint16(n))
			}
		})
	default:
		problem("takes nothing, or a table {ports = {...}}")
	}
	return 0
}

// endLoading reports, once the files ran, what was defined but never
// runs.
func (st *state) endLoading() {
	if st.quiet {
		return
	}
	x := &st.lsm
	for _, md := range x.machines {
		if !md.bound {
			x.warnings = append(x.warnings, LoadError{File: md.file, Line: md.line,
				Msg: fmt.Sprintf("state machine %q is not the states of any dissector: it never runs", md.name)})
		}
	}
	for _, d := range x.dissectors {
		if d.def != nil && !d.installed {
			x.warnings = append(x.warnings, LoadError{File: d.file, Line: d.line,
				Msg: fmt.Sprintf("dissector %q is never installed (%s:install()): its state machine never runs", d.name, d.name)})
		}
	}
}

// sameDissectors reports whether two states of a set defined the same
// dissectors, machines and installs.
func sameDissectors(a, b *state) bool {
	da, db := a.lsm.dissectors, b.lsm.dissectors
	if len(da) != len(db) {
		return false
	}
	for i := range da {
		x, y := da[i], db[i]
		if x.name != y.name || x.installed != y.installed || len(x.events) != len(y.events) ||
			len(x.ports) != len(y.ports) || (x.machine == nil) != (y.machine == nil) {
			return false
		}
		for j := range x.ports {
			if x.ports[j] != y.ports[j] {
				return false
			}
		}
		if x.machine != nil && !slices.Equal(x.machine.m.States(), y.machine.m.States()) {
			return false
		}
	}
	return true
}
