package rules

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
)

// machineFile makes a rule file defining the dissector "ssl" with the
// events evs and the machine whose definition function's body is body
// (from line 4 of the file on), installed.
func machineFile(evs []string, body string) string {
	var b strings.Builder
	b.WriteString(`local ssl = haka.dissector.new{ name = "ssl" }` + "\n")
	var regs []string
	for _, e := range evs {
		regs = append(regs, `ssl:register_event("`+e+`")`)
	}
	b.WriteString(strings.Join(regs, " ") + "\n")
	b.WriteString(`ssl.states = haka.state_machine.new("ssl", function ()` + "\n")
	b.WriteString(body)
	b.WriteString("end)\nssl:install()\n")
	return b.String()
}

// A machine with mistakes is refused when it loads, every mistake at its
// file and line, as a rule would be.
func TestLuaMachineLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{
			name: "jump to a typo",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  client_hello_done = state(nil, tls.grammar.server_hello)
  hello:on{ event = events.up, jump = client_hello_dne }
  initial(hello)
`)},
			want: []string{`ssl.lua:7: jump to an undefined state "client_hello_dne" (did you mean "client_hello_done"?)`},
		},
		{
			name: "jump to a local that is not a state",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  local later
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, jump = "hello" }
  initial(hello)
`)},
			want: []string{`ssl.lua:7: jump must be a state, fail or finish, not a string`},
		},
		{
			name: "no initial state",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, jump = finish }
`)},
			want: []string{`ssl.lua:3: state machine "ssl": no initial state: call initial(st) in its definition`},
		},
		{
			name: "initial state undefined",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, jump = finish }
  initial(helo)
`)},
			want: []string{`ssl.lua:7: initial: "helo" is not a state of the machine (did you mean "hello"?)`},
		},
		{
			name: "trigger of an unregistered event",
			files: map[string]string{"ssl.lua": machineFile([]string{"client_hello"}, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up,
    execute = function (self, h) self:trigger("client_helo", h) end,
    jump = finish }
  initial(hello)
`)},
			want: []string{`ssl.lua:7: self:trigger("client_helo"): dissector ssl registers no event "client_helo" (did you mean "client_hello"?)`},
		},
		{
			name: "duplicate state",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  state(nil, tls.grammar.server_hello):name("hello")
  hello:on{ event = events.up, jump = finish }
  initial(hello)
`)},
			want: []string{`ssl.lua:6: state machine "ssl": state "hello": duplicate state (first at ssl.lua:5)`},
		},
		{
			name: "a state assigned twice",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello = state(nil, tls.grammar.server_hello)
  initial(hello)
`)},
			want: []string{`ssl.lua:6: state machine "ssl": state "hello": duplicate state (first at ssl.lua:5)`},
		},
		{
			name: "transition without execute or jump",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up }
  initial(hello)
`)},
			want: []string{`ssl.lua:6: state machine "ssl": state "hello": on up: transition needs execute or jump`},
		},
		{
			name: "mistakes in on{}",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.upp, jump = finish }
  hello:on{ evnet = events.up, jump = finish }
  hello:on{ event = events.up, when = true, jump = finish }
  hello:on{ jump = finish }
  initial(hello)
`)},
			want: []string{
				`ssl.lua:6: events.upp: no such field (did you mean "up"?)`,
			},
		},
		{
			name: "keys of on{}",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ evnet = events.up, jump = finish }
  hello:on{ event = events.up, when = true, jump = finish }
  hello:on{ jump = finish }
  hello:on{ event = events.leave, jump = finish }
  initial(hello)
`)},
			want: []string{
				`ssl.lua:6: on: unknown key "evnet" (did you mean "event"?); a transition takes event (or events), when, execute and jump`,
				`ssl.lua:7: on: when must be a function (self, ...) or a grammar element, not a boolean`,
				`ssl.lua:8: on: a transition needs an event: event = events.NAME or events = {...}`,
				`ssl.lua:9: state machine "ssl": state "hello": on leave: a transition on leave cannot jump: the instance is already leaving the state`,
			},
		},
		{
			name: "grammar elements",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_helo, nil)
  initial(hello)
`)},
			want: []string{`ssl.lua:5: tls.grammar.client_helo: no such field (did you mean "client_hello"?)`},
		},
		{
			name: "a sum whose second element never takes a unit",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.handshake + tls.grammar.certificate, nil)
  initial(hello)
`)},
			want: []string{`ssl.lua:5: tls.grammar.certificate after tls.grammar.handshake never takes a unit: the first element that takes a unit gives the result; put tls.grammar.certificate first`},
		},
		{
			name: "states set twice",
			files: map[string]string{"ssl.lua": machineFile(nil, "  hello = state(nil, nil)\n  initial(hello)\n") +
				`ssl.states = haka.state_machine.new("x", function () end)`},
			want: []string{`ssl.lua:8: ssl.states is set twice`},
		},
		{
			name: "an undefined name for an element",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(client_hello, 42)
  initial(hello)
`)},
			want: []string{
				`ssl.lua:5: the up grammar element is the undefined name "client_hello"`,
				`ssl.lua:5: state: the down grammar element must be nil or an element such as tls.grammar.client_hello, not a number`,
			},
		},
		{
			name: "a state without a name",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  local hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, jump = finish }
  initial(hello)
`)},
			want: []string{`ssl.lua:5: state without a name: assign it to a name of the machine (hello = state(...)) or name it (state(...):name("hello"))`},
		},
		{
			name: "State type takes no elements",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  state_type(State)
  hello = state(tls.grammar.client_hello, nil)
  initial(hello)
`)},
			want: []string{`ssl.lua:6: state: states of state_type(State) take no grammar element; use state_type(BidirectionalState)`},
		},
		{
			name: "bad timeout",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.timeout(0), jump = fail }
  initial(hello)
`)},
			want: []string{`ssl.lua:6: events.timeout(seconds): seconds must be a number above 0 and at most 86400, not 0`},
		},
		{
			name: "dissector mistakes",
			files: map[string]string{"ssl.lua": `
local tls2 = haka.dissector.new{ name = "tls" }
local ssl = haka.dissector.new{ name = "ssl", kind = "x" }
ssl:register_event("up")
ssl:register_event("not an ident")
ssl:install()
ssl.states = haka.state_machine.new("ssl", function () hello = state(nil, nil) initial(hello) end)
ssl:register_event("late")
ssl.states = 42
`},
			want: []string{
				`ssl.lua:2: haka.dissector.new: dissector "tls" is already registered`,
				`ssl.lua:3: haka.dissector.new: unknown key "kind"; a dissector takes a name`,
				`ssl.lua:4: ssl:register_event("up"): every state machine has an event of that name`,
				`ssl.lua:5: ssl:register_event: event name "not an ident" is not an identifier`,
				`ssl.lua:6: ssl:install: no state machine: set ssl.states = haka.state_machine.new(...) first`,
				`ssl.lua:8: ssl:register_event("late"): register events before setting ssl.states, whose definition uses them`,
				`ssl.lua:9: ssl.states must be a state machine, haka.state_machine.new(name, function () ... end), not a number`,
			},
		},
		{
			name: "a rule on an unregistered event",
			files: map[string]string{
				"a_ssl.lua": machineFile([]string{"client_hello"}, "  hello = state(nil, nil)\n  initial(hello)\n"),
				"b_rules.lua": `
haka.rule{ on = haka.dissectors.ssl.events.client_helo, eval = function (flow, hello) end }
`,
			},
			want: []string{`b_rules.lua:2: ssl.events.client_helo: no such field (did you mean "client_hello"?)`},
		},
		{
			name: "a rule before its dissector",
			files: map[string]string{
				"a_rules.lua": `haka.rule{ on = haka.dissectors.ssl.events.client_hello, eval = function (flow, hello) end }`,
				"b_ssl.lua":   machineFile([]string{"client_hello"}, "  hello = state(nil, nil)\n  initial(hello)\n"),
			},
			want: []string{`a_rules.lua:1: haka.dissectors.ssl: no such field`},
		},
		{
			name: "an error in the definition",
			files: map[string]string{"ssl.lua": machineFile(nil, `
  hello = state(nil, nil)
  error("definition broken")
`)},
			want: []string{`ssl.lua:6: definition broken`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tryHarness(tc.files, Options{PoolSize: 1})
			var les LoadErrors
			if !errors.As(err, &les) {
				t.Fatalf("loaded, want LoadErrors: %v", err)
			}
			got := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("no %q in:\n%s", w, got)
				}
			}
			for _, le := range les {
				if le.Line == 0 {
					t.Errorf("mistake without a line: %v", le)
				}
			}
		})
	}
}

// Suspicious but valid definitions load and are logged with their place:
// a state nothing jumps to, a machine no dissector runs, a dissector never
// installed.
func TestLuaMachineWarnings(t *testing.T) {
	h := newHarness(t, map[string]string{"ssl.lua": `
local ssl = haka.dissector.new{ name = "ssl" }
ssl.states = haka.state_machine.new("ssl", function ()
  hello = state(tls.grammar.client_hello, nil)
  orphan = state(nil, nil)
  hello:on{ event = events.up, jump = finish }
  initial(hello)
end)
ssl:install()
local spare = haka.state_machine.new("spare", function () end)
local idle = haka.dissector.new{ name = "idle" }
idle.states = haka.state_machine.new("idle", function () s = state(nil, nil) initial(s) end)
`}, Options{PoolSize: 2})
	got := strings.Join(messages(h.logs, zapcore.WarnLevel), "\n")
	for _, want := range []string{
		`rule set: state machine "ssl": state "orphan": unreachable from the initial state "hello" at=ssl.lua:5`,
		`rule set: state machine "spare" is not the states of any dissector: it never runs at=ssl.lua:10`,
		`rule set: dissector "idle" is never installed (idle:install()): its state machine never runs at=ssl.lua:11`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no warning %q in:\n%s", want, got)
		}
	}
	// Check reports them too, as mistakes.
	res, err := Check(Options{FS: ruleFS(map[string]string{"ssl.lua": `
local ssl = haka.dissector.new{ name = "ssl" }
ssl.states = haka.state_machine.new("ssl", function ()
  hello = state(tls.grammar.client_hello, nil)
  orphan = state(nil, nil)
  initial(hello)
end)
ssl:install()
`})})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) != 1 || res.Problems[0].Line != 5 || !strings.Contains(res.Problems[0].Msg, "unreachable") {
		t.Errorf("check: %v", res.Problems)
	}
}

// The example loads cleanly: no mistake, no warning, in every
// interpreter state of the set.
func TestExampleMachineChecks(t *testing.T) {
	res, err := Check(Options{Dir: exampleDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) > 0 {
		t.Fatalf("check: %v", res.Problems)
	}
	h := newHarness(t, nil, Options{Dir: exampleDir(t), PoolSize: 3})
	if ws := messages(h.logs, zapcore.WarnLevel); len(ws) > 0 {
		t.Errorf("warnings: %v", ws)
	}
	if ev, ok := h.Event("ssl", "heartbeat_in_handshake"); !ok || ev < Event(len(TLSDissector().Events)) {
		t.Errorf("ssl.heartbeat_in_handshake: %v %v", ev, ok)
	}
}
