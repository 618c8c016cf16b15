package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// Rules end to end: each rule is a small file in a temporary directory
// loaded with --rules, the proxy runs as `haka-proxy` does (in this
// process), and the peers are real: crypto/tls, openssl, curl.

// countingConn counts the bytes a client wrote and read.
type countingConn struct {
	net.Conn
	written, read atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// connect opens a TLS connection through the proxy at addr to the echo
// server, with SNI sni (the echo server's name when empty); the handshake
// error is returned, not fatal.
func (e *tlsEcho) connect(t *testing.T, addr, sni string) (*tls.Conn, *countingConn, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	cfg := e.cfg.Clone()
	if sni != "" {
		cfg.ServerName = sni
		cfg.InsecureSkipVerify = true // the certificate names the echo server
	}
	tc := tls.Client(cc, cfg)
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(waitFor))
	return tc, cc, tc.Handshake()
}

// alertRecords returns the alert records written so far.
func (rp *runningProxy) alertRecords(t *testing.T) []map[string]any {
	var out []map[string]any
	for _, r := range rp.records(t) {
		if r["type"] == "alert" {
			out = append(out, r)
		}
	}
	return out
}

// logLines returns the log lines (JSON objects) whose message is msg.
func (rp *runningProxy) logLines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(rp.errOut.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func str(v any) string { s, _ := v.(string); return s }

// A rule drops a connection at the record that offends it: the backend
// receives every byte before that record and none of it.
func TestRuleDrop(t *testing.T) {
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"big.lua": `
haka.rule{ on = tls.events.record, eval = function(flow, rec)
  if rec.type == "application_data" and rec.direction == "up" and rec.length > 1000 then
    flow:drop("upload too large")
  end
end }
`})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)
	tc, cc, err := echo.connect(t, rp.addr, "")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, tc, "small enough")
	before := cc.written.Load()
	if _, err := tc.Write(bytes.Repeat([]byte("x"), 4000)); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection survived the large upload")
	}
	tc.Close()
	rec := rp.connRecord(t, tc)
	if rec["verdict"] != "drop" || rec["rule"] != "big.lua:2" || rec["reason"] != "upload too large" {
		t.Fatalf("connection record %v", rec)
	}
	// Everything up to the offending record was forwarded, exactly, and
	// not one byte of it.
	if got, fwd := echo.Received.Load(), int64(rec["bytes_up"].(float64)); got != fwd || fwd != before {
		t.Errorf("the backend received %d bytes, the proxy forwarded %d, the client wrote %d before the large record", got, fwd, before)
	}
	if sent := cc.written.Load() - before; sent < 4000 {
		t.Errorf("the client wrote only %d bytes of the large record", sent)
	}
	if got := echo.Echoed.Load(); got != int64(len("small enough")) {
		t.Errorf("the backend echoed %d bytes", got)
	}
}

// A rule resets a connection: the client sees a TCP reset, and the
// backend nothing.
func TestRuleReset(t *testing.T) {
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"sni.lua": `
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  if hello.sni == "reset.test" then flow:reset("no " .. hello.sni) end
end }
`})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)
	tc, _, err := echo.connect(t, rp.addr, "reset.test")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("handshake: %v, want a connection reset", err)
	}
	tc.Close()
	rec := rp.connRecord(t, tc)
	if rec["verdict"] != "reset" || rec["rule"] != "sni.lua:2" || rec["reason"] != "no reset.test" || rec["bytes_up"] != 0.0 {
		t.Fatalf("connection record %v", rec)
	}
	if got := echo.Received.Load(); got != 0 {
		t.Errorf("the backend received %d bytes", got)
	}
	// Another name passes.
	tc, _, err = echo.connect(t, rp.addr, "")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, tc, "fine")
}

// flow:log writes a log line with the rule's file and line and the
// flow; haka.alert writes a JSON alert line with the event, the rule and
// what the flow got.
func TestRuleLogAndAlert(t *testing.T) {
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"watch.lua": `
haka.rule{ on = tls.events.server_hello, eval = function(flow, hello)
  flow:log("negotiated " .. hello.version)
end }

haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  if hello.sni == "watched.test" then
    haka.alert{ description = "watched name " .. hello.sni, severity = "low", method = { description = "sni watch" } }
  end
  if hello.sni == "banned.test" then
    haka.alert{ description = "banned name", severity = "high", confidence = "high", ref = { "TEST-1" } }
    flow:drop("banned")
  end
end }
`})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)

	tc, _, err := echo.connect(t, rp.addr, "watched.test")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, tc, "watched but fine")
	tc.Close()
	watched := rp.connRecord(t, tc)
	bad, _, err := echo.connect(t, rp.addr, "banned.test")
	if err == nil {
		t.Fatal("the banned name got through")
	}
	bad.Close()
	banned := rp.connRecord(t, bad)

	logs := rp.logLines(t, "negotiated TLS1.3")
	if len(logs) != 1 {
		t.Fatalf("%d log lines from the rule:\n%s", len(logs), rp.errOut)
	}
	if l := logs[0]; l["level"] != "info" || l["rule"] != "watch.lua:2" || l["event"] != "server_hello" ||
		l["sni"] != "watched.test" || l["src"] != tc.LocalAddr().String() || l["flow"] != watched["flow"].(map[string]any)["id"] {
		t.Errorf("log line %v", l)
	}
	alerts := rp.alertRecords(t)
	if len(alerts) != 2 {
		t.Fatalf("%d alerts:\n%s", len(alerts), rp.out)
	}
	for i, want := range []struct {
		desc, severity, action string
		conn                   map[string]any
	}{
		{"watched name watched.test", "low", "none", watched},
		{"banned name", "high", "drop", banned},
	} {
		a := alerts[i]
		f := a["flow"].(map[string]any)
		if a["description"] != want.desc || a["severity"] != want.severity || a["action"] != want.action ||
			a["event"] != "client_hello" || a["rule"] != "watch.lua:6" || f["id"] != want.conn["flow"].(map[string]any)["id"] ||
			f["sni"] != str(want.conn["flow"].(map[string]any)["sni"]) || str(a["time"]) == "" {
			t.Errorf("alert %d: %v", i, a)
		}
	}
	if m := alerts[0]["method"].(map[string]any); m["description"] != "sni watch" {
		t.Errorf("alert method %v", m)
	}
	if r := alerts[1]["ref"].([]any); len(r) != 1 || r[0] != "TEST-1" {
		t.Errorf("alert ref %v", r)
	}
	if banned["verdict"] != "drop" || banned["rule"] != "watch.lua:6" {
		t.Errorf("banned connection %v", banned)
	}
}

// A rule on every event of the contract, loaded with --rules: through a
// TLS 1.2 and a TLS 1.3 exchange, the events that happen once per
// connection fire once.
func TestRuleOnEveryEvent(t *testing.T) {
	echo := echoServer(t)
	var src strings.Builder
	src.WriteString(`local function count(name) return function(flow) flow.data[name] = (flow.data[name] or 0) + 1 end end` + "\n")
	events := []string{"new_connection", "client_hello", "server_hello", "certificate", "handshake", "change_cipher_spec",
		"alert", "heartbeat", "established", "record", "anomaly", "parse_error"}
	for _, e := range events {
		fmt.Fprintf(&src, "haka.rule{ on = tls.events.%s, eval = count(%q) }\n", e, e)
	}
	src.WriteString(`haka.rule{ on = tls.events.end_connection, eval = function(flow, s)
  local names = {}
  for k, n in pairs(flow.data) do names[#names + 1] = k .. "=" .. n end
  table.sort(names)
  flow:log("events " .. table.concat(names, " ") .. " end=" .. s.verdict)
end }
`)
	rp := startProxy(t, "--upstream", echo.addr, "--rules", writeRuleDir(t, map[string]string{"all.lua": src.String()}))
	for _, tc := range []struct {
		version uint16
		once    []string
		some    []string
		never   []string
	}{
		{tls.VersionTLS12, []string{"new_connection", "client_hello", "server_hello", "certificate", "established"},
			[]string{"handshake", "change_cipher_spec", "record", "alert"}, []string{"heartbeat", "anomaly", "parse_error"}},
		// TLS 1.3 encrypts the certificate, and its records all look like
		// application data: the close_notify alert is not seen as one.
		{tls.VersionTLS13, []string{"new_connection", "client_hello", "server_hello", "established"},
			[]string{"handshake", "change_cipher_spec", "record"}, []string{"certificate", "alert", "heartbeat", "anomaly", "parse_error"}},
	} {
		t.Run(tls.VersionName(tc.version), func(t *testing.T) {
			cfg := echo.cfg.Clone()
			cfg.MinVersion, cfg.MaxVersion = tc.version, tc.version
			c, err := net.Dial("tcp", rp.addr)
			if err != nil {
				t.Fatal(err)
			}
			conn := tls.Client(c, cfg)
			conn.SetDeadline(time.Now().Add(waitFor))
			roundTrip(t, conn, "every event")
			conn.Close()
			id := rp.connRecord(t, conn)["flow"].(map[string]any)["id"]
			var line string
			for _, l := range rp.errOut.lines() {
				if strings.HasPrefix(str(l["msg"]), "events ") && l["flow"] == id {
					line = str(l["msg"])
				}
			}
			if !strings.HasSuffix(line, " end=pass") {
				t.Fatalf("end_connection: %q", line)
			}
			for _, e := range tc.once {
				if !strings.Contains(line, " "+e+"=1 ") {
					t.Errorf("%s did not fire once: %s", e, line)
				}
			}
			for _, e := range tc.never {
				if strings.Contains(line, " "+e+"=") {
					t.Errorf("%s fired: %s", e, line)
				}
			}
			for _, e := range tc.some {
				if !strings.Contains(line, " "+e+"=") {
					t.Errorf("%s did not fire: %s", e, line)
				}
			}
		})
	}
}

// lines decodes the JSON log lines written so far.
func (s *syncBuffer) lines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// Rules that try to leave the sandbox or exhaust the process fail as
// rule errors and their connections are dropped, while a normal client
// of the same proxy, at the same time, completes its exchanges.
func TestSandboxEscapesAreContained(t *testing.T) {
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"escape.lua": `
local cases = {}
cases["io.escape.test"] = function() return io.open("/etc/passwd"):read("*a") end
cases["os.escape.test"] = function() return os.execute("touch /tmp/haka-escaped") end
cases["bytecode.escape.test"] = function() return loadstring("\27LuaQ\0\1\4\8\4\8\0")() end
cases["dump.escape.test"] = function() return string.dump(function() end) end
cases["rep.escape.test"] = function() return string.rep("x", 1e10) end
cases["loop.escape.test"] = function() while true do end end
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  local escape = cases[hello.sni or ""]
  if escape then flow:log("escaping " .. hello.sni); escape() end
end }
`})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)

	escapes := []string{"io", "os", "bytecode", "dump", "rep", "loop"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	normal := make(chan error, 1)
	var exchanges atomic.Int64
	go func() {
		// A normal client, going on for as long as the escapes do.
		for {
			select {
			case <-stop:
				normal <- nil
				return
			default:
			}
			tc, _, err := echo.connect(t, rp.addr, "")
			if err == nil {
				_, err = tc.Write([]byte("ping"))
			}
			if err == nil {
				_, err = io.ReadFull(tc, make([]byte, 4))
			}
			tc.Close()
			if err != nil {
				normal <- err
				return
			}
			exchanges.Add(1)
		}
	}()
	results := make([]error, len(escapes))
	conns := make([]*tls.Conn, len(escapes))
	for i, e := range escapes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tc, _, err := echo.connect(t, rp.addr, e+".escape.test")
			conns[i], results[i] = tc, err
			tc.Close()
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-normal; err != nil {
		t.Fatalf("a normal client failed while the escapes ran: %v", err)
	}
	t.Logf("%d normal exchanges", exchanges.Load())
	if exchanges.Load() == 0 {
		t.Error("the normal client completed no exchange")
	}
	for i, e := range escapes {
		if results[i] == nil {
			t.Errorf("%s: the connection survived", e)
		}
		rec := rp.connRecord(t, conns[i])
		reason := str(rec["reason"])
		if rec["verdict"] != "drop" || rec["rule"] != "escape.lua:9" || !strings.HasPrefix(reason, "rule ") {
			t.Errorf("%s: connection record %v", e, rec)
		}
		t.Logf("%s: %s", e, reason)
	}
	failures := rp.logLines(t, "rule failed")
	if len(failures) != len(escapes) {
		t.Errorf("%d rule failures logged, want %d:\n%s", len(failures), len(escapes), rp.errOut)
	}
	if echo.Received.Load() == 0 || int(echo.Echoed.Load()) != 4*int(exchanges.Load()) {
		t.Errorf("the backend echoed %d bytes for %d exchanges", echo.Echoed.Load(), exchanges.Load())
	}
}

// --rule-error-policy: a rule that raises an error drops its connection
// by default, and is skipped, logged, with pass.
func TestRuleErrorPolicy(t *testing.T) {
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"broken.lua": `
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  error("this rule is broken")
end }
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  flow:log("the next rule ran")
end }
`})
	for _, tc := range []struct {
		args []string
		drop bool
	}{
		{nil, true},
		{[]string{"--rule-error-policy", "drop"}, true},
		{[]string{"--rule-error-policy", "pass"}, false},
	} {
		t.Run(strings.Join(append([]string{"policy"}, tc.args...), " "), func(t *testing.T) {
			rp := startProxy(t, append([]string{"--upstream", echo.addr, "--rules", dir}, tc.args...)...)
			conn, _, err := echo.connect(t, rp.addr, "")
			if tc.drop != (err != nil) {
				t.Fatalf("handshake: %v", err)
			}
			if err == nil {
				roundTrip(t, conn, "despite the broken rule")
			}
			conn.Close()
			rec := rp.connRecord(t, conn)
			fails := rp.logLines(t, "rule failed")
			if len(fails) != 1 || fails[0]["rule"] != "broken.lua:2" || !strings.Contains(str(fails[0]["error"]), "broken.lua:3: this rule is broken") {
				t.Fatalf("rule failures logged: %v", fails)
			}
			ran := len(rp.logLines(t, "the next rule ran")) == 1
			if tc.drop {
				if rec["verdict"] != "drop" || rec["rule"] != "broken.lua:2" || !strings.HasPrefix(str(rec["reason"]), "rule error: broken.lua:3: this rule is broken") || ran {
					t.Errorf("connection record %v; next rule ran: %v", rec, ran)
				}
				if fails[0]["policy"] != "drop" {
					t.Errorf("policy logged %v", fails[0]["policy"])
				}
			} else {
				if rec["verdict"] != "pass" || !ran || fails[0]["policy"] != "pass" {
					t.Errorf("connection record %v; next rule ran: %v; logged policy %v", rec, ran, fails[0]["policy"])
				}
			}
		})
	}
}

// waitLogs waits until n log lines have message msg. The log is the only
// sign of a reload's end; poll it, bounded.
func (rp *runningProxy) waitLogs(t *testing.T, msg string, n int) {
	t.Helper()
	for deadline := time.Now().Add(waitFor); len(rp.logLines(t, msg)) < n; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d %q log lines, want %d", len(rp.logLines(t, msg)), msg, n)
		}
	}
}

// SIGHUP while many connections are in flight, opening and exchanging:
// reloads, good and refused, lose no connection and break no exchange.
func TestReloadUnderLoad(t *testing.T) {
	echo := echoServer(t)
	ruleSet := func(v int) string {
		return fmt.Sprintf(`
-- set %d
haka.rule{ on = tls.events.record, eval = function(flow, rec)
  flow.data.records = (flow.data.records or 0) + 1
end }
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  if hello.sni == "never.test" then flow:drop() end
end }
`, v)
	}
	dir := writeRuleDir(t, map[string]string{"v.lua": ruleSet(1)})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)

	const clients, perConn = 32, 3
	var (
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		opened  atomic.Int64
		trips   atomic.Int64
		failure = make(chan error, clients)
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				// A new connection every perConn exchanges, so that some
				// are accepted during the reloads and some span them.
				tc, _, err := echo.connect(t, rp.addr, "")
				if err != nil {
					failure <- fmt.Errorf("client %d: handshake: %w", i, err)
					return
				}
				opened.Add(1)
				for j := range perConn {
					msg := fmt.Sprintf("client %d exchange %d", i, j)
					if _, err := tc.Write([]byte(msg)); err != nil {
						failure <- fmt.Errorf("client %d: %w", i, err)
						return
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(tc, got); err != nil || string(got) != msg {
						failure <- fmt.Errorf("client %d: echo %q: %v", i, got, err)
						return
					}
					trips.Add(1)
				}
				tc.Close()
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	// progress waits until the clients have made n more exchanges, so
	// that every reload happens with connections in flight.
	progress := func(n int64) {
		t.Helper()
		want := trips.Load() + n
		for deadline := time.Now().Add(waitFor); trips.Load() < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the clients made no progress: %d exchanges", trips.Load())
			}
		}
	}
	reloads, refused := 0, 0
	for v := 2; v <= 13; v++ {
		progress(clients)
		if v%4 == 0 {
			os.WriteFile(filepath.Join(dir, "v.lua"), []byte("haka.rule{ on = tls.events.record, eval = nil }\n"), 0o644)
			refused++
			rp.sigs <- syscall.SIGHUP
			rp.waitLogs(t, "reload failed; keeping the running rules", refused)
			continue
		}
		os.WriteFile(filepath.Join(dir, "v.lua"), []byte(ruleSet(v)), 0o644)
		reloads++
		rp.sigs <- syscall.SIGHUP
		rp.waitLogs(t, "rules reloaded", reloads)
	}
	progress(clients)
	close(stop)
	wg.Wait()
	close(failure)
	for err := range failure {
		t.Error(err)
	}
	n := int(opened.Load())
	// Every connection has its record, and every record is a pass.
	deadline := time.Now().Add(waitFor)
	var conns []map[string]any
	for {
		conns = conns[:0]
		for _, r := range rp.records(t) {
			if r["type"] == "connection" {
				conns = append(conns, r)
			}
		}
		if len(conns) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(conns) != n {
		t.Errorf("%d connection records for %d connections", len(conns), n)
	}
	for _, r := range conns {
		if r["verdict"] != "pass" {
			t.Errorf("connection record %v", r)
		}
	}
	if errs := rp.logLines(t, "rule failed"); len(errs) > 0 {
		t.Errorf("rule failures: %v", errs)
	}
	t.Logf("%d connections, %d exchanges, %d reloads, %d refused", n, trips.Load(), reloads, refused)
}

// The stock rules (no --rules) never break a well-formed connection:
// openssl s_client and curl against openssl s_server, curl and a Go
// HTTPS client against a Go HTTPS server, crypto/tls against the echo
// server, TLS 1.2 and 1.3 each. Every connection passes, no alert.
func TestStockRulesPassRealClients(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install openssl curl)", tool)
		}
	}
	certFile, keyFile := tlspeer.PEMFiles(t, "localhost")
	sserver := tlspeer.StartSServer(t, certFile, keyFile, waitFor)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	goSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s over %s", r.URL.Path, tls.VersionName(r.TLS.Version))
	}))
	goSrv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	goSrv.EnableHTTP2 = true
	goSrv.StartTLS()
	defer goSrv.Close()
	echo := echoServer(t)

	toSServer := startProxy(t, "--upstream", sserver)
	toGo := startProxy(t, "--upstream", goSrv.Listener.Addr().String())
	toEcho := startProxy(t, "--upstream", echo.addr)
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)

	type client struct {
		name string
		rp   *runningProxy
		run  func() (string, error) // the output, which must contain want
		want string
	}
	var clients []client
	for _, v := range []string{"1.2", "1.3"} {
		flag := "-tls" + strings.ReplaceAll(v, ".", "_")
		clients = append(clients,
			client{"openssl s_client TLS" + v, toSServer, func() (string, error) {
				cmd := exec.Command("openssl", "s_client", "-connect", toSServer.addr, "-servername", "localhost",
					"-CAfile", certFile, "-verify_return_error", flag)
				cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
				out, err := cmd.CombinedOutput()
				return string(out), err
			}, "Verify return code: 0 (ok)"},
			client{"curl to s_server TLS" + v, toSServer, func() (string, error) {
				out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", certFile, "--tlsv"+v, "--tls-max", v,
					"https://localhost:"+port(toSServer.addr)+"/").CombinedOutput()
				return string(out), err
			}, "s_server"},
			client{"curl to Go TLS" + v, toGo, func() (string, error) {
				out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", certFile, "--tlsv"+v, "--tls-max", v,
					"https://localhost:"+port(toGo.addr)+"/x").CombinedOutput()
				return string(out), err
			}, "hello /x over TLS " + v},
			client{"Go HTTPS to Go TLS" + v, toGo, func() (string, error) {
				version := map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}[v]
				tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: version, MaxVersion: version}, ForceAttemptHTTP2: true}
				defer tr.CloseIdleConnections()
				resp, err := (&http.Client{Transport: tr, Timeout: waitFor}).Get("https://localhost:" + port(toGo.addr) + "/y")
				if err != nil {
					return "", err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return resp.Proto + " " + string(b), err
			}, "HTTP/2.0 hello /y over TLS " + v},
			client{"crypto/tls echo TLS" + v, toEcho, func() (string, error) {
				c := echo.dial(t, toEcho.addr)
				roundTrip(t, c, "stock rules")
				return "echoed", c.Close()
			}, "echoed"},
		)
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.run()
			if err != nil || !strings.Contains(out, c.want) {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
	for _, rp := range []*runningProxy{toSServer, toGo, toEcho} {
		recs := rp.records(t)
		for _, r := range recs {
			if r["type"] != "connection" || r["verdict"] != "pass" {
				t.Errorf("%s", mustJSON(r))
			}
		}
		if len(recs) == 0 {
			t.Errorf("no connection records from the proxy to %s", rp.addr)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
