package rules

import (
	"io/fs"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// hello is a ClientHello as the TLS machine knows it, and buildHello makes
// its parameter table the way the machine does: typed fields straight into
// a table, no reflection.
type hello struct {
	version    string
	versions   []string
	sni        string
	alpn       []string
	ciphers    []uint16
	extensions []extension
	groups     []uint16
	sigalgs    []uint16
	heartbeat  bool
	ech        bool
	sslv2      bool
	ja3        string
	ja3Hash    string
	ja4        string
	length     int
}

type extension struct {
	typ  uint16
	data []byte
}

func strList(L *lua.LState, s []string) *lua.LTable {
	t := L.CreateTable(len(s), 0)
	for _, v := range s {
		t.Append(lua.LString(v))
	}
	return t
}

func numList(L *lua.LState, s []uint16) *lua.LTable {
	t := L.CreateTable(len(s), 0)
	for _, v := range s {
		t.Append(lua.LNumber(v))
	}
	return t
}

func buildHello(L *lua.LState, h *hello) lua.LValue {
	t := L.CreateTable(0, 15)
	t.RawSetString("version", lua.LString(h.version))
	t.RawSetString("versions", strList(L, h.versions))
	if h.sni != "" {
		t.RawSetString("sni", lua.LString(h.sni))
	}
	t.RawSetString("alpn", strList(L, h.alpn))
	t.RawSetString("ciphers", numList(L, h.ciphers))
	exts := L.CreateTable(len(h.extensions), 0)
	for _, e := range h.extensions {
		et := L.CreateTable(0, 2)
		et.RawSetString("type", lua.LNumber(e.typ))
		et.RawSetString("data", lua.LString(e.data))
		exts.Append(et)
	}
	t.RawSetString("extensions", exts)
	t.RawSetString("groups", numList(L, h.groups))
	t.RawSetString("sigalgs", numList(L, h.sigalgs))
	t.RawSetString("heartbeat", lua.LBool(h.heartbeat))
	t.RawSetString("ech", lua.LBool(h.ech))
	t.RawSetString("sslv2", lua.LBool(h.sslv2))
	t.RawSetString("ja3", lua.LString(h.ja3))
	t.RawSetString("ja3_hash", lua.LString(h.ja3Hash))
	t.RawSetString("ja4", lua.LString(h.ja4))
	t.RawSetString("length", lua.LNumber(h.length))
	return t
}

// chromeHello is a modern browser's ClientHello: TLS 1.3 with 1.2
// fallback, GREASE, post-quantum key share.
func chromeHello() *hello {
	h := &hello{
		version:  "TLS1.2",
		versions: []string{"TLS1.3", "TLS1.2"},
		sni:      "www.example.com",
		alpn:     []string{"h2", "http/1.1"},
		ciphers:  []uint16{0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		groups:   []uint16{0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018},
		sigalgs:  []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601},
		ja3:      "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,0-23-65281-10-11-35-16-5-13-18-51-45-43-27-17513-21,29-23-24,0",
		ja3Hash:  "cd08e31494f9531f560d64c695473da9",
		ja4:      "t13d1516h2_8daaf6152771_02713d6af862",
		length:   1789,
	}
	for _, typ := range []uint16{0x0a0a, 0, 23, 65281, 10, 11, 35, 16, 5, 13, 18, 51, 45, 43, 27, 17513, 21} {
		size := 4
		if typ == 51 {
			size = 1263 // X25519MLKEM768 + X25519 key shares
		}
		h.extensions = append(h.extensions, extension{typ, make([]byte, size)})
	}
	return h
}

// event is one event of a synthetic connection.
type event struct {
	ev    Event
	build func(*lua.LState) lua.LValue
}

func tlsEvent(name string, p any) event {
	for i := range Event(len(TLSDissector().Events)) {
		if TLSDissector().Events[i] == name {
			var build func(*lua.LState) lua.LValue
			if p != nil {
				build = param(p)
			}
			return event{i, build}
		}
	}
	panic("no tls event " + name)
}

func hs(typ, dir string, length int) event {
	return tlsEvent("handshake", map[string]any{"type": typ, "length": length, "direction": dir})
}

func record(typ, dir string, length int) event {
	return tlsEvent("record", map[string]any{"type": typ, "version": "TLS1.2", "length": length, "direction": dir})
}

var certChain = map[string]any{"chain": []any{
	map[string]any{"subject": "CN=www.example.com", "issuer": "CN=Example CA", "serial": "0a1b", "sans": []string{"www.example.com"},
		"not_before": "2026-01-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z", "sha256": strings.Repeat("ab", 32)},
}}

// normalTLS12 is the event sequence of a well-formed TLS 1.2 connection
// with a benign encrypted heartbeat after application data.
func normalTLS12() []event {
	h := chromeHello()
	h.versions = nil
	return []event{
		tlsEvent("new_connection", nil),
		record("handshake", "up", 1793),
		{TLS(1), func(L *lua.LState) lua.LValue { return buildHello(L, h) }},
		hs("client_hello", "up", 1789),
		record("handshake", "down", 3000),
		tlsEvent("server_hello", map[string]any{"version": "TLS1.2", "cipher": 0xc02f, "extensions": []any{}, "retry": false,
			"ja3s": "771,49199,65281-0-11-35-16", "ja3s_hash": "ccc514751b175866924439bdbb5bba34"}),
		hs("server_hello", "down", 80),
		tlsEvent("certificate", certChain),
		hs("certificate", "down", 2500),
		hs("server_key_exchange", "down", 300),
		hs("server_hello_done", "down", 0),
		hs("client_key_exchange", "up", 66),
		tlsEvent("change_cipher_spec", "up"),
		tlsEvent("change_cipher_spec", "down"),
		tlsEvent("established", nil),
		record("application_data", "up", 500),
		tlsEvent("heartbeat", map[string]any{"direction": "up", "record_length": 64, "encrypted": true}),
		tlsEvent("heartbeat", map[string]any{"direction": "down", "record_length": 64, "encrypted": true, "leak": false}),
		tlsEvent("alert", map[string]any{"encrypted": true, "direction": "up"}),
		tlsEvent("end_connection", map[string]any{"bytes_up": 3000, "bytes_down": 9000, "duration": 1.5, "verdict": "pass"}),
	}
}

// normalTLS13 is a well-formed TLS 1.3 connection with middlebox
// compatibility mode.
func normalTLS13() []event {
	h := chromeHello()
	return []event{
		tlsEvent("new_connection", nil),
		{TLS(1), func(L *lua.LState) lua.LValue { return buildHello(L, h) }},
		hs("client_hello", "up", 1789),
		tlsEvent("server_hello", map[string]any{"version": "TLS1.3", "cipher": 0x1301, "extensions": []any{}, "retry": false,
			"ja3s": "771,4865,43-51", "ja3s_hash": "eb1d94daa7e0344597e756a1fb6e7054"}),
		hs("server_hello", "down", 118),
		tlsEvent("change_cipher_spec", "down"),
		tlsEvent("change_cipher_spec", "up"),
		tlsEvent("established", nil),
		tlsEvent("end_connection", map[string]any{"bytes_up": 2000, "bytes_down": 5000, "duration": 0.2, "verdict": "pass"}),
	}
}

// The stock rules never break a well-formed TLS 1.2 or 1.3 connection:
// every event passes, and nothing is alerted or logged above debug.
func TestStockRulesPassNormalConnections(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 2})
	for name, events := range map[string][]event{"TLS1.2": normalTLS12(), "TLS1.3": normalTLS13()} {
		f := h.NewFlow(meta(1), &flowInfo{info: inspect.Info{SNI: "www.example.com", Version: name}})
		for i, e := range events {
			if d := f.Eval(e.ev, e.build); d != (inspect.Decision{}) {
				t.Errorf("%s event %d (%v): %+v", name, i, e.ev, d)
			}
		}
		f.Close()
	}
	if a := h.alerts.lines(t); len(a) != 0 {
		t.Errorf("alerts: %v", a)
	}
	for _, m := range messages(h.logs, zapcore.InfoLevel) {
		if !strings.HasPrefix(m, "rules loaded") {
			t.Errorf("logged: %s", m)
		}
	}
}

// stockCase feeds one event to the stock rules and says what must come of
// it.
type stockCase struct {
	name  string
	event event
	// verdict and rule of the decision; alert is the alert description's
	// prefix, "" for no alert; log is a flow:log message prefix.
	verdict inspect.Verdict
	rule    string
	alert   string
	log     string
}

func runStockCases(t *testing.T, h *harness, cases []stockCase) {
	t.Helper()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.alerts.lines(t))
			logsBefore := h.logs.Len()
			f := h.NewFlow(meta(uint64(i)), &flowInfo{})
			d := f.Eval(tc.event.ev, tc.event.build)
			f.Close()
			if d.Verdict != tc.verdict || !strings.HasPrefix(d.Rule, tc.rule) {
				t.Errorf("decision %+v, want %v by %s", d, tc.verdict, tc.rule)
			}
			alerts := h.alerts.lines(t)[before:]
			switch {
			case tc.alert == "" && len(alerts) != 0:
				t.Errorf("unexpected alerts %v", alerts)
			case tc.alert != "" && len(alerts) != 1:
				t.Errorf("%d alerts, want 1: %v", len(alerts), alerts)
			case tc.alert != "":
				a := alerts[0]
				desc, _ := a["description"].(string)
				if !strings.HasPrefix(desc, tc.alert) || a["action"] != tc.verdict.String() ||
					!strings.HasPrefix(a["rule"].(string), tc.rule) || a["event"] != TLSDissector().Events[tc.event.ev] {
					t.Errorf("alert %v, want %q, action %v, rule %s", a, tc.alert, tc.verdict, tc.rule)
				}
			}
			var logged []string
			for _, e := range h.logs.All()[logsBefore:] {
				if e.Level >= zapcore.InfoLevel {
					logged = append(logged, e.Message)
				}
			}
			switch {
			case tc.log == "" && len(logged) != 0:
				t.Errorf("unexpected log records %q", logged)
			case tc.log != "" && (len(logged) != 1 || !strings.HasPrefix(logged[0], tc.log)):
				t.Errorf("log records %q, want one %q", logged, tc.log)
			}
		})
	}
}

func anomaly(name string) event {
	return tlsEvent("anomaly", map[string]any{"name": name, "direction": "up", "detail": "test"})
}

func serverHello(version string) event {
	return tlsEvent("server_hello", map[string]any{"version": version, "cipher": 0x002f, "retry": false})
}

func TestStockHeartbleed(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 1})
	hb := func(fields map[string]any) event { return tlsEvent("heartbeat", fields) }
	runStockCases(t, h, []stockCase{
		{name: "cleartext overflow", event: hb(map[string]any{"direction": "up", "type": "request", "record_length": 3, "payload_length": 16384, "overflow": true}),
			verdict: inspect.Drop, rule: "heartbleed.lua:", alert: "heartbleed: heartbeat request payload_length larger than its record"},
		{name: "encrypted leak", event: hb(map[string]any{"direction": "down", "record_length": 16408, "encrypted": true, "leak": true}),
			verdict: inspect.Drop, rule: "heartbleed.lua:", alert: "heartbleed: encrypted heartbeat response longer"},
		{name: "heartbeat during handshake", event: anomaly("heartbeat_during_handshake"),
			verdict: inspect.Drop, rule: "heartbleed.lua:", alert: "heartbleed: heartbeat during the handshake"},
		{name: "heartbeat before application data", event: anomaly("heartbeat_before_application_data"),
			verdict: inspect.Drop, rule: "heartbleed.lua:", alert: "heartbleed: encrypted heartbeat before any application data"},
		{name: "request too short", event: anomaly("heartbeat_request_too_short"),
			verdict: inspect.Drop, rule: "heartbleed.lua:", alert: "heartbleed: encrypted heartbeat request shorter"},
		{name: "benign cleartext heartbeat", event: hb(map[string]any{"direction": "up", "type": "request", "record_length": 35, "payload_length": 16, "overflow": false}),
			verdict: inspect.Pass},
		{name: "benign encrypted heartbeat", event: hb(map[string]any{"direction": "down", "record_length": 64, "encrypted": true}),
			verdict: inspect.Pass},
	})
}

func TestStockHygiene(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 1})
	cases := []stockCase{
		{name: "parse error", event: tlsEvent("parse_error", map[string]any{"message": "record length 70000 too large", "direction": "up"}),
			verdict: inspect.Drop, rule: "hygiene.lua:", alert: "malformed TLS (up): record length 70000 too large"},
		{name: "not TLS", event: tlsEvent("parse_error", map[string]any{"message": `not TLS: the client's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83)`, "direction": "up"}),
			verdict: inspect.Drop, rule: "hygiene.lua:", alert: `not TLS (up): the client's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83)`},
		{name: "handshake message too large is logged", event: anomaly("handshake_message_too_large"),
			verdict: inspect.Pass, log: "TLS protocol anomaly: handshake_message_too_large (up): test"},
		{name: "an unknown anomaly is ignored", event: anomaly("something_new"), verdict: inspect.Pass},
	}
	for _, name := range []string{"invalid_record_type", "duplicate_extension", "several_sni_names", "unexpected_message", "record_spans_key_change", "psk_not_last"} {
		cases = append(cases, stockCase{name: name, event: anomaly(name), verdict: inspect.Drop, rule: "hygiene.lua:", alert: "TLS protocol anomaly: " + name + " (up): test"})
	}
	runStockCases(t, h, cases)
}

func TestStockVersionPolicy(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 1})
	sslv2Hello := func(version string) event {
		hl := chromeHello()
		hl.sslv2, hl.version, hl.versions = true, version, nil
		return event{TLS(1), func(L *lua.LState) lua.LValue { return buildHello(L, hl) }}
	}
	runStockCases(t, h, []stockCase{
		{name: "SSLv3 negotiated", event: serverHello("SSL3.0"), verdict: inspect.Drop, rule: "version_policy.lua:", alert: "refused protocol version SSL3.0"},
		{name: "SSLv2 negotiated", event: serverHello("SSL2.0"), verdict: inspect.Drop, rule: "version_policy.lua:", alert: "refused protocol version SSL2.0"},
		{name: "SSLv2-only hello", event: sslv2Hello("SSL2.0"), verdict: inspect.Drop, rule: "version_policy.lua:", alert: "refused protocol version SSL2.0 (SSLv2-only ClientHello)"},
		{name: "SSLv2-format hello offering TLS1.0", event: sslv2Hello("TLS1.0"), verdict: inspect.Pass},
		{name: "TLS1.0 is logged", event: serverHello("TLS1.0"), verdict: inspect.Pass, log: "deprecated protocol version TLS1.0 negotiated"},
		{name: "TLS1.1 is logged", event: serverHello("TLS1.1"), verdict: inspect.Pass, log: "deprecated protocol version TLS1.1 negotiated"},
		{name: "TLS1.2", event: serverHello("TLS1.2"), verdict: inspect.Pass},
		{name: "TLS1.3", event: serverHello("TLS1.3"), verdict: inspect.Pass},
		{name: "HelloRetryRequest", event: tlsEvent("server_hello", map[string]any{"version": "TLS1.3", "retry": true}), verdict: inspect.Pass},
	})
}

// stockWith loads the stock rules with one file's config table edited, the
// way an operator tunes them.
func stockWith(t *testing.T, file, old, new string) *harness {
	t.Helper()
	files := map[string]string{}
	entries, err := fs.ReadDir(Stock(), ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := fs.ReadFile(Stock(), e.Name())
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(b)
	}
	if !strings.Contains(files[file], old) {
		t.Fatalf("%s has no %q", file, old)
	}
	files[file] = strings.Replace(files[file], old, new, 1)
	return newHarness(t, files, Options{PoolSize: 1})
}

func helloWith(edit func(*hello)) event {
	h := chromeHello()
	edit(h)
	return event{TLS(1), func(L *lua.LState) lua.LValue { return buildHello(L, h) }}
}

func TestStockSNIPolicy(t *testing.T) {
	// Empty lists: no rule at all on client_hello from sni_policy.lua.
	for _, r := range newHarness(t, nil, Options{PoolSize: 1}).Rules() {
		if strings.HasPrefix(r.Loc, "sni_policy.lua") {
			t.Errorf("empty SNI policy declared %v", r)
		}
	}
	sni := func(name string) event { return helloWith(func(h *hello) { h.sni = name }) }

	deny := stockWith(t, "sni_policy.lua", "  deny = {\n", "  deny = { \"blocked.example\", \"*.ads.example\",\n")
	runStockCases(t, deny, []stockCase{
		{name: "denied name", event: sni("blocked.example"), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: denied server name blocked.example"},
		{name: "denied, case and trailing dot", event: sni("BLOCKED.Example."), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: denied server name"},
		{name: "denied subdomain", event: sni("x.y.ads.example"), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: denied"},
		{name: "wildcard does not match its base", event: sni("ads.example"), verdict: inspect.Pass},
		{name: "other name", event: sni("www.example.com"), verdict: inspect.Pass},
		{name: "no SNI", event: sni(""), verdict: inspect.Pass},
	})

	allow := stockWith(t, "sni_policy.lua", "  allow = {\n", "  allow = { \"service.example.com\", \"*.internal.example\",\n")
	runStockCases(t, allow, []stockCase{
		{name: "allowed name", event: sni("service.example.com"), verdict: inspect.Pass},
		{name: "allowed subdomain", event: sni("db.internal.example"), verdict: inspect.Pass},
		{name: "name not allowed", event: sni("evil.example"), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: server name not allowed evil.example"},
		{name: "suffix without its dot", event: sni("evilinternal.example"), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: server name not allowed"},
		{name: "no SNI", event: sni(""), verdict: inspect.Drop, rule: "sni_policy.lua:", alert: "SNI policy: ClientHello without a server name"},
	})
}

func TestStockFingerprintBlocklist(t *testing.T) {
	for _, r := range newHarness(t, nil, Options{PoolSize: 1}).Rules() {
		if strings.HasPrefix(r.Loc, "fingerprint_blocklist.lua") {
			t.Errorf("empty blocklists declared %v", r)
		}
	}
	h := stockWith(t, "fingerprint_blocklist.lua", "  ja3 = {},\n  ja4 = {},\n",
		"  ja3 = { [\"CD08E31494F9531F560D64C695473DA9\"] = \"test scanner\" },\n  ja4 = { [\"t13d1516h2_8daaf6152771_000000000000\"] = \"test bot\" },\n")
	runStockCases(t, h, []stockCase{
		{name: "blocked JA3", event: helloWith(func(*hello) {}), verdict: inspect.Drop, rule: "fingerprint_blocklist.lua:",
			alert: "blocked JA3 fingerprint cd08e31494f9531f560d64c695473da9 (test scanner)"},
		{name: "blocked JA4", event: helloWith(func(h *hello) { h.ja3Hash = "00"; h.ja4 = "t13d1516h2_8daaf6152771_000000000000" }),
			verdict: inspect.Drop, rule: "fingerprint_blocklist.lua:", alert: "blocked JA4 fingerprint t13d1516h2_8daaf6152771_000000000000 (test bot)"},
		{name: "other client", event: helloWith(func(h *hello) { h.ja3Hash = "00" }), verdict: inspect.Pass},
	})
}

// Every stock file opens with a header comment saying what it does and
// how to tune it.
func TestStockHeaders(t *testing.T) {
	entries, _ := fs.ReadDir(Stock(), ".")
	if len(entries) != 5 {
		t.Errorf("%d stock files", len(entries))
	}
	for _, e := range entries {
		b, _ := fs.ReadFile(Stock(), e.Name())
		if !strings.HasPrefix(string(b), "-- "+e.Name()+": ") || !strings.Contains(string(b), "config") {
			t.Errorf("%s: no header comment with tuning notes", e.Name())
		}
	}
}
