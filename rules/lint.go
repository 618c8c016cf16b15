package rules

import (
	"fmt"

	lua "github.com/yuin/gopher-lua"
)

// lint looks at the compiled code of a loaded set for mistakes that load
// fine and fail only when their branch runs, on live traffic:
//
//   - reads of globals that nothing defines (neither the sandbox, nor the
//     files' top-level code, nor an assignment anywhere in the set's
//     code): typos such as drop(flow) for flow:drop(), or hakka.alert. A
//     global meant to be nil should be declared at the top level
//     (DEBUG = false);
//   - require "name" of a module that is missing or does not compile,
//     inside functions that loading did not run.
//
// Inside the definition of a state machine, the vocabulary (state,
// events, ...) is defined; an undefined name the definition already
// reported (a jump to an undefined state) is not reported again.
//
// Modules required with a constant name are looked at too.
func lint(st *state, protos []*lua.FunctionProto) LoadErrors {
	type use struct {
		file string
		line int
		name string
		// machine: the read is inside a state machine's definition.
		machine bool
	}
	var (
		uses     []use
		errs     LoadErrors
		assigned = make(map[string]bool)
		modules  = make(map[string]bool)
	)
	var walk func(p *lua.FunctionProto, machine bool)
	walk = func(p *lua.FunctionProto, machine bool) {
		machine = machine || st.lsm.protos[p]
		line := func(pc int) int {
			if pc < len(p.DbgSourcePositions) {
				return p.DbgSourcePositions[pc]
			}
			return 0
		}
		for pc, inst := range p.Code {
			op := int(inst >> 26)
			if op != lua.OP_GETGLOBAL && op != lua.OP_SETGLOBAL {
				continue
			}
			name, ok := p.Constants[inst&0x3ffff].(lua.LString)
			if !ok {
				continue
			}
			if op == lua.OP_SETGLOBAL {
				assigned[string(name)] = true
				continue
			}
			uses = append(uses, use{p.SourceName, line(pc), string(name), machine})
			if name != "require" {
				continue
			}
			// require "m": GETGLOBAL A "require"; LOADK A+1 "m"; CALL A.
			if mod, ok := requiredName(p, pc); ok && !modules[mod] {
				modules[mod] = true
				proto, err := st.set.module(mod)
				if err != nil {
					errs = append(errs, LoadError{File: p.SourceName, Line: line(pc), Msg: fmt.Sprintf("require %q: %v", mod, err)})
				} else {
					walk(proto, false)
				}
			}
		}
		for _, c := range p.FunctionPrototypes {
			walk(c, machine)
		}
	}
	for _, p := range protos {
		walk(p, false)
	}

	globals := st.L.G.Global
	var defined []string
	globals.ForEach(func(k, _ lua.LValue) {
		if s, ok := k.(lua.LString); ok {
			defined = append(defined, string(s))
		}
	})
	seen := make(map[use]bool)
	for _, u := range uses {
		if assigned[u.name] || globals.RawGetString(u.name) != lua.LNil || seen[u] {
			continue
		}
		if u.machine && (machineVocabulary[u.name] || st.lsm.reported[LoadError{File: u.file, Msg: u.name}]) {
			continue
		}
		seen[u] = true
		errs = append(errs, LoadError{File: u.file, Line: u.line,
			Msg: fmt.Sprintf("undefined global %q%s", u.name, suggestFrom(u.name, defined))})
	}
	return errs
}

// requiredName returns the module name of a require call with a constant
// argument whose GETGLOBAL "require" is at pc.
func requiredName(p *lua.FunctionProto, pc int) (string, bool) {
	if pc+2 >= len(p.Code) {
		return "", false
	}
	get, load, call := p.Code[pc], p.Code[pc+1], p.Code[pc+2]
	a := int(get>>18) & 0xff
	if int(load>>26) != lua.OP_LOADK || int(load>>18)&0xff != a+1 ||
		int(call>>26) != lua.OP_CALL || int(call>>18)&0xff != a {
		return "", false
	}
	name, ok := p.Constants[load&0x3ffff].(lua.LString)
	return string(name), ok
}
