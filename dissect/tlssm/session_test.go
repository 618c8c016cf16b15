package tlssm

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/replay"
)

// What the pump, the replay and the rules engine need of a Session.
var (
	_ inspect.Factory      = (*Factory)(nil)
	_ inspect.Inspector    = (*Session)(nil)
	_ replay.GapHandler    = (*Session)(nil)
	_ replay.AnomalyLister = (*Session)(nil)
	_ interface {
		Info() inspect.Info
		State() string
	} = (*Session)(nil) // rules.FlowInfo
)

// newSession returns a Session of a factory built with opts, and the
// recorder given to it.
func newSession(t *testing.T, opts Options, rec *recorder, kill func(inspect.Decision)) *Session {
	t.Helper()
	opts.NewHandler = func(_ *inspect.Flow, s *Session) Handler {
		if rec == nil {
			return nil
		}
		rec.s = s
		return rec
	}
	f, err := NewFactory(opts)
	if err != nil {
		t.Fatal(err)
	}
	if kill == nil {
		kill = func(inspect.Decision) {}
	}
	insp, dec := f.New(&inspect.Flow{ID: 3, Start: t0}, kill)
	if dec.Verdict != inspect.Pass {
		t.Fatalf("new_connection: %+v", dec)
	}
	return insp.(*Session)
}

// Without rules, a connection is judged by the machine alone.
func TestNoRules(t *testing.T) {
	for _, opts := range []Options{{}, {NewHandler: func(*inspect.Flow, *Session) Handler { return &recorder{hook: func(EventID) bool { return false }} }}} {
		opts.NoTimers = true
		f, err := NewFactory(opts)
		if err != nil {
			t.Fatal(err)
		}
		insp, _ := f.New(&inspect.Flow{Start: t0}, nil)
		c := newConv()
		established12(c)
		p := &pump{t: t, s: insp.(*Session), now: t0}
		for _, r := range c.reads {
			p.read(r.dir, r.data, r.at)
		}
		if p.killed || p.fwd[0] != c.off[0] || p.fwd[1] != c.off[1] {
			t.Errorf("valid session: decision %+v, forwarded %v of %v", p.decision, p.fwd, c.off)
		}
		p.read(dissect.Up, []byte("\x17\x03\x03\x00\x05hello\x00garbage"), t0)
		want := inspect.Decision{Verdict: inspect.Drop, Rule: RuleFail,
			Reason: fmt.Sprintf("parse error: up: invalid_record_type: content type 0 (stream offset %d)", c.off[0]+10)}
		if p.decision != want {
			t.Errorf("decision %+v, want %+v", p.decision, want)
		}
		if p.fwd[0] != c.off[0]+10 {
			t.Errorf("%d bytes up forwarded, want the %d before the garbage", p.fwd[0], c.off[0]+10)
		}
		p.finish()
		if st := p.s.State(); st != "fail" {
			t.Errorf("state %q", st)
		}
	}
}

// Application data streams: the header is judged, the rest of the payload
// is passed unseen, and nothing is copied or held.
func TestApplicationDataPasses(t *testing.T) {
	s := newSession(t, Options{NoTimers: true}, nil, nil)
	c := newConv()
	tls12(c)
	p := &pump{t: t, s: s, now: t0}
	for _, r := range c.reads {
		p.read(r.dir, r.data, r.at)
	}
	payload := random(16000)
	record := rec(dissect.TypeApplicationData, payload)
	// Header and a first piece: the piece is cleared, the rest passed.
	res := s.Feed(dissect.Up, record[:1000], t0)
	if res.Forward != 1000 || res.Pass != int64(len(record)-1000) {
		t.Fatalf("Forward %d Pass %d, want 1000 and %d", res.Forward, res.Pass, len(record)-1000)
	}
	// The next record after the passed bytes: a header split in two.
	next := rec(dissect.TypeApplicationData, random(10))
	res = s.Feed(dissect.Up, next[:3], t0)
	if res.Forward != 0 || res.Pass != 0 {
		t.Fatalf("partial header: %+v", res)
	}
	res = s.Feed(dissect.Up, next, t0)
	if res.Forward != len(next) || res.Pass != 0 {
		t.Fatalf("second record: %+v", res)
	}
	if !res.HelloDone {
		t.Errorf("HelloDone false after the handshake")
	}
}

// HelloDone is reported once the ClientHello is complete, not before.
func TestHelloDone(t *testing.T) {
	s := newSession(t, Options{NoTimers: true}, nil, nil)
	ch := hs(clientHello(helloOpts{}))
	if res := s.Feed(dissect.Up, ch[:len(ch)-1], t0); res.HelloDone || res.Forward != 0 {
		t.Errorf("incomplete hello: %+v", res)
	}
	if res := s.Feed(dissect.Up, ch, t0); !res.HelloDone || res.Forward != len(ch) {
		t.Errorf("complete hello: %+v", res)
	}
}

// A rule that drops on client_hello: the hello never reaches the server;
// one that bypasses: everything goes from then on, unseen.
func TestRuleVerdicts(t *testing.T) {
	c := newConv()
	established12(c)
	r := runConv(t, c, runOpts{verdict: func(ev *Event) inspect.Decision {
		if ev.ID == EvClientHello && ev.ClientHello.ServerName == "haka.test" {
			return inspect.Decision{Verdict: inspect.Reset, Reason: "sni", Rule: "test:sni"}
		}
		return inspect.Decision{}
	}})
	if r.p.decision != (inspect.Decision{Verdict: inspect.Reset, Reason: "sni", Rule: "test:sni"}) || r.p.fwd[0] != 0 {
		t.Errorf("decision %+v, forwarded %v", r.p.decision, r.p.fwd)
	}
	// end_connection still reaches the rules, with the verdict.
	if l := r.rec.lines[len(r.rec.lines)-1]; !strings.Contains(l, "end_connection") || !strings.Contains(l, "verdict=reset") {
		t.Errorf("last event %q", l)
	}
	if r.rec.closed != 1 {
		t.Errorf("handler closed %d times", r.rec.closed)
	}

	r = runConv(t, c, runOpts{verdict: func(ev *Event) inspect.Decision {
		if ev.ID == EvServerHello {
			return inspect.Decision{Verdict: inspect.Bypass, Rule: "test:bypass"}
		}
		return inspect.Decision{}
	}})
	if !r.p.bypassed || r.p.fwd[0] != c.off[0] || r.p.fwd[1] != c.off[1] {
		t.Errorf("bypass: decision %+v, forwarded %v of %v", r.p.decision, r.p.fwd, c.off)
	}
	if r.has("handshake certificate") || r.has("-- established") {
		t.Errorf("events after the bypass:\n%s", strings.Join(r.rec.lines, "\n"))
	}
}

// new_connection may refuse a connection before any byte.
func TestNewConnectionVerdict(t *testing.T) {
	f, err := NewFactory(Options{NewHandler: func(_ *inspect.Flow, s *Session) Handler {
		return &recorder{s: s, verdict: func(ev *Event) inspect.Decision {
			return inspect.Decision{Verdict: inspect.Drop, Reason: "blocked", Rule: "test:acl"}
		}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	insp, dec := f.New(&inspect.Flow{ID: 1, Start: t0}, nil)
	if dec.Verdict != inspect.Drop || dec.Reason != "blocked" || insp == nil {
		t.Fatalf("New: %v %+v", insp, dec)
	}
	if res := insp.Feed(dissect.Up, hs(clientHello(helloOpts{})), t0); res.Forward != 0 || res.Decision.Verdict != inspect.Drop {
		t.Errorf("Feed after the drop: %+v", res)
	}
	insp.Close(inspect.Summary{Decision: dec})
}

// Records are dispatched only to a handler that hooks them; every event
// goes through the machine's hook with the flow fields up to date.
func TestRecordEventsAndFlowInfo(t *testing.T) {
	c := newConv()
	established12(c)
	var infos []FlowInfo
	r := runConv(t, c, runOpts{hook: func(EventID) bool { return true }, verdict: nil})
	records := 0
	for _, l := range r.rec.lines {
		if strings.Contains(l, " record ") {
			records++
		}
	}
	// Five records up, four down (the server's flight is one record).
	if records != 9 {
		t.Errorf("%d record events, want 9", records)
	}
	r = runConv(t, c, runOpts{})
	if r.has(" record ") {
		t.Errorf("record events without the hook")
	}
	var cur *result
	r = runConv(t, c, runOpts{started: func(r *result) { cur = r }, verdict: func(ev *Event) inspect.Decision {
		if ev.ID == EvClientHello || ev.ID == EvEstablished {
			infos = append(infos, cur.rec.s.FlowInfo())
		}
		return inspect.Decision{}
	}})
	if len(infos) != 2 || infos[0].SNI != "haka.test" || infos[0].State != StateClientHello ||
		infos[1].Version != "TLS1.2" || infos[1].State != StateEstablished || infos[1].JA4 == "" || infos[1].JA3 == "" {
		t.Errorf("flow fields %+v", infos)
	}
	if got := r.rec.s.Info(); got.SNI != "haka.test" || got.Version != "TLS1.2" {
		t.Errorf("Info %+v", got)
	}
}

// The handshake timeout, in stream time: a server that answers after
// more than a minute finds the connection failed.
func TestHandshakeTimeoutStreamTime(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{})))
	c.at = c.at.Add(DefaultHandshakeTimeout + time.Second)
	at := c.down(hs(serverHello(shOpts{})))
	r := runConv(t, c, runOpts{})
	wantDrop(t, r, "handshake timeout: no progress for 1m0s in state server_hello", dissect.Down, at)

	// Disabled, it waits forever.
	r = runConv(t, c, runOpts{machine: MachineOptions{HandshakeTimeout: -1}})
	wantPass(t, r, c)
}

// Live, a stalled handshake is killed by the timer through the kill
// function, without any further call.
func TestHandshakeTimeoutTimer(t *testing.T) {
	killed := make(chan inspect.Decision, 1)
	s := newSession(t, Options{Machine: MachineOptions{HandshakeTimeout: 50 * time.Millisecond}}, nil,
		func(d inspect.Decision) { killed <- d })
	ch := hs(clientHello(helloOpts{}))
	start := time.Now()
	if res := s.Feed(dissect.Up, ch, start); res.Forward != len(ch) {
		t.Fatalf("%+v", res)
	}
	select {
	case d := <-killed:
		if d.Verdict != inspect.Drop || !strings.Contains(d.Reason, "handshake timeout") || d.Rule != RuleFail {
			t.Errorf("kill %+v", d)
		}
		if time.Since(start) < 50*time.Millisecond {
			t.Errorf("killed after %v", time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no kill")
	}
	if res := s.Feed(dissect.Down, hs(serverHello(shOpts{})), time.Now()); res.Decision.Verdict != inspect.Drop || res.Forward != 0 {
		t.Errorf("after the kill: %+v", res)
	}
	s.Close(inspect.Summary{})

	// Established connections arm no timer; closed ones stop theirs.
	s = newSession(t, Options{}, nil, func(inspect.Decision) { t.Error("killed") })
	c := newConv()
	tls12(c)
	for _, r := range c.reads {
		s.Feed(r.dir, r.data, time.Now())
	}
	s.mu.Lock()
	armed := !s.timerAt.IsZero()
	s.mu.Unlock()
	if armed || s.State() != StateEstablished {
		t.Errorf("state %s, timer armed %v", s.State(), armed)
	}
	s = newSession(t, Options{Machine: MachineOptions{HandshakeTimeout: time.Hour}}, nil,
		func(inspect.Decision) { t.Error("killed after Close") })
	s.Feed(dissect.Up, ch, time.Now())
	s.mu.Lock()
	armed = s.timer != nil && !s.timerAt.IsZero()
	s.mu.Unlock()
	if !armed {
		t.Fatal("no timer in server_hello")
	}
	s.Close(inspect.Summary{})
	// A timer that fires as the connection closes finds it closed.
	s.onTimer()
}

// The end of a direction in the middle of a record: the bytes of the
// truncated record are not forwarded, and the anomaly is raised.
func TestEOFTruncated(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{})))
	sh := hs(serverHello(shOpts{}), certificate(1))
	c.down(sh[:len(sh)-10])
	r := runConv(t, c, runOpts{})
	if r.p.fwd[1] != 0 {
		t.Errorf("%d bytes of the truncated record forwarded", r.p.fwd[1])
	}
	wantAnomalies(t, r, dissect.AnomalyTruncatedRecord)
}

// Gaps of a capture: inside an application_data payload they are skipped;
// elsewhere the direction is forwarded uninspected from then on.
func TestGap(t *testing.T) {
	s := newSession(t, Options{NoTimers: true}, nil, nil)
	c := newConv()
	tls12(c)
	p := &pump{t: t, s: s, now: t0}
	for _, r := range c.reads {
		p.read(r.dir, r.data, r.at)
	}
	record := rec(dissect.TypeApplicationData, random(1000))
	if res := s.Feed(dissect.Up, record[:3], t0); res.Forward != 0 {
		t.Fatalf("%+v", res)
	}
	// A hole after the pending 3 bytes: within the header, the framing is
	// lost.
	if res := s.Gap(dissect.Up, 500, t0); res.Forward != 0 || res.Decision.Verdict != inspect.Pass {
		t.Fatalf("gap: %+v", res)
	}
	if res := s.Feed(dissect.Up, []byte("anything at all"), t0); res.Forward != 15 {
		t.Errorf("a lost direction: %+v", res)
	}

	s = newSession(t, Options{NoTimers: true}, nil, nil)
	p = &pump{t: t, s: s, now: t0}
	for _, r := range c.reads {
		p.read(r.dir, r.data, r.at)
	}
	res := s.Feed(dissect.Down, record[:100], t0)
	if res.Forward != 100 || res.Pass != int64(len(record)-100) {
		t.Fatalf("%+v", res)
	}
	// The replay lets the passed bytes go, then a hole inside them would
	// not reach the Session; a hole in the payload of a record whose bytes
	// were shown is skipped.
	next := rec(dissect.TypeApplicationData, random(100))
	if res := s.Feed(dissect.Down, next[:50], t0); res.Forward != 50 {
		t.Fatalf("%+v", res)
	}
	if res := s.Gap(dissect.Down, 40, t0); res.Forward != 0 || res.Decision.Verdict != inspect.Pass {
		t.Fatalf("gap in the payload: %+v", res)
	}
	after := rec(dissect.TypeAlert, []byte{1, 0})
	if res := s.Feed(dissect.Down, append(next[90:], after...), t0); res.Forward != len(next)-90+len(after) || res.Decision.Verdict != inspect.Pass {
		t.Errorf("after the hole: %+v", res)
	}
}

// Both directions are fed from their own goroutines, as the pump does.
func TestConcurrentDirections(t *testing.T) {
	var events sync.Map
	rc := &recorder{hook: func(EventID) bool { return true }, verdict: func(ev *Event) inspect.Decision {
		events.Store(ev.ID, true)
		return inspect.Decision{}
	}}
	s := newSession(t, Options{}, rc, nil)
	c := newConv()
	tls12(c)
	// The handshake in order, then application data both ways at once.
	// Live, stream time is the wall clock, which the Session's timer
	// follows too.
	p := &pump{t: t, s: s, now: time.Now()}
	for _, r := range c.reads {
		p.read(r.dir, r.data, time.Now())
	}
	var wg sync.WaitGroup
	for d := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				b := rec(dissect.TypeApplicationData, random(1+i%300))
				res := s.Feed(dissect.Direction(d), b, time.Now())
				if res.Forward != len(b) {
					t.Errorf("%d: %+v", d, res)
					return
				}
				_ = s.FlowInfo()
			}
		}()
	}
	wg.Wait()
	s.Close(inspect.Summary{})
	if _, ok := events.Load(EvEndConnection); !ok {
		t.Error("no end_connection")
	}
}

// The record layer's and the machine's anomalies are listed once each,
// in order, for the connection line.
func TestAnomaliesListed(t *testing.T) {
	c := newConv()
	established12(c)
	for range 3 {
		c.up(opaque(dissect.TypeHeartbeat, 20))
	}
	r := runConv(t, c, runOpts{})
	var names []string
	for _, a := range r.rec.s.Anomalies() {
		names = append(names, a.Direction.String()+":"+a.Name)
	}
	want := []string{"up:" + AnomalyHeartbeatRequestTooShort}
	if !slices.Equal(names, want) {
		t.Errorf("listed %v, want %v", names, want)
	}
}

// A message of the client cut by the switch to TLS 1.3 encryption that the
// server's ServerHello makes: its held bytes were never judged, so the
// anomaly is raised about them, before they are forwarded.
func TestMessageCutByKeyChange(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{tls13: true})))
	held := c.up(rec(dissect.TypeHandshake, msg(dissect.MsgCertificate, random(100))[:50]))
	c.down(hs(serverHello(shOpts{tls13: true})), appData(100))
	c.up(appData(20))
	r := runConv(t, c, runOpts{verdict: func(ev *Event) inspect.Decision {
		if ev.ID == EvAnomaly && ev.Anomaly.Name == dissect.AnomalyHandshakeLengthMismatch {
			return inspect.Decision{Verdict: inspect.Drop, Reason: "cut", Rule: "test:hygiene"}
		}
		return inspect.Decision{}
	}})
	wantDrop(t, r, "cut", dissect.Up, held)
	if !r.has("up anomaly handshake_length_mismatch") {
		t.Errorf("no anomaly:\n%s", strings.Join(r.rec.lines, "\n"))
	}
	r = runConv(t, c, runOpts{})
	wantPass(t, r, c)
}

// A hello over the reassembly cap cannot be inspected: the connection
// fails rather than pass it unseen.
func TestHelloTooLarge(t *testing.T) {
	c := newConv()
	at := c.up(rec(dissect.TypeHandshake, []byte{1, 0xe2, 0, 0, 3, 3}))
	r := runConv(t, c, runOpts{})
	wantDrop(t, r, "parse error: client_hello: 14811136 bytes, over the reassembly cap", dissect.Up, at)
}
