package rules

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// self:reset(reason) decides as flow:reset does: the connection is closed
// with RST, the reason is the one given (or says which machine reset it),
// the rule is the transition whose action called it, and nothing more of
// the connection is judged.
func TestLuaMachineSelfReset(t *testing.T) {
	transcript := tlsTranscript(t, tls.VersionTLS12)
	body := func(call string) string {
		return `
  hello = state(tls.grammar.client_hello, nil)
  server = state(nil, tls.grammar.server_hello)
  hello:on{ event = events.up, execute = function (self, h) self:log("hello " .. h.sni) end, jump = server }
  server:on{ event = events.down, execute = function (self) ` + call + ` end }
  any:on{ event = events.finish, execute = function (self) self:log("finish in " .. self.state) end }
  initial(hello)
`
	}
	// A rule on a later event: it must not run once the connection is
	// reset.
	const later = `haka.rule{ on = tls.events.certificate, eval = function (flow) flow:log("certificate judged") end }`
	for _, tc := range []struct {
		call string
		want inspect.Decision
	}{
		{`self:reset()`, inspect.Decision{Verdict: inspect.Reset, Reason: "reset by state machine ssl", Rule: "ssl.lua:8"}},
		{`self:reset("no " .. self.state .. " here")`, inspect.Decision{Verdict: inspect.Reset, Reason: "no server here", Rule: "ssl.lua:8"}},
		// The contrast: drop closes with FIN.
		{`self:drop()`, inspect.Decision{Verdict: inspect.Drop, Reason: "dropped by state machine ssl", Rule: "ssl.lua:8"}},
	} {
		t.Run(tc.call, func(t *testing.T) {
			h := machineSet(t, nil, body(tc.call), later, Options{})
			ss := newSession(t, h, nil)
			if d := ss.feed(transcript...); d != tc.want {
				t.Errorf("decision %+v, want %+v", d, tc.want)
			}
			// The reset ends the connection, not the machine: its finish
			// runs when the connection closes, in the state it was in.
			ss.s.Close(inspect.Summary{})
			if got := logged(h); got != "hello bench.test\nfinish in server" {
				t.Errorf("logged %q", got)
			}
		})
	}

	// Through the proxy, between real peers: the client sees its
	// connection reset, not closed, before any byte of the ServerHello
	// reaches it.
	t.Run("live", func(t *testing.T) {
		b, cfg := startBackend(t)
		r := startLive(t, map[string]string{"ssl.lua": machineFile(nil, body(`self:reset("no server here")`))}, Options{PoolSize: 1}, b.Addr())
		c := r.dial(t)
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(liveWait))
		err := tc.Handshake()
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("handshake: %v, want a connection reset", err)
		}
		conn := r.connOf(t, c)
		if conn.Verdict != "reset" || conn.Rule != "ssl.lua:8" || conn.Reason != "no server here" || conn.BytesDown != 0 {
			t.Errorf("connection %+v", conn)
		}
	})
}

// The base events init, enter and leave, from Lua: enter then init when
// the instance starts, leave then enter on a jump (and through a state
// whose enter jumps on), leave then finish at the end, each with self in
// the state it concerns and no other parameter; init runs once.
func TestLuaMachineInitEnterLeave(t *testing.T) {
	body := `
  local function note(what)
    return function (self, ...) self:log(what .. " " .. self.state .. " " .. select("#", ...)) end
  end
  hello = state(tls.grammar.client_hello, nil)
  passing = state(nil, nil)
  server = state(nil, tls.grammar.server_hello)
  any:on{ event = events.init, execute = note("init") }
  any:on{ event = events.enter, execute = note("enter") }
  any:on{ event = events.leave, execute = note("leave") }
  any:on{ event = events.finish, execute = note("finish") }
  hello:on{ event = events.up, execute = note("up"), jump = passing }
  passing:on{ event = events.enter, execute = note("enter, on to server from"), jump = server }
  server:on{ event = events.down, execute = note("down"), jump = finish }
  initial(hello)
`
	h := machineSet(t, nil, body, "", Options{})
	ss := newSession(t, h, nil)
	// The initial state is entered when the connection starts, before any
	// byte.
	if got, want := logged(h), "enter hello 0\ninit hello 0"; got != want {
		t.Fatalf("at the start, logged:\n%s\nwant:\n%s", got, want)
	}
	if d := ss.feed(tlsTranscript(t, tls.VersionTLS13)...); d.Verdict != inspect.Pass {
		t.Fatalf("decision %+v", d)
	}
	want := strings.Join([]string{
		"enter hello 0",
		"init hello 0",
		// The result of the element is the parameter of up and down.
		"up hello 1",
		"leave hello 0",
		"enter, on to server from passing 0",
		"leave passing 0",
		"enter server 0",
		"down server 1",
		"leave server 0",
		"finish server 0",
	}, "\n")
	if got := logged(h); got != want {
		t.Errorf("logged:\n%s\nwant:\n%s", got, want)
	}
}

// state_type(State) makes states that take no grammar element: every unit
// is a missing_grammar event, with its direction and bytes, which a
// machine that only counts, or waits, handles.
func TestLuaMachineStateType(t *testing.T) {
	body := `
  state_type(State)
  first = state()
  second = state()
  first:on{ event = events.missing_grammar,
    execute = function (self, dir, bytes) self:log(self.state .. " " .. dir .. " " .. bytes:byte(1)) end, jump = second }
  second:on{ event = events.missing_grammar,
    execute = function (self, dir, bytes) self:log(self.state .. " " .. dir .. " " .. bytes:byte(1)) end, jump = finish }
  initial(first)
`
	h := machineSet(t, nil, body, "", Options{})
	if d := newSession(t, h, nil).feed(tlsTranscript(t, tls.VersionTLS12)...); d.Verdict != inspect.Pass {
		t.Fatalf("decision %+v", d)
	}
	// The ClientHello (type 1) up, the ServerHello (type 2) down: the
	// messages with their headers.
	if got, want := logged(h), "first up 1\nsecond down 2"; got != want {
		t.Errorf("logged:\n%s\nwant:\n%s", got, want)
	}
}

// tls.grammar.record takes the next unit, whatever it is: a state that
// names it for both directions sees every unit of the connection, once, in
// order, with its record's fields. The expected units are worked out
// from the record layer: each cleartext handshake message, and each other
// record (an application_data record by its header).
func TestLuaMachineGrammarRecord(t *testing.T) {
	body := `
  all = state(tls.grammar.record, tls.grammar.record)
  all:on{ events = { events.up, events.down }, execute = function (self, rec)
    self:log(rec.direction .. " " .. rec.type .. " " .. rec.length .. " " .. tostring(rec.encrypted))
  end }
  initial(all)
`
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			transcript := tlsTranscript(t, v)
			h := machineSet(t, nil, body, "", Options{})
			if d := newSession(t, h, nil).feed(transcript...); d.Verdict != inspect.Pass {
				t.Fatalf("decision %+v", d)
			}
			want := expectedUnits(t, transcript)
			if got := logged(h); got != want {
				t.Errorf("logged:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// expectedUnits returns the units of a transcript as the record layer
// cuts them, one line each: direction, record type and length (for a
// message, of the record that completed it), encrypted.
func expectedUnits(t *testing.T, transcript []chunk) string {
	t.Helper()
	c := dissect.NewConn(dissect.Limits{})
	var pending [2][]byte
	var lines []string
	for _, ch := range transcript {
		buf := append(pending[ch.dir], ch.data...)
		for {
			u, n, err := c.Next(ch.dir, buf)
			if err != nil {
				t.Fatal(err)
			}
			if u.Kind == dissect.NeedMore {
				break
			}
			buf = buf[n:]
			cleartextHandshake := u.Kind == dissect.UnitRecord && u.Header.Type == dissect.TypeHandshake && !u.Encrypted
			if u.Kind == dissect.UnitChunk || cleartextHandshake {
				// A payload is its header's unit; a cleartext handshake
				// record is the messages it completes.
				continue
			}
			lines = append(lines, fmt.Sprintf("%s %s %d %v", ch.dir, u.Header.Type, u.Header.Length, u.Encrypted))
		}
		pending[ch.dir] = buf
	}
	return strings.Join(lines, "\n")
}

// Elements of the README's table that only some handshakes send, bound to
// a TLS 1.2 handshake with a client certificate: certificate_request (the
// server asks), the client's certificate, client_key_exchange and
// certificate_verify, change_cipher_spec (the direction), and finished
// (each side's encrypted Finished, the record after its
// ChangeCipherSpec).
func TestLuaMachineGrammarClientAuth(t *testing.T) {
	transcript := tlsTranscriptWith(t, tls.VersionTLS12, func(server, client *tls.Config) {
		server.ClientAuth = tls.RequireAnyClientCert
		client.Certificates = server.Certificates
	})
	body := `
  local function msg(self, m) self:log(m.direction .. " " .. m.type .. " " .. m.length) end
  hello = state(tls.grammar.client_hello, nil)
  server = state(nil, tls.grammar.certificate_request + tls.grammar.handshake)
  client = state(tls.grammar.certificate + tls.grammar.client_key_exchange + tls.grammar.certificate_verify
    + tls.grammar.change_cipher_spec + tls.grammar.finished, nil)
  server_end = state(nil, tls.grammar.new_session_ticket + tls.grammar.change_cipher_spec + tls.grammar.finished)
  hello:on{ event = events.up, jump = server }
  server:on{ event = events.down, when = tls.grammar.certificate_request, execute = msg }
  server:on{ event = events.down, when = function (self, m) return m.type == "server_hello_done" end, jump = client }
  server:on{ event = events.down, execute = function () end }
  client:on{ event = events.up, when = tls.grammar.certificate,
    execute = function (self, cert) self:log("up certificate " .. #cert.chain .. " " .. cert.chain[1].subject) end }
  client:on{ event = events.up, when = tls.grammar.change_cipher_spec,
    execute = function (self, dir) self:log(dir .. " change_cipher_spec") end }
  client:on{ event = events.up, when = tls.grammar.finished,
    execute = function (self, rec) self:log(rec.direction .. " finished " .. rec.type .. " " .. tostring(rec.encrypted)) end,
    jump = server_end }
  client:on{ event = events.up, execute = msg }
  server_end:on{ event = events.down, when = tls.grammar.finished,
    execute = function (self, rec) self:log(rec.direction .. " finished " .. rec.type .. " " .. tostring(rec.encrypted)) end,
    jump = finish }
  server_end:on{ event = events.down, execute = function () end }
  initial(hello)
`
	h := machineSet(t, nil, body, "", Options{})
	if d := newSession(t, h, nil).feed(transcript...); d.Verdict != inspect.Pass {
		t.Fatalf("decision %+v", d)
	}
	got := logged(h)
	lines := strings.Split(got, "\n")
	// Message lengths depend on the keys; the rest does not.
	for i, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[2][0] >= '0' && f[2][0] <= '9' {
			if f[2] == "0" {
				t.Errorf("%s: empty message", l)
			}
			lines[i] = f[0] + " " + f[1]
		}
	}
	want := strings.Join([]string{
		"down certificate_request",
		"up certificate 1 CN=haka-proxy test",
		"up client_key_exchange",
		"up certificate_verify",
		"up change_cipher_spec",
		"up finished handshake true",
		"down finished handshake true",
	}, "\n")
	if strings.Join(lines, "\n") != want {
		t.Errorf("logged:\n%s\nwant:\n%s", got, want)
	}
}
