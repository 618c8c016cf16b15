package rules

import (
	"fmt"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
)

// Event identifies an event on the per-connection path: a small number,
// so that dispatch is an index and never a string lookup. The tls
// dissector is always registered first, so its events keep the numbers of
// tlssm.EventID (see TLS); the events of other dissectors follow, and
// Engine.Event finds them by name.
type Event uint16

// TLS returns the Event of a tls dissector event.
func TLS(id tlssm.EventID) Event { return Event(id) }

// evEndConnection is delivered even to a killed flow (see Flow.Eval).
var evEndConnection = TLS(tlssm.EvEndConnection)

// Dissector is what a dissector registers: its name, by which rules reach
// it (haka.dissectors.NAME, and a global NAME), and the names of the
// events it can raise (NAME.events.EVENT).
type Dissector struct {
	Name   string
	Events []string
}

// TLSDissector is the registration of the tls dissector: the names of the
// event contract in tlssm.Events.
func TLSDissector() Dissector {
	d := Dissector{Name: "tls", Events: make([]string, len(tlssm.Events))}
	for i, e := range tlssm.Events {
		d.Events[i] = e.Name
	}
	return d
}

// maxEvents bounds the events of all dissectors together: Event is a
// uint16.
const maxEvents = 1 << 16

type eventInfo struct {
	dissector string
	name      string
	// display is the name written in alerts and logs: the bare name for
	// the tls dissector (the contract names its events bare), and
	// "dissector.name" for others so that two dissectors may both have,
	// say, an "anomaly" event.
	display string
}

type dissectorEntry struct {
	name   string
	first  Event
	events map[string]Event
	// lua marks a dissector written in Lua (haka.dissector.new), which
	// registers itself and its events while its set loads.
	lua bool
}

// registry holds the dissectors a rule set may hook. Each rule set has its
// own copy (a dissector written in Lua registers while its set loads), so
// it is never shared mutable state.
type registry struct {
	dissectors []*dissectorEntry
	byName     map[string]*dissectorEntry
	events     []eventInfo
}

func newRegistry(extra []Dissector) (*registry, error) {
	r := &registry{byName: make(map[string]*dissectorEntry)}
	if err := r.register(TLSDissector()); err != nil {
		return nil, err
	}
	for _, d := range extra {
		if err := r.register(d); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// register adds a dissector and numbers its events after those already
// registered.
func (r *registry) register(d Dissector) error {
	if !isIdent(d.Name) {
		return fmt.Errorf("dissector name %q is not an identifier", d.Name)
	}
	if _, dup := r.byName[d.Name]; dup {
		return fmt.Errorf("dissector %q is already registered", d.Name)
	}
	if len(r.events)+len(d.Events) > maxEvents {
		return fmt.Errorf("dissector %q: too many events (limit %d in all)", d.Name, maxEvents)
	}
	e := &dissectorEntry{name: d.Name, first: Event(len(r.events)), events: make(map[string]Event, len(d.Events))}
	for _, name := range d.Events {
		if !isIdent(name) {
			return fmt.Errorf("dissector %q: event name %q is not an identifier", d.Name, name)
		}
		if _, dup := e.events[name]; dup {
			return fmt.Errorf("dissector %q: event %q registered twice", d.Name, name)
		}
		ev := Event(len(r.events))
		e.events[name] = ev
		display := name
		if len(r.dissectors) > 0 {
			display = d.Name + "." + name
		}
		r.events = append(r.events, eventInfo{dissector: d.Name, name: name, display: display})
	}
	r.dissectors = append(r.dissectors, e)
	r.byName[d.Name] = e
	return nil
}

// registerLua adds a dissector written in Lua, without events yet: they
// come one by one (addEvent).
func (r *registry) registerLua(name string) (*dissectorEntry, error) {
	if err := r.register(Dissector{Name: name}); err != nil {
		return nil, err
	}
	d := r.byName[name]
	d.lua = true
	return d, nil
}

// addEvent adds an event to a dissector written in Lua.
func (r *registry) addEvent(d *dissectorEntry, name string) (Event, error) {
	if !isIdent(name) {
		return 0, fmt.Errorf("event name %q is not an identifier", name)
	}
	if _, dup := d.events[name]; dup {
		return 0, fmt.Errorf("event %q is already registered", name)
	}
	if len(r.events) >= maxEvents {
		return 0, fmt.Errorf("too many events (limit %d in all)", maxEvents)
	}
	ev := Event(len(r.events))
	d.events[name] = ev
	r.events = append(r.events, eventInfo{dissector: d.name, name: name, display: d.name + "." + name})
	return ev, nil
}

func (r *registry) lookup(dissector, event string) (Event, bool) {
	d, ok := r.byName[dissector]
	if !ok {
		return 0, false
	}
	ev, ok := d.events[event]
	return ev, ok
}

// isIdent reports whether s is a Lua identifier (and not a keyword), the
// form dissector and event names must have to be written d.events.name.
func isIdent(s string) bool {
	if s == "" || luaKeywords[s] {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

var luaKeywords = map[string]bool{
	"and": true, "break": true, "do": true, "else": true, "elseif": true, "end": true,
	"false": true, "for": true, "function": true, "if": true, "in": true, "local": true,
	"nil": true, "not": true, "or": true, "repeat": true, "return": true, "then": true,
	"true": true, "until": true, "while": true,
}
