package rules

import (
	"errors"
	"fmt"
	"math"
	"time"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The Lua machines at work: per connection, one instance of each
// installed dissector's machine that applies to it, run on the
// interpreter state the connection's rules use, fed the units the TLS
// machine accepted (tlssm.UnitHandler).
//
// A unit goes to the current state's element for its direction (up or
// down with the element's result, parse_error when the element does not
// take it, missing_grammar when the state has none), except an alert or a
// heartbeat record that the element does not take: it raises the
// machine's alert or heartbeat event instead, with the alert or hb
// object, which the state's or any's transitions may handle and which
// otherwise lets the record pass. A record layer interleaves alerts and
// heartbeats with everything else; a machine that wants them judged in a
// state names them in its element or handles the event.
//
// The instance fails like the TLS machine (a jump to fail, an unhandled
// parse_error or missing_grammar): the connection is dropped with the
// failure as the reason and the transition that jumped to fail, or the
// machine's definition, as the rule. self:drop and self:reset decide as
// flow:drop and flow:reset do, the transition whose action runs being the
// rule. Everything a unit makes the machines do — their actions and the
// rules hooking the events they trigger — runs under one deadline
// (Options.Deadline), and a failing action or guard is a failing rule
// (Options.ErrorPolicy).

// noRuleEvent marks a machine event that is not a dissector event.
const noRuleEvent = Event(math.MaxUint16)

// compiledMachine is a dissector's machine in one interpreter state.
type compiledMachine struct {
	name string
	pos  string // of haka.state_machine.new
	d    *luaDissector
	m    *luaMachine
	// byName are the dissector's events (self:trigger's names); toRule
	// maps the machine's events to the rules' (noRuleEvent for the
	// others).
	byName      map[string]sm.EventID
	toRule      []Event
	evAlert     sm.EventID
	evHeartbeat sm.EventID
	// states are the elements of each state, by name.
	states map[string]*[2]*grammarElement
	// evNames name the events in alerts and logs ("ssl.up"), by ID.
	evNames []string
	// stateNames are the states' names as Lua values (self.state).
	stateNames map[string]lua.LValue
	// rule is the machine's definition as a rule: what a failure without
	// a transition of its own, or self:drop outside an action, is
	// attributed to.
	rule *rule
}

func (cm *compiledMachine) finish(m *luaMachine) {
	cm.m = m
	evs := m.Events()
	cm.evNames = make([]string, len(evs)+1)
	for _, e := range evs {
		cm.evNames[e.ID] = cm.d.name + "." + e.Name
	}
	cm.stateNames = make(map[string]lua.LValue)
	for _, n := range append(m.States(), sm.Fail, sm.Finish) {
		cm.stateNames[n] = lua.LString(n)
	}
	file, line, _ := splitPos(cm.pos)
	cm.rule = &rule{loc: cm.pos, file: file, line: line}
}

// hook is the machine's sm hook: a triggered dissector event runs the
// rules that hook it.
func (cm *compiledMachine) hook(in *luaInstance, ev luaEvent) {
	if int(ev.ID) < len(cm.toRule) {
		if rev := cm.toRule[ev.ID]; rev != noRuleEvent {
			instanceConn(in).deliver(rev, ev.Param)
		}
	}
}

// guard makes `when = function (self, ...)` a guard.
func (cm *compiledMachine) guard(fn *lua.LFunction, r *rule) sm.Guard[*luaConn, *tlssm.Unit, luaParam] {
	return func(in *luaInstance, ev luaEvent) bool {
		v, ok := instanceConn(in).call(fn, r, ev, 1)
		return ok && lua.LVAsBool(v)
	}
}

// action makes `execute = function (self, ...)` an action.
func (cm *compiledMachine) action(fn *lua.LFunction, r *rule) sm.Action[*luaConn, *tlssm.Unit, luaParam] {
	return func(in *luaInstance, ev luaEvent) {
		instanceConn(in).call(fn, r, ev, 0)
	}
}

// instanceConn returns the luaConn of in, which knows in from then on:
// the actions of the initial state run before Machine.New returns it.
func instanceConn(in *luaInstance) *luaConn {
	c := in.Context()
	if c.in == nil {
		c.in = in
	}
	return c
}

// luaHandler is the tlssm.Handler of a connection that Lua machines
// watch: the rules' TLSHandler, and a tlssm.UnitHandler.
type luaHandler struct {
	*TLSHandler
	conns []*luaConn
	// unit is the unit being judged, nil between units; has are the
	// events whose fields it carries (unitCarries).
	unit *tlssm.Unit
	has  uint32
	// serial counts the units judged.
	serial uint64
	// armed: the deadline runs for what the unit makes Lua do. It is
	// armed when the first Lua function of the unit is called: a unit
	// that runs none (application data in a state without transitions on
	// it) costs no clock read.
	armed bool
	// next is the earliest deadline of the instances.
	next    time.Time
	hasNext bool
}

var _ tlssm.UnitHandler = (*luaHandler)(nil)

// luaConn is one machine's instance on one connection: the context of
// its sm instance.
type luaConn struct {
	h    *luaHandler
	st   *state
	flow *Flow
	cm   *compiledMachine
	in   *luaInstance
	self *lua.LUserData
	data *lua.LTable // self.data, made on first use
	// failed: the instance's failure was made a decision.
	failed bool
	// lastState and lastElems cache the current state's elements.
	lastState string
	lastElems *[2]*grammarElement
	// resultValue is the result resultPart made of unit resultUnit.
	resultUnit  uint64
	resultPart  *grammarPart
	resultValue lua.LValue
}

// newLuaHandler returns h with the machines of the flow's state that
// apply to the connection, or nil when none does: the connection then
// pays nothing for them.
func newLuaHandler(h *TLSHandler, f *inspect.Flow) *luaHandler {
	st := h.flow.st
	var ds []*luaDissector
	for _, d := range st.lsm.dissectors {
		if d.appliesTo(f.Dst.Port()) {
			ds = append(ds, d)
		}
	}
	if len(ds) == 0 {
		return nil
	}
	lh := &luaHandler{TLSHandler: h, conns: make([]*luaConn, 0, len(ds))}
	lh.begin(nil)
	// Deferred: a panic (Go code under a function of the machine) must
	// not leave the state locked for every connection that shares it.
	defer lh.end()
	for _, d := range ds {
		c := &luaConn{h: lh, st: st, flow: h.flow, cm: d.machine}
		c.self = st.userValue(c, st.lsm.selfMeta)
		lh.conns = append(lh.conns, c)
		// Entering the initial state runs its enter and init actions,
		// which may decide at once.
		c.in = d.machine.m.New(c, f.Start)
		c.settle()
	}
	return lh
}

// begin starts judging a unit (nil: letting time pass, starting or
// closing) on the flow's state.
func (h *luaHandler) begin(u *tlssm.Unit) {
	st := h.flow.st
	st.mu.Lock()
	st.cur = h.flow
	h.unit = u
	if u != nil {
		h.has = unitCarries(u)
		h.serial++
	}
}

// arm starts the deadline of what the unit makes Lua do, once.
func (h *luaHandler) arm() {
	if !h.armed {
		h.armed = true
		h.flow.st.armEval()
	}
}

// end releases the state and writes the alerts raised.
func (h *luaHandler) end() {
	st := h.flow.st
	if h.armed {
		h.armed = false
		st.ctx.disarm()
	}
	h.unit, h.has = nil, 0
	for _, c := range h.conns {
		c.resultValue = nil
	}
	alerts := st.alerts
	st.endEval()
	if alerts != nil {
		h.flow.writeAlerts(alerts)
	}
	h.hasNext = false
	for _, c := range h.conns {
		if at, ok := c.in.NextDeadline(); ok && (!h.hasNext || at.Before(h.next)) {
			h.next, h.hasNext = at, true
		}
	}
}

// Unit implements tlssm.UnitHandler.
func (h *luaHandler) Unit(u *tlssm.Unit) inspect.Decision {
	f := h.flow
	if f.closed || f.dec.Verdict.Kills() {
		return f.dec
	}
	f.SetTime(u.Time)
	h.begin(u)
	defer h.end()
	for _, c := range h.conns {
		c.feed(u)
		if f.dec.Verdict.Kills() {
			break
		}
	}
	return f.dec
}

// Advance implements tlssm.UnitHandler: the timeouts due fire.
func (h *luaHandler) Advance(now time.Time) inspect.Decision {
	f := h.flow
	if f.closed || f.dec.Verdict.Kills() || !h.hasNext || now.Before(h.next) {
		return f.dec
	}
	h.begin(nil)
	defer h.end()
	for _, c := range h.conns {
		if !c.in.Finished() {
			c.in.Advance(now)
			c.settle()
		}
		if f.dec.Verdict.Kills() {
			break
		}
	}
	return f.dec
}

// NextDeadline implements tlssm.UnitHandler.
func (h *luaHandler) NextDeadline() (time.Time, bool) {
	if h.flow.dec.Verdict.Kills() {
		return time.Time{}, false
	}
	return h.next, h.hasNext
}

// Close implements tlssm.Handler: the instances finish (their finish
// actions run), then the flow lets go of its rule set.
func (h *luaHandler) Close() {
	if !h.flow.closed {
		h.finish()
	}
	h.TLSHandler.Close()
}

// finish runs the instances' finish actions.
func (h *luaHandler) finish() {
	h.begin(nil)
	defer h.end()
	for _, c := range h.conns {
		if !c.in.Finished() {
			c.in.Finish()
		}
		c.self.Value = nil
		c.data = nil
	}
}

// current returns the unit a field of a result of event id's kind is read
// from, or raises a Lua error when that unit is over.
func (h *luaHandler) current(L *lua.LState, id tlssm.EventID, field string) *tlssm.Event {
	spec := &tlssm.Events[id]
	if st := h.flow.st; st == nil || st.cur != h.flow {
		L.RaiseError("%s.%s: this %s belongs to another connection; copy the values you keep into self.data or flow.data",
			spec.Param, field, spec.Param)
	}
	if h.unit == nil || h.has&(1<<id) == 0 {
		L.RaiseError("%s.%s: the unit it was parsed from is over; copy the values you keep while it is judged",
			spec.Param, field)
	}
	return &h.unit.Event
}

// feed gives the instance a unit.
func (c *luaConn) feed(u *tlssm.Unit) {
	if c.in.Finished() {
		return
	}
	dir := sm.Direction(u.Dir)
	if alert, hb := isAlert(u), isHeartbeat(u); alert || hb {
		if el := c.elements()[dir]; el == nil || !el.matches(u) {
			c.in.Advance(u.Time)
			if !c.in.Finished() {
				id, obj := c.cm.evAlert, unitObjects[tlssm.EvAlert]
				if hb {
					id, obj = c.cm.evHeartbeat, unitObjects[tlssm.EvHeartbeat]
				}
				c.in.Trigger(id, luaParam{v: obj.Value(c.st.L, c.h)})
			}
			c.settle()
			return
		}
	}
	c.in.Feed(dir, u, u.Time)
	c.settle()
}

var noElements [2]*grammarElement

// elements returns the current state's elements.
func (c *luaConn) elements() *[2]*grammarElement {
	name := c.in.State()
	if name != c.lastState || c.lastElems == nil {
		c.lastState, c.lastElems = name, c.cm.states[name]
		if c.lastElems == nil {
			c.lastElems = &noElements
		}
	}
	return c.lastElems
}

// settle makes the instance's failure the connection's drop.
func (c *luaConn) settle() {
	if c.failed || !c.in.Failed() {
		return
	}
	c.failed = true
	f := c.flow
	if f.dec.Verdict.Kills() {
		return
	}
	loc := c.cm.pos
	var fe *sm.FailError
	if errors.As(c.in.Reason(), &fe) && fe.Pos != "" {
		loc = fe.Pos
	}
	reason := "state machine failed"
	if err := c.in.Reason(); err != nil {
		reason = "state machine failed: " + err.Error()
	}
	f.dec = inspect.Decision{Verdict: inspect.Drop, Reason: reason, Rule: loc}
}

// call runs a function of the machine (an action or a guard) with self
// and the event's parameters, as the rule r, and returns its first result.
// An error is a failing rule.
func (c *luaConn) call(fn *lua.LFunction, r *rule, ev luaEvent, nret int) (lua.LValue, bool) {
	st := c.st
	if st.ctx.hit() {
		// The deadline stopped what this unit runs: nothing more runs.
		return lua.LNil, false
	}
	c.h.arm()
	L := st.L
	prevRule, prevName := st.rule, st.evName
	st.rule, st.evName = r, c.cm.evNames[ev.ID]
	L.Push(fn)
	L.Push(c.self)
	n := c.pushParams(L, ev)
	err := L.PCall(1+n, nret, nil)
	var ret lua.LValue = lua.LNil
	if err != nil {
		st.repanic(c.flow, err)
		st.failed(c.flow, err, st.overran(err))
	} else if nret > 0 {
		ret = L.Get(-1)
		L.Pop(nret)
	}
	st.rule, st.evName = prevRule, prevName
	return ret, err == nil
}

// pushParams pushes the parameters of ev after self and returns how many.
func (c *luaConn) pushParams(L *lua.LState, ev luaEvent) int {
	switch ev.ID {
	case sm.EvUp, sm.EvDown:
		L.Push(c.result(ev))
		return 1
	case sm.EvParseError:
		t := L.CreateTable(0, 2)
		t.RawSetString("message", lua.LString(ev.Err.Error()))
		t.RawSetString("direction", tlsDirection(dissect.Direction(ev.Dir)))
		L.Push(t)
		return 1
	case sm.EvMissingGrammar:
		L.Push(tlsDirection(dissect.Direction(ev.Dir)))
		L.Push(lua.LString(unitBytes(ev.Unit)))
		return 2
	case sm.EvFail, sm.EvFinish:
		if ev.Err == nil {
			return 0
		}
		L.Push(lua.LString(ev.Err.Error()))
		return 1
	}
	if ev.Param.v == nil {
		return 0
	}
	L.Push(ev.Param.v)
	for _, v := range ev.Param.more {
		L.Push(v)
	}
	return 1 + len(ev.Param.more)
}

// result returns the result of the element that took the unit of an up or
// down event, made on first use and kept for the unit's other functions.
func (c *luaConn) result(ev luaEvent) lua.LValue {
	p := ev.Param.part
	if p == nil {
		return lua.LNil
	}
	if c.resultUnit != c.h.serial || c.resultPart != p {
		c.resultUnit, c.resultPart = c.h.serial, p
		c.resultValue = p.result(c, ev.Unit)
	}
	return c.resultValue
}

// unitBytes returns the bytes of a unit: a message with its header, a
// record (an application_data record's header only).
func unitBytes(u *tlssm.Unit) []byte {
	if u == nil || u.Raw == nil {
		return nil
	}
	if u.Raw.Kind == dissect.UnitMessage {
		return u.Raw.Msg.Raw
	}
	return u.Raw.Raw
}

// deliver runs the rules that hook a dissector event the machine
// triggered.
func (c *luaConn) deliver(ev Event, p luaParam) {
	st, f := c.st, c.flow
	if f.dec.Verdict.Kills() || len(st.set.hooks[ev]) == 0 || st.ctx.hit() {
		return
	}
	c.h.arm()
	prevRule, prevEv, prevName := st.rule, st.ev, st.evName
	st.ev, st.evName = ev, ""
	param := p.v
	if param == nil {
		param = lua.LNil
	}
	observe := st.set.opts.ObserveEval
	var start time.Time
	if observe != nil {
		start = time.Now()
	}
	st.runRules(f, ev, param, p.more)
	if observe != nil {
		observe(st.set.reg.events[ev].display, time.Since(start))
	}
	st.rule, st.ev, st.evName = prevRule, prevEv, prevName
}

// The self object of the machine's functions.

func (st *state) openSelfMeta() {
	L := st.L
	methods := map[string]*lua.LFunction{
		"trigger": L.NewFunction(st.selfTrigger),
		"drop":    L.NewFunction(func(L *lua.LState) int { return st.selfKill(L, "drop", inspect.Drop) }),
		"reset":   L.NewFunction(func(L *lua.LState) int { return st.selfKill(L, "reset", inspect.Reset) }),
		"log":     L.NewFunction(st.selfLog),
	}
	meta := L.NewTable()
	meta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		key := L.ToString(2)
		if fn, ok := methods[key]; ok {
			L.Push(fn)
			return 1
		}
		c := st.checkSelf(L, key)
		switch key {
		case "flow":
			L.Push(c.flow.userdata(st))
		case "state":
			if v, ok := c.cm.stateNames[c.in.State()]; ok {
				L.Push(v)
			} else {
				L.Push(lua.LString(c.in.State()))
			}
		case "data":
			if c.data == nil {
				c.data = L.NewTable()
			}
			L.Push(c.data)
		case "name":
			L.Push(lua.LString(c.cm.name))
		default:
			L.RaiseError("self.%s: no such field (self has flow, state, data, name, trigger, drop, reset and log)", key)
		}
		return 1
	}))
	meta.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("self.%s: self is read-only; keep the machine's own values in self.data", L.ToString(2))
		return 0
	}))
	meta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		if c, ok := L.CheckUserData(1).Value.(*luaConn); ok {
			L.Push(lua.LString(fmt.Sprintf("state machine %s (flow %d)", c.cm.name, c.flow.id)))
		} else {
			L.Push(lua.LString("state machine (closed)"))
		}
		return 1
	}))
	meta.RawSetString("__metatable", lua.LString("state machine instance"))
	st.lsm.selfMeta = meta
}

// checkSelf returns the instance self is, which must be the connection
// being evaluated's.
func (st *state) checkSelf(L *lua.LState, what string) *luaConn {
	ud, ok := L.Get(1).(*lua.LUserData)
	if !ok {
		L.RaiseError("self:%s: call it as a method, self:%s(...)", what, what)
	}
	c, ok := ud.Value.(*luaConn)
	if !ok {
		L.RaiseError("self.%s: the connection is closed", what)
	}
	if c.flow != st.cur {
		L.RaiseError("self.%s: this machine belongs to flow %d, not the connection being evaluated", what, c.flow.id)
	}
	return c
}

// selfTrigger is self:trigger(name, ...): the rules that hook the
// dissector's event run at once, then the machine's transitions on it.
func (st *state) selfTrigger(L *lua.LState) int {
	c := st.checkSelf(L, "trigger")
	name := L.CheckString(2)
	id, ok := c.cm.byName[name]
	if !ok {
		L.RaiseError("self:trigger(%q): dissector %s registers no event %q%s", name, c.cm.d.name, name, suggestFrom(name, c.cm.d.events))
	}
	p := luaParam{v: L.Get(3)}
	if top := L.GetTop(); top > 3 {
		p.more = make([]lua.LValue, 0, top-3)
		for i := 4; i <= top; i++ {
			p.more = append(p.more, L.Get(i))
		}
	}
	switch err := c.in.Trigger(id, p); {
	case errors.Is(err, sm.ErrInGuard):
		L.RaiseError("self:trigger(%q): a guard (when) only looks; trigger events in execute", name)
	case errors.Is(err, sm.ErrFinished):
		L.RaiseError("self:trigger(%q): the machine has ended", name)
	case err != nil:
		L.RaiseError("self:trigger(%q): %v", name, err)
	}
	return 0
}

// selfKill is self:drop(reason) and self:reset(reason).
func (st *state) selfKill(L *lua.LState, what string, v inspect.Verdict) int {
	c := st.checkSelf(L, what)
	done := "dropped"
	if v == inspect.Reset {
		done = "reset"
	}
	reason := L.OptString(2, done+" by state machine "+c.cm.name)
	if st.rule == nil {
		st.rule = c.cm.rule
	}
	st.kill(c.flow, v, reason)
	return 0
}

// selfLog is self:log(message): an info record with the connection, the
// machine and its state.
func (st *state) selfLog(L *lua.LState) int {
	c := st.checkSelf(L, "log")
	if !st.log.Core().Enabled(zap.InfoLevel) {
		return 0
	}
	f := c.flow
	fields := []zap.Field{
		zap.Uint64("flow", f.id),
		zap.Stringer("src", f.src),
		zap.Stringer("dst", f.dst),
		zap.String("machine", c.cm.name),
		zap.String("state", c.in.State()),
	}
	if st.rule != nil {
		fields = append(fields, zap.String("rule", st.rule.loc))
	}
	if st.evName != "" || st.rule != nil {
		fields = append(fields, zap.String("event", st.eventName()))
	}
	st.log.Info(L.ToStringMeta(L.Get(2)).String(), fields...)
	return 0
}
