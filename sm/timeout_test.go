package sm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

// The engine is defined on stream time: these tests are the owner, and
// the times they pass are the stream's clock.

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// stamp logs an action with the instance's stream time, in seconds since t0.
func stamp(tag string) sm.Action[*rec, string, string] {
	return func(in *I, ev E) {
		in.Context().add(tag + "@" + in.Now().Sub(t0).String())
	}
}

func wantDeadline(t *testing.T, in *I, want time.Time) {
	t.Helper()
	got, ok := in.NextDeadline()
	switch {
	case want.IsZero() && ok:
		t.Errorf("NextDeadline = %v, want none", got.Sub(t0))
	case !want.IsZero() && (!ok || !got.Equal(want)):
		t.Errorf("NextDeadline = %v, %v; want %v", got.Sub(t0), ok, want.Sub(t0))
	}
}

func TestTimeoutArmedOnEntryFiresOnce(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a").On(T{Event: b.Timeout(5 * time.Second), Execute: stamp("idle")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	wantDeadline(t, in, at(5))

	in.Advance(at(4.999))
	wantLog(t, r)
	in.Advance(at(7)) // fires at its deadline, not at the call's time
	wantLog(t, r, "idle@5s")
	if !in.Now().Equal(at(7)) {
		t.Errorf("Now = %v after Advance(7s)", in.Now().Sub(t0))
	}
	// Once per entry into the state: no jump, no re-arming.
	wantDeadline(t, in, time.Time{})
	in.Advance(at(100))
	wantLog(t, r)
}

func TestTimeoutRearmedOnStateChange(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	next := b.RegisterEvent("next")
	idle := b.Timeout(5 * time.Second)
	b.State("a").On(T{Event: next, Jump: "b"})
	b.State("b").
		On(T{Event: next, Jump: "b"}). // a self-jump re-arms too
		On(T{Event: idle, Execute: stamp("b idle")})
	b.Any().On(T{Event: idle, Execute: stamp("any idle")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	wantDeadline(t, in, at(5)) // any's timeout is armed in a

	in.Advance(at(3))
	in.Trigger(next, "") // a -> b at 3s
	wantDeadline(t, in, at(8))
	in.Advance(at(6))
	in.Trigger(next, "") // b -> b at 6s
	wantDeadline(t, in, at(11))
	in.Advance(at(10.5))
	wantLog(t, r)
	in.Advance(at(11))
	wantLog(t, r, "b idle@11s")
}

func TestTimeoutChainKeepsStreamTime(t *testing.T) {
	// A client that goes quiet: 5s in hello, then 5s in wait, then fail.
	// A replay that calls only when the next packet arrives, 12s later,
	// must see what the live proxy saw: two timeouts, at 5s and 10s.
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("hello").On(T{Event: b.Timeout(5 * time.Second), Execute: stamp("hello timeout"), Jump: "wait"})
	b.State("wait").
		On(T{Event: sm.EvEnter, Execute: stamp("enter wait")}).
		On(T{Event: b.Timeout(5 * time.Second), Execute: stamp("wait timeout"), Jump: sm.Fail})
	b.Initial("hello")
	r := &rec{}
	in := build(t, b).New(r, t0)
	if err := in.Feed(sm.Up, "late packet", at(12)); !errors.Is(err, sm.ErrFinished) {
		t.Errorf("Feed after the timeouts: %v, want ErrFinished", err)
	}
	wantLog(t, r, "hello timeout@5s", "enter wait@5s", "wait timeout@10s")
	var fe *sm.FailError
	if !errors.As(in.Reason(), &fe) || fe.State != "wait" || fe.Event != "timeout(5s)" {
		t.Errorf("reason %v", in.Reason())
	}
}

func TestFeedFiresDueTimeoutsFirst(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.BidirectionalState("a", element("x"), nil).
		On(T{Event: b.Timeout(time.Second), Jump: "b"}).
		On(T{Event: sm.EvUp, Execute: stamp("a got it")})
	b.BidirectionalState("b", element("x"), nil).
		On(T{Event: sm.EvUp, Execute: stamp("b got it")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	in.Feed(sm.Up, "x", at(0.5))
	in.Feed(sm.Up, "x", at(2))
	wantLog(t, r, "a got it@500ms", "b got it@2s")
}

func TestTimeoutsInDeadlineOrder(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a").
		On(T{Event: b.Timeout(3 * time.Second), Execute: stamp("3s")}).
		On(T{Event: b.Timeout(1 * time.Second), Execute: stamp("1s")}).
		On(T{Event: b.Timeout(2 * time.Second), Execute: stamp("2s")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	in.Advance(at(10))
	wantLog(t, r, "1s@1s", "2s@2s", "3s@3s")
}

func TestTimeoutGuardAndAny(t *testing.T) {
	// A timeout is an event like any other: guards, then any's.
	b := sm.NewBuilder[*rec, string, string]("m")
	idle := b.Timeout(time.Second)
	b.State("a").On(T{Event: idle, When: func(*I, E) bool { return false }, Execute: stamp("a")})
	b.Any().On(T{Event: idle, Execute: stamp("any")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, t0)
	in.Advance(at(1))
	wantLog(t, r, "any@1s")
}

func TestTimeBackwardsIsClamped(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a").On(T{Event: b.Timeout(2 * time.Second), Execute: stamp("t")})
	b.Initial("a")
	r := &rec{}
	in := build(t, b).New(r, at(10))
	in.Advance(at(11))
	in.Advance(at(3)) // a packet of the other direction, stamped earlier
	if !in.Now().Equal(at(11)) {
		t.Errorf("Now went back to %v", in.Now().Sub(t0))
	}
	in.Advance(at(12))
	wantLog(t, r, "t@12s")
}

func TestTimeoutsPerAdvanceAreBounded(t *testing.T) {
	// A definition whose timeout jumps to its own state fires forever as
	// stream time leaps; one call fires MaxTimeoutsPerAdvance of them and
	// leaves the rest due.
	b := sm.NewBuilder[*rec, string, string]("m")
	n := 0
	b.State("a").On(T{Event: b.Timeout(time.Millisecond), Execute: func(*I, E) { n++ }, Jump: "a"})
	b.Initial("a")
	in := build(t, b).New(&rec{}, t0)
	in.Advance(at(3600))
	if n != sm.MaxTimeoutsPerAdvance {
		t.Errorf("%d timeouts fired, want %d", n, sm.MaxTimeoutsPerAdvance)
	}
	if d, ok := in.NextDeadline(); !ok || !d.Before(in.Now()) {
		t.Errorf("NextDeadline %v, %v: want one already due", d.Sub(t0), ok)
	}
}

func TestNoTimeoutsNoDeadline(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("m")
	b.State("a")
	b.Initial("a")
	in := build(t, b).New(&rec{}, t0)
	wantDeadline(t, in, time.Time{})
	if err := in.Advance(at(1)); err != nil {
		t.Error(err)
	}
}
