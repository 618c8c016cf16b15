package rules

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Lua machines on real TLS sessions: transcripts of crypto/tls connections
// fed to tlssm Sessions whose handler runs the rules, as the proxy and
// the replay do.

// tlsTranscript records a crypto/tls connection of version v over a pipe:
// the handshake and one message each way.
func tlsTranscript(tb testing.TB, v uint16) []chunk {
	tb.Helper()
	return tlsTranscriptWith(tb, v, nil)
}

// tlsTranscriptWith is tlsTranscript with the server's and the client's
// configurations changed by adjust first (client certificates, ...).
func tlsTranscriptWith(tb testing.TB, v uint16, adjust func(server, client *tls.Config)) []chunk {
	tb.Helper()
	cert, pool, err := tlspeer.NewCert("bench.test")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var chunks []chunk
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	serverCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	clientCfg := &tls.Config{RootCAs: pool, ServerName: "bench.test", MinVersion: v, MaxVersion: v}
	if adjust != nil {
		adjust(serverCfg, clientCfg)
	}
	server := tls.Server(&recordingConn{sc, dissect.Down, &mu, &chunks}, serverCfg)
	client := tls.Client(&recordingConn{cc, dissect.Up, &mu, &chunks}, clientCfg)
	served := make(chan error, 1)
	go func() {
		buf := make([]byte, 5)
		_, err := io.ReadFull(server, buf)
		if err == nil {
			_, err = server.Write(buf)
		}
		served <- err
	}()
	client.SetDeadline(time.Now().Add(liveWait))
	if _, err := client.Write([]byte("hello")); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 5)); err != nil {
		tb.Fatal(err)
	}
	if err := <-served; err != nil {
		tb.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]chunk(nil), chunks...)
}

// session is a tlssm Session fed by hand.
type session struct {
	t       *testing.T
	s       *tlssm.Session
	pending [2][]byte
	now     time.Time
	dec     inspect.Decision
}

func newSession(t *testing.T, h *harness, flow *inspect.Flow) *session {
	t.Helper()
	if flow == nil {
		flow = &inspect.Flow{ID: 1, Dst: meta(1).Dst, Src: meta(1).Src, Start: time.Unix(1000, 0)}
	}
	is, d := benchFactory(t, h).New(flow, nil)
	ss := &session{t: t, s: is.(*tlssm.Session), now: flow.Start, dec: d}
	t.Cleanup(func() { ss.s.Close(inspect.Summary{}) })
	return ss
}

// feed feeds the chunks until the connection is killed, and returns the
// decision.
func (ss *session) feed(chunks ...chunk) inspect.Decision {
	for _, c := range chunks {
		if ss.dec.Verdict.Kills() {
			break
		}
		p := append(ss.pending[c.dir], c.data...)
		res := ss.s.Feed(c.dir, p, ss.now)
		ss.dec = res.Decision
		ss.pending[c.dir] = p[res.Forward:]
	}
	return ss.dec
}

// logged returns the info lines the rules logged, in order.
func logged(h *harness) string {
	var lines []string
	for _, e := range h.logs.All() {
		if e.Level == zapcore.InfoLevel && e.Message != "rules loaded" {
			lines = append(lines, e.Message)
		}
	}
	return strings.Join(lines, "\n")
}

// lineOf returns the line of the example file where text is.
func lineOf(t *testing.T, text string) int {
	t.Helper()
	src, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(src), text)
	if i < 0 {
		t.Fatalf("no %q in %s", text, exampleFile)
	}
	return strings.Count(string(src[:i]), "\n") + 1
}

// eventChecks are rules that check the parameters of the example's events
// (an error fails the rule, which drops the connection) and log them.
const eventChecks = `
local function check(cond, what) if not cond then error(what) end end
haka.rule{ on = haka.dissectors.ssl.events.client_hello, eval = function (flow, hello, more)
  check(more == nil, "one parameter")
  check(type(hello.ciphers) == "table" and #hello.ciphers > 0, "ciphers")
  check(hello.ja4 == flow.ja4, "ja4 " .. tostring(hello.ja4))
  flow:log("client_hello sni=" .. tostring(hello.sni) .. " version=" .. hello.version)
end }
haka.rule{ on = haka.dissectors.ssl.events.server_hello, eval = function (flow, hello)
  check(type(hello.cipher) == "number", "cipher")
  check(flow.state ~= nil, "flow.state")
  flow:log("server_hello version=" .. hello.version .. " retry=" .. tostring(hello.retry))
end }
haka.rule{ on = haka.dissectors.ssl.events.established, eval = function (flow, version)
  check(version == flow.version, "version " .. tostring(version) .. " flow " .. tostring(flow.version))
  flow:log("established " .. version)
end }
`

// The example machine follows real TLS 1.2 and 1.3 sessions to the end,
// passes them, and raises its events with the right parameters, in order.
func TestExampleMachineEvents(t *testing.T) {
	dir := exampleDir(t)
	if err := os.WriteFile(dir+"/zz_checks.lua", []byte(eventChecks), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			h := newHarness(t, nil, Options{Dir: dir, PoolSize: 1})
			ss := newSession(t, h, nil)
			if d := ss.feed(tlsTranscript(t, v)...); d.Verdict != inspect.Pass {
				t.Fatalf("decision %+v", d)
			}
			name := strings.ReplaceAll(tls.VersionName(v), " ", "")
			want := fmt.Sprintf("client_hello sni=bench.test version=TLS1.2\nserver_hello version=%s retry=false\nestablished %s", name, name)
			if got := logged(h); got != want {
				t.Errorf("logged:\n%s\nwant:\n%s", got, want)
			}
			if errs := messages(h.logs, zapcore.ErrorLevel); len(errs) > 0 {
				t.Errorf("errors: %v", errs)
			}
		})
	}
}

// A unit the state's element does not take is a parse_error: the example
// jumps to fail, whose action drops the connection. Here the server sends
// a HelloRequest, which the built-in machine allows while it waits for the
// server's ChangeCipherSpec, and the example does not.
func TestExampleMachineParseErrorDrops(t *testing.T) {
	h := newHarness(t, nil, Options{Dir: exampleDir(t), PoolSize: 1})
	ss := newSession(t, h, nil)
	transcript := tlsTranscript(t, tls.VersionTLS12)
	// The client's ChangeCipherSpec and Finished come before the server's
	// last flight.
	last := -1
	for i, c := range transcript {
		if c.dir == dissect.Down && c.data[0] == tlspeer.TypeChangeCipherSpec || c.dir == dissect.Down && strings.Contains(string(c.data), "\x14\x03\x03\x00\x01\x01") {
			last = i
			break
		}
	}
	if last < 0 {
		t.Fatal("no server ChangeCipherSpec in the transcript")
	}
	if d := ss.feed(transcript[:last]...); d.Verdict != inspect.Pass {
		t.Fatalf("before the crafted record: %+v", d)
	}
	if st := ss.s.State(); st != tlssm.StateServerFinished {
		t.Fatalf("built-in machine in %s", st)
	}
	helloRequest := tlspeer.AppendRecord(nil, tlspeer.TypeHandshake, 0x0303, []byte{0, 0, 0, 0})
	d := ss.feed(chunk{dissect.Down, helloRequest})
	want := fmt.Sprintf("ssl_state_machine.lua:%d", lineOf(t, "any:on{ event = events.fail"))
	if d.Verdict != inspect.Drop || d.Rule != want ||
		!strings.Contains(d.Reason, "tls.grammar.new_session_ticket + tls.grammar.change_cipher_spec: got hello_request from the server") {
		t.Errorf("decision %+v, want a drop by %s", d, want)
	}
	if got := logged(h); !strings.Contains(got, "ssl: tls.grammar.new_session_ticket + tls.grammar.change_cipher_spec: got hello_request from the server") {
		t.Errorf("logged: %s", got)
	}
}

// machineSet is a rule set of one machine, whose definition's body is
// body, and of the rules in rules.
func machineSet(t *testing.T, evs []string, body, rules string, opts Options) *harness {
	t.Helper()
	if opts.PoolSize == 0 {
		opts.PoolSize = 1
	}
	return newHarness(t, map[string]string{"ssl.lua": machineFile(evs, body) + rules}, opts)
}

// The engine's own rules: an unhandled parse_error or missing_grammar
// fails the machine, which drops the connection with the failure as the
// reason and the machine as the rule; alerts and heartbeats the element
// does not take are events of their own; finish ends the machine, and the
// connection goes on.
func TestLuaMachineDefaults(t *testing.T) {
	transcript := tlsTranscript(t, tls.VersionTLS12)
	hello := transcript[0]
	alert := chunk{dissect.Down, tlspeer.AppendRecord(nil, tlspeer.TypeAlert, 0x0303, []byte{2, 40})}

	t.Run("unhandled parse_error", func(t *testing.T) {
		h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  wait = state(nil, tls.grammar.certificate)
  hello:on{ event = events.up, jump = wait }
  initial(hello)
`, "", Options{})
		d := newSession(t, h, nil).feed(transcript...)
		if d.Verdict != inspect.Drop || d.Rule != "ssl.lua:3" ||
			d.Reason != `state machine failed: state machine "ssl": state "wait": on parse_error: tls.grammar.certificate: got server_hello from the server` {
			t.Errorf("decision %+v", d)
		}
	})
	t.Run("missing_grammar", func(t *testing.T) {
		for _, handled := range []bool{false, true} {
			extra := ""
			if handled {
				extra = `silent:on{ event = events.missing_grammar,
    execute = function (self, dir, bytes) self:log("missing " .. dir .. " " .. #bytes .. " " .. bytes:byte(1)) end,
    jump = finish }`
			}
			h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  silent = state(nil, nil)
  hello:on{ event = events.up, jump = silent }
  `+extra+`
  initial(hello)
`, "", Options{})
			ss := newSession(t, h, nil)
			d := ss.feed(transcript...)
			switch {
			case handled && d.Verdict != inspect.Pass:
				t.Errorf("handled: decision %+v", d)
			case handled && (!strings.HasPrefix(logged(h), "missing down ") || !strings.HasSuffix(logged(h), " 2")):
				// The ServerHello message with its header, type 2.
				t.Errorf("handled: logged %q", logged(h))
			case !handled && (d.Verdict != inspect.Drop || !strings.Contains(d.Reason, "on missing_grammar: no grammar element for down")):
				t.Errorf("unhandled: decision %+v", d)
			}
		}
	})
	t.Run("alert events", func(t *testing.T) {
		h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  wait = state(nil, tls.grammar.server_hello)
  hello:on{ event = events.up, jump = wait }
  any:on{ event = events.alert, execute = function (self, a)
    self:log("alert " .. a.level .. " " .. a.description .. " " .. a.direction .. " in " .. self.state) end }
  initial(hello)
`, "", Options{})
		ss := newSession(t, h, nil)
		if d := ss.feed(hello, alert); d.Verdict != inspect.Pass {
			t.Errorf("decision %+v", d)
		}
		if got := logged(h); got != "alert fatal handshake_failure down in wait" {
			t.Errorf("logged %q", got)
		}
	})
	t.Run("an element that names alerts", func(t *testing.T) {
		h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  wait = state(nil, tls.grammar.server_hello + tls.grammar.alert)
  hello:on{ event = events.up, jump = wait }
  wait:on{ event = events.down, when = tls.grammar.alert, execute = function (self, a) self:log("down " .. a.description) end }
  any:on{ event = events.alert, execute = function (self, a) self:log("event " .. a.description) end }
  initial(hello)
`, "", Options{})
		newSession(t, h, nil).feed(hello, alert)
		if got := logged(h); got != "down handshake_failure" {
			t.Errorf("logged %q", got)
		}
	})
	t.Run("finish", func(t *testing.T) {
		h := machineSet(t, nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, jump = finish }
  any:on{ event = events.finish, execute = function (self) self:log("finished in " .. self.state) end }
  initial(hello)
`, "", Options{})
		ss := newSession(t, h, nil)
		if d := ss.feed(transcript...); d.Verdict != inspect.Pass {
			t.Errorf("decision %+v", d)
		}
		if got := logged(h); got != "finished in hello" {
			t.Errorf("logged %q", got)
		}
	})
}

// What the functions of a machine see and do: self (flow, state, data,
// trigger with several parameters, drop as the transition's rule), guards
// on elements and functions, enter and leave, and the errors a function
// can make, contained like a rule's.
func TestLuaMachineFunctions(t *testing.T) {
	transcript := tlsTranscript(t, tls.VersionTLS12)
	body := `
  hello = state(tls.grammar.client_hello, nil)
  server = state(nil, tls.grammar.certificate + tls.grammar.handshake)
  hello:on{ event = events.up,
    execute = function (self, h)
      self.data.sni = h.sni
      self.data.kept = h
      self:trigger("seen", h.sni, 2, "three")
    end,
    jump = server }
  server:on{ event = events.enter, execute = function (self) self:log("enter " .. self.state .. " " .. self.data.sni) end }
  server:on{ event = events.down, when = tls.grammar.certificate, execute = function (self, cert)
    self:log("certificate " .. #cert.chain .. " " .. cert.chain[1].subject)
    local ok, err = pcall(function () return self.data.kept.alpn end)
    self:log("kept " .. tostring(ok) .. " " .. tostring(err))
  end }
  server:on{ event = events.down, when = function (self, msg) return msg.type == "server_hello_done" end,
    execute = function (self, msg) self:drop("done after " .. msg.length .. " bytes") end }
  server:on{ event = events.down, execute = function (self, msg) self:log("down " .. msg.type) end }
  initial(hello)
`
	rules := `
haka.rule{ on = ssl.events.seen, eval = function (flow, sni, two, three)
  flow:log("seen " .. sni .. " " .. two .. " " .. three .. " " .. flow.dst_port)
end }
`
	h := machineSet(t, []string{"seen"}, body, rules, Options{})
	d := newSession(t, h, nil).feed(transcript...)
	if d.Verdict != inspect.Drop || d.Rule != "ssl.lua:20" || d.Reason != "done after 0 bytes" {
		t.Errorf("decision %+v", d)
	}
	want := strings.Join([]string{
		"seen bench.test 2 three 443",
		"enter server bench.test",
		"down server_hello",
		"certificate 1 CN=haka-proxy test",
		"kept false ssl.lua:17: hello.alpn: the unit it was parsed from is over; copy the values you keep while it is judged",
		"down server_key_exchange",
	}, "\n")
	if got := logged(h); got != want {
		t.Errorf("logged:\n%s\nwant:\n%s", got, want)
	}

	for _, tc := range []struct {
		name, body string
		policy     ErrorPolicy
		verdict    inspect.Verdict
		rule, log  string
	}{
		{"error in execute, drop", `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) error("broken") end, jump = finish }
  initial(hello)
`, PolicyDrop, inspect.Drop, "ssl.lua:6", "rule failed rule=ssl.lua:6 error=ssl.lua:6: broken"},
		{"error in execute, pass", `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) error("broken") end, jump = finish }
  initial(hello)
`, PolicyPass, inspect.Pass, "", "rule failed rule=ssl.lua:6 error=ssl.lua:6: broken"},
		{"trigger in a guard", `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, when = function (self) self:trigger("seen") return true end, jump = finish }
  initial(hello)
`, PolicyDrop, inspect.Drop, "ssl.lua:6", `rule failed rule=ssl.lua:6 error=ssl.lua:6: self:trigger("seen"): a guard (when) only looks; trigger events in execute`},
		{"trigger of an unknown name", `
  hello = state(tls.grammar.client_hello, nil)
  local name = "se" .. "em"
  hello:on{ event = events.up, execute = function (self) self:trigger(name) end, jump = finish }
  initial(hello)
`, PolicyDrop, inspect.Drop, "ssl.lua:7", `rule failed rule=ssl.lua:7 error=ssl.lua:7: self:trigger("seem"): dissector ssl registers no event "seem" (did you mean "seen"?)`},
		{"a runaway action", `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) while true do end end, jump = finish }
  initial(hello)
`, PolicyDrop, inspect.Drop, "ssl.lua:6", "rule failed rule=ssl.lua:6 error=exceeded the 10ms deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := machineSet(t, []string{"seen"}, tc.body, "", Options{ErrorPolicy: tc.policy})
			d := newSession(t, h, nil).feed(transcript...)
			if d.Verdict != tc.verdict || d.Rule != tc.rule {
				t.Errorf("decision %+v, want %s by %q", d, tc.verdict, tc.rule)
			}
			if errs := strings.Join(messages(h.logs, zapcore.ErrorLevel), "\n"); errs != tc.log {
				t.Errorf("logged %q, want %q", errs, tc.log)
			}
		})
	}
}

// Timeouts run in stream time: a replay's packet time (a Session without
// timers fires them when a call passes them), and live the Session's one
// timer, which now also waits for the Lua machines' deadlines.
func TestLuaMachineTimeouts(t *testing.T) {
	body := `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.timeout(2.5), execute = function (self) self:log("timeout in " .. self.state) end, jump = fail }
  initial(hello)
`
	t.Run("stream time", func(t *testing.T) {
		h := machineSet(t, nil, body, "", Options{})
		ss := newSession(t, h, nil)
		start := ss.now
		ss.now = start.Add(2499 * time.Millisecond)
		if d := ss.feed(chunk{dissect.Up, []byte{0x16, 0x03}}); d.Verdict != inspect.Pass {
			t.Fatalf("before the deadline: %+v", d)
		}
		ss.now = start.Add(2500 * time.Millisecond)
		d := ss.feed(chunk{dissect.Up, []byte{0x01}})
		if d.Verdict != inspect.Drop || d.Rule != "ssl.lua:6" || !strings.Contains(d.Reason, "on timeout(2.5s)") {
			t.Errorf("decision %+v", d)
		}
		if got := logged(h); got != "timeout in hello" {
			t.Errorf("logged %q", got)
		}
	})
	t.Run("live", func(t *testing.T) {
		h := machineSet(t, nil, strings.Replace(body, "2.5", "0.05", 1), "", Options{})
		f, err := tlssm.NewFactory(tlssm.Options{NewHandler: h.NewTLSHandler})
		if err != nil {
			t.Fatal(err)
		}
		killed := make(chan inspect.Decision, 1)
		s, _ := f.New(&inspect.Flow{ID: 1, Dst: meta(1).Dst, Start: time.Now()}, func(d inspect.Decision) { killed <- d })
		defer s.Close(inspect.Summary{})
		select {
		case d := <-killed:
			if d.Verdict != inspect.Drop || d.Rule != "ssl.lua:6" {
				t.Errorf("killed with %+v", d)
			}
		case <-time.After(liveWait):
			t.Fatal("the machine's timeout never killed the connection")
		}
	})
}

// Connections a Lua dissector does not apply to, and every connection of a
// rule set without one, get the plain handler: nothing of the machines is
// made or run for them.
func TestLuaMachineInstallPorts(t *testing.T) {
	h := newHarness(t, map[string]string{"ssl.lua": strings.Replace(machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) self:log("hello on " .. self.flow.dst_port) end }
  initial(hello)
`), "ssl:install()", "ssl:install{ ports = {8443, 4433} }", 1)}, Options{PoolSize: 1})
	hello := tlsTranscript(t, tls.VersionTLS12)[0]
	for _, port := range []uint16{443, 8443} {
		flow := meta(uint64(port))
		flow.Dst = netip.AddrPortFrom(flow.Dst.Addr(), port)
		handler := h.NewTLSHandler(flow, nil)
		_, lua := handler.(tlssm.UnitHandler)
		handler.Close()
		if lua != (port == 8443) {
			t.Errorf("port %d: handler %T", port, handler)
		}
		newSession(t, h, flow).feed(hello)
	}
	if got := logged(h); got != "hello on 8443" {
		t.Errorf("logged %q", got)
	}
	plain := newHarness(t, map[string]string{"r.lua": `haka.rule{ on = tls.events.client_hello, eval = function () end }`}, Options{PoolSize: 1})
	handler := plain.NewTLSHandler(meta(1), nil)
	if _, ok := handler.(*TLSHandler); !ok {
		t.Errorf("handler %T", handler)
	}
	handler.Close()
}

// The short machine of the README runs as it says: it raises
// client_hello for its rule and passes TLS 1.2 and 1.3.
func TestREADMEMachine(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "### State machines in Lua")
	if !ok {
		t.Fatal("no state machine section in the README")
	}
	_, rest, _ = strings.Cut(rest, "```lua\n")
	src, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("no Lua example in the README's state machine section")
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		h := newHarness(t, map[string]string{"ssl.lua": src}, Options{PoolSize: 1})
		if d := newSession(t, h, nil).feed(tlsTranscript(t, v)...); d.Verdict != inspect.Pass {
			t.Errorf("%s: %+v", tls.VersionName(v), d)
		}
		if got := logged(h); got != "bench.test" {
			t.Errorf("%s: logged %q", tls.VersionName(v), got)
		}
	}
}

// Connections judged at once, on the interpreter states they share: each
// instance lives on its connection's state, under that state's lock, and
// its events reach the rules with its own parameters.
func TestLuaMachineConcurrent(t *testing.T) {
	dir := exampleDir(t)
	if err := os.WriteFile(dir+"/zz_checks.lua", []byte(eventChecks), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil, Options{Dir: dir, PoolSize: 2})
	f := benchFactory(t, h)
	transcripts := [][]chunk{tlsTranscript(t, tls.VersionTLS12), tlsTranscript(t, tls.VersionTLS13)}
	const workers, each = 6, 20
	var wg sync.WaitGroup
	errs := make(chan string, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				flow := &inspect.Flow{ID: uint64(w*each + i + 1), Src: meta(1).Src, Dst: meta(1).Dst, Start: time.Unix(1000, 0)}
				if d := feedConn(f, transcripts[i%2]); d.Verdict != inspect.Pass {
					errs <- fmt.Sprintf("flow %d: %+v", flow.ID, d)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if es := messages(h.logs, zapcore.ErrorLevel); len(es) > 0 {
		t.Errorf("errors: %v", es)
	}
	if n := strings.Count(logged(h), "established TLS1.3"); n != workers*each/2 {
		t.Errorf("%d TLS 1.3 connections established, want %d", n, workers*each/2)
	}
}

// A reload swaps the machines with the rules: connections in flight keep
// the machine they started with, new ones get the new one.
func TestLuaMachineReload(t *testing.T) {
	dir := t.TempDir()
	write := func(word string) {
		src := machineFile(nil, `
  hello = state(tls.grammar.client_hello, nil)
  hello:on{ event = events.up, execute = function (self) self:log("`+word+`") end, jump = finish }
  initial(hello)
`)
		if err := os.WriteFile(dir+"/ssl.lua", []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("old")
	h := newHarness(t, nil, Options{Dir: dir, PoolSize: 1})
	hello := tlsTranscript(t, tls.VersionTLS12)[0]
	before := newSession(t, h, nil)
	write("new")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	after := newSession(t, h, &inspect.Flow{ID: 2, Dst: meta(2).Dst, Start: time.Unix(1000, 0)})
	after.feed(hello)
	before.feed(hello)
	if got := logged(h); !strings.HasSuffix(got, "new\nold") {
		t.Errorf("logged %q", got)
	}
}
