package rules

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// tlsExtraFields are the fields the adapter gives beyond the contract,
// with their kinds.
var tlsExtraFields = map[string]map[string]string{
	"record":         {"encrypted": "boolean"},
	"end_connection": {"reason": "string", "rule": "string"},
}

// tlsOptionalFields may be nil: what is not known (an encrypted alert's
// level) or not there (a hello without SNI, an anomaly without detail).
// Every other field must have a value in every event.
var tlsOptionalFields = map[string][]string{
	"client_hello":   {"sni"},
	"alert":          {"level", "description"},
	"heartbeat":      {"type", "payload_length"},
	"anomaly":        {"detail"},
	"end_connection": {"reason", "rule"},
}

// luaKind maps a contract field type (tlssm.Field.Type) to a checker of
// the contract rule.
func luaKind(t *testing.T, typ string) string {
	t.Helper()
	switch {
	case typ == "string", typ == "number":
		return typ
	case typ == "bool":
		return "boolean"
	case typ == "list of strings":
		return "strings"
	case typ == "list of numbers":
		return "numbers"
	case typ == "list of {type=, data=}":
		return "extensions"
	case strings.HasPrefix(typ, "list of {subject="):
		return "certs"
	}
	t.Fatalf("contract field type %q: the test does not know how to check it", typ)
	return ""
}

// contractRules returns a rule file with one rule per event of the
// contract. Each rule counts its event in flow.data, checks the type of
// every field of its parameter against the contract (a mismatch, a
// missing value or a field beyond the contract is a rule error), and logs
// "saw EVENT k=v ..." with every field; end_connection logs the counts.
func contractRules(t *testing.T) string {
	var b strings.Builder
	b.WriteString("local spec = {}\nlocal optional = {}\n")
	for _, e := range tlssm.Events {
		if e.Fields == nil {
			continue
		}
		fmt.Fprintf(&b, "spec.%s = {", e.Name)
		for _, f := range e.Fields {
			fmt.Fprintf(&b, " %s = %q,", f.Name, luaKind(t, f.Type))
		}
		for name, kind := range tlsExtraFields[e.Name] {
			fmt.Fprintf(&b, " %s = %q,", name, kind)
		}
		b.WriteString(" }\n")
		fmt.Fprintf(&b, "optional.%s = {", e.Name)
		for _, f := range tlsOptionalFields[e.Name] {
			fmt.Fprintf(&b, " %s = true,", f)
		}
		b.WriteString(" }\n")
	}
	b.WriteString(`
local function list(v, elem)
  if type(v) ~= "table" then return false end
  for i = 1, #v do if not elem(v[i]) then return false end end
  return true
end
local function is(kind) return function(v) return type(v) == kind end end
local check = {
  string = is("string"), number = is("number"), boolean = is("boolean"),
  strings = function(v) return list(v, is("string")) end,
  numbers = function(v) return list(v, is("number")) end,
  extensions = function(v)
    return list(v, function(e) return type(e) == "table" and type(e.type) == "number" and type(e.data) == "string" end)
  end,
  certs = function(v)
    return list(v, function(c)
      if type(c) ~= "table" or type(c.sha256) ~= "string" or #c.sha256 ~= 64 then return false end
      for _, k in ipairs({ "subject", "issuer", "serial", "not_before", "not_after" }) do
        if type(c[k]) ~= "string" then return false end
      end
      return list(c.sans, is("string"))
    end)
  end,
}

local function render(v)
  if type(v) ~= "table" then return tostring(v) end
  local parts = {}
  for i = 1, #v do parts[#parts + 1] = render(v[i]) end
  if v.type ~= nil then parts[#parts + 1] = "type:" .. tostring(v.type) end
  if v.subject ~= nil then parts[#parts + 1] = "subject:" .. v.subject end
  return "[" .. table.concat(parts, ",") .. "]"
end

local function saw(name)
  return function(flow, p)
    local count = flow.data.count or {}
    flow.data.count = count
    count[name] = (count[name] or 0) + 1
    local fields = spec[name]
    local out = { "saw " .. name }
    if fields == nil then
      if name == "change_cipher_spec" then
        if p ~= "up" and p ~= "down" then error(name .. ": parameter " .. tostring(p) .. ", want the direction") end
        out[#out + 1] = p
      elseif p ~= nil then
        error(name .. ": a parameter (" .. type(p) .. "), want none")
      end
    else
      local names = {}
      for k in pairs(fields) do names[#names + 1] = k end
      table.sort(names)
      for _, k in ipairs(names) do
        local v = p[k]
        if v == nil then
          if not optional[name][k] then error(name .. "." .. k .. ": nil") end
        elseif not check[fields[k]](v) then
          error(name .. "." .. k .. ": " .. type(v) .. " " .. render(v) .. ", want " .. fields[k])
        end
        out[#out + 1] = k .. "=" .. render(v)
      end
      for k in pairs(p) do
        if fields[k] == nil then error(name .. "." .. k .. ": not in the contract") end
      end
    end
    flow:log(table.concat(out, " "))
    if name == "end_connection" then
      local names = {}
      for k, n in pairs(count) do names[#names + 1] = k .. "=" .. n end
      table.sort(names)
      flow:log("count " .. table.concat(names, " "))
    end
  end
end
`)
	for _, e := range tlssm.Events {
		fmt.Fprintf(&b, "haka.rule{ on = tls.events.%s, eval = saw(%q) }\n", e.Name, e.Name)
	}
	return b.String()
}

// A rule on every event of the contract, through real connections that
// raise them all: every parameter has exactly the contract's fields with
// the contract's types, every field has a value somewhere, and each event
// fires as often as the connection says it must.
func TestTLSEventContract(t *testing.T) {
	b, cfg := startBackend(t)
	r := startLive(t, map[string]string{"contract.lua": contractRules(t)}, Options{PoolSize: 2}, b.Addr())
	h2 := cfg.Clone()
	h2.NextProtos = []string{"h2", "http/1.1"}

	type scenario struct {
		name string
		// run runs a client on conn, a connection to the proxy.
		run func(t *testing.T, conn net.Conn) error
		// counts are the exact counts of these events; the others are
		// only checked for types.
		counts map[string]int
		// saw are lines the rules must have logged for the connection.
		saw []string
	}
	once := func(names ...string) map[string]int {
		m := map[string]int{}
		for _, n := range names {
			m[n] = 1
		}
		return m
	}
	with := func(m map[string]int, kv ...any) map[string]int {
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1].(int)
		}
		return m
	}
	scenarios := []scenario{
		{
			name: "TLS1.2",
			run: func(t *testing.T, conn net.Conn) error {
				return exchange(conn, h2, tls.VersionTLS12)
			},
			counts: with(once("new_connection", "client_hello", "server_hello", "certificate", "established", "end_connection"),
				"change_cipher_spec", 2, "heartbeat", 0, "parse_error", 0, "anomaly", 0),
			saw: []string{
				"saw client_hello alpn=[h2,http/1.1] ", " sni=backend.test ", " version=TLS1.2 versions=[",
				"saw server_hello ", " cipher=", " retry=false version=TLS1.2",
				"saw certificate chain=[[subject:CN=haka-proxy test]]",
				"saw handshake direction=down length=", " type=server_hello_done",
				"saw handshake direction=up length=", " type=client_key_exchange",
				"saw change_cipher_spec up", "saw change_cipher_spec down",
				"saw record direction=up encrypted=false length=", " type=handshake version=TLS1.0",
				"saw record direction=up encrypted=true length=", " type=application_data version=TLS1.2",
				"saw alert description=nil direction=up encrypted=true level=nil",
				"saw end_connection bytes_down=", " rule=nil verdict=pass",
			},
		},
		{
			name: "TLS1.3",
			run: func(t *testing.T, conn net.Conn) error {
				return exchange(conn, h2, tls.VersionTLS13)
			},
			counts: with(once("new_connection", "client_hello", "server_hello", "established", "end_connection"),
				"certificate", 0, "heartbeat", 0, "parse_error", 0, "anomaly", 0),
			saw: []string{"saw server_hello ", " version=TLS1.3"},
		},
		{
			name: "untrusted certificate",
			run: func(t *testing.T, conn net.Conn) error {
				bad := &tls.Config{ServerName: "backend.test", MaxVersion: tls.VersionTLS12}
				if err := exchange(conn, bad, 0); err == nil {
					t.Error("the client trusted an unknown certificate")
				}
				return nil
			},
			counts: with(once("new_connection", "client_hello", "server_hello", "certificate", "alert", "end_connection"),
				"established", 0),
			saw: []string{"saw alert description=bad_certificate direction=up encrypted=false level=fatal"},
		},
		{
			name: "cleartext heartbleed",
			run: func(t *testing.T, conn net.Conn) error {
				if o := tlspeer.CleartextHeartbleed(conn, liveWait); o.Leaked == 0 {
					t.Errorf("no rule drops, yet the attack got %+v", o)
				}
				return nil
			},
			counts: with(once("new_connection", "client_hello", "server_hello", "end_connection"), "heartbeat", 2, "established", 0),
			saw: []string{
				"saw heartbeat direction=up encrypted=false leak=false overflow=true payload_length=16384 record_length=3 type=request",
				"saw heartbeat direction=down encrypted=false leak=true overflow=false payload_length=16384 ",
				"saw anomaly detail=", " direction=up name=heartbeat_overflow",
				"name=heartbeat_during_handshake",
			},
		},
		{
			name: "encrypted heartbleed",
			run: func(t *testing.T, conn net.Conn) error {
				if o := tlspeer.EncryptedHeartbleed(conn, cfg, 64, liveWait); o.Leaked == 0 {
					t.Errorf("no rule drops, yet the attack got %+v", o)
				}
				return nil
			},
			counts: with(once("new_connection", "client_hello", "established", "end_connection"), "heartbeat", 2),
			saw: []string{
				"saw heartbeat direction=up encrypted=true leak=false overflow=false payload_length=nil record_length=64 type=nil",
				"saw heartbeat direction=down encrypted=true leak=true overflow=false payload_length=nil record_length=16000 type=nil",
				"name=heartbeat_not_negotiated",
			},
		},
		{
			name: "not TLS",
			run: func(t *testing.T, conn net.Conn) error {
				conn.SetDeadline(time.Now().Add(liveWait))
				conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
				conn.Read(make([]byte, 1))
				return nil
			},
			counts: with(once("new_connection", "parse_error", "end_connection"), "client_hello", 0),
			saw: []string{
				`saw parse_error direction=up message=not TLS: the client's first bytes "GET "`,
				" reason=parse error: ", " rule=builtin:fail verdict=drop",
			},
		},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			c := r.dial(t)
			err := sc.run(t, c)
			c.Close()
			if err != nil {
				t.Error(err)
			}
			conn := r.connOf(t, c)
			var lines []string
			for _, e := range r.logs.All() {
				if fmt.Sprint(e.ContextMap()["flow"]) == fmt.Sprint(conn.Flow.ID) {
					lines = append(lines, e.Message)
				}
			}
			all := strings.Join(lines, "\n")
			counts := map[string]int{}
			for _, l := range lines {
				if rest, ok := strings.CutPrefix(l, "count "); ok {
					for _, kv := range strings.Fields(rest) {
						var n int
						name, num, _ := strings.Cut(kv, "=")
						fmt.Sscan(num, &n)
						counts[name] = n
					}
				}
			}
			for name, want := range sc.counts {
				if counts[name] != want {
					t.Errorf("%s fired %d times, want %d", name, counts[name], want)
				}
			}
			for _, want := range sc.saw {
				if !strings.Contains(all, want) {
					t.Errorf("no line with %q", want)
				}
			}
			if t.Failed() {
				t.Logf("connection %+v, rules logged:\n%s", conn, all)
			}
		})
	}
	if errs := messages(r.logs, zapcore.ErrorLevel); len(errs) > 0 {
		t.Errorf("rule errors:\n%s", strings.Join(errs, "\n"))
	}
	// Over all connections, every field of every event had a value.
	for _, e := range tlssm.Events {
		var fields []string
		for _, f := range e.Fields {
			fields = append(fields, f.Name)
		}
		for name := range tlsExtraFields[e.Name] {
			fields = append(fields, name)
		}
		sort.Strings(fields)
		for _, f := range fields {
			if !slices.ContainsFunc(r.logs.All(), func(l observer.LoggedEntry) bool {
				return strings.HasPrefix(l.Message, "saw "+e.Name+" ") && !strings.Contains(l.Message, " "+f+"=nil")
			}) {
				t.Errorf("%s.%s never had a value", e.Name, f)
			}
		}
	}
}

// A parameter is read during its event: a rule that keeps it reads the
// fields it read then, and gets an error naming the mistake for the
// others, after the event and from another connection.
func TestTLSParameterAfterItsEvent(t *testing.T) {
	b, cfg := startBackend(t)
	r := startLive(t, map[string]string{"keep.lua": `
local last
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello)
  if last then
    local ok, err = pcall(function() return last.ja4 end)
    flow:log("other " .. tostring(ok) .. " " .. tostring(err))
  end
  flow.data.hello = hello
  flow.data.sni = hello.sni
  last = hello
end }
haka.rule{ on = tls.events.server_hello, eval = function(flow, sh)
  flow:log("kept sni " .. tostring(flow.data.hello.sni))
  local ok, err = pcall(function() return flow.data.hello.alpn end)
  flow:log("kept alpn " .. tostring(ok) .. " " .. tostring(err))
end }
`}, Options{PoolSize: 1}, b.Addr())
	for range 2 {
		c := r.dial(t)
		if err := exchange(c, cfg, tls.VersionTLS13); err != nil {
			t.Fatal(err)
		}
		r.connOf(t, c)
	}
	got := strings.Join(messages(r.logs, zapcore.InfoLevel), "\n")
	for _, want := range []string{
		"kept sni backend.test",
		"kept alpn false keep.lua:14: hello.alpn: its client_hello event is over; copy the values you keep into flow.data while it runs",
		"other false keep.lua:5: hello.ja4: this hello belongs to another connection's client_hello event; copy the values you keep into flow.data",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no log line %q in\n%s", want, got)
		}
	}
}

// The certificates are parsed with crypto/x509 only when a rule reads
// cert.chain: a certificate crypto/x509 rejects is then an anomaly
// (invalid_certificate) and an entry with an error; unread, it costs
// nothing and raises nothing.
func TestTLSCertificateChainIsLazy(t *testing.T) {
	good, _, err := tlspeer.NewCert("backend.test")
	if err != nil {
		t.Fatal(err)
	}
	// A chain of the real leaf and a truncated certificate.
	bad := good
	bad.Certificate = [][]byte{good.Certificate[0], good.Certificate[0][:100]}
	bad.Leaf = nil
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{bad}, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.(*tls.Conn).Handshake()
			}()
		}
	}()
	for _, read := range []bool{false, true} {
		t.Run(fmt.Sprintf("read=%v", read), func(t *testing.T) {
			src := `
haka.rule{ on = tls.events.anomaly, eval = function(flow, a) flow:log("anomaly " .. a.name) end }
haka.rule{ on = tls.events.certificate, eval = function(flow, cert)
  flow:log("certificate")
  if READ then
    for i, c in ipairs(cert.chain) do flow:log("cert " .. i .. " " .. tostring(c.subject) .. " " .. tostring(c.error ~= nil)) end
  end
end }
`
			r := startLive(t, map[string]string{"cert.lua": strings.Replace(src, "READ", fmt.Sprint(read), 1)}, Options{PoolSize: 1}, ln.Addr().String())
			c := r.dial(t)
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			tc.SetDeadline(time.Now().Add(liveWait))
			tc.Handshake() // the client refuses the truncated certificate
			c.Close()
			r.connOf(t, c)
			got := strings.Join(messages(r.logs, zapcore.InfoLevel), "\n")
			if !strings.Contains(got, "certificate") {
				t.Fatalf("no certificate event:\n%s", got)
			}
			parsed := strings.Contains(got, "anomaly invalid_certificate")
			if parsed != read {
				t.Errorf("invalid_certificate raised: %v, want %v:\n%s", parsed, read, got)
			}
			if read && (!strings.Contains(got, "cert 1 CN=haka-proxy test false") || !strings.Contains(got, "cert 2 nil true")) {
				t.Errorf("chain:\n%s", got)
			}
		})
	}
}
