package rules

import (
	"crypto/tls"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

// A Go function that panics under a function of a Lua machine is a panic
// (the proxy resets the connection, counts and logs it), as under a rule,
// and leaves the interpreter state unlocked for the connections that
// share it.
func TestLuaMachinePanic(t *testing.T) {
	h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) boom() end }
  initial(hello)
`, "", Options{})
	st := h.cur.Load().states[0]
	st.L.G.Global.RawSetString("boom", st.L.NewFunction(func(*lua.LState) int { panic("Go bug under a machine") }))
	ss := newSession(t, h, nil)
	var got any
	func() {
		defer func() { got = recover() }()
		ss.feed(tlsTranscript(t, tls.VersionTLS12)...)
	}()
	p, ok := got.(*PanicError)
	if !ok || p.Value != "Go bug under a machine" || !strings.HasPrefix(p.Rule, "ssl.lua:") {
		t.Fatalf("recovered %#v, want a *PanicError", got)
	}
	if !st.mu.TryLock() {
		t.Fatal("the panic left the state locked")
	}
	st.mu.Unlock()
}
