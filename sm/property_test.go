package sm_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

// A random valid machine driven by a random sequence of calls must never
// panic, and must keep the ending invariants: failed implies finished, the
// fail action runs once and before finish, finish runs last, and a
// finished instance accepts nothing. The definitions' actions call back
// into the instance (Trigger, Fail, Finish, Feed) to exercise re-entrancy.

type propCtx struct {
	rng     *rand.Rand
	in      *sm.Instance[*propCtx, byte, string]
	actions []sm.EventID // every action that ran, by event
	failed  bool         // Failed() was seen true
	user    []sm.EventID
}

type (
	pT  = sm.Transition[*propCtx, byte, string]
	pI  = sm.Instance[*propCtx, byte, string]
	pE  = sm.Event[byte, string]
	pEl = sm.Element[*propCtx, byte, string]
)

// randomMachine builds a valid machine from rng.
func randomMachine(t testing.TB, rng *rand.Rand) *sm.Machine[*propCtx, byte, string] {
	b := sm.NewBuilder[*propCtx, byte, string]("prop")
	nUser := rng.IntN(4)
	var user []sm.EventID
	for i := range nUser {
		user = append(user, b.RegisterEvent(fmt.Sprintf("u%d", i)))
	}
	var timeouts []sm.EventID
	for range rng.IntN(3) {
		timeouts = append(timeouts, b.Timeout(time.Duration(1+rng.IntN(5000))*time.Millisecond))
	}
	events := []sm.EventID{sm.EvInit, sm.EvEnter, sm.EvLeave, sm.EvFail, sm.EvFinish,
		sm.EvUp, sm.EvDown, sm.EvParseError, sm.EvMissingGrammar}
	events = append(events, user...)
	events = append(events, timeouts...)

	nStates := 1 + rng.IntN(6)
	names := make([]string, nStates)
	for i := range names {
		names[i] = fmt.Sprintf("s%d", i)
	}
	elem := func(name string) *pEl {
		if rng.IntN(3) == 0 {
			return nil
		}
		raise := rng.IntN(4) == 0
		return &pEl{Name: name, Parse: func(c *propCtx, _ sm.Direction, u byte) (string, error) {
			if raise && len(c.user) > 0 {
				c.in.Trigger(c.user[int(u)%len(c.user)], "from element")
			}
			if u%3 == 0 {
				return "", errors.New("rejected")
			}
			return fmt.Sprint(u), nil
		}}
	}
	action := func() sm.Action[*propCtx, byte, string] {
		kind := rng.IntN(8)
		var ev sm.EventID
		if len(user) > 0 {
			ev = user[rng.IntN(len(user))]
		}
		return func(in *pI, e pE) {
			c := in.Context()
			c.actions = append(c.actions, e.ID)
			switch kind {
			case 0, 1:
				if ev != 0 {
					in.Trigger(ev, "from action")
				}
			case 2:
				in.Fail(errors.New("action failed it"))
			case 3:
				in.Finish()
			case 4:
				if err := in.Feed(sm.Up, 1, in.Now()); !errors.Is(err, sm.ErrReentrant) {
					panic(fmt.Sprintf("Feed from an action: %v", err))
				}
			}
		}
	}
	guard := func() sm.Guard[*propCtx, byte, string] {
		if rng.IntN(2) == 0 {
			return nil
		}
		return func(in *pI, _ pE) bool {
			if err := in.Trigger(0, ""); !errors.Is(err, sm.ErrInGuard) && !errors.Is(err, sm.ErrFinished) {
				panic(fmt.Sprintf("Trigger from a guard: %v", err))
			}
			return in.Context().rng.IntN(2) == 0
		}
	}
	transitions := func(s *sm.StateDef[*propCtx, byte, string]) {
		for range rng.IntN(6) {
			t := pT{Event: events[rng.IntN(len(events))], When: guard()}
			if rng.IntN(4) == 0 {
				t.Events = []sm.EventID{events[rng.IntN(len(events))]}
				if t.Events[0] == t.Event {
					t.Events = nil
				}
			}
			canJump := true
			for _, id := range append([]sm.EventID{t.Event}, t.Events...) {
				if id == sm.EvLeave || id == sm.EvFail || id == sm.EvFinish {
					canJump = false
				}
			}
			if canJump && rng.IntN(3) > 0 {
				switch n := rng.IntN(nStates + 2); n {
				case nStates:
					t.Jump = sm.Fail
				case nStates + 1:
					t.Jump = sm.Finish
				default:
					t.Jump = names[n]
				}
			}
			if t.Jump == "" || rng.IntN(2) == 0 {
				t.Execute = action()
			}
			s.On(t)
		}
	}
	for _, name := range names {
		transitions(b.BidirectionalState(name, elem("up_"+name), elem("down_"+name)))
	}
	transitions(b.Any())
	b.Initial(names[rng.IntN(nStates)])
	m, err := b.Build()
	if err != nil {
		t.Fatalf("random definition rejected: %v", err)
	}
	return m
}

// checkRun drives a random machine with ops and checks the invariants.
func checkRun(t testing.TB, seed uint64, ops []byte) {
	rng := rand.New(rand.NewPCG(seed, seed>>32|1))
	m := randomMachine(t, rng)
	c := &propCtx{rng: rand.New(rand.NewPCG(seed, 7))}
	for _, e := range m.Events() {
		if e.Kind == sm.UserEvent {
			c.user = append(c.user, e.ID)
		}
	}
	now := t0
	in := m.New(c, now)
	c.in = in
	check := func(op string) {
		if in.Failed() && !in.Finished() {
			t.Fatalf("%s: failed but not finished", op)
		}
		if (in.Reason() != nil) != in.Failed() {
			t.Fatalf("%s: failed %v with reason %v", op, in.Failed(), in.Reason())
		}
		if in.Failed() {
			var fe *sm.FailError
			if !errors.As(in.Reason(), &fe) {
				t.Fatalf("%s: reason %T is no *FailError", op, in.Reason())
			}
		}
		if in.Finished() {
			want := sm.Finish
			if in.Failed() {
				want = sm.Fail
			}
			if in.State() != want {
				t.Fatalf("%s: finished in state %q, failed %v", op, in.State(), in.Failed())
			}
			if _, ok := in.NextDeadline(); ok {
				t.Fatalf("%s: a finished instance has a deadline", op)
			}
		}
		nFail, nFinish := 0, 0
		for i, id := range c.actions {
			switch id {
			case sm.EvFail:
				nFail++
				if nFinish > 0 {
					t.Fatalf("%s: fail action after finish: %v", op, c.actions)
				}
			case sm.EvFinish:
				nFinish++
				if i != len(c.actions)-1 {
					t.Fatalf("%s: actions after finish: %v", op, c.actions)
				}
			}
		}
		if nFail > 1 || nFinish > 1 || (nFail > 0 && !in.Failed()) || (nFinish > 0 && !in.Finished()) {
			t.Fatalf("%s: %d fail and %d finish actions, failed %v finished %v", op, nFail, nFinish, in.Failed(), in.Finished())
		}
	}
	check("New")
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i], ops[i+1]
		wasDone := in.Finished()
		before := len(c.actions)
		var err error
		var name string
		switch op % 8 {
		case 0, 1, 2:
			name = "Feed"
			now = now.Add(time.Duration(arg) * 10 * time.Millisecond)
			err = in.Feed(sm.Direction(op/8%2), arg, now)
		case 3, 4:
			name = "Trigger"
			err = in.Trigger(sm.EventID(arg%16), "op")
		case 5:
			name = "Advance"
			now = now.Add(time.Duration(arg) * 50 * time.Millisecond)
			err = in.Advance(now)
		case 6:
			name = "Fail"
			err = in.Fail(nil)
		case 7:
			name = "Finish"
			err = in.Finish()
		}
		if wasDone {
			if !errors.Is(err, sm.ErrFinished) {
				t.Fatalf("%s on a finished instance: %v", name, err)
			}
			if len(c.actions) != before {
				t.Fatalf("%s on a finished instance ran actions", name)
			}
		} else if (name == "Feed" || name == "Advance") && !in.Now().Equal(now) {
			t.Fatalf("%s: stream time %v, want %v", name, in.Now().Sub(t0), now.Sub(t0))
		}
		check(name)
	}
}

func TestRandomMachines(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	runs := 3000
	if testing.Short() {
		runs = 300
	}
	for i := range runs {
		ops := make([]byte, 2*rng.IntN(60))
		for j := range ops {
			ops[j] = byte(rng.IntN(256))
		}
		seed := uint64(i)
		t.Run("", func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("seed %d, ops %x: panic: %v", seed, ops, r)
				}
			}()
			checkRun(t, seed, ops)
		})
		if t.Failed() {
			return
		}
	}
}

// FuzzMachine is TestRandomMachines under the fuzzer:
//
//	go test ./sm -run '^$' -fuzz FuzzMachine -fuzztime 30s
func FuzzMachine(f *testing.F) {
	f.Add(uint64(1), []byte{0, 1, 2, 3, 3, 200, 4, 0})
	f.Add(uint64(42), []byte(strings.Repeat("\x00\x05\x02\x11\x03\x40", 10)))
	f.Fuzz(func(t *testing.T, seed uint64, ops []byte) {
		if len(ops) > 512 {
			return
		}
		checkRun(t, seed, ops)
	})
}
