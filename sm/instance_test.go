package sm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/sm"
)

// TestTransitionSearch: the state's transitions in declaration order, then
// any's; the first whose guard passes runs, and only it.
func TestTransitionSearch(t *testing.T) {
	tests := []struct {
		name   string
		define func(b *B, ev sm.EventID)
		param  string
		want   []string
	}{
		{"declaration order", func(b *B, ev sm.EventID) {
			b.State("a").
				On(T{Event: ev, Execute: note("first")}).
				On(T{Event: ev, Execute: note("second")})
		}, "", []string{"first:ping"}},
		{"guard rejection falls through", func(b *B, ev sm.EventID) {
			b.State("a").
				On(T{Event: ev, When: is("x"), Execute: note("x")}).
				On(T{Event: ev, When: is("y"), Execute: note("y")}).
				On(T{Event: ev, Execute: note("other")})
		}, "y", []string{"y:ping"}},
		{"no guard passes: any", func(b *B, ev sm.EventID) {
			b.State("a").On(T{Event: ev, When: is("x"), Execute: note("x")})
			b.Any().On(T{Event: ev, Execute: note("any")})
		}, "z", []string{"any:ping"}},
		{"state before any", func(b *B, ev sm.EventID) {
			b.Any().On(T{Event: ev, Execute: note("any")})
			b.State("a").On(T{Event: ev, Execute: note("state")})
		}, "", []string{"state:ping"}},
		{"any in declaration order with guards", func(b *B, ev sm.EventID) {
			b.State("a").On(T{Event: sm.EvUp, Execute: note("other event")})
			b.Any().On(T{Event: ev, When: is("x"), Execute: note("any x")})
			b.Any().On(T{Event: ev, Execute: note("any")})
		}, "x", []string{"any x:ping"}},
		{"transition on several events", func(b *B, ev sm.EventID) {
			b.State("a").On(T{Event: sm.EvUp, Events: []sm.EventID{ev}, Execute: note("multi")})
		}, "", []string{"multi:ping"}},
		{"nothing matches: nothing happens", func(b *B, ev sm.EventID) {
			b.State("a").On(T{Event: ev, When: is("x"), Execute: note("x")})
		}, "z", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := sm.NewBuilder[*rec, string, string]("m")
			ping := b.RegisterEvent("ping")
			tc.define(b, ping)
			b.Initial("a")
			r := &rec{}
			in := build(t, b).New(r, t0)
			if err := in.Trigger(ping, tc.param); err != nil {
				t.Fatal(err)
			}
			wantLog(t, r, tc.want...)
			if in.Finished() || in.State() != "a" {
				t.Errorf("after: finished %v, state %q", in.Finished(), in.State())
			}
		})
	}
}

func TestJumpRunsLeaveThenEnter(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	ping := b.RegisterEvent("ping")
	logEnterLeave(b)
	b.State("a").On(T{Event: ping, Execute: note("exec"), Jump: "b"})
	b.State("b").
		On(T{Event: sm.EvEnter, Execute: note("b's own")}). // shadows any's enter
		On(T{Event: ping, Jump: "b"})                       // a self-jump is a state change
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	wantLog(t, r, "enter a")
	in.Trigger(ping, "")
	wantLog(t, r, "exec:ping", "leave a", "b's own:enter")
	in.Trigger(ping, "")
	wantLog(t, r, "leave b", "b's own:enter")
	if in.State() != "b" {
		t.Errorf("state %q, want b", in.State())
	}
}

func TestInit(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	logEnterLeave(b)
	b.State("a").On(T{Event: sm.EvInit, Execute: note("a"), Jump: "b"})
	b.State("b").On(T{Event: sm.EvInit, Execute: note("b")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	// Haka's order: the initial state is entered, then init runs once.
	wantLog(t, r, "enter a", "a:init", "leave a", "enter b")
	if in.State() != "b" {
		t.Errorf("state %q, want b", in.State())
	}
}

func TestEnterJumps(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	ping := b.RegisterEvent("ping")
	logEnterLeave(b)
	b.State("a").On(T{Event: ping, Jump: "transient"})
	b.State("transient").On(T{Event: sm.EvEnter, Jump: "c"})
	b.State("c")
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	r.log = nil
	in.Trigger(ping, "")
	// transient's own enter shadows any's: it does not log.
	wantLog(t, r, "leave a", "leave transient", "enter c")
	if in.State() != "c" {
		t.Errorf("state %q, want c", in.State())
	}
}

func TestEnterJumpLoopFails(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a").On(T{Event: sm.EvEnter, Jump: "b"})
	b.State("b").On(T{Event: sm.EvEnter, Jump: "a", Pos: "m.lua:3"})
	b.Initial("a")
	in := build(t, b).New(&rec{}, t0)
	if !in.Failed() || !errors.Is(in.Reason(), sm.ErrJumpLoop) {
		t.Fatalf("failed %v, reason %v; want ErrJumpLoop", in.Failed(), in.Reason())
	}
}

// endingMachine is the machine of the ending tests: a --ping--> b, with every
// action logged.
func endingMachine(t *testing.T, stateFail bool) (*I, *rec, sm.EventID, sm.EventID) {
	b := sm.NewBuilder[*rec, string, string]("m")
	ping := b.RegisterEvent("ping")
	stop := b.RegisterEvent("stop")
	logEnterLeave(b)
	a := b.State("a").
		On(T{Event: ping, When: is("fail"), Jump: sm.Fail, Pos: "m.lua:4"}).
		On(T{Event: ping, When: is("finish"), Jump: sm.Finish}).
		On(T{Event: stop, Execute: note("stop")})
	if stateFail {
		a.On(T{Event: sm.EvFail, Execute: note("a's fail")})
	}
	b.Any().On(T{Event: sm.EvFail, Execute: note("any's fail")})
	b.Any().On(T{Event: sm.EvFinish, Execute: func(in *I, ev E) {
		in.Context().add("finish " + in.State() + " failed=" + map[bool]string{true: "yes", false: "no"}[ev.Err != nil])
	}})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	r.log = nil
	return in, r, ping, stop
}

func TestJumpToFail(t *testing.T) {
	for _, stateFail := range []bool{true, false} {
		in, r, ping, _ := endingMachine(t, stateFail)
		if err := in.Trigger(ping, "fail"); err != nil {
			t.Fatal(err)
		}
		failAction := "any's fail:fail"
		if stateFail {
			failAction = "a's fail:fail" // the state's own, and then not any's
		}
		wantLog(t, r, failAction, "leave a", "finish a failed=yes")
		if !in.Failed() || !in.Finished() || in.State() != "fail" {
			t.Errorf("failed %v, finished %v, state %q", in.Failed(), in.Finished(), in.State())
		}
		var fe *sm.FailError
		if !errors.As(in.Reason(), &fe) || fe.State != "a" || fe.Event != "ping" || fe.Pos != "m.lua:4" || !errors.Is(fe, sm.ErrJumpedToFail) {
			t.Errorf("reason %#v", in.Reason())
		}
		if got, want := in.Reason().Error(), `state machine "m": state "a": on ping (m.lua:4): jump to fail`; got != want {
			t.Errorf("reason:\n got  %s\n want %s", got, want)
		}
	}
}

func TestJumpToFinish(t *testing.T) {
	in, r, ping, _ := endingMachine(t, true)
	in.Trigger(ping, "finish")
	wantLog(t, r, "leave a", "finish a failed=no")
	if in.Failed() || !in.Finished() || in.State() != "finish" || in.Reason() != nil {
		t.Errorf("failed %v, finished %v, state %q, reason %v", in.Failed(), in.Finished(), in.State(), in.Reason())
	}
}

func TestOwnerFailAndFinish(t *testing.T) {
	in, r, _, _ := endingMachine(t, false)
	cause := errors.New("rule said drop")
	if err := in.Fail(cause); err != nil {
		t.Fatal(err)
	}
	wantLog(t, r, "any's fail:fail", "leave a", "finish a failed=yes")
	if !errors.Is(in.Reason(), cause) || in.Reason().Error() != `state machine "m": state "a": rule said drop` {
		t.Errorf("reason %v", in.Reason())
	}

	in, r, _, _ = endingMachine(t, false)
	if err := in.Finish(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, r, "leave a", "finish a failed=no")

	in, _, _, _ = endingMachine(t, false)
	in.Fail(nil)
	if !errors.Is(in.Reason(), sm.ErrFailed) {
		t.Errorf("Fail(nil): reason %v", in.Reason())
	}
}

func TestEventAfterEndIsAnError(t *testing.T) {
	for _, end := range []string{"fail", "finish"} {
		in, r, ping, stop := endingMachine(t, false)
		in.Trigger(ping, end)
		r.log = nil
		calls := map[string]error{
			"Trigger": in.Trigger(stop, ""),
			"Feed":    in.Feed(sm.Up, "x", t0),
			"Advance": in.Advance(t0),
			"Fail":    in.Fail(errors.New("again")),
			"Finish":  in.Finish(),
		}
		for name, err := range calls {
			if !errors.Is(err, sm.ErrFinished) {
				t.Errorf("after %s: %s returned %v, want ErrFinished", end, name, err)
			}
		}
		wantLog(t, r)
		if _, ok := in.NextDeadline(); ok {
			t.Errorf("a finished instance has a deadline")
		}
	}
}

func TestFeedDispatch(t *testing.T) {
	hello, server := element("hello"), element("server")
	tests := []struct {
		name       string
		up, down   *El
		dir        sm.Direction
		unit       string
		handled    bool // transitions on up, down, parse_error, missing_grammar
		want       []string
		wantFailed error // nil: not failed
	}{
		{"up element matches", hello, server, sm.Up, "helloworld", true, []string{"up up helloworld->world"}, nil},
		{"down element matches", hello, server, sm.Down, "serverX", true, []string{"down down serverX->X"}, nil},
		{"up element rejects", hello, server, sm.Up, "garbage", true, []string{"parse_error up garbage: not mine"}, nil},
		{"down element rejects", hello, server, sm.Down, "hello", true, []string{"parse_error down hello: not mine"}, nil},
		{"no element for down", hello, nil, sm.Down, "stray", true, []string{"missing_grammar down stray: no grammar element for down"}, nil},
		{"no element at all", nil, nil, sm.Up, "stray", true, []string{"missing_grammar up stray: no grammar element for up"}, nil},
		{"unhandled parse_error fails", hello, server, sm.Up, "garbage", false, nil, errNotMine},
		{"unhandled missing_grammar fails", hello, nil, sm.Down, "stray", false, nil, sm.ErrNoGrammar},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := sm.NewBuilder[*rec, string, string]("m")
			s := b.BidirectionalState("a", tc.up, tc.down)
			if tc.handled {
				s.On(T{Events: []sm.EventID{sm.EvUp, sm.EvDown, sm.EvParseError, sm.EvMissingGrammar}, Execute: func(in *I, ev E) {
					msg := in.Machine().EventName(ev.ID) + " " + ev.Dir.String() + " " + ev.Unit
					if ev.Err != nil {
						msg += ": " + ev.Err.Error()
					} else {
						msg += "->" + ev.Param
					}
					in.Context().add(msg)
				}})
			}
			b.Initial("a")
			r := &rec{}
			in := build(t, b).New(r, t0)
			if err := in.Feed(tc.dir, tc.unit, t0); err != nil {
				t.Fatal(err)
			}
			wantLog(t, r, tc.want...)
			if tc.wantFailed == nil {
				if in.Failed() {
					t.Errorf("failed: %v", in.Reason())
				}
				return
			}
			var fe *sm.FailError
			if !in.Failed() || !errors.Is(in.Reason(), tc.wantFailed) || !errors.As(in.Reason(), &fe) || fe.State != "a" {
				t.Errorf("failed %v, reason %v; want %v", in.Failed(), in.Reason(), tc.wantFailed)
			}
		})
	}
}

func TestFeedInvalidDirection(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a")
	b.Initial("a")
	in := build(t, b).New(&rec{}, t0)
	if err := in.Feed(2, "x", t0); !errors.Is(err, sm.ErrDirection) {
		t.Errorf("Feed(2): %v, want ErrDirection", err)
	}
}

func TestUserEvents(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	hello := b.RegisterEvent("client_hello")
	hb := b.RegisterEvent("heartbeat")
	b.Hook(func(in *I, ev E) {
		in.Context().add("hook " + in.Machine().EventName(ev.ID) + "(" + ev.Param + ") in " + in.State())
	})
	b.State("a").On(T{Event: hello, Execute: note("transition"), Jump: "b"})
	b.State("b")
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	in.Trigger(hello, "example.com")
	in.Trigger(hb, "overflow")
	wantLog(t, r, "hook client_hello(example.com) in a", "transition:client_hello", "hook heartbeat(overflow) in b")

	for _, id := range []sm.EventID{0, sm.EvUp, sm.EvFail, 999} {
		if err := in.Trigger(id, ""); !errors.Is(err, sm.ErrNotUserEvent) {
			t.Errorf("Trigger(%v): %v, want ErrNotUserEvent", id, err)
		}
	}
}

func TestReentrancy(t *testing.T) {
	t.Run("an event raised by an action runs after the step, in the new state", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		pong := b.RegisterEvent("pong")
		logEnterLeave(b)
		b.Hook(func(in *I, ev E) { in.Context().add("hook " + in.Machine().EventName(ev.ID) + " in " + in.State()) })
		b.State("a").
			On(T{Event: ping, Execute: func(in *I, _ E) {
				in.Context().add("ping action")
				if err := in.Trigger(pong, ""); err != nil {
					t.Error(err)
				}
				in.Context().add("ping action returns")
			}, Jump: "b"}).
			On(T{Event: pong, Execute: note("a")})
		b.State("b").On(T{Event: pong, Execute: note("b")})
		b.Initial("a")
		r := &rec{}
		in := build(t, b).New(r, t0)
		r.log = nil
		in.Trigger(ping, "")
		wantLog(t, r, "hook ping in a", "ping action", "hook pong in a", "ping action returns",
			"leave a", "enter b", "b:pong")
	})

	t.Run("events raised in one step run first in, first out", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		e1 := b.RegisterEvent("e1")
		e2 := b.RegisterEvent("e2")
		e3 := b.RegisterEvent("e3")
		b.State("a").
			On(T{Event: ping, Execute: func(in *I, ev E) {
				in.Context().add("ping")
				in.Trigger(e1, "")
				in.Trigger(e2, "")
			}}).
			On(T{Event: e1, Execute: func(in *I, ev E) {
				in.Context().add("e1")
				in.Trigger(e3, "")
			}}).
			On(T{Events: []sm.EventID{e2, e3}, Execute: note("a")})
		b.Initial("a")
		r := &rec{}
		in := build(t, b).New(r, t0)
		in.Trigger(ping, "")
		wantLog(t, r, "ping", "e1", "a:e2", "a:e3")
	})

	t.Run("a step that raises too many events fails the instance", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		e := b.RegisterEvent("e")
		var last error
		b.State("a").
			On(T{Event: ping, Execute: func(in *I, _ E) {
				for range sm.MaxPending + 1 {
					last = in.Trigger(e, "")
				}
			}}).
			On(T{Event: e, Execute: note("e")})
		b.Initial("a")
		r := &rec{}
		in := build(t, b).New(r, t0)
		in.Trigger(ping, "")
		if !errors.Is(last, sm.ErrQueueFull) || !errors.Is(in.Reason(), sm.ErrQueueFull) {
			t.Errorf("last Trigger: %v, reason %v; want ErrQueueFull", last, in.Reason())
		}
		wantLog(t, r) // the queued steps were dropped with the instance
	})

	t.Run("an event that raises itself fails the instance", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		again := b.RegisterEvent("again")
		n := 0
		b.State("a").On(T{Event: again, Execute: func(in *I, _ E) {
			n++
			in.Trigger(again, "")
		}})
		b.Initial("a")
		in := build(t, b).New(&rec{}, t0)
		in.Trigger(again, "")
		// The first step is the owner's; the queue runs MaxQueuedSteps.
		if n != sm.MaxQueuedSteps+1 || !errors.Is(in.Reason(), sm.ErrEventLoop) {
			t.Errorf("%d steps, reason %v; want %d, ErrEventLoop", n, in.Reason(), sm.MaxQueuedSteps+1)
		}
	})

	t.Run("Fail from an action replaces the jump", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		logEnterLeave(b)
		b.State("a").On(T{Event: ping, Execute: func(in *I, _ E) {
			if err := in.Fail(errors.New("verdict")); err != nil {
				t.Error(err)
			}
			in.Context().add("action goes on")
		}, Jump: "b"})
		b.State("b")
		b.Any().On(T{Event: sm.EvFail, Execute: note("fail")})
		b.Initial("a")
		r := &rec{}
		in := build(t, b).New(r, t0)
		r.log = nil
		in.Trigger(ping, "")
		wantLog(t, r, "action goes on", "fail:fail", "leave a")
		if fe := (*sm.FailError)(nil); !errors.As(in.Reason(), &fe) || fe.Event != "ping" || fe.Err.Error() != "verdict" {
			t.Errorf("reason %v", in.Reason())
		}
	})

	t.Run("Finish from an action, and Fail after it wins", func(t *testing.T) {
		for _, alsoFail := range []bool{false, true} {
			b := sm.NewBuilder[*rec, string, string]("m")
			ping := b.RegisterEvent("ping")
			b.State("a").On(T{Event: ping, Execute: func(in *I, _ E) {
				in.Finish()
				if alsoFail {
					in.Fail(nil)
				}
			}, Jump: "b"})
			b.State("b")
			b.Initial("a")
			in := build(t, b).New(&rec{}, t0)
			in.Trigger(ping, "")
			if !in.Finished() || in.Failed() != alsoFail {
				t.Errorf("alsoFail %v: finished %v, failed %v", alsoFail, in.Finished(), in.Failed())
			}
		}
	})

	t.Run("Feed and Advance from inside are errors", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		var in *I
		var errs []error
		b.Hook(func(in *I, _ E) { errs = append(errs, in.Feed(sm.Up, "x", t0)) })
		el := &El{Name: "x", Parse: func(*rec, sm.Direction, string) (string, error) {
			errs = append(errs, in.Feed(sm.Up, "x", t0), in.Advance(t0))
			return "", nil
		}}
		b.BidirectionalState("a", el, nil).
			On(T{Event: ping, Execute: func(in *I, _ E) {
				errs = append(errs, in.Feed(sm.Up, "x", t0), in.Advance(t0))
			}}).
			On(T{Event: sm.EvUp, Execute: nop})
		b.Initial("a")
		in = build(t, b).New(&rec{}, t0)
		in.Trigger(ping, "")
		in.Feed(sm.Up, "x", t0)
		if len(errs) != 5 {
			t.Fatalf("%d calls, want 5", len(errs))
		}
		for i, err := range errs {
			if !errors.Is(err, sm.ErrReentrant) {
				t.Errorf("call %d: %v, want ErrReentrant", i, err)
			}
		}
		if in.Finished() {
			t.Errorf("finished: %v", in.Reason())
		}
	})

	t.Run("guards may only look", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		var errs []error
		b.State("a").On(T{Event: ping, When: func(in *I, _ E) bool {
			errs = append(errs, in.Trigger(ping, ""), in.Fail(nil), in.Finish(), in.Feed(sm.Up, "", t0))
			return true
		}, Execute: nop})
		b.Initial("a")
		in := build(t, b).New(&rec{}, t0)
		in.Trigger(ping, "")
		want := []error{sm.ErrInGuard, sm.ErrInGuard, sm.ErrInGuard, sm.ErrReentrant}
		for i, err := range errs {
			if !errors.Is(err, want[i]) {
				t.Errorf("call %d from a guard: %v, want %v", i, err, want[i])
			}
		}
		if in.Finished() {
			t.Errorf("a guard ended the instance")
		}
	})

	t.Run("hooks that recurse fail the instance", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		ping := b.RegisterEvent("ping")
		depth := 0
		b.Hook(func(in *I, _ E) {
			depth++
			in.Trigger(ping, "")
		})
		b.State("a")
		b.Initial("a")
		in := build(t, b).New(&rec{}, t0)
		if err := in.Trigger(ping, ""); err != nil {
			t.Fatal(err)
		}
		if depth != sm.MaxHookDepth || !errors.Is(in.Reason(), sm.ErrTooDeep) {
			t.Errorf("depth %d, reason %v; want %d, ErrTooDeep", depth, in.Reason(), sm.MaxHookDepth)
		}
	})

	t.Run("events raised while ending reach the hook only", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		alert := b.RegisterEvent("alert")
		b.Hook(func(in *I, ev E) { in.Context().add("hook " + ev.Param) })
		b.State("a").On(T{Event: alert, Execute: note("transition")})
		b.Any().On(T{Event: sm.EvFail, Execute: func(in *I, ev E) {
			if err := in.Trigger(alert, "from fail"); err != nil {
				t.Error(err)
			}
			in.Fail(errors.New("ignored: already failing"))
			in.Finish()
		}})
		b.Initial("a")
		r := &rec{}
		in := build(t, b).New(r, t0)
		in.Fail(errors.New("first"))
		wantLog(t, r, "hook from fail")
		if in.Reason().(*sm.FailError).Err.Error() != "first" {
			t.Errorf("reason %v", in.Reason())
		}
	})

	t.Run("an element's events come before the unit's", func(t *testing.T) {
		b := sm.NewBuilder[*rec, string, string]("m")
		anomaly := b.RegisterEvent("anomaly")
		var in *I
		el := &El{Name: "record", Parse: func(_ *rec, _ sm.Direction, u string) (string, error) {
			in.Trigger(anomaly, "odd")
			return u, nil
		}}
		b.BidirectionalState("a", el, nil).
			On(T{Event: anomaly, Execute: note("a")}).
			On(T{Event: sm.EvUp, Execute: note("a")})
		b.Initial("a")
		r := &rec{}
		in = build(t, b).New(r, t0)
		in.Feed(sm.Up, "x", t0)
		wantLog(t, r, "a:anomaly", "a:up")
	})
}

func TestFailErrorFormat(t *testing.T) {
	fe := &sm.FailError{Machine: "tls", State: "client_hello", Event: "parse_error", Pos: "tls.lua:40", Err: errors.New("bad length")}
	if got, want := fe.Error(), `state machine "tls": state "client_hello": on parse_error (tls.lua:40): bad length`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if !strings.Contains((&sm.FailError{Machine: "m", State: "a", Err: sm.ErrFailed}).Error(), `state "a": failed`) {
		t.Errorf("without event and site: %v", &sm.FailError{Machine: "m", State: "a", Err: sm.ErrFailed})
	}
}

// TestMachineSharedByConnections runs instances of one Machine on many
// goroutines at once; under -race it proves the definition is only read.
func TestMachineSharedByConnections(t *testing.T) {
	m, record, ping := hotMachine(t)
	done := make(chan *benchCtx)
	for range 8 {
		go func() {
			c := &benchCtx{}
			in := m.New(c, t0)
			for i := range 200 {
				in.Feed(sm.Up, benchRecord, t0)
				in.Trigger(record, i)
				in.Trigger(ping, 0)
			}
			in.Finish()
			done <- c
		}()
	}
	for range 8 {
		// In hello a unit raises record, in session it does not: 3 and 2
		// hooks a round. Every ping is a jump, Finish the last leave.
		if c := <-done; c.hooked != 500 || c.entered != 201 || c.left != 201 {
			t.Errorf("an instance saw %+v, want 500 hooks, 201 enters and leaves", *c)
		}
	}
}
