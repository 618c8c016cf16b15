package rules

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// escapes are rules that try to leave the sandbox or exhaust the process;
// p.case selects one. Each must fail as a rule error naming what stopped
// it.
const escapes = `
local cases = {}
cases.io = function() return io.open("/etc/passwd"):read("*a") end
cases.os = function() return os.execute("id") end
cases.require_outside = function() return require("../../etc/passwd") end
cases.loadstring = function() return loadstring("return 1")() end
cases.load = function() return load(function() return nil end) end
cases.dofile = function() return dofile("/etc/passwd") end
cases.loadfile = function() return loadfile("/etc/passwd") end
cases.dump = function() return string.dump(function() end) end
cases.debug = function() return debug.getregistry() end
cases.coroutine = function() return coroutine.create(function() end) end
cases.collectgarbage = function() return collectgarbage() end
cases.randomseed = function() math.randomseed(1) end
cases.setfenv = function() setfenv(0, {}) end
cases.rep_bomb = function() return string.rep("x", 1e10) end
cases.rep_method = function() return ("xx"):rep(2^40) end
cases.gsub_bomb = function() return (("x"):rep(1000)):gsub(".", ("y"):rep(2000)) end
cases.gsub_long = function() local s = ("x"):rep(1e6); for i = 1, 1000 do s:gsub(".", "") end end
cases.gsub_func_bomb = function()
  local big = ("y"):rep(1e6)
  return (("x"):rep(1e5)):gsub(".", function() return big end)
end
cases.format_bomb = function() return string.format("%099999999d", 1) end
cases.format_verb = function() return string.format("%v", 1) end
cases.concat_bomb = function()
  local t = {}
  for i = 1, 1000 do t[i] = "x" end
  return table.concat(t, ("s"):rep(1e5))
end
cases.sparse_table = function() local t = {}; t[60000000] = 1; error("sparse ok " .. #t) end
cases.unpack_bomb = function() return unpack({}, 1, 1e8) end
cases.infinite_loop = function() while true do end end
cases.pcall_loop = function() while true do pcall(function() while true do end end) end end
cases.concat_loop = function() local s = "x"; while true do s = s .. s end end
cases.table_growth = function() local t = {}; local i = 0; while true do i = i + 1; t[i] = i end end
cases.recursion = function() local function f(n) return 1 + f(n + 1) end; return f(1) end
cases.metamethod_recursion = function()
  local t = setmetatable({}, { __index = function(t, k) return t[k] end })
  return t.x
end
cases.pcall_recursion = function() local function f() return select(2, pcall(f)) end; error(tostring(f())) end

haka.rule{ on = tls.events.alert, eval = function(flow, p) cases[p.case]() end }
haka.rule{ on = tls.events.record, eval = function(flow, p) p.ok = true end }
`

// escapesRule is where the rule of escapes is declared.
var escapesRule = fmt.Sprintf("escapes.lua:%d", strings.Count(escapes[:strings.Index(escapes, "haka.rule{ on = tls.events.alert")], "\n")+1)

func TestSandboxEscapesAreContained(t *testing.T) {
	// The cases stopped by the deadline run with a short one; the others
	// with a long one, so that a loaded machine cannot turn their errors
	// into overruns.
	short := newHarness(t, map[string]string{"escapes.lua": escapes}, Options{PoolSize: 2, Deadline: 10 * time.Millisecond})
	long := newHarness(t, map[string]string{"escapes.lua": escapes}, Options{PoolSize: 2, Deadline: 10 * time.Second})
	for _, tc := range []struct{ name, want string }{
		{"io", "attempt to index a non-table object(nil) with key 'open'"},
		{"os", "attempt to index a non-table object(nil) with key 'execute'"},
		{"require_outside", "module names are identifiers"},
		{"loadstring", "escapes.lua:6: attempt to call a non-function object"},
		{"load", "escapes.lua:7: attempt to call a non-function object"},
		{"dofile", "escapes.lua:8: attempt to call a non-function object"},
		{"loadfile", "escapes.lua:9: attempt to call a non-function object"},
		{"dump", "escapes.lua:10: attempt to call a non-function object"},
		{"debug", "attempt to index a non-table object(nil) with key 'getregistry'"},
		{"coroutine", "attempt to index a non-table object(nil) with key 'create'"},
		{"collectgarbage", "escapes.lua:13: attempt to call a non-function object"},
		{"randomseed", "escapes.lua:14: attempt to call a non-function object"},
		{"setfenv", "escapes.lua:15: attempt to call a non-function object"},
		{"rep_bomb", "string.rep: result of 1048577 bytes exceeds the 1048576-byte limit"},
		{"rep_method", "string.rep: result of"},
		{"gsub_bomb", "string.gsub: result of"},
		{"gsub_func_bomb", "string.gsub: result of"},
		{"gsub_long", "exceeded the 10ms deadline"},
		{"format_bomb", "width or precision too long"},
		{"format_verb", `invalid conversion "%v"`},
		{"concat_bomb", "table.concat: result of"},
		{"sparse_table", "sparse ok 0"},
		{"unpack_bomb", "registry overflow"},
		{"infinite_loop", "exceeded the 10ms deadline"},
		{"pcall_loop", "exceeded the 10ms deadline"},
		{"concat_loop", "exceeded the 10ms deadline"},
		{"table_growth", "exceeded the 10ms deadline"},
		{"recursion", "stack overflow"},
		{"metamethod_recursion", "stack overflow"},
		{"pcall_recursion", "stack overflow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := long
			if strings.Contains(tc.want, "deadline") {
				h = short
			}
			f := h.NewFlow(meta(0), nil)
			defer f.Close()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			d := f.Eval(ev(t, "alert"), param(map[string]any{"case": tc.name}))
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			grew := after.TotalAlloc - before.TotalAlloc
			t.Logf("%v, %d MB allocated", elapsed, grew>>20)
			// A bomb fails before allocating what it asks for: what is left
			// is the few 1 MB strings the cases build and the value stack.
			// What a loop allocates before its deadline is not capped.
			if h == long && grew > 64<<20 {
				t.Errorf("allocated %d MB", grew>>20)
			}
			if elapsed > 5*time.Second {
				t.Errorf("took %v", elapsed)
			}
			if d.Verdict != inspect.Drop || d.Rule != escapesRule || !strings.HasPrefix(d.Reason, "rule ") {
				t.Errorf("decision %+v, want a drop by %s", d, escapesRule)
			}
			containsAll(t, "reason", d.Reason, tc.want)

			// The state is still usable.
			g := h.NewFlow(meta(2), nil)
			defer g.Close()
			if g.st != f.st {
				t.Fatal("not the same state")
			}
			var p *lua.LTable
			if d := g.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue { p = L.NewTable(); return p }); d.Verdict != inspect.Pass || p.RawGetString("ok") != lua.LTrue {
				t.Errorf("the state is broken after %s: %+v", tc.name, d)
			}
		})
	}
	got := strings.Join(messages(long.logs, zapcore.ErrorLevel), "\n")
	containsAll(t, "error log", got, "rule failed rule="+escapesRule+" error=escapes.lua:3: attempt to index")
}

// While a rule spins on one state until its deadline, the connections on
// the other states are evaluated as usual: nothing is locked but the
// spinning state.
func TestOtherConnectionsGoOnDuringAnOverrun(t *testing.T) {
	const deadline = 3 * time.Second
	h := newHarness(t, map[string]string{"escapes.lua": escapes}, Options{PoolSize: 3, Deadline: deadline})
	started := make(chan struct{})
	spun := make(chan inspect.Decision)
	go func() {
		f := h.NewFlow(meta(0), nil)
		defer f.Close()
		spun <- f.Eval(ev(t, "alert"), func(L *lua.LState) lua.LValue {
			close(started)
			return toLua(L, map[string]any{"case": "infinite_loop"})
		})
	}()
	<-started
	var wg sync.WaitGroup
	for id := uint64(1); id < 3; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				f := h.NewFlow(meta(id), nil)
				var p *lua.LTable
				d := f.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue { p = L.NewTable(); return p })
				if d.Verdict != inspect.Pass || p.RawGetString("ok") != lua.LTrue {
					t.Errorf("flow %d: %+v", id, d)
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
	select {
	case d := <-spun:
		t.Fatalf("the spinning rule ended before the others were done: %+v", d)
	default:
	}
	if d := <-spun; d.Verdict != inspect.Drop || !strings.Contains(d.Reason, "deadline") {
		t.Errorf("spinning rule: %+v", d)
	}
}

// An overrun under PolicyPass is logged and the connection goes on; the
// event's remaining rules are skipped, the next event runs normally.
func TestDeadlinePolicyPass(t *testing.T) {
	h := newHarness(t, map[string]string{"loop.lua": `
haka.rule{ on = tls.events.alert, eval = function(flow, p) while true do end end }
haka.rule{ on = tls.events.alert, eval = function(flow, p) p.second = true end }
haka.rule{ on = tls.events.record, eval = function(flow, p) error("broken") end }
haka.rule{ on = tls.events.record, eval = function(flow, p) p.second = true end }
`}, Options{PoolSize: 1, Deadline: 20 * time.Millisecond, ErrorPolicy: PolicyPass})
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	var p *lua.LTable
	build := func(L *lua.LState) lua.LValue { p = L.NewTable(); return p }
	start := time.Now()
	if d := f.Eval(ev(t, "alert"), build); d.Verdict != inspect.Pass {
		t.Errorf("decision %+v under PolicyPass", d)
	}
	if elapsed := time.Since(start); elapsed < 20*time.Millisecond {
		t.Errorf("the loop stopped after %v, before its deadline", elapsed)
	}
	if p.RawGetString("second") != lua.LNil {
		t.Error("a rule ran after the event overran its deadline")
	}
	// A plain error skips only the failed rule.
	if d := f.Eval(ev(t, "record"), build); d.Verdict != inspect.Pass || p.RawGetString("second") != lua.LTrue {
		t.Errorf("after an error under PolicyPass: %+v, second rule ran: %v", d, p.RawGetString("second"))
	}
	got := strings.Join(messages(h.logs, zapcore.ErrorLevel), "\n")
	containsAll(t, "error log", got,
		"rule failed rule=loop.lua:2 error=exceeded the 20ms deadline",
		"rule failed rule=loop.lua:4 error=loop.lua:4: broken")
}

// The deadline is per event: many quick evaluations in a row never trip it,
// and a slow one does not leak into the next.
func TestDeadlineRearm(t *testing.T) {
	h := newHarness(t, map[string]string{"busy.lua": `
haka.rule{ on = tls.events.alert, eval = function(flow, p)
  local n = 0
  for i = 1, p.n do n = n + i end
end }
`}, Options{PoolSize: 1, Deadline: 250 * time.Millisecond})
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	// One evaluation that overruns, then many that do not.
	if d := f.Eval(ev(t, "alert"), param(map[string]any{"n": 1e12})); d.Verdict != inspect.Drop {
		t.Fatalf("the long loop was not stopped: %+v", d)
	}
	for i := 0; i < 2000; i++ {
		g := h.NewFlow(meta(1), nil)
		if d := g.Eval(ev(t, "alert"), param(map[string]any{"n": 100})); d.Verdict != inspect.Pass {
			t.Fatalf("evaluation %d: %+v", i, d)
		}
		g.Close()
	}
}

// Evaluating events never creates an interpreter state.
func TestNoStatePerEvent(t *testing.T) {
	h := newHarness(t, nil, Options{PoolSize: 3})
	if got := h.created.Load(); got != 3 {
		t.Fatalf("%d states created by New, want 3", got)
	}
	for id := uint64(0); id < 300; id++ {
		f := h.NewFlow(meta(id), &flowInfo{})
		for _, e := range normalTLS12() {
			f.Eval(e.ev, e.build)
		}
		f.Eval(ev(t, "heartbeat"), param(map[string]any{"overflow": true}))
		f.Close()
	}
	if got := h.created.Load(); got != 3 {
		t.Errorf("%d states after 300 connections, want 3", got)
	}
}

// An evaluation that ran few instructions, because its goroutine was not
// running (here: blocked in a Go function), is not stopped at its
// deadline, even long past it; one that runs on after such a stall is
// stopped a deadline or so later.
func TestDeadlineGrace(t *testing.T) {
	const deadline = 100 * time.Millisecond
	h := newHarness(t, map[string]string{"stall.lua": `
haka.rule{ on = tls.events.alert, eval = function(flow, p)
  p.stall()
  if p.spin then while true do end end
end }
`}, Options{PoolSize: 1, Deadline: deadline})
	stall := func(spin bool) func(*lua.LState) lua.LValue {
		return func(L *lua.LState) lua.LValue {
			p := L.NewTable()
			p.RawSetString("stall", L.NewFunction(func(*lua.LState) int {
				time.Sleep(5 * deadline) // the goroutine does not run Lua meanwhile
				return 0
			}))
			p.RawSetString("spin", lua.LBool(spin))
			return p
		}
	}
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	if d := f.Eval(ev(t, "alert"), stall(false)); d.Verdict != inspect.Pass {
		t.Errorf("a stalled evaluation under its grace was stopped: %+v", d)
	}
	start := time.Now()
	d := f.Eval(ev(t, "alert"), stall(true))
	if d.Verdict != inspect.Drop || !strings.Contains(d.Reason, "deadline") {
		t.Errorf("spinning after a stall: %+v", d)
	}
	if elapsed := time.Since(start); elapsed < 5*deadline {
		t.Errorf("stopped after %v, before the end of its stall of %v", elapsed, 5*deadline)
	}
}

// Under Options.Steps a runaway rule is stopped by the instruction bound,
// named in the log, and the policy applies as for the deadline.
func TestStepsBoundRunawayRule(t *testing.T) {
	h := newHarness(t, map[string]string{"loop.lua": `
haka.rule{ on = tls.events.alert, eval = function(flow, p) while true do end end }
`}, Options{PoolSize: 1, Deadline: time.Hour, Steps: 100_000})
	f := h.NewFlow(meta(1), nil)
	defer f.Close()
	if d := f.Eval(ev(t, "alert"), nil); d.Verdict != inspect.Drop {
		t.Fatalf("decision %+v, want a drop under the default policy", d)
	}
	got := strings.Join(messages(h.logs, zapcore.ErrorLevel), "\n")
	containsAll(t, "error log", got, "rule failed rule=loop.lua:2 error=exceeded the bound of 100000 instructions")
}
