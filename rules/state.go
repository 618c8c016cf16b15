package rules

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/rules/output"
)

// loadDeadline bounds the top-level code of one rule file (or module) when
// a set loads. Top-level code only declares rules and builds tables; a
// second means a loop that will never end, and a reload must not hang on it.
const loadDeadline = time.Second

// state is one interpreter state of a rule set and what lives next to it.
// Everything below mu is guarded by it.
type state struct {
	set *ruleSet
	log *zap.Logger

	mu  sync.Mutex
	L   *lua.LState
	ctx *deadline
	// evals[ev][i] is this state's eval function of set.hooks[ev][i].
	evals [][]*lua.LFunction

	flowMeta *lua.LTable
	// eventMeta is the metatable of DISSECTOR.events.NAME.
	eventMeta *lua.LTable
	// the flow methods, returned by the flow's __index
	fnDrop, fnReset, fnLog, fnBypass *lua.LFunction
	// format is string.format as the rules see it (capped), for haka.log.
	format lua.LGFunction
	// modules caches what require returned, by module name.
	modules map[string]lua.LValue

	// While an event is evaluated: the flow, the event and the rule
	// running, and the alerts raised so far (written when the evaluation
	// ends, once the flow's action is known).
	cur    *Flow
	ev     Event
	rule   *rule
	alerts []*output.Alert
	// evName, when set, names the event instead of ev: the event of a
	// state machine written in Lua whose action is running ("ssl.up").
	evName string

	// While the set loads: rules declared by haka.rule, in order, and the
	// mistakes found in declarations (reported all at once, so loading
	// goes on after them).
	loading  bool
	quiet    bool // not the first state: its log records would be duplicates
	declared []declared
	problems []LoadError

	// The dissectors and state machines written in Lua (luasm.go).
	lsm luaSM
}

// eventName names the event being evaluated, for alerts and logs.
func (st *state) eventName() string {
	if st.evName != "" {
		return st.evName
	}
	return st.set.reg.events[st.ev].display
}

// declared is a rule as haka.rule saw it in one state.
type declared struct {
	file string
	line int
	ev   Event
	fn   *lua.LFunction
}

// loadingModule marks a module whose top-level code is running, to refuse
// circular requires.
var loadingModule = &lua.LUserData{}

// newState creates an interpreter state for s with the sandbox and the haka
// API. It is the only place states are created.
func newState(s *ruleSet, quiet bool) (*state, error) {
	s.created.Add(1)
	L := lua.NewState(lua.Options{
		SkipOpenLibs:     true,
		CallStackSize:    callStackSize,
		RegistrySize:     registrySize,
		RegistryMaxSize:  registryMaxSize,
		RegistryGrowStep: registryGrowStep,
		// Only read when Go code under a rule panics (PanicError): the
		// stack of where it panicked, which the recovery unwinds.
		IncludeGoStackTrace: true,
	})
	st := &state{
		set:     s,
		log:     s.opts.Logger,
		L:       L,
		ctx:     newDeadline(),
		modules: make(map[string]lua.LValue),
		quiet:   quiet,
	}
	L.SetContext(st.ctx)
	openSandbox(L)
	st.format = L.G.Global.RawGetString("string").(*lua.LTable).RawGetString("format").(*lua.LFunction).GFunction
	if err := st.openAPI(); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

func (st *state) close() {
	st.ctx.timer.Stop()
	st.L.Close()
}

// openAPI installs haka, the dissector tables, require and print.
func (st *state) openAPI() error {
	L := st.L
	g := L.G.Global
	haka := L.NewTable()
	haka.RawSetString("rule", L.NewFunction(st.luaRule))
	haka.RawSetString("alert", L.NewFunction(st.luaAlert))
	logT := L.NewTable()
	for _, l := range []struct {
		name  string
		level zapcore.Level
	}{{"debug", zap.DebugLevel}, {"info", zap.InfoLevel}, {"warning", zap.WarnLevel}, {"error", zap.ErrorLevel}} {
		logT.RawSetString(l.name, L.NewFunction(st.luaLog(l.level)))
	}
	st.strict(logT, "haka.log")
	haka.RawSetString("log", logT)

	g.RawSetString("require", L.NewFunction(st.luaRequire))
	g.RawSetString("print", L.NewFunction(st.luaPrint))

	eventMeta := L.NewTable()
	eventMeta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		ref := L.CheckUserData(1).Value.(*eventRef)
		L.Push(lua.LString(ref.dissector + ".events." + ref.name))
		return 1
	}))
	eventMeta.RawSetString("__metatable", lua.LString("event"))
	st.eventMeta = eventMeta
	dissectors := L.NewTable()
	for _, d := range st.set.reg.dissectors {
		if d.lua {
			// Registered by the first state's files, which this state
			// runs too: they make its table.
			continue
		}
		if g.RawGetString(d.name) != lua.LNil || d.name == "haka" {
			return fmt.Errorf("dissector %q: the name is taken by a global of the sandbox", d.name)
		}
		events := L.NewTable()
		for name, ev := range d.events {
			ud := L.NewUserData()
			ud.Value = &eventRef{ev: ev, dissector: d.name, name: name}
			ud.Metatable = eventMeta
			events.RawSetString(name, ud)
		}
		st.strict(events, d.name+".events")
		dt := L.NewTable()
		dt.RawSetString("name", lua.LString(d.name))
		dt.RawSetString("events", events)
		if d.name == "tls" {
			dt.RawSetString("grammar", st.grammarTable())
		}
		st.strict(dt, d.name)
		dissectors.RawSetString(d.name, dt)
		g.RawSetString(d.name, dt)
	}
	st.strict(dissectors, "haka.dissectors")
	haka.RawSetString("dissectors", dissectors)
	st.openMachines(haka, dissectors)
	st.strict(haka, "haka")
	g.RawSetString("haka", haka)

	st.flowMeta = L.NewTable()
	st.flowMeta.RawSetString("__index", L.NewFunction(st.flowIndex))
	st.flowMeta.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("flow.%s: the flow is read-only; keep per-connection state in flow.data", L.ToString(2))
		return 0
	}))
	st.flowMeta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		if f, ok := L.CheckUserData(1).Value.(*Flow); ok {
			L.Push(lua.LString(fmt.Sprintf("flow %d (%s -> %s)", f.id, unmapped(f.src), unmapped(f.dst))))
		} else {
			L.Push(lua.LString("flow (closed)"))
		}
		return 1
	}))
	st.flowMeta.RawSetString("__metatable", lua.LString("flow"))
	st.fnDrop = L.NewFunction(st.flowDrop)
	st.fnReset = L.NewFunction(st.flowReset)
	st.fnLog = L.NewFunction(st.flowLog)
	st.fnBypass = L.NewFunction(st.flowBypass)
	return nil
}

// eventRef is the value of DISSECTOR.events.NAME.
type eventRef struct {
	ev              Event
	dissector, name string
}

// strict makes reading a missing field of t an error naming it, so that a
// typo (haka.alrt, tls.events.heartbaet) fails where it is written instead
// of becoming a nil that fails somewhere else, and refuses new fields.
func (st *state) strict(t *lua.LTable, name string) {
	L := st.L
	mt := L.NewTable()
	mt.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("%s.%s: no such field%s", name, L.ToString(2), suggest(L.ToString(2), t))
		return 0
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("%s.%s: cannot add fields to %s", name, L.ToString(2), name)
		return 0
	}))
	mt.RawSetString("__metatable", lua.LString(name))
	t.Metatable = mt
}

// suggest returns ` (did you mean "x"?)` when t has a string key close to
// key.
func suggest(key string, t *lua.LTable) string {
	var names []string
	t.ForEach(func(k, _ lua.LValue) {
		if ks, ok := k.(lua.LString); ok {
			names = append(names, string(ks))
		}
	})
	return suggestFrom(key, names)
}

// suggestFrom returns ` (did you mean "x"?)` when a name is within two
// typos of key.
func suggestFrom(key string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(key, n); d < bestD || d == bestD && n < best {
			best, bestD = n, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent characters
// (the usual typo, "evla" for "eval") each count one.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// callerPos returns the file and line of the Lua code calling the running
// Go function.
func callerPos(L *lua.LState) (string, int) {
	dbg, ok := L.GetStack(1)
	if !ok {
		return "?", 0
	}
	if _, err := L.GetInfo("Sl", dbg, lua.LNil); err != nil {
		return "?", 0
	}
	return dbg.Source, dbg.CurrentLine
}

// ruleKeys are the keys haka.rule accepts.
var ruleKeys = []string{"on", "hook", "eval"}

// luaRule is haka.rule{on = EVENT, eval = function(flow, param) end}.
// Mistakes are recorded, not raised, so that `rules check` reports every
// bad declaration of a file at once.
func (st *state) luaRule(L *lua.LState) int {
	file, line := callerPos(L)
	if !st.loading {
		L.RaiseError("haka.rule: rules are declared when their file loads, not while an event is evaluated")
	}
	problem := func(format string, args ...any) {
		st.problems = append(st.problems, LoadError{File: file, Line: line, Msg: "haka.rule: " + fmt.Sprintf(format, args...)})
	}
	t, ok := L.Get(1).(*lua.LTable)
	if !ok || L.GetTop() != 1 {
		problem("takes one table: haka.rule{on = tls.events.NAME, eval = function(flow, param) ... end}")
		return 0
	}
	var on, hook, eval lua.LValue = lua.LNil, lua.LNil, lua.LNil
	var unknown []string
	t.ForEach(func(k, v lua.LValue) {
		switch k {
		case lua.LString("on"):
			on = v
		case lua.LString("hook"):
			hook = v
		case lua.LString("eval"):
			eval = v
		default:
			unknown = append(unknown, k.String())
		}
	})
	sort.Strings(unknown)
	for _, k := range unknown {
		problem("unknown key %q%s; a rule takes on (or hook) and eval", k, suggestFrom(k, ruleKeys))
	}
	switch {
	case on != lua.LNil && hook != lua.LNil:
		problem("both on and hook are given; hook is another name for on")
	case on == lua.LNil:
		on = hook
	}
	var ev Event
	evOK := false
	switch v := on.(type) {
	case *lua.LNilType:
		problem("no event: add on = tls.events.NAME")
	case *lua.LUserData:
		if ref, ok := v.Value.(*eventRef); ok {
			ev, evOK = ref.ev, true
		} else {
			problem("on must be an event such as tls.events.client_hello, not a userdata")
		}
	default:
		problem("on must be an event such as tls.events.client_hello, not a %s", on.Type())
	}
	fn, fnOK := eval.(*lua.LFunction)
	switch {
	case eval == lua.LNil:
		problem("no eval function: add eval = function(flow, param) ... end")
	case !fnOK:
		problem("eval must be a function, not a %s", eval.Type())
	}
	if len(unknown) == 0 && evOK && fnOK {
		st.declared = append(st.declared, declared{file: file, line: line, ev: ev, fn: fn})
	}
	return 0
}

// luaAlert is haka.alert{description=, severity=, confidence=,
// method={description=, ref=}, ref=}.
func (st *state) luaAlert(L *lua.LState) int {
	if st.cur == nil {
		L.RaiseError("haka.alert: alerts are raised by rules while an event is evaluated")
	}
	t := L.CheckTable(1)
	a := &output.Alert{
		Time:     st.cur.alertTime(),
		Severity: "medium",
		Event:    st.eventName(),
		Rule:     st.rule.loc,
		Flow:     st.cur.ref(),
	}
	t.ForEach(func(k, v lua.LValue) {
		switch k {
		case lua.LString("description"):
			a.Description = alertString(L, "description", v)
		case lua.LString("severity"):
			a.Severity = alertString(L, "severity", v)
			if a.Severity != "low" && a.Severity != "medium" && a.Severity != "high" {
				L.RaiseError("haka.alert: severity must be \"low\", \"medium\" or \"high\", not %q", a.Severity)
			}
		case lua.LString("confidence"):
			a.Confidence = alertString(L, "confidence", v)
		case lua.LString("method"):
			m, ok := v.(*lua.LTable)
			if !ok {
				L.RaiseError("haka.alert: method must be a table {description=, ref=}, not a %s", v.Type())
			}
			a.Method = &output.Method{}
			m.ForEach(func(k, v lua.LValue) {
				switch k {
				case lua.LString("description"):
					a.Method.Description = alertString(L, "method.description", v)
				case lua.LString("ref"):
					a.Method.Ref = strings.Join(alertStrings(L, "method.ref", v), " ")
				default:
					L.RaiseError("haka.alert: unknown key method.%s (want description, ref)", k)
				}
			})
		case lua.LString("ref"):
			a.Ref = alertStrings(L, "ref", v)
		default:
			L.RaiseError("haka.alert: unknown key %q (want description, severity, confidence, method, ref)", k.String())
		}
	})
	if a.Description == "" {
		L.RaiseError("haka.alert: description is missing")
	}
	st.alerts = append(st.alerts, a)
	return 0
}

func alertString(L *lua.LState, key string, v lua.LValue) string {
	switch v := v.(type) {
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return v.String()
	}
	L.RaiseError("haka.alert: %s must be a string, not a %s", key, v.Type())
	return ""
}

// alertStrings reads a string or a list of strings.
func alertStrings(L *lua.LState, key string, v lua.LValue) []string {
	t, ok := v.(*lua.LTable)
	if !ok {
		return []string{alertString(L, key, v)}
	}
	var out []string
	for i := 1; i <= t.Len(); i++ {
		out = append(out, alertString(L, key, t.RawGetInt(i)))
	}
	return out
}

// luaLog is haka.log.LEVEL(fmt, ...): string.format's arguments, or one
// value of any type.
func (st *state) luaLog(level zapcore.Level) lua.LGFunction {
	return func(L *lua.LState) int {
		if st.quiet || !st.log.Core().Enabled(level) {
			return 0
		}
		var msg string
		if L.GetTop() > 1 {
			st.format(L)
			msg = L.ToString(-1)
		} else {
			msg = L.ToStringMeta(L.Get(1)).String()
		}
		st.logFromLua(L, level, msg)
		return 0
	}
}

// luaPrint sends print's output to the debug log: the process's stdout
// may be the alert stream.
func (st *state) luaPrint(L *lua.LState) int {
	if st.quiet || !st.log.Core().Enabled(zap.DebugLevel) {
		return 0
	}
	parts := make([]string, L.GetTop())
	for i := range parts {
		parts[i] = L.ToStringMeta(L.Get(i + 1)).String()
	}
	st.logFromLua(L, zap.DebugLevel, strings.Join(parts, "\t"))
	return 0
}

// logFromLua writes a record raised by Lua code, with where it came from:
// the rule being evaluated and its connection, or the file loading.
func (st *state) logFromLua(L *lua.LState, level zapcore.Level, msg string) {
	file, line := callerPos(L)
	fields := []zap.Field{zap.String("at", fmt.Sprintf("%s:%d", file, line))}
	if st.cur != nil {
		fields = append(fields,
			zap.String("rule", st.rule.loc),
			zap.String("event", st.eventName()),
			zap.Uint64("flow", st.cur.id))
	}
	st.log.Log(level, msg, fields...)
}

// luaRequire loads NAME.lua (dots are directory separators) from the rule
// set's directory, once per state, and nowhere else.
func (st *state) luaRequire(L *lua.LState) int {
	name := L.CheckString(1)
	if v, ok := st.modules[name]; ok {
		if v == loadingModule {
			L.RaiseError("require %q: circular require", name)
		}
		L.Push(v)
		return 1
	}
	proto, err := st.set.module(name)
	if err != nil {
		L.RaiseError("require %q: %v", name, err)
	}
	st.modules[name] = loadingModule
	L.Push(L.NewFunctionFromProto(proto))
	L.Push(lua.LString(name))
	if err := L.PCall(1, 1, nil); err != nil {
		delete(st.modules, name)
		L.RaiseError("require %q: %s", name, luaErrorMessage(err))
	}
	v := L.Get(-1)
	if v == lua.LNil {
		v = lua.LTrue
	}
	st.modules[name] = v
	L.Push(v)
	return 1
}

// luaErrorMessage is the message of an error raised by Lua code, without
// the stack trace gopher-lua appends.
func luaErrorMessage(err error) string {
	if ae, ok := err.(*lua.ApiError); ok {
		return ae.Object.String()
	}
	return err.Error()
}
