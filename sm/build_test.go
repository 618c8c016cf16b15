package sm_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

func nop(*I, E) {}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name   string
		define func(b *B)
		want   []string // every one must appear in the error
	}{
		{"no initial state", func(b *B) {
			b.State("a")
		}, []string{`state machine "m": no initial state`}},
		{"unknown initial state", func(b *B) {
			b.State("a")
			b.Initial("b")
		}, []string{`initial state "b" is not defined`}},
		{"initial set twice", func(b *B) {
			b.State("a")
			b.State("b")
			b.Initial("a")
			b.Initial("b")
		}, []string{`initial state set 2 times`}},
		{"duplicate state", func(b *B) {
			b.State("a").At("m.lua:3")
			b.State("a").At("m.lua:9")
			b.Initial("a")
		}, []string{`m.lua:9: state machine "m": state "a": duplicate state (first at m.lua:3)`}},
		{"reserved names", func(b *B) {
			b.State("a")
			b.State("fail")
			b.State("finish")
			b.State("any")
			b.Initial("a")
		}, []string{`state "fail": "fail" is reserved`, `state "finish": "finish" is reserved`, `state "any": "any" is reserved`}},
		{"empty state name", func(b *B) {
			b.State("a")
			b.State("").At("m.lua:4")
			b.Initial("a")
		}, []string{`m.lua:4: state machine "m": state with an empty name`}},
		{"jump to unknown state", func(b *B) {
			b.State("a").On(T{Event: sm.EvUp, Jump: "helo", Pos: "m.lua:7"})
			b.Initial("a")
		}, []string{`m.lua:7: state machine "m": state "a": on up: jump to unknown state "helo"`}},
		{"transition site defaults to the state's", func(b *B) {
			b.State("a").At("m.lua:2").On(T{Event: sm.EvUp, Jump: "nowhere"})
			b.Initial("a")
		}, []string{`m.lua:2: state machine "m": state "a": on up: jump to unknown state "nowhere"`}},
		{"any jumps to unknown state", func(b *B) {
			b.State("a")
			b.Any().On(T{Event: sm.EvMissingGrammar, Jump: "nowhere"})
			b.Initial("a")
		}, []string{`state "any": on missing_grammar: jump to unknown state "nowhere"`}},
		{"transition without event", func(b *B) {
			b.State("a").On(T{Jump: "a", Pos: "m.lua:5"})
			b.Initial("a")
		}, []string{`m.lua:5: state machine "m": state "a": transition without an event`}},
		{"transition without execute or jump", func(b *B) {
			b.State("a").On(T{Event: sm.EvDown})
			b.Initial("a")
		}, []string{`state "a": on down: transition needs execute or jump`}},
		{"unknown event ID", func(b *B) {
			b.State("a").On(T{Event: 999, Execute: nop})
			b.Initial("a")
		}, []string{`state "a": on event(999): unknown event`}},
		{"event listed twice", func(b *B) {
			b.State("a").On(T{Event: sm.EvUp, Events: []sm.EventID{sm.EvUp}, Execute: nop})
			b.Initial("a")
		}, []string{`state "a": on up: event listed twice in one transition`}},
		{"jump on leave, fail, finish", func(b *B) {
			b.State("a").On(T{Event: sm.EvLeave, Jump: "a"})
			b.Any().On(T{Events: []sm.EventID{sm.EvFail}, Jump: "a"})
			b.Any().On(T{Event: sm.EvFinish, Jump: sm.Fail})
			b.Initial("a")
		}, []string{
			`state "a": on leave: a transition on leave cannot jump`,
			`state "any": on fail: a transition on fail cannot jump`,
			`state "any": on finish: a transition on finish cannot jump`,
		}},
		{"event registered twice", func(b *B) {
			b.RegisterEvent("client_hello")
			b.RegisterEvent("client_hello")
			b.State("a")
			b.Initial("a")
		}, []string{`on client_hello: event "client_hello" registered twice`}},
		{"event named like a base event", func(b *B) {
			b.RegisterEvent("up")
			b.State("a")
			b.Initial("a")
		}, []string{`on up: event "up" registered twice`}},
		{"timeout not positive", func(b *B) {
			b.State("a").On(T{Event: b.Timeout(0), Execute: nop})
			b.Initial("a")
		}, []string{`on timeout(0s): timeout must be positive`}},
		{"element without parse", func(b *B) {
			b.BidirectionalState("a", &El{Name: "x"}, nil)
			b.Initial("a")
		}, []string{`state "a": up grammar element "x" needs a name and a Parse function`}},
		{"everything at once", func(b *B) {
			b.State("a").On(T{Event: sm.EvUp, Jump: "b"})
			b.State("a")
		}, []string{`no initial state`, `jump to unknown state "b"`, `duplicate state`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := sm.NewBuilder[*rec, string, string]("m")
			tc.define(b)
			m, err := b.Build()
			if err == nil {
				t.Fatalf("Build succeeded (%v), want an error", m.States())
			}
			var de *sm.DefinitionError
			if !errors.As(err, &de) {
				t.Errorf("error %T is no *DefinitionError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestBuildEmptyMachineName(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("")
	b.State("a")
	b.Initial("a")
	if _, err := b.Build(); err == nil || !strings.Contains(err.Error(), "machine with an empty name") {
		t.Fatalf("Build: %v, want an empty name error", err)
	}
}

func TestWarnings(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a").On(T{Event: sm.EvEnter, Jump: "b"})
	b.BidirectionalState("b", element("x"), nil).On(T{Event: sm.EvUp, Jump: "c"})
	b.State("c")
	b.State("recovery")             // reached by any's jump only
	b.State("orphan").At("m.lua:9") // reached by nothing
	b.State("island").On(T{Event: sm.EvDown, Jump: "orphan", Pos: "m.lua:12"})
	b.Any().On(T{Event: sm.EvMissingGrammar, Jump: "recovery"})
	b.Initial("a")
	m := build(t, b)
	var got []string
	for _, w := range m.Warnings() {
		got = append(got, w.String())
	}
	want := []string{
		`m.lua:9: state "orphan": unreachable from the initial state "a"`,
		`state "island": unreachable from the initial state "a"`,
		`m.lua:12: state "island": transition on down never runs: the state has no down grammar element`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMachineIntrospection(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	hello := b.RegisterEvent("client_hello")
	idle := b.Timeout(10 * time.Second)
	if again := b.Timeout(10 * time.Second); again != idle {
		t.Errorf("Timeout(10s) twice: %d then %d, want one event", idle, again)
	}
	if id, ok := b.Event("client_hello"); !ok || id != hello {
		t.Errorf("Builder.Event(client_hello) = %d, %v", id, ok)
	}
	b.State("a").On(T{Event: idle, Jump: sm.Finish})
	b.State("b")
	b.Initial("b")
	m := build(t, b)
	if m.Name() != "m" || m.Initial() != "b" || strings.Join(m.States(), ",") != "a,b" {
		t.Errorf("Name, Initial, States = %q, %q, %q", m.Name(), m.Initial(), m.States())
	}
	if id, ok := m.Event("up"); !ok || id != sm.EvUp {
		t.Errorf("Event(up) = %d, %v", id, ok)
	}
	if _, ok := m.Event("timeout(10s)"); ok {
		t.Errorf("timeouts are not looked up by name")
	}
	if m.EventName(hello) != "client_hello" || m.EventName(idle) != "timeout(10s)" || m.EventName(sm.EvParseError) != "parse_error" {
		t.Errorf("EventName: %q %q %q", m.EventName(hello), m.EventName(idle), m.EventName(sm.EvParseError))
	}
	evs := m.Events()
	last := evs[len(evs)-1]
	if len(evs) != int(idle) || last.ID != idle || last.Kind != sm.TimeoutEvent || last.Timeout != 10*time.Second {
		t.Errorf("Events() ends with %+v (%d events)", last, len(evs))
	}
	if evs[hello-1].Kind != sm.UserEvent || evs[0].Name != "init" || evs[0].Kind != sm.BaseEvent {
		t.Errorf("Events(): %+v", evs)
	}
}

func TestBuilderReuse(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a")
	b.Initial("a")
	m := build(t, b)
	b.State("b")
	if got := m.States(); len(got) != 1 {
		t.Errorf("a machine changed with its builder: %q", got)
	}
}
