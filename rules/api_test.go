package rules

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Every event of the contract can be hooked, through tls.events and
// haka.dissectors.tls.events, with on = or hook =, and each rule sees its
// own event's parameter.
func TestEveryContractEventCanBeHooked(t *testing.T) {
	var src strings.Builder
	for i, e := range tlssm.Events {
		key, table := "on", "tls"
		if i%2 == 1 {
			key, table = "hook", "haka.dissectors.tls"
		}
		fmt.Fprintf(&src, "haka.rule{ %s = %s.events.%s, eval = function(flow, p)\n"+
			"  flow.data.seen = (flow.data.seen or '') .. '%s=' .. tostring(type(p) == 'table' and p.tag or p) .. ';'\n"+
			"end }\n", key, table, e.Name, e.Name)
	}
	src.WriteString(`haka.rule{ on = tls.events.end_connection, eval = function(flow, p) p.out = flow.data.seen end }` + "\n")
	h := newHarness(t, map[string]string{"all.lua": src.String()}, Options{PoolSize: 1})
	if got := len(h.Rules()); got != len(tlssm.Events)+1 {
		t.Fatalf("%d rules loaded, want %d", got, len(tlssm.Events)+1)
	}
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	var want strings.Builder
	for _, e := range tlssm.Events {
		if e.ID == tlssm.EvEndConnection {
			continue
		}
		if !f.Hooked(TLS(e.ID)) {
			t.Errorf("%s not hooked", e.Name)
		}
		if d := f.Eval(TLS(e.ID), param(map[string]any{"tag": e.Name + "!"})); d.Verdict != inspect.Pass {
			t.Fatalf("%s: %v", e.Name, d)
		}
		fmt.Fprintf(&want, "%s=%s!;", e.Name, e.Name)
	}
	var end *lua.LTable
	f.Eval(ev(t, "end_connection"), func(L *lua.LState) lua.LValue {
		end = L.NewTable()
		end.RawSetString("tag", lua.LString("end_connection!"))
		return end
	})
	want.WriteString("end_connection=end_connection!;")
	if got := end.RawGetString("out").String(); got != want.String() {
		t.Errorf("events seen:\n got %s\nwant %s", got, want.String())
	}
}

// Rules run in file name order, then declaration order.
func TestEvaluationOrder(t *testing.T) {
	rule := func(tag string) string {
		return `haka.rule{ on = tls.events.client_hello, eval = function(flow, p) p.order = (p.order or '') .. '` + tag + ` ' end }` + "\n"
	}
	h := newHarness(t, map[string]string{
		"20_second.lua": rule("b1") + rule("b2"),
		"10_first.lua":  rule("a1") + rule("a2") + rule("a3"),
		"3_third.lua":   rule("c1"),
	}, Options{PoolSize: 3})
	for id := uint64(0); id < 3; id++ { // every state
		f := h.NewFlow(meta(id), nil)
		var p *lua.LTable
		f.Eval(ev(t, "client_hello"), func(L *lua.LState) lua.LValue { p = L.NewTable(); return p })
		if got := p.RawGetString("order").String(); got != "a1 a2 a3 b1 b2 c1 " {
			t.Errorf("state %d: order %q", id, got)
		}
		f.Close()
	}
	var locs []string
	for _, r := range h.Rules() {
		locs = append(locs, r.Loc)
	}
	if got := strings.Join(locs, ","); got != "10_first.lua:1,10_first.lua:2,10_first.lua:3,20_second.lua:1,20_second.lua:2,3_third.lua:1" {
		t.Errorf("Rules() = %s", got)
	}
}

// The flow's fields, static and live; the live ones are read from FlowInfo
// only when a rule reads them.
func TestFlowFields(t *testing.T) {
	h := newHarness(t, map[string]string{"fields.lua": `
haka.rule{ on = tls.events.client_hello, eval = function(flow, p)
  local keys = { "id", "src", "dst", "src_ip", "src_port", "dst_ip", "dst_port",
                 "sni", "alpn", "version", "ja3", "ja4", "state" }
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(flow[k]) end
  p.out = table.concat(out, " ")
end }
haka.rule{ on = tls.events.server_hello, eval = function(flow, p) p.id = flow.id end }
`}, Options{PoolSize: 1})
	info := &flowInfo{info: inspect.Info{SNI: "example.com", ALPN: "h2", Version: "TLS1.3", JA3: "abc", JA4: "t13d"}, state: "server_hello"}
	m := meta(42)
	m.Src = netip4in6(t, "192.0.2.10", 51515)
	f := h.NewFlow(m, info)
	defer f.Close()

	var p *lua.LTable
	build := func(L *lua.LState) lua.LValue { p = L.NewTable(); return p }
	f.Eval(ev(t, "server_hello"), build)
	if got := p.RawGetString("id"); got != lua.LNumber(42) || info.calls.Load() != 0 {
		t.Errorf("id = %v, FlowInfo called %d times, want 42 and none", got, info.calls.Load())
	}
	f.Eval(ev(t, "client_hello"), build)
	want := "id=42 src=192.0.2.10:51515 dst=198.51.100.7:443 src_ip=192.0.2.10 src_port=51515 " +
		"dst_ip=198.51.100.7 dst_port=443 sni=example.com alpn=h2 version=TLS1.3 ja3=abc ja4=t13d state=server_hello"
	if got := p.RawGetString("out").String(); got != want {
		t.Errorf("fields:\n got %s\nwant %s", got, want)
	}

	// Not known yet reads as nil.
	g := h.NewFlow(meta(43), &flowInfo{})
	defer g.Close()
	g.Eval(ev(t, "client_hello"), build)
	containsAll(t, "unknown live fields", p.RawGetString("out").String(), "sni=nil", "alpn=nil", "ja4=nil", "state=nil")
}

func netip4in6(t *testing.T, ip string, port uint16) netip.AddrPort {
	t.Helper()
	a := netip.MustParseAddr(ip).As16()
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

// flow.data persists across the events of one connection, is its own per
// connection even on a shared state, and is gone after Close.
func TestFlowData(t *testing.T) {
	h := newHarness(t, map[string]string{"data.lua": `
haka.rule{ on = tls.events.record, eval = function(flow, p)
  flow.data.n = (flow.data.n or 0) + 1
  p.n = flow.data.n
end }
`}, Options{PoolSize: 1})
	count := func(f *Flow) lua.LValue {
		var p *lua.LTable
		f.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue { p = L.NewTable(); return p })
		return p.RawGetString("n")
	}
	a, b := h.NewFlow(meta(1), nil), h.NewFlow(meta(2), nil)
	if a.st != b.st {
		t.Fatal("one state, two states used")
	}
	for i := 1; i <= 3; i++ {
		if got := count(a); got != lua.LNumber(i) {
			t.Fatalf("a's event %d: n = %v", i, got)
		}
	}
	if got := count(b); got != lua.LNumber(1) {
		t.Errorf("b shares a's data: n = %v", got)
	}
	ud := a.ud
	a.Close()
	if a.data != nil || ud.Value != nil {
		t.Error("Close kept the flow's data")
	}
	c := h.NewFlow(meta(1), nil) // same id, same state
	defer c.Close()
	if got := count(c); got != lua.LNumber(1) {
		t.Errorf("a new connection with the same id sees old data: n = %v", got)
	}
	b.Close()
}

// flow:drop, flow:reset, flow:bypass and flow:log; the first kill wins and
// the rules after it, and later events, are skipped, except
// end_connection.
func TestFlowMethods(t *testing.T) {
	h := newHarness(t, map[string]string{"m.lua": `
haka.rule{ on = tls.events.client_hello, eval = function(flow, p)
  if p.action == "drop" then flow:drop("bad hello") end
  if p.action == "reset" then flow:reset() end
  if p.action == "bypass" then flow:bypass() end
  if p.action == "log" then flow:log("hello from " .. flow.src) end
  if p.action == "both" then flow:reset("first"); flow:drop("second") end
end }
haka.rule{ on = tls.events.client_hello, eval = function(flow, p) p.second = true end }
haka.rule{ on = tls.events.server_hello, eval = function(flow, p) error("must not run after a kill") end }
haka.rule{ on = tls.events.end_connection, eval = function(flow, p) p.ran = true; flow:drop("too late") end }
`}, Options{PoolSize: 2})
	for _, tc := range []struct {
		action string
		want   inspect.Decision
		second bool
	}{
		{"drop", inspect.Decision{Verdict: inspect.Drop, Reason: "bad hello", Rule: "m.lua:2"}, false},
		{"reset", inspect.Decision{Verdict: inspect.Reset, Reason: "reset by rule", Rule: "m.lua:2"}, false},
		{"both", inspect.Decision{Verdict: inspect.Reset, Reason: "first", Rule: "m.lua:2"}, false},
		{"bypass", inspect.Decision{Verdict: inspect.Bypass, Reason: "bypassed by rule", Rule: "m.lua:2"}, true},
		{"log", inspect.Decision{}, true},
	} {
		t.Run(tc.action, func(t *testing.T) {
			f := h.NewFlow(meta(7), nil)
			defer f.Close()
			var p *lua.LTable
			build := func(L *lua.LState) lua.LValue {
				p = toLua(L, map[string]any{"action": tc.action}).(*lua.LTable)
				return p
			}
			if got := f.Eval(ev(t, "client_hello"), build); got != tc.want {
				t.Fatalf("decision %+v, want %+v", got, tc.want)
			}
			if got := p.RawGetString("second") == lua.LTrue; got != tc.second {
				t.Errorf("second rule ran: %v, want %v", got, tc.second)
			}
			if !tc.want.Verdict.Kills() {
				return
			}
			if f.Hooked(ev(t, "server_hello")) {
				t.Error("server_hello hooked after a kill")
			}
			called := false
			if got := f.Eval(ev(t, "server_hello"), func(L *lua.LState) lua.LValue { called = true; return lua.LNil }); got != tc.want || called {
				t.Errorf("server_hello after a kill: %+v, build called %v", got, called)
			}
			if !f.Hooked(ev(t, "end_connection")) {
				t.Error("end_connection not hooked after a kill")
			}
			f.Eval(ev(t, "end_connection"), build)
			if p.RawGetString("ran") != lua.LTrue || f.Decision() != tc.want {
				t.Errorf("end_connection: ran=%v decision %+v", p.RawGetString("ran"), f.Decision())
			}
		})
	}
	logged := messages(h.logs, zapcore.InfoLevel)
	found := false
	for _, m := range logged {
		found = found || strings.HasPrefix(m, "hello from 192.0.2.10:51515 rule=m.lua:2")
	}
	if !found {
		t.Errorf("flow:log record missing: %q", logged)
	}
}

// An alert carries the event, the rule's file:line and the action the
// flow got when the whole evaluation ended, even if the drop came from a
// later rule.
func TestAlertRecord(t *testing.T) {
	h := newHarness(t, map[string]string{"a.lua": `
haka.rule{ on = tls.events.heartbeat, eval = function(flow, hb)
  haka.alert{ description = "first", severity = "high", confidence = "medium",
              method = { description = "how", ref = "RFC 6520" }, ref = { "CVE-2014-0160", "x" } }
end }
haka.rule{ on = tls.events.heartbeat, eval = function(flow, hb)
  if hb.overflow then flow:drop("heartbleed") end
end }
`}, Options{PoolSize: 1})
	info := &flowInfo{info: inspect.Info{SNI: "victim.example"}}
	f := h.NewFlow(meta(9), info)
	f.Eval(ev(t, "heartbeat"), param(map[string]any{"overflow": true}))
	f.Close()
	g := h.NewFlow(meta(10), nil)
	g.Eval(ev(t, "heartbeat"), param(map[string]any{"overflow": false}))
	g.Close()

	lines := h.alerts.lines(t)
	if len(lines) != 2 {
		t.Fatalf("%d alerts, want 2: %v", len(lines), lines)
	}
	a := lines[0]
	for k, want := range map[string]any{
		"type": "alert", "description": "first", "severity": "high", "confidence": "medium",
		"event": "heartbeat", "rule": "a.lua:2", "action": "drop",
	} {
		if a[k] != want {
			t.Errorf("alert %s = %v, want %v", k, a[k], want)
		}
	}
	if fl := a["flow"].(map[string]any); fl["id"] != 9.0 || fl["src"] != "192.0.2.10:51515" || fl["dst"] != "198.51.100.7:443" || fl["sni"] != "victim.example" {
		t.Errorf("alert flow = %v", fl)
	}
	if m := a["method"].(map[string]any); m["description"] != "how" || m["ref"] != "RFC 6520" {
		t.Errorf("alert method = %v", m)
	}
	if r := fmt.Sprint(a["ref"]); r != "[CVE-2014-0160 x]" {
		t.Errorf("alert ref = %v", r)
	}
	if lines[1]["action"] != "none" {
		t.Errorf("alert of a passed flow: action %v", lines[1]["action"])
	}
}

// haka.alert and haka.log mistakes are rule errors, named.
func TestAlertMistakes(t *testing.T) {
	for _, tc := range []struct{ call, want string }{
		{`haka.alert{ severity = "high" }`, "description is missing"},
		{`haka.alert{ description = "x", severity = "urgent" }`, `severity must be "low", "medium" or "high", not "urgent"`},
		{`haka.alert{ description = "x", sevrity = "high" }`, `unknown key "sevrity"`},
		{`haka.alert{ description = "x", method = "y" }`, "method must be a table"},
		{`haka.alrt{ description = "x" }`, `haka.alrt: no such field (did you mean "alert"?)`},
		{`haka.log.warn("x")`, `haka.log.warn: no such field`},
		{`flow.snii = 1`, "the flow is read-only"},
		{`local x = flow.snii`, `flow.snii: no such field`},
		{`flow.drop("x")`, "call it as a method"},
		{`haka.rule{ on = tls.events.record, eval = print }`, "rules are declared when their file loads"},
	} {
		t.Run(tc.call, func(t *testing.T) {
			h := newHarness(t, map[string]string{"bad.lua": "haka.rule{ on = tls.events.alert, eval = function(flow, p)\n  " + tc.call + "\nend }\n"}, Options{PoolSize: 1})
			f := h.NewFlow(meta(1), nil)
			defer f.Close()
			d := f.Eval(ev(t, "alert"), nil)
			if d.Verdict != inspect.Drop || d.Rule != "bad.lua:1" {
				t.Errorf("decision %+v, want a drop by bad.lua:1", d)
			}
			containsAll(t, "reason", d.Reason, "rule error", "bad.lua:2:", tc.want)
		})
	}
}

// haka.log.* and print go to the logger with where they were called and
// the rule being evaluated; string.format arguments work.
func TestLuaLogging(t *testing.T) {
	h := newHarness(t, map[string]string{"log.lua": `
haka.log.info("loaded %d rules", 1)
haka.rule{ on = tls.events.alert, eval = function(flow, p)
  haka.log.debug("d")
  haka.log.warning("w %s %d", "x", 3)
  haka.log.error({})
  print("p", 1, nil)
end }
`}, Options{PoolSize: 4})
	f := h.NewFlow(meta(1), nil)
	f.Eval(ev(t, "alert"), nil)
	f.Close()
	got := messages(h.logs, zapcore.DebugLevel)
	var lua []string
	for _, m := range got {
		if !strings.HasPrefix(m, "rules loaded") {
			lua = append(lua, m)
		}
	}
	want := []string{
		"d rule=log.lua:3 at=log.lua:4",
		"loaded 1 rules at=log.lua:2", // once, though 4 states ran the file
		"p\t1\tnil rule=log.lua:3 at=log.lua:7",
		"table: 0x… rule=log.lua:3 at=log.lua:6",
		"w x 3 rule=log.lua:3 at=log.lua:5",
	}
	tableRE := regexp.MustCompile(`^table: 0x[0-9a-f]+ `)
	for i := range lua {
		lua[i] = tableRE.ReplaceAllString(lua[i], "table: 0x… ")
	}
	if strings.Join(lua, "\n") != strings.Join(want, "\n") {
		t.Errorf("log records:\n%s\nwant:\n%s", strings.Join(lua, "\n"), strings.Join(want, "\n"))
	}
}

// A second dissector registers its events through the same registry; rules
// reach it by name and its events are numbered after tls's.
func TestSecondDissector(t *testing.T) {
	h := newHarness(t, map[string]string{"q.lua": `
haka.rule{ on = quic.events.initial, eval = function(flow, p) flow:drop("quic " .. p.v) end }
haka.rule{ on = haka.dissectors.quic.events.retry, eval = function(flow, p) end }
`}, Options{PoolSize: 1, Dissectors: []Dissector{{Name: "quic", Events: []string{"initial", "retry"}}}})
	initial, ok := h.Event("quic", "initial")
	if !ok || initial != Event(tlssm.NumEvents) {
		t.Fatalf("quic.initial = %d, %v", initial, ok)
	}
	if ev, ok := h.Event("tls", "heartbeat"); !ok || ev != TLS(tlssm.EvHeartbeat) {
		t.Errorf("tls.heartbeat = %d, %v", ev, ok)
	}
	if _, ok := h.Event("quic", "handshake"); ok {
		t.Error("unknown quic event found")
	}
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	if d := f.Eval(initial, param(map[string]any{"v": "1"})); d.Verdict != inspect.Drop || d.Reason != "quic 1" {
		t.Errorf("decision %+v", d)
	}
	if got := h.Rules()[0].Event; got != "quic.initial" {
		t.Errorf("event display name %q", got)
	}

	for _, bad := range [][]Dissector{
		{{Name: "tls", Events: []string{"x"}}},
		{{Name: "quic", Events: []string{"a", "a"}}},
		{{Name: "my-dissector"}},
		{{Name: "quic", Events: []string{"end"}}},
		{{Name: "string"}}, // a sandbox global
		{{Name: "haka"}},
		{{Name: "require"}},
	} {
		if _, err := tryHarness(map[string]string{"x.lua": ""}, Options{PoolSize: 1, Dissectors: bad}); err == nil {
			t.Errorf("dissectors %+v accepted", bad)
		}
	}
}

// Eval does nothing, not even build, for an event no rule hooks.
func TestUnhookedEvent(t *testing.T) {
	h := newHarness(t, map[string]string{"x.lua": `haka.rule{ on = tls.events.heartbeat, eval = function() end }`}, Options{PoolSize: 1})
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	if f.Hooked(ev(t, "record")) || !f.Hooked(ev(t, "heartbeat")) || f.Hooked(Event(9999)) {
		t.Error("Hooked is wrong")
	}
	if d := f.Eval(ev(t, "record"), func(*lua.LState) lua.LValue { t.Fatal("build called"); return nil }); d != (inspect.Decision{}) {
		t.Errorf("decision %+v", d)
	}
	if f.ud != nil {
		t.Error("an unhooked event created the flow object")
	}
}

// ObserveEval sees every evaluation that ran rules, with its event.
func TestObserveEval(t *testing.T) {
	var seen []string
	h := newHarness(t, map[string]string{"o.lua": `haka.rule{ on = tls.events.alert, eval = function() end }`},
		Options{PoolSize: 1, ObserveEval: func(event string, d time.Duration) {
			if d <= 0 {
				t.Errorf("duration %v", d)
			}
			seen = append(seen, event)
		}})
	f := h.NewFlow(meta(1), nil)
	f.Eval(ev(t, "alert"), nil)
	f.Eval(ev(t, "record"), nil) // not hooked: not observed
	f.Eval(ev(t, "alert"), nil)
	f.Close()
	if strings.Join(seen, ",") != "alert,alert" {
		t.Errorf("observed %v", seen)
	}
}

func TestErrorPolicy(t *testing.T) {
	for s, want := range map[string]ErrorPolicy{"drop": PolicyDrop, "PASS": PolicyPass, "": PolicyDrop} {
		if p, err := ParseErrorPolicy(s); err != nil || p != want || (s != "" && !strings.EqualFold(p.String(), s)) {
			t.Errorf("ParseErrorPolicy(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParseErrorPolicy("ignore"); err == nil || !strings.Contains(err.Error(), `"ignore"`) {
		t.Errorf("ParseErrorPolicy(ignore): %v", err)
	}
	if _, err := New(Options{ErrorPolicy: 7}); err == nil {
		t.Error("an invalid policy was accepted")
	}
}
