package rules

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// FlowInfo gives the fields of a flow that change while the connection
// goes on; the TLS inspector implements it. The engine calls it only from
// inside Eval (when a rule reads flow.sni, flow.alpn, flow.version,
// flow.ja3, flow.ja4 or flow.state, or raises an alert), on the goroutine
// that called Eval: an implementation needs no locking of its own, and
// must not take a lock that the caller of Eval holds (an inspector whose
// Info locks the mutex its Feed holds would deadlock: implement FlowInfo
// on the unlocked state).
type FlowInfo interface {
	Info() inspect.Info
	// State is the name of the current state of the connection's machine.
	State() string
}

// Flow is one connection as the rules see it. It is pinned to the rule set
// that was current when it was created and to one interpreter state of
// that set. Its methods must not be called concurrently (the inspector
// already serialises Feed, EOF and Close); Close must be called once the
// connection ends, or its rule set is never released.
type Flow struct {
	set  *ruleSet // nil when the engine was closed: nothing is evaluated
	st   *state
	id   uint64
	src  netip.AddrPort
	dst  netip.AddrPort
	info FlowInfo
	dec  inspect.Decision
	// now is the stream time of the event being evaluated, when the caller
	// knows it (SetTime): packet time in a replay. Alerts carry it.
	now time.Time

	closed bool

	// Guarded by st.mu: the flow's Lua object and its rules' data, both
	// created on first use, and cached renderings of the addresses.
	ud    *lua.LUserData
	data  *lua.LTable
	srcS  lua.LValue
	dstS  lua.LValue
	srcIP lua.LValue
	dstIP lua.LValue
}

// Hooked reports whether Eval(ev, ...) would run any rule: the caller
// skips building parameters, and even dispatching the event (record),
// when it does not. It is false for every event once the flow is dropped
// or reset, except end_connection.
func (f *Flow) Hooked(ev Event) bool {
	s := f.set
	if s == nil || f.closed || int(ev) >= len(s.hooks) || len(s.hooks[ev]) == 0 {
		return false
	}
	return !f.dec.Verdict.Kills() || ev == evEndConnection
}

// Decision returns what the rules decided so far: Pass, or the first Drop
// or Reset, or Bypass.
func (f *Flow) Decision() inspect.Decision { return f.dec }

// Eval runs the rules that hook ev, in file then declaration order, and
// returns the flow's decision. build makes the event's second parameter
// in the flow's interpreter state; it is called only when a rule hooks ev
// (nil means the event has none). Once the flow is dropped or reset, later
// rules and later events are skipped, except end_connection, which rules
// still see (it cannot change the verdict any more) so that every
// connection reaches their accounting.
//
// A rule that raises an error, overruns the deadline or hits a sandbox
// limit is logged with its file and line; under PolicyDrop the flow is
// dropped, under PolicyPass the rule is skipped (after an overrun, the
// event's remaining rules too). Alerts raised during the evaluation are
// written when it ends, with the action the flow got.
func (f *Flow) Eval(ev Event, build func(L *lua.LState) lua.LValue) inspect.Decision {
	if !f.Hooked(ev) {
		return f.dec
	}
	observe := f.set.opts.ObserveEval
	var start time.Time
	if observe != nil {
		start = time.Now()
	}
	alerts := f.st.eval(f, ev, build)
	if observe != nil {
		observe(f.set.reg.events[ev].display, time.Since(start))
	}
	if alerts != nil {
		f.writeAlerts(alerts)
	}
	return f.dec
}

// SetTime sets the stream time of the events evaluated next: the time
// their alerts carry. Without it, alerts carry the wall clock.
func (f *Flow) SetTime(t time.Time) { f.now = t }

// alertTime is the time of an alert raised now.
func (f *Flow) alertTime() time.Time {
	if f.now.IsZero() {
		return time.Now()
	}
	return f.now
}

// Close releases the flow's data and its hold on its rule set; the set's
// states are closed when the last flow pinned to a replaced set closes.
// Close is idempotent.
func (f *Flow) Close() {
	if f.closed {
		return
	}
	f.closed = true
	if f.set == nil {
		return
	}
	if f.ud != nil {
		f.st.mu.Lock()
		// A rule may have kept the flow in a global: make that a closed
		// flow, which holds nothing of the connection.
		f.ud.Value = nil
		f.ud, f.data = nil, nil
		f.srcS, f.dstS, f.srcIP, f.dstIP = nil, nil, nil, nil
		f.st.mu.Unlock()
	}
	f.set.unpin()
}

func (f *Flow) writeAlerts(alerts []*output.Alert) {
	action := "none"
	if f.dec.Verdict.Kills() {
		action = f.dec.Verdict.String()
	}
	w := f.set.opts.Alerts
	for _, a := range alerts {
		a.Action = action
		if err := w.Alert(a); err != nil {
			f.set.opts.Logger.Error("writing an alert", zap.Error(err), zap.String("rule", a.Rule))
		}
	}
}

// ref identifies the flow in an alert.
func (f *Flow) ref() output.FlowRef {
	r := output.FlowRef{ID: f.id, Src: unmapped(f.src).String(), Dst: unmapped(f.dst).String()}
	if f.info != nil {
		r.SNI = f.info.Info().SNI
	}
	return r
}

// eval runs the rules of ev for f on st and returns the alerts they
// raised.
func (st *state) eval(f *Flow, ev Event, build func(*lua.LState) lua.LValue) []*output.Alert {
	st.mu.Lock()
	defer st.endEval()
	st.cur, st.ev = f, ev
	var param lua.LValue = lua.LNil
	if build != nil {
		param = build(st.L)
	}
	st.armEval()
	st.runRules(f, ev, param, nil)
	st.ctx.disarm()
	alerts := st.alerts
	st.alerts = nil
	return alerts
}

// armEval starts the bound of one evaluation: instructions when the
// options count them, the wall-clock deadline otherwise.
func (st *state) armEval() {
	if n := st.set.opts.Steps; n > 0 {
		st.ctx.armSteps(n)
		return
	}
	st.ctx.arm(st.set.opts.Deadline)
}

// runRules runs the rules of ev for f with the parameters param and
// more, on st, which the caller holds with f as the flow being evaluated
// and the deadline armed.
func (st *state) runRules(f *Flow, ev Event, param lua.LValue, more []lua.LValue) {
	L := st.L
	ud := f.userdata(st)
	rules := st.set.hooks[ev]
	for i, fn := range st.evals[ev] {
		st.rule = rules[i]
		L.Push(fn)
		L.Push(ud)
		L.Push(param)
		for _, v := range more {
			L.Push(v)
		}
		if err := L.PCall(2+len(more), 0, nil); err != nil {
			st.repanic(f, err)
			overran := st.overran(err)
			st.failed(f, err, overran)
			if overran {
				break
			}
		}
		if f.dec.Verdict.Kills() {
			break
		}
	}
}

// userdata returns the flow's Lua object in st, made on first use.
func (f *Flow) userdata(st *state) *lua.LUserData {
	if f.ud == nil {
		f.ud = st.L.NewUserData()
		f.ud.Value = f
		f.ud.Metatable = st.flowMeta
	}
	return f.ud
}

// overran tells a deadline stop from an error a rule raised by itself
// (possibly after the deadline passed, in a Go function that cannot be
// interrupted).
func (st *state) overran(err error) bool {
	return st.ctx.hit() && strings.Contains(luaErrorMessage(err), context.DeadlineExceeded.Error())
}

// endEval clears the evaluation context and unlocks; deferred, so that a
// panic in the caller's build function cannot leave the state locked.
func (st *state) endEval() {
	st.cur, st.rule, st.evName = nil, nil, ""
	st.alerts = nil
	st.mu.Unlock()
}

// failed logs a rule failure and applies the error policy.
func (st *state) failed(f *Flow, err error, overran bool) {
	r := st.rule
	msg := luaErrorMessage(err)
	reason := "rule error"
	if overran {
		msg = "exceeded the " + st.set.opts.Deadline.String() + " deadline"
		if n := st.set.opts.Steps; n > 0 {
			msg = "exceeded the bound of " + strconv.Itoa(n) + " instructions"
		}
		reason = "rule deadline exceeded"
	}
	st.log.Error("rule failed",
		zap.String("rule", r.loc),
		zap.String("event", st.eventName()),
		zap.Uint64("flow", f.id),
		zap.String("error", msg),
		zap.Stringer("policy", st.set.opts.ErrorPolicy))
	if st.set.opts.ErrorPolicy == PolicyDrop {
		st.kill(f, inspect.Drop, reason+": "+msg)
	}
}

// kill drops or resets f on behalf of the running rule; the first kill
// wins.
func (st *state) kill(f *Flow, v inspect.Verdict, reason string) {
	if f.dec.Verdict.Kills() {
		return
	}
	f.dec = inspect.Decision{Verdict: v, Reason: reason, Rule: st.rule.loc}
}

// self returns the flow a method was called on, which must be the flow
// being evaluated: methods and live fields of another connection's flow
// (one a rule kept in a global) would race with that connection.
func (st *state) self(L *lua.LState, what string) *Flow {
	ud, ok := L.Get(1).(*lua.LUserData)
	if !ok {
		L.RaiseError("%s: call it as a method, flow:%s(...)", what, what)
	}
	f, ok := ud.Value.(*Flow)
	if !ok {
		L.RaiseError("flow:%s: the connection is closed", what)
	}
	if f != st.cur {
		L.RaiseError("flow:%s: flow %d is not the connection being evaluated", what, f.id)
	}
	return f
}

func (st *state) flowDrop(L *lua.LState) int {
	f := st.self(L, "drop")
	st.kill(f, inspect.Drop, L.OptString(2, "dropped by rule"))
	return 0
}

func (st *state) flowReset(L *lua.LState) int {
	f := st.self(L, "reset")
	st.kill(f, inspect.Reset, L.OptString(2, "reset by rule"))
	return 0
}

func (st *state) flowBypass(L *lua.LState) int {
	f := st.self(L, "bypass")
	if f.dec.Verdict == inspect.Pass {
		f.dec = inspect.Decision{Verdict: inspect.Bypass, Reason: "bypassed by rule", Rule: st.rule.loc}
	}
	return 0
}

func (st *state) flowLog(L *lua.LState) int {
	f := st.self(L, "log")
	if !st.log.Core().Enabled(zap.InfoLevel) {
		return 0
	}
	msg := L.ToStringMeta(L.Get(2)).String()
	fields := []zap.Field{
		zap.Uint64("flow", f.id),
		zap.Stringer("src", f.src),
		zap.Stringer("dst", f.dst),
		zap.String("rule", st.rule.loc),
		zap.String("event", st.eventName()),
	}
	if f.info != nil {
		if sni := f.info.Info().SNI; sni != "" {
			fields = append(fields, zap.String("sni", sni))
		}
	}
	st.log.Info(msg, fields...)
	return 0
}

// flowIndex is the flow's __index: its fields and methods. Unknown names
// are errors, so a typo fails where it is written.
func (st *state) flowIndex(L *lua.LState) int {
	ud := L.CheckUserData(1)
	key, _ := L.Get(2).(lua.LString)
	f, ok := ud.Value.(*Flow)
	if !ok {
		L.RaiseError("flow.%s: the connection is closed", key)
	}
	var v lua.LValue
	switch key {
	case "id":
		v = lua.LNumber(f.id)
	case "src":
		v = cached(&f.srcS, func() string { return unmapped(f.src).String() })
	case "dst":
		v = cached(&f.dstS, func() string { return unmapped(f.dst).String() })
	case "src_ip":
		v = cached(&f.srcIP, func() string { return f.src.Addr().Unmap().String() })
	case "dst_ip":
		v = cached(&f.dstIP, func() string { return f.dst.Addr().Unmap().String() })
	case "src_port":
		v = lua.LNumber(f.src.Port())
	case "dst_port":
		v = lua.LNumber(f.dst.Port())
	case "data":
		if f.data == nil {
			f.data = L.NewTable()
		}
		v = f.data
	case "drop":
		v = st.fnDrop
	case "reset":
		v = st.fnReset
	case "log":
		v = st.fnLog
	case "bypass":
		v = st.fnBypass
	case "sni", "alpn", "version", "ja3", "ja4", "state":
		if f != st.cur {
			L.RaiseError("flow.%s: flow %d is not the connection being evaluated", key, f.id)
		}
		v = optString(f.live(string(key)))
	default:
		L.RaiseError("flow.%s: no such field (flow has id, src, dst, src_ip, src_port, dst_ip, dst_port, sni, alpn, version, ja3, ja4, state, data)", key)
	}
	L.Push(v)
	return 1
}

// live reads a field that changes during the connection.
func (f *Flow) live(key string) string {
	if f.info == nil {
		return ""
	}
	if key == "state" {
		return f.info.State()
	}
	i := f.info.Info()
	switch key {
	case "sni":
		return i.SNI
	case "alpn":
		return i.ALPN
	case "version":
		return i.Version
	case "ja3":
		return i.JA3
	case "ja4":
		return i.JA4
	}
	return ""
}

// optString is nil for a value not known yet, so that rules can write
// `if flow.sni then`.
func optString(s string) lua.LValue {
	if s == "" {
		return lua.LNil
	}
	return lua.LString(s)
}

func cached(slot *lua.LValue, render func() string) lua.LValue {
	if *slot == nil {
		*slot = lua.LString(render())
	}
	return *slot
}

// unmapped shows an IPv4 client of a dual-stack listener as IPv4.
func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
