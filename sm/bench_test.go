package sm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

// The hot operations, each on a machine shaped like the TLS one: a hook
// (the rules), grammar elements, enter and leave actions, timeouts armed on
// every state change. Run with
//
//	go test ./sm -run '^$' -bench . -benchmem -benchtime 1s
//
// TestHotPathsDoNotAllocate holds the same operations to zero allocations.

type benchCtx struct {
	hooked, executed, entered, left int
}

type (
	bT  = sm.Transition[*benchCtx, []byte, int]
	bI  = sm.Instance[*benchCtx, []byte, int]
	bE  = sm.Event[[]byte, int]
	bEl = sm.Element[*benchCtx, []byte, int]
)

var errShort = errors.New("short record")

// hotMachine: "hello" parses up records and jumps to "session" on a good
// one; "session" parses both directions; ping jumps between the two
// states; every state arms two timeouts.
func hotMachine(tb testing.TB) (*sm.Machine[*benchCtx, []byte, int], sm.EventID, sm.EventID) {
	b := sm.NewBuilder[*benchCtx, []byte, int]("bench")
	record := b.RegisterEvent("record")
	ping := b.RegisterEvent("ping")
	b.Hook(func(in *bI, ev bE) { in.Context().hooked++ })
	rec := &bEl{Name: "record", Parse: func(_ *benchCtx, _ sm.Direction, u []byte) (int, error) {
		if len(u) < 5 {
			return 0, errShort
		}
		return int(u[3])<<8 | int(u[4]), nil
	}}
	count := func(in *bI, ev bE) { in.Context().executed++ }
	b.BidirectionalState("hello", rec, nil).
		On(bT{Event: sm.EvUp, When: func(_ *bI, ev bE) bool { return ev.Param > 1<<14 }, Jump: sm.Fail}).
		On(bT{Event: sm.EvUp, Execute: func(in *bI, ev bE) { in.Trigger(record, ev.Param) }}).
		On(bT{Event: ping, Jump: "session"})
	b.BidirectionalState("session", rec, rec).
		On(bT{Events: []sm.EventID{sm.EvUp, sm.EvDown}, Execute: count}).
		On(bT{Event: ping, Jump: "hello"})
	b.Any().On(bT{Event: sm.EvEnter, Execute: func(in *bI, _ bE) { in.Context().entered++ }})
	b.Any().On(bT{Event: sm.EvLeave, Execute: func(in *bI, _ bE) { in.Context().left++ }})
	b.Any().On(bT{Event: record, Execute: count})
	b.Any().On(bT{Event: b.Timeout(10 * time.Second), Jump: sm.Fail})
	b.Any().On(bT{Event: b.Timeout(time.Minute), Jump: sm.Finish})
	b.Initial("hello")
	m, err := b.Build()
	if err != nil {
		tb.Fatal(err)
	}
	return m, record, ping
}

var benchRecord = []byte{23, 3, 3, 0, 32}

// The operations, each returning what to run b.N times.
func hotOps(tb testing.TB) map[string]func() {
	m, record, ping := hotMachine(tb)
	now := t0
	trig := m.New(&benchCtx{}, now)
	feed := m.New(&benchCtx{}, now)
	jump := m.New(&benchCtx{}, now)
	adv := m.New(&benchCtx{}, now)
	return map[string]func(){
		// A registered event: hook, then an any transition that executes.
		"Trigger": func() { trig.Trigger(record, 1) },
		// A unit parsed by the state's element, up dispatched to an action
		// that triggers record (hook and transition).
		"Feed": func() { feed.Feed(sm.Up, benchRecord, now) },
		// A jump: leave, enter, re-arming both timeouts.
		"Jump": func() { jump.Trigger(ping, 0) },
		// Stream time passing with timers armed and none due.
		"Advance": func() {
			now = now.Add(time.Microsecond)
			adv.Advance(now)
			adv.NextDeadline()
		},
	}
}

func BenchmarkTrigger(b *testing.B) { benchOp(b, "Trigger") }
func BenchmarkFeed(b *testing.B)    { benchOp(b, "Feed") }
func BenchmarkJump(b *testing.B)    { benchOp(b, "Jump") }
func BenchmarkAdvance(b *testing.B) { benchOp(b, "Advance") }

func benchOp(b *testing.B, name string) {
	op := hotOps(b)[name]
	b.ReportAllocs()
	for b.Loop() {
		op()
	}
}

// BenchmarkNew is the cost of a connection's instance, paid once.
func BenchmarkNew(b *testing.B) {
	m, _, _ := hotMachine(b)
	c := &benchCtx{}
	b.ReportAllocs()
	for b.Loop() {
		m.New(c, t0)
	}
}

func TestHotPathsDoNotAllocate(t *testing.T) {
	for name, op := range hotOps(t) {
		if n := testing.AllocsPerRun(1000, op); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}

// TestHotMachineWorks checks that the benchmarks measure what they say:
// nothing fails, every operation does its work.
func TestHotMachineWorks(t *testing.T) {
	m, record, ping := hotMachine(t)
	c := &benchCtx{}
	in := m.New(c, t0)
	in.Feed(sm.Up, benchRecord, t0)
	in.Trigger(record, 1)
	in.Trigger(ping, 0)
	in.Feed(sm.Down, benchRecord, t0)
	// The hook sees record twice and ping once.
	if in.Finished() || in.State() != "session" || c.hooked != 3 || c.executed != 3 || c.entered != 2 || c.left != 1 {
		t.Errorf("state %q, finished %v, %+v", in.State(), in.Finished(), *c)
	}
	if d, ok := in.NextDeadline(); !ok || !d.Equal(t0.Add(10*time.Second)) {
		t.Errorf("NextDeadline %v, %v", d, ok)
	}
	in = m.New(c, t0)
	in.Feed(sm.Up, []byte{22, 3, 1, 0xff, 0xff}, t0)
	if !in.Failed() {
		t.Errorf("a record over 2^14 did not fail the instance")
	}
}
