package rules_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/rulescmd"
)

// `haka-proxy rules check DIR` reports the mistakes of a Lua machine at
// their file and line and fails; the example machine checks clean.
func TestRulesCheckLuaMachines(t *testing.T) {
	bad := t.TempDir()
	files := map[string]string{
		"a_ssl.lua": `local ssl = haka.dissector.new{ name = "ssl" }
ssl:register_event("client_hello")
ssl.states = haka.state_machine.new("ssl", function ()
  hello = state(tls.grammar.client_hello, nil)
  client_hello_done = state(nil, tls.grammar.server_hello)
  orphan = state(nil, nil)
  hello:on{ event = events.up, execute = function (self, h) self:trigger("client_helo", h) end, jump = client_hello_dne }
  client_hello_done:on{ event = events.down, jump = finish }
end)
ssl:install()
`,
		"b_rules.lua": `haka.rule{ on = haka.dissectors.ssl.events.server_hello, eval = function (flow, hello) end }
`,
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(bad, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out, errOut bytes.Buffer
	err := rulescmd.CheckRun(&rulescmd.CheckOptions{Dir: bad, Out: &out, ErrOut: &errOut})
	if err == nil {
		t.Fatalf("check passed:\n%s", out.String())
	}
	got := errOut.String()
	for _, want := range []string{
		filepath.Join(bad, "a_ssl.lua") + `:3: state machine "ssl": no initial state: call initial(st) in its definition`,
		filepath.Join(bad, "a_ssl.lua") + `:7: self:trigger("client_helo"): dissector ssl registers no event "client_helo" (did you mean "client_hello"?)`,
		filepath.Join(bad, "a_ssl.lua") + `:7: jump to an undefined state "client_hello_dne" (did you mean "client_hello_done"?)`,
		filepath.Join(bad, "b_rules.lua") + `:1: ssl.events.server_hello: no such field`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "undefined global") {
		t.Errorf("a mistake reported twice:\n%s", got)
	}

	good := t.TempDir()
	src, err := os.ReadFile("examples/ssl_state_machine.lua")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(good, "ssl_state_machine.lua"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if err := rulescmd.CheckRun(&rulescmd.CheckOptions{Dir: good, Out: &out, ErrOut: &errOut}); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if want := good + ": 4 rules in 1 files, no mistakes\n"; out.String() != want {
		t.Errorf("check said %q, want %q", out.String(), want)
	}
}
