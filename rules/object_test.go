package rules

import (
	"go.uber.org/zap/zapcore"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// helloObject is the ClientHello as an Object, the way the TLS machine
// makes its parameters.
var helloObject = NewObject("hello", map[string]func(*lua.LState, *hello) lua.LValue{
	"version":  func(L *lua.LState, h *hello) lua.LValue { return lua.LString(h.version) },
	"versions": func(L *lua.LState, h *hello) lua.LValue { return strList(L, h.versions) },
	"sni": func(L *lua.LState, h *hello) lua.LValue {
		if h.sni == "" {
			return nil
		}
		return lua.LString(h.sni)
	},
	"alpn":    func(L *lua.LState, h *hello) lua.LValue { return strList(L, h.alpn) },
	"ciphers": func(L *lua.LState, h *hello) lua.LValue { return numList(L, h.ciphers) },
	"extensions": func(L *lua.LState, h *hello) lua.LValue {
		t := L.CreateTable(len(h.extensions), 0)
		for _, e := range h.extensions {
			et := L.CreateTable(0, 2)
			et.RawSetString("type", lua.LNumber(e.typ))
			et.RawSetString("data", lua.LString(e.data))
			t.Append(et)
		}
		return t
	},
	"groups":    func(L *lua.LState, h *hello) lua.LValue { return numList(L, h.groups) },
	"sigalgs":   func(L *lua.LState, h *hello) lua.LValue { return numList(L, h.sigalgs) },
	"heartbeat": func(L *lua.LState, h *hello) lua.LValue { return lua.LBool(h.heartbeat) },
	"ech":       func(L *lua.LState, h *hello) lua.LValue { return lua.LBool(h.ech) },
	"sslv2":     func(L *lua.LState, h *hello) lua.LValue { return lua.LBool(h.sslv2) },
	"ja3":       func(L *lua.LState, h *hello) lua.LValue { return lua.LString(h.ja3) },
	"ja3_hash":  func(L *lua.LState, h *hello) lua.LValue { return lua.LString(h.ja3Hash) },
	"ja4":       func(L *lua.LState, h *hello) lua.LValue { return lua.LString(h.ja4) },
	"length":    func(L *lua.LState, h *hello) lua.LValue { return lua.LNumber(h.length) },
})

func TestObject(t *testing.T) {
	calls := map[string]int{}
	type hb struct {
		length    int
		encrypted bool
	}
	obj := NewObject("hb", map[string]func(*lua.LState, *hb) lua.LValue{
		"record_length": func(L *lua.LState, v *hb) lua.LValue { calls["record_length"]++; return lua.LNumber(v.length) },
		"encrypted":     func(L *lua.LState, v *hb) lua.LValue { calls["encrypted"]++; return lua.LBool(v.encrypted) },
		"payload_length": func(L *lua.LState, v *hb) lua.LValue {
			calls["payload_length"]++
			return nil // encrypted: not known
		},
		"list": func(L *lua.LState, v *hb) lua.LValue { calls["list"]++; return toLua(L, []any{1, 2, 3}) },
	})
	h := newHarness(t, map[string]string{"o.lua": `
haka.rule{ on = tls.events.heartbeat, eval = function(flow, hb)
  local out = {}
  out[#out + 1] = tostring(hb) .. " " .. type(hb)
  out[#out + 1] = hb.record_length + hb.record_length
  out[#out + 1] = tostring(hb.payload_length)
  local n = 0
  for i = 1, #hb.list do n = n + hb.list[i] end
  out[#out + 1] = n
  local keys = {}
  for k, v in pairs(hb) do keys[#keys + 1] = k .. "=" .. tostring(type(v) == "table" and #v or v) end
  table.sort(keys)
  out[#out + 1] = table.concat(keys, ",")
  local ok, err = pcall(function() return hb.record_lenght end)
  out[#out + 1] = err
  ok, err = pcall(function() hb.encrypted = false end)
  out[#out + 1] = err
  flow:log(table.concat(out, "|"))
end }
`}, Options{PoolSize: 2})
	for id := uint64(0); id < 2; id++ { // the metatable is made in each state
		f := h.NewFlow(meta(id), nil)
		v := &hb{length: 40, encrypted: true}
		if d := f.Eval(ev(t, "heartbeat"), func(L *lua.LState) lua.LValue { return obj.Value(L, v) }); d.Verdict != inspect.Pass {
			t.Fatalf("%+v", d)
		}
		f.Close()
	}
	entries := h.logs.FilterMessageSnippet("hb userdata").All()
	if len(entries) != 2 {
		t.Fatalf("%d log records", len(entries))
	}
	want := `hb userdata|80|nil|6|encrypted=true,list=3,record_length=40|o.lua:14: hb.record_lenght: no such field (did you mean "record_length"?)|o.lua:16: hb.encrypted: hb is read-only; keep your own state in flow.data`
	if got := entries[0].Message; got != want {
		t.Errorf("rule saw\n%s\nwant\n%s", got, want)
	}
	// Each field was made once per evaluation, however often it was read.
	for k, n := range calls {
		if n != 2 {
			t.Errorf("%s made %d times in 2 evaluations", k, n)
		}
	}
}

// Two object types of the same name are told apart.
func TestObjectsOfTheSameName(t *testing.T) {
	type a struct{ x int }
	type b struct{ y string }
	oa := NewObject("p", map[string]func(*lua.LState, *a) lua.LValue{"x": func(L *lua.LState, v *a) lua.LValue { return lua.LNumber(v.x) }})
	ob := NewObject("p", map[string]func(*lua.LState, *b) lua.LValue{"y": func(L *lua.LState, v *b) lua.LValue { return lua.LString(v.y) }})
	h := newHarness(t, map[string]string{"p.lua": `
haka.rule{ on = tls.events.alert, eval = function(flow, p) flow:log("x=" .. p.x) end }
haka.rule{ on = tls.events.record, eval = function(flow, p) flow:log("y=" .. p.y) end }
`}, Options{PoolSize: 1})
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	for i := 0; i < 2; i++ {
		f.Eval(ev(t, "alert"), func(L *lua.LState) lua.LValue { return oa.Value(L, &a{1}) })
		f.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue { return ob.Value(L, &b{"z"}) })
	}
	if got := strings.Join(messages(h.logs, zapcore.InfoLevel), ","); got != "rules loaded,x=1 rule=p.lua:2,x=1 rule=p.lua:2,y=z rule=p.lua:3,y=z rule=p.lua:3" {
		t.Errorf("logged %s", got)
	}
}

// The stock rules see the same thing in a hello Object as in a hello
// table.
func TestStockRulesOnObjects(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 1})
	for _, edit := range []func(*hello){
		func(*hello) {},
		func(h *hello) { h.sslv2, h.version, h.versions = true, "SSL2.0", nil },
	} {
		hl := chromeHello()
		edit(hl)
		var got [2]inspect.Decision
		for i, build := range []func(*lua.LState) lua.LValue{
			func(L *lua.LState) lua.LValue { return buildHello(L, hl) },
			func(L *lua.LState) lua.LValue { return helloObject.Value(L, hl) },
		} {
			f := h.NewFlow(meta(1), nil)
			got[i] = f.Eval(ev(t, "client_hello"), build)
			f.Close()
		}
		if got[0] != got[1] || !strings.HasPrefix(got[0].Rule, "version_policy.lua") && got[0].Verdict != inspect.Pass {
			t.Errorf("table: %+v, object: %+v", got[0], got[1])
		}
	}
}
