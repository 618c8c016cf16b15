package tlssm

import (
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// mustPanic runs fn and returns what it panicked with.
func mustPanic(t *testing.T, fn func()) (r any) {
	t.Helper()
	defer func() { r = recover() }()
	fn()
	t.Fatal("no panic")
	return nil
}

// A handler that panics in Feed leaves the Session unlocked and broken:
// Close, which the proxy calls once it has recovered the panic, releases
// the handler without running the machine again (no end_connection on a
// machine stopped half-way through an event).
func TestPanicInFeedLeavesTheSessionClosable(t *testing.T) {
	rec := &recorder{check: func(ev *Event) {
		if ev.ID == EvClientHello {
			panic("handler bug")
		}
	}}
	s := newSession(t, Options{}, rec, nil)
	if r := mustPanic(t, func() { s.Feed(dissect.Up, hs(clientHello(helloOpts{})), time.Now()) }); r != "handler bug" {
		t.Fatalf("panicked with %v", r)
	}
	done := make(chan struct{})
	go func() {
		s.Close(inspect.Summary{})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close is stuck: the panic left the Session locked")
	}
	if rec.closed != 1 {
		t.Errorf("the handler was closed %d times", rec.closed)
	}
	for _, l := range rec.lines {
		if strings.Contains(l, "end_connection") {
			t.Errorf("end_connection raised after the panic: %q", rec.lines)
		}
	}
	s.mu.Lock() // not held any more
	s.mu.Unlock()
}

// A panic in New, where the proxy gets no Session to close, releases the
// handler on its way out.
func TestPanicInNewReleasesTheHandler(t *testing.T) {
	rec := &recorder{check: func(ev *Event) {
		if ev.ID == EvNewConnection {
			panic("handler bug")
		}
	}}
	f, err := NewFactory(Options{NewHandler: func(_ *inspect.Flow, s *Session) Handler { rec.s = s; return rec }})
	if err != nil {
		t.Fatal(err)
	}
	mustPanic(t, func() { f.New(&inspect.Flow{ID: 1, Start: time.Now()}, nil) })
	if rec.closed != 1 {
		t.Errorf("the handler was closed %d times", rec.closed)
	}
}

// A panic on the timer's goroutine, where no pump can recover it, does not
// take the process down: it is handed to kill as a Reset with RulePanic,
// and the Session can still be closed.
func TestPanicInTimer(t *testing.T) {
	killed := make(chan inspect.Decision, 1)
	f, err := NewFactory(Options{Machine: MachineOptions{HandshakeTimeout: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	f.trace = func(_ *Session, _, to string) {
		if to == sm.Fail {
			panic("machine bug")
		}
	}
	insp, _ := f.New(&inspect.Flow{ID: 1, Start: time.Now()}, func(d inspect.Decision) { killed <- d })
	s := insp.(*Session)
	s.Feed(dissect.Up, hs(clientHello(helloOpts{})), time.Now())
	select {
	case d := <-killed:
		if d.Verdict != inspect.Reset || d.Rule != inspect.RulePanic || d.Reason != "panic: machine bug" {
			t.Errorf("kill %+v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no kill")
	}
	s.Close(inspect.Summary{})
	if !s.broken {
		t.Error("the Session is not marked broken")
	}
}
