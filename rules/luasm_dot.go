package rules

import (
	"fmt"
	"io"
	"slices"
)

// Machines returns the names of the dissectors written in Lua that have a
// state machine, in the running rule set.
func (e *Engine) Machines() []string {
	var names []string
	e.withFirstState(func(st *state) {
		for _, d := range st.lsm.dissectors {
			if d.machine != nil {
				names = append(names, d.name)
			}
		}
	})
	slices.Sort(names)
	return names
}

// WriteMachineDOT writes the state machine of the dissector written in Lua
// named name as a Graphviz digraph, as `haka-proxy sm graph` prints the
// built-in TLS machine. Every state of a set holds the same definition, so
// the first one is drawn.
func (e *Engine) WriteMachineDOT(name string, w io.Writer) error {
	var m *luaMachine
	e.withFirstState(func(st *state) {
		for _, d := range st.lsm.dissectors {
			if d.name == name && d.machine != nil {
				m = d.machine.m
			}
		}
	})
	if m == nil {
		return fmt.Errorf("no state machine %q in the rules", name)
	}
	return m.WriteDOT(w)
}

// withFirstState runs fn on the first interpreter state of the running
// set, under its lock; not at all when the engine is closed.
func (e *Engine) withFirstState(fn func(*state)) {
	set := e.cur.Load()
	if set == nil || len(set.states) == 0 {
		return
	}
	st := set.states[0]
	st.mu.Lock()
	defer st.mu.Unlock()
	fn(st)
}
