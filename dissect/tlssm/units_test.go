package tlssm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// unitRecorder is a UnitHandler that writes each unit as a line, may drop
// on one, and has a deadline of its own.
type unitRecorder struct {
	noHandler
	units    []string
	drop     func(u *Unit) bool
	deadline time.Time
	advanced []time.Time
	dec      inspect.Decision
}

func (r *unitRecorder) Unit(u *Unit) inspect.Decision {
	line := fmt.Sprintf("%s %s %s", u.Dir, u.ID, u.Kind)
	switch u.ID {
	case EvClientHello:
		line += " sni=" + u.ClientHello.ServerName + " ja4=" + u.JA4
	case EvServerHello:
		line += fmt.Sprintf(" cipher=%#04x ja3s=%v", u.ServerHello.CipherSuite, u.JA3SHash != "")
	case EvCertificate:
		line += fmt.Sprintf(" certs=%d", len(u.Certificate.Entries))
	case EvHandshake:
		line += " " + u.Message.Type.String()
	case EvHeartbeat:
		line += fmt.Sprintf(" len=%d encrypted=%v", u.Heartbeat.RecordLength, u.Heartbeat.Encrypted)
	case EvRecord:
		line += fmt.Sprintf(" %s encrypted=%v", u.Record.TypeName(), u.Record.Encrypted)
	}
	r.units = append(r.units, line)
	if r.drop != nil && r.drop(u) {
		r.dec = inspect.Decision{Verdict: inspect.Drop, Rule: "test:unit", Reason: "unit " + line}
	}
	return r.dec
}

func (r *unitRecorder) Advance(now time.Time) inspect.Decision {
	r.advanced = append(r.advanced, now)
	if !r.deadline.IsZero() && !now.Before(r.deadline) {
		r.deadline = time.Time{}
		r.dec = inspect.Decision{Verdict: inspect.Drop, Rule: "test:deadline", Reason: "deadline"}
	}
	return r.dec
}

func (r *unitRecorder) NextDeadline() (time.Time, bool) { return r.deadline, !r.deadline.IsZero() }

func unitFactory(t *testing.T, r *unitRecorder, noTimers bool) *Factory {
	t.Helper()
	f, err := NewFactory(Options{NoTimers: noTimers, NewHandler: func(*inspect.Flow, *Session) Handler { return r }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A UnitHandler is given every unit the machine accepted, in stream
// order, whatever the reads that brought them, with the fields of the
// event each is about; a drop it decides on a unit holds that unit's
// record, as a rule's does.
func TestUnitHandler(t *testing.T) {
	c := newConv()
	established12(c)
	hb := c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	c.down(appData(10))

	want := []string{
		"up client_hello message sni=haka.test ja4=",
		"down server_hello message cipher=0xc02f ja3s=true",
		"down certificate message certs=1",
		"down handshake message server_key_exchange",
		"down handshake message server_hello_done",
		"up handshake message client_key_exchange",
		"up change_cipher_spec change_cipher_spec",
		"up record encrypted record handshake encrypted=true",
		"down change_cipher_spec change_cipher_spec",
		"down record encrypted record handshake encrypted=true",
		"up record application_data application_data encrypted=true",
		"down record application_data application_data encrypted=true",
		fmt.Sprintf("up heartbeat heartbeat len=%d encrypted=true", gcmHeartbeat(16)),
		"down record application_data application_data encrypted=true",
	}
	for _, split := range []func(int) []int{nil, byteSplit} {
		r := &unitRecorder{}
		f := unitFactory(t, r, true)
		p := runReads(t, f, streamReadsOf(c.reads, split))
		if p.decision.Verdict != inspect.Pass {
			t.Fatalf("decision %+v", p.decision)
		}
		if len(r.units) != len(want) {
			t.Fatalf("units:\n%s", strings.Join(r.units, "\n"))
		}
		for i, w := range want {
			if !strings.HasPrefix(r.units[i], w) {
				t.Errorf("unit %d: %q, want %q", i, r.units[i], w)
			}
		}
		if len(r.advanced) == 0 {
			t.Error("Advance never called")
		}
	}

	r := &unitRecorder{drop: func(u *Unit) bool { return u.ID == EvHeartbeat }}
	f := unitFactory(t, r, true)
	p := runReads(t, f, c.reads)
	if p.decision.Rule != "test:unit" || p.fwd[dissect.Up] != hb {
		t.Errorf("decision %+v, %d bytes up forwarded, the heartbeat starts at %d", p.decision, p.fwd[dissect.Up], hb)
	}
}

// Units the machine refuses never reach the handler: the machine fails
// the connection first.
func TestUnitHandlerAfterTheMachine(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{sni: "haka.test"})))
	c.down(hs(serverHelloDone()))
	r := &unitRecorder{}
	f := unitFactory(t, r, true)
	p := runReads(t, f, c.reads)
	if p.decision.Rule != RuleFail || !slices.Equal(r.units, []string{r.units[0]}) || !strings.HasPrefix(r.units[0], "up client_hello") {
		t.Errorf("decision %+v, units %q", p.decision, r.units)
	}
}

// The handler's deadlines are the Session's: in stream time without
// timers, and on the Session's timer live, armed from the start.
func TestUnitHandlerDeadline(t *testing.T) {
	r := &unitRecorder{deadline: t0.Add(5 * time.Second)}
	f := unitFactory(t, r, true)
	c := newConv()
	c.up(hs(clientHello(helloOpts{sni: "haka.test"})))
	reads := c.reads
	reads[0].at = t0.Add(6 * time.Second)
	insp, _ := f.New(&inspect.Flow{ID: 1, Start: t0}, nil)
	res := insp.Feed(dissect.Up, reads[0].data, reads[0].at)
	if res.Decision.Rule != "test:deadline" || res.Forward != 0 || len(r.units) != 0 {
		t.Errorf("result %+v, units %q", res, r.units)
	}
	insp.Close(inspect.Summary{})

	killed := make(chan inspect.Decision, 1)
	live := &unitRecorder{deadline: time.Now().Add(20 * time.Millisecond)}
	lf := unitFactory(t, live, false)
	s, _ := lf.New(&inspect.Flow{ID: 2, Start: time.Now()}, func(d inspect.Decision) { killed <- d })
	defer s.Close(inspect.Summary{})
	select {
	case d := <-killed:
		if d.Rule != "test:deadline" {
			t.Errorf("killed with %+v", d)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler's deadline never fired")
	}
}
