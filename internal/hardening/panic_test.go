package hardening

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
)

// panicking is the handler of a connection whose rule evaluation panics
// on an event: what a bug in the inspector's path looks like to the
// proxy.
type panicking struct {
	tlssm.Handler
	on tlssm.EventID
}

func (p panicking) Event(ev *tlssm.Event) inspect.Decision {
	if ev.ID == p.on {
		panic("inspector bug on " + tlssm.Events[ev.ID].Name)
	}
	return p.Handler.Event(ev)
}

// A panic in the inspector's path (here, the handler of one connection on
// its ClientHello) is recovered: counted, logged with its stack, the
// connection reset; everything the connection held is released and the
// others are served.
func TestPanicInInspector(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{Wrap: func(fl *inspect.Flow, h tlssm.Handler) tlssm.Handler {
		if fl.Src.Addr() == srcFault {
			return panicking{Handler: h, on: tlssm.EvClientHello}
		}
		return h
	}})
	during(t, r, func() {
		_, reset := helloExchange(t, r, srcFault, "localhost")
		if !reset {
			t.Error("the client was not reset")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "reset" || rec.Rule != proxy.RulePanic || !strings.Contains(rec.Reason, "inspector bug on client_hello") {
			t.Errorf("record %+v", rec)
		}
		line := r.logs.wait(t, "the panic's log line", 1, isMsg("panic in a connection; resetting it"))[0]
		if s, _ := line["stack"].(string); !strings.Contains(s, "hardening.panicking.Event") {
			t.Errorf("the stack does not show where it panicked:\n%s", s)
		}
	})
	if v := metric(r.metrics.Panics); v != 1 {
		t.Errorf("haka_proxy_panics_total %v", v)
	}
}

// boom is a rule parameter one of whose fields is computed by a Go
// function that panics, as a field of the TLS adapter's objects would on
// a bug.
var boom = rules.NewObject("boom", map[string]func(*lua.LState, *struct{}) lua.LValue{
	"value": func(*lua.LState, *struct{}) lua.LValue { panic("Go bug under a rule") },
})

// evalBoom is the handler of a connection whose ClientHello event gives
// the rules the boom object instead of the hello.
type evalBoom struct{ *rules.TLSHandler }

func (e evalBoom) Event(ev *tlssm.Event) inspect.Decision {
	if ev.ID != tlssm.EvClientHello {
		return e.TLSHandler.Event(ev)
	}
	return e.Flow().Eval(rules.TLS(ev.ID), func(L *lua.LState) lua.LValue { return boom.Value(L, &struct{}{}) })
}

// A Go function that panics while a rule runs (a rule reading a field
// whose Go code panics) is a bug, not a rule error: the connection is
// reset and the panic counted and logged with its stack, as anywhere else
// in a connection's path; the rule's interpreter state stays usable for
// the others.
func TestPanicUnderRule(t *testing.T) {
	const reader = `haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, p)
    if flow.src_ip == "127.0.0.2" then
      return p.value
    end
  end,
}
`
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{
		Rules: withStock(t, map[string]string{"reader.lua": reader}),
		Wrap: func(fl *inspect.Flow, h tlssm.Handler) tlssm.Handler {
			if fl.Src.Addr() == srcFault {
				return evalBoom{h.(*rules.TLSHandler)}
			}
			return h
		},
	})
	during(t, r, func() {
		_, reset := helloExchange(t, r, srcFault, "localhost")
		if !reset {
			t.Error("the client was not reset")
		}
		// Connections take the rule set's interpreter states in turn
		// (GOMAXPROCS × 4 of them by default): the one the panic went
		// through serves the next ones too.
		for i := range 2 * 4 * runtime.GOMAXPROCS(0) {
			if err := exchange(r.addr, srcBackground, f, rand.New(rand.NewPCG(uint64(i), 0))); err != nil {
				t.Fatalf("exchange %d after the panic: %v", i, err)
			}
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "reset" || rec.Rule != proxy.RulePanic || !strings.Contains(rec.Reason, "Go bug under a rule") {
			t.Errorf("record %+v", rec)
		}
		line := r.logs.wait(t, "the panic's log line", 1, isMsg("panic in a connection; resetting it"))[0]
		if s, _ := line["panic"].(string); !strings.Contains(s, "reader.lua:1") || !strings.Contains(s, "Go bug under a rule") {
			t.Errorf("the panic does not name the rule: %s", s)
		}
		// Where it panicked, which the interpreter's recovery unwound,
		// is in the rule engine's line.
		line = r.logs.wait(t, "the rule engine's log line", 1, isMsg("panic in Go code under a rule"))[0]
		if s, _ := line["stack"].(string); !strings.Contains(s, "internal/hardening.") {
			t.Errorf("the stack does not show the Go function that panicked:\n%s", s)
		}
	})
	if v := metric(r.metrics.Panics); v != 1 {
		t.Errorf("haka_proxy_panics_total %v", v)
	}
}

// panicOnATimer is an inspector factory whose inspectors, for the clients
// on srcFault, panic on a timer of their own shortly after the accept and
// report it as the contract says: kill with inspect.RulePanic, from the
// deferred function that recovered it. The TLS machine does so for its
// handshake timer.
type panicOnATimer struct{ inspect.Factory }

func (f panicOnATimer) New(fl *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	insp, d := f.Factory.New(fl, kill)
	if fl.Src.Addr() == srcFault {
		time.AfterFunc(10*time.Millisecond, func() {
			defer func() {
				if r := recover(); r != nil {
					kill(inspect.Decision{Verdict: inspect.Reset, Reason: fmt.Sprintf("panic: %v", r), Rule: inspect.RulePanic})
				}
			}()
			timerBug()
		})
	}
	return insp, d
}

//go:noinline
func timerBug() { panic("bug on a timer") }

// An inspector's panic on a goroutine of its own, reported through kill,
// is counted, logged with the stack of where it panicked, and resets the
// connection.
func TestPanicOnInspectorTimer(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{WrapFactory: func(f inspect.Factory) inspect.Factory { return panicOnATimer{f} }})
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		if _, reset := expectClosed(t, c); !reset {
			t.Error("the client was not reset")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "reset" || rec.Rule != proxy.RulePanic || rec.Reason != "panic: bug on a timer" {
			t.Errorf("record %+v", rec)
		}
		line := r.logs.wait(t, "the panic's log line", 1, isMsg("panic in a connection; resetting it"))[0]
		if s, _ := line["stack"].(string); !strings.Contains(s, "hardening.timerBug") {
			t.Errorf("the stack does not show where it panicked:\n%s", s)
		}
	})
	if v := metric(r.metrics.Panics); v != 1 {
		t.Errorf("haka_proxy_panics_total %v", v)
	}
}
