package tlssm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// Rule names of the decisions a Session takes itself.
const (
	// RuleFail: the machine failed (malformed input, a message the state
	// forbids, a handshake timeout).
	RuleFail = "builtin:fail"
	// RuleInspector: the pump broke the inspector contract.
	RuleInspector = "builtin:inspector"
)

// Anomaly names raised by the machine. They are stable: rules match on
// them.
const (
	// AnomalyUnexpectedMessage: a message or record the current state does
	// not allow; the machine fails.
	AnomalyUnexpectedMessage = "unexpected_message"
	// AnomalyHeartbeatDuringHandshake: a heartbeat before both directions
	// are encrypted (Heartbleed layer 2).
	AnomalyHeartbeatDuringHandshake = "heartbeat_during_handshake"
	// AnomalyHeartbeatBeforeApplicationData: an encrypted heartbeat request
	// before any application data in its direction (layer 4).
	AnomalyHeartbeatBeforeApplicationData = "heartbeat_before_application_data"
	// AnomalyHeartbeatRequestTooShort: an encrypted heartbeat request
	// shorter than the negotiated cipher suite allows (layer 4).
	AnomalyHeartbeatRequestTooShort = "heartbeat_request_too_short"
	// AnomalyHeartbeatNotNegotiated: a heartbeat although the hellos did not
	// both offer the extension, or a request from a peer the other side
	// does not allow to send them (RFC 6520 2), or a heartbeat in TLS 1.3.
	AnomalyHeartbeatNotNegotiated = "heartbeat_not_negotiated"
	// AnomalyTooManyHeartbeatRequests: a heartbeat request while more
	// requests of its direction are unanswered than the machine can match
	// with their responses (layer 3 would lose track of the oldest).
	AnomalyTooManyHeartbeatRequests = "too_many_heartbeat_requests"
)

// notTLSHead is how many of a stream's first bytes a *NotTLSError quotes,
// by the record layer's error: the bytes the record layer must hold before
// it rejects them that way, so that the message does not depend on how
// the bytes were split into reads. A text protocol (SSH, HTTP, SMTP, ...)
// always fails on its content type, once 4 bytes are there to rule out
// an SSLv2 header: "SSH-", "GET ", "220 " name it.
var notTLSHead = map[string]int{
	dissect.AnomalyInvalidRecordType:    4,
	dissect.AnomalyInvalidRecordVersion: 3,
	dissect.AnomalyInvalidRecordLength:  dissect.HeaderLen,
	dissect.AnomalyInvalidSSLv2Header:   2,
}

// NotTLSError is the parse error of a connection that does not speak TLS
// at all: the first bytes of a direction are not a TLS or SSLv2 record,
// and the other direction framed no record before them. Its message starts
// with "not TLS", which rules may match in parse_error's err.message.
type NotTLSError struct {
	Direction dissect.Direction
	// Head is the start of the bytes (notTLSHead).
	Head []byte
	// Err is the record layer's error on them.
	Err *dissect.RecordError
}

func (e *NotTLSError) Error() string {
	return fmt.Sprintf("not TLS: the %s's first bytes %q are not a TLS or SSLv2 record (%s)",
		peer(e.Direction), e.Head, e.Err.Anomaly.Detail)
}

func (e *NotTLSError) Unwrap() error { return e.Err }

// maxAnomaliesListed bounds the anomalies a Session keeps for
// Anomalies (the connection line): each distinct name and direction is
// kept once, and a stream that finds more than this many kinds of
// anomalies is named by the first ones.
const maxAnomaliesListed = 32

// Session is the inspector of one connection: the record layer of both
// directions (dissect.Conn), an instance of the TLS machine and the
// connection's Handler. It implements inspect.Inspector,
// replay.GapHandler and replay.AnomalyLister; its flow fields (FlowInfo,
// Info, State) may be read at any time, from any goroutine.
type Session struct {
	mu   sync.Mutex
	def  *definition
	in   *instance
	conn *dissect.Conn
	h    Handler
	// hooks has bit id set when the handler hooks event id.
	hooks uint32
	flow  inspect.Flow
	kill  func(inspect.Decision)
	// now is the stream time of the call being served.
	now time.Time

	dirs [2]half

	// decision is the verdict once decided: a killing one ends the
	// inspection, and so does Bypass.
	decision inspect.Decision
	decided  bool
	// failReason is the reason the fail action gives the decision, set
	// by the transition that jumps to fail.
	failReason string
	closed     bool
	// broken: a call panicked (a bug in the machine, the grammar or a
	// handler's Go code) with the machine or the handler half-way through
	// an event; Close then only releases what the Session holds.
	broken bool

	// What the handshake established so far. Values only: the messages
	// themselves reference the pump's buffer, valid during one Feed.
	hello        dissect.ClientHello
	cert         dissect.Certificate
	helloSeen    bool
	offersTLS13  bool
	earlyData    bool
	ticket       bool
	sessionID    [32]byte
	sessionIDLen int
	hbClient     uint8 // heartbeat mode the client offered, 0 none
	hbServer     uint8
	serverHello  bool
	retried      bool
	tls13        bool
	resumable    bool
	serverTicket bool
	kx           dissect.KeyExchange
	prot         recordProtection
	established  bool
	fp           dissect.ClientFingerprint

	// ev is the Event being raised: one at a time (the machine defines no
	// transition on its registered events, so Trigger delivers at once).
	ev Event
	// messages: hello or cert was parsed during this call.
	messages bool
	// chainAnoms are the certificates a handler's Chain call found
	// invalid, raised once it returns.
	chainAnoms []dissect.Anomaly
	anomalies  []dissect.Anomaly

	info  atomic.Pointer[inspect.Info]
	state atomic.Pointer[string]

	timer   *time.Timer
	timerAt time.Time
	// noTimers: timeouts fire only when a call passes them.
	noTimers bool
	trace    func(s *Session, from, to string)

	// ux is set when h is a UnitHandler.
	ux *unitScratch
}

// half is what a Session keeps of one direction.
type half struct {
	// consumed counts the bytes at the head of the pending bytes that the
	// record layer has consumed; pendingLen is how many pending bytes the
	// pump kept after the last call.
	consumed, pendingLen int
	// unit is the last unit of the record layer, in the machine's input
	// while it is fed.
	unit dissect.Unit
	in   Input
	// rank is the position in its flight of the last message, from 1, in
	// the current state (grammar.order).
	rank int
	// ccs counts cleartext ChangeCipherSpec records.
	ccs        int
	clientCert bool
	appData    bool
	// hb are the heartbeat requests of this direction not yet answered,
	// oldest first.
	hb  [maxOutstandingHeartbeats]hbRequest
	nhb int
	// leaking: the last record of this direction was a heartbeat response
	// found leaking; heartbeat records that follow it are its rest.
	leaking bool
	eof     bool
	// lost: a gap in the capture put the record layer out of step; the
	// direction is forwarded uninspected.
	lost bool
}

// New implements inspect.Factory: it starts the inspection of a connection
// and raises new_connection.
func (f *Factory) New(flow *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	s := &Session{
		def:      f.def,
		conn:     dissect.NewConn(f.opts.Limits),
		flow:     *flow,
		kill:     kill,
		now:      flow.Start,
		noTimers: f.opts.NoTimers,
		trace:    f.trace,
	}
	s.h = noHandler{}
	if f.opts.NewHandler != nil {
		if h := f.opts.NewHandler(&s.flow, s); h != nil {
			s.h = h
		}
	}
	for id := range NumEvents {
		if s.h.Hooked(id) {
			s.hooks |= 1 << id
		}
	}
	if uh, ok := s.h.(UnitHandler); ok {
		s.ux = &unitScratch{h: uh}
	}
	s.mu.Lock()
	returned := false
	defer func() {
		if !returned {
			// The caller gets no Session to Close: release the
			// handler (its hold on the rule set) on the way out.
			s.broken, s.closed = true, true
			s.h.Close()
		}
		s.mu.Unlock()
	}()
	s.in = f.def.m.New(s, flow.Start)
	if ev := s.event(EvNewConnection, dissect.Up, 0); ev != nil {
		s.raise(ev)
	}
	s.unitsAdvance()
	s.armTimer()
	returned = true
	if s.decided {
		return s, s.decision
	}
	return s, inspect.Decision{}
}

// leave ends a call that holds the lock, deferred: a call that did not
// return (a panic, on its way to the pump that recovers it) leaves the
// Session broken, and never locked.
func (s *Session) leave(returned *bool) {
	if !*returned {
		s.broken = true
	}
	s.mu.Unlock()
}

// Feed implements inspect.Inspector.
func (s *Session) Feed(d dissect.Direction, pending []byte, now time.Time) inspect.Result {
	s.mu.Lock()
	returned := false
	defer s.leave(&returned)
	res := s.feed(d&1, pending, now)
	s.release(d & 1)
	s.armTimer()
	returned = true
	return res
}

// release lets go of every reference into the pump's buffer, which the
// pump may give back to its pool once the call returns (an idle
// connection then holds none).
func (s *Session) release(d dissect.Direction) {
	h := &s.dirs[d]
	h.unit, h.in = dissect.Unit{}, Input{}
	if s.messages {
		s.messages = false
		// Their slices reference the buffer; their own slices are small.
		s.hello = dissect.ClientHello{}
		s.cert = dissect.Certificate{}
	}
}

func (s *Session) feed(d dissect.Direction, pending []byte, now time.Time) inspect.Result {
	h := &s.dirs[d]
	s.advance(now)
	switch {
	case s.decided:
		return s.settled(pending)
	case h.lost:
		return inspect.Result{Forward: len(pending), HelloDone: s.helloSeen}
	case h.consumed > len(pending):
		s.decide(inspect.Decision{Verdict: inspect.Drop, Rule: RuleInspector,
			Reason: fmt.Sprintf("inspector: %s pending bytes shrank from %d to %d", d, h.consumed, len(pending))})
		return s.settled(pending)
	}
	base := s.conn.Offset(d) - int64(h.consumed)
	clear := s.cleared(d, base)
	u := &h.unit
	for {
		var n int
		var err error
		*u, n, err = s.conn.Next(d, pending[h.consumed:])
		if err != nil {
			clear = s.cleared(d, base)
			s.framingError(d, err, pending[h.consumed:])
			break
		}
		if u.Kind != dissect.UnitMessage {
			// The records before this one and their messages are judged.
			clear = s.cleared(d, base)
		}
		if u.Kind == dissect.NeedMore {
			break
		}
		h.consumed += n
		s.unit(d, u)
		if s.decided {
			break
		}
	}
	if s.decided {
		res := s.settled(pending)
		if res.Decision.Verdict.Kills() {
			res.Forward = clear
		}
		return res
	}
	res := inspect.Result{Forward: clear, HelloDone: s.helloSeen}
	if clear == len(pending) {
		// Nothing held: the rest of an application_data payload may pass
		// unseen.
		if left := s.conn.PayloadLeft(d); left > 0 {
			if s.conn.Skip(d, left) == nil {
				res.Pass = int64(left)
			}
		}
	}
	h.consumed -= clear
	h.pendingLen = len(pending) - clear
	return res
}

// cleared returns how many of the consumed pending bytes of d are judged:
// all of them, but for the records of a handshake message still
// incomplete.
func (s *Session) cleared(d dissect.Direction, base int64) int {
	c := s.dirs[d].consumed
	if start, ok := s.conn.Incomplete(d); ok {
		if off := start - base; off < int64(c) {
			c = int(max(off, 0))
		}
	}
	return c
}

// unforwarded returns the stream offset of the first byte of d not
// forwarded: what the last call left pending starts there.
func (s *Session) unforwarded(d dissect.Direction) int64 {
	return s.conn.Offset(d) - int64(s.dirs[d].consumed)
}

// settled is the answer once the inspection is decided.
func (s *Session) settled(pending []byte) inspect.Result {
	res := inspect.Result{HelloDone: s.helloSeen, Decision: s.decision}
	if s.decision.Verdict == inspect.Bypass {
		res.Forward = len(pending)
	}
	return res
}

// unit raises the record layer's events of a unit and feeds it to the
// machine.
func (s *Session) unit(d dissect.Direction, u *dissect.Unit) {
	h := &s.dirs[d]
	switch u.Kind {
	case dissect.UnitChunk:
		// Part of an application_data payload whose header was judged.
		return
	case dissect.UnitRecord, dissect.UnitHeader, dissect.UnitSSLv2:
		if u.Kind != dissect.UnitRecord || u.Header.Type != dissect.TypeHeartbeat {
			h.leaking = false
		}
		if ev := s.event(EvRecord, d, u.Start); ev != nil {
			ev.Record = Record{Header: u.Header, Encrypted: u.Encrypted, SSLv2: u.Kind == dissect.UnitSSLv2}
			s.raise(ev)
		}
	}
	for _, a := range u.Anomalies {
		off := u.Start
		if a.Direction != d {
			// A unit of d can cut a message of the other direction (the
			// TLS 1.3 ServerHello switches both): the anomaly is about
			// the bytes held there.
			off = s.unforwarded(a.Direction)
		}
		s.anomaly(a, off)
	}
	if s.decided {
		return
	}
	h.in = Input{Unit: u}
	if u.Kind == dissect.UnitRecord && u.Header.Type == dissect.TypeHandshake && !u.Encrypted {
		if len(u.Fragment) > 0 {
			return // its messages follow as UnitMessage units
		}
		h.in.Err = errZeroLengthHandshake
	}
	s.in.Feed(sm.Direction(d), &h.in, s.now)
	if s.ux != nil && !s.decided {
		s.unitDone(d, u)
	}
}

// framingError feeds the machine the error that stopped d's record layer:
// the element of any state turns it into parse_error. buf starts at the
// bytes that could not be framed.
//
// When they are the first bytes of d and the other direction has not
// framed a record either, the connection never spoke TLS: it is another
// protocol on the port (SSH, HTTP, ...), reported as the parse error
// *NotTLSError rather than as an anomaly of a TLS record.
func (s *Session) framingError(d dissect.Direction, err error, buf []byte) {
	var off int64
	var re *dissect.RecordError
	if errors.As(err, &re) {
		off = re.Offset
		if off == 0 && s.conn.Offset(d.Opposite()) == 0 {
			n := min(len(buf), notTLSHead[re.Anomaly.Name])
			err = &NotTLSError{Direction: d, Head: bytes.Clone(buf[:n]), Err: re}
		} else {
			s.anomaly(re.Anomaly, off)
			if s.decided {
				return
			}
		}
	}
	h := &s.dirs[d]
	h.unit = dissect.Unit{Start: off}
	h.in = Input{Unit: &h.unit, Err: err}
	s.in.Feed(sm.Direction(d), &h.in, s.now)
}

// EOF implements inspect.Inspector: the anomalies of a stream cut short
// are raised, and the bytes of a record or message that can no longer
// complete are not forwarded.
func (s *Session) EOF(d dissect.Direction, pending []byte, now time.Time) inspect.Result {
	s.mu.Lock()
	returned := false
	defer s.leave(&returned)
	res := s.eof(d&1, pending, now)
	s.armTimer()
	returned = true
	return res
}

func (s *Session) eof(d dissect.Direction, pending []byte, now time.Time) inspect.Result {
	h := &s.dirs[d]
	s.advance(now)
	h.eof = true
	switch {
	case s.decided:
		return s.settled(pending)
	case h.lost:
		return inspect.Result{Forward: len(pending), HelloDone: s.helloSeen}
	}
	rest := pending[min(h.consumed, len(pending)):]
	for _, a := range s.conn.EOF(d, rest) {
		s.anomaly(a, s.conn.Offset(d))
	}
	clear := min(s.cleared(d, s.conn.Offset(d)-int64(h.consumed)), len(pending))
	h.consumed, h.pendingLen = 0, 0
	if s.decided {
		res := s.settled(pending)
		if res.Decision.Verdict.Kills() {
			res.Forward = clear
		}
		return res
	}
	return inspect.Result{Forward: clear, HelloDone: s.helloSeen}
}

// Gap implements replay.GapHandler. A hole inside an application_data
// payload is skipped like the bytes Pass lets through; anywhere else the
// record layer of that direction is lost, and the direction is forwarded
// uninspected from then on.
func (s *Session) Gap(d dissect.Direction, n int, now time.Time) inspect.Result {
	s.mu.Lock()
	returned := false
	defer s.leave(&returned)
	res := s.gap(d&1, n, now)
	s.armTimer()
	returned = true
	return res
}

func (s *Session) gap(d dissect.Direction, n int, now time.Time) inspect.Result {
	h := &s.dirs[d]
	s.advance(now)
	if s.decided {
		return s.settled(nil)
	}
	if h.lost {
		return inspect.Result{HelloDone: s.helloSeen}
	}
	if h.pendingLen == 0 && n <= s.conn.PayloadLeft(d) {
		if s.conn.Skip(d, n) == nil {
			return inspect.Result{HelloDone: s.helloSeen}
		}
	}
	// The held bytes were never judged: they are dropped.
	h.lost = true
	h.consumed, h.pendingLen = 0, 0
	return inspect.Result{HelloDone: s.helloSeen}
}

// Close implements inspect.Inspector: end_connection, then the machine
// finishes and the handler is released. After a call that panicked, only
// the handler is released: the machine and the handler may have been
// half-way through an event.
func (s *Session) Close(sum inspect.Summary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.broken {
		s.h.Close()
		return
	}
	if s.hooks&(1<<EvEndConnection) != 0 {
		ev := &s.ev
		*ev = Event{ID: EvEndConnection, Time: s.now, Summary: sum}
		if s.in.Finished() || s.decided {
			s.h.Event(ev)
		} else {
			s.in.Trigger(s.def.ids[EvEndConnection], Param{Event: ev})
		}
		s.ev = Event{}
	}
	if !s.in.Finished() {
		s.in.Finish()
		s.setState(sm.Finish)
	}
	s.h.Close()
}

// Info implements inspect.Inspector; it takes no lock.
func (s *Session) Info() inspect.Info {
	if i := s.info.Load(); i != nil {
		return *i
	}
	return inspect.Info{}
}

// State returns the name of the machine's current state ("fail" or
// "finish" once it has ended); it takes no lock.
func (s *Session) State() string {
	if p := s.state.Load(); p != nil {
		return *p
	}
	return ""
}

// FlowInfo is what the rules read of a connection as flow fields.
type FlowInfo struct {
	inspect.Info
	State string
}

// FlowInfo returns the flow fields known so far; it takes no lock, so a
// handler may call it while an event is evaluated.
func (s *Session) FlowInfo() FlowInfo { return FlowInfo{Info: s.Info(), State: s.State()} }

// Flow returns what was known of the connection when it was accepted.
func (s *Session) Flow() inspect.Flow { return s.flow }

// Anomalies implements replay.AnomalyLister: the anomalies found, each name
// and direction once, in the order first found. It takes the Session's
// lock: a Handler must not call it.
func (s *Session) Anomalies() []dissect.Anomaly {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]dissect.Anomaly(nil), s.anomalies...)
}

// Decision returns the decision taken so far, zero while the connection
// passes. It takes the Session's lock: a Handler must not call it.
func (s *Session) Decision() inspect.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.decision
}

// advance lets stream time pass: the machine fires the timeouts due.
func (s *Session) advance(now time.Time) {
	if now.After(s.now) {
		s.now = now
	}
	if !s.decided && !s.in.Finished() {
		s.in.Advance(s.now)
	}
	s.unitsAdvance()
}

// armTimer keeps one wall-clock timer on the machine's next deadline, and
// none while no timeout is armed (established connections).
func (s *Session) armTimer() {
	if s.noTimers || s.closed {
		return
	}
	at, ok := s.in.NextDeadline()
	if s.ux != nil {
		if uat, uok := s.ux.h.NextDeadline(); uok && (!ok || uat.Before(at)) {
			at, ok = uat, true
		}
	}
	if !ok || s.decided {
		if s.timer != nil && !s.timerAt.IsZero() {
			s.timer.Stop()
			s.timerAt = time.Time{}
		}
		return
	}
	if at.Equal(s.timerAt) {
		return
	}
	s.timerAt = at
	wait := time.Until(at)
	if s.timer == nil {
		s.timer = time.AfterFunc(wait, s.onTimer)
		return
	}
	s.timer.Reset(wait)
}

// onTimer fires the machine's due timeouts from the timer's goroutine and
// kills the connection when one failed the machine. A panic there would
// take the process down, as no pump is on this goroutine to recover it:
// it is recovered and handed to kill as a Reset with inspect.RulePanic,
// from the deferred function that recovered it, so that the proxy logs
// the stack of where it panicked.
func (s *Session) onTimer() {
	s.mu.Lock()
	returned := false
	defer func() {
		if returned {
			return
		}
		r := recover()
		s.broken = true
		s.mu.Unlock()
		if s.kill != nil {
			s.kill(inspect.Decision{Verdict: inspect.Reset, Reason: fmt.Sprintf("panic: %v", r), Rule: inspect.RulePanic})
		}
	}()
	if s.closed || s.decided || s.in.Finished() {
		returned = true
		s.mu.Unlock()
		return
	}
	now := time.Now()
	if now.Before(s.timerAt) {
		now = s.timerAt
	}
	s.timerAt = time.Time{}
	s.advance(now)
	d, kill := s.decision, s.decided && s.decision.Verdict.Kills()
	s.armTimer()
	returned = true
	s.mu.Unlock()
	if kill && s.kill != nil {
		s.kill(d)
	}
}

// decide records a decision; the first one that ends the inspection wins.
func (s *Session) decide(d inspect.Decision) {
	if s.decided || d.Verdict == inspect.Pass {
		return
	}
	s.decision, s.decided = d, true
}

// event returns the scratch Event set up for id, or nil when nothing hooks
// id or the inspection is decided.
func (s *Session) event(id EventID, d dissect.Direction, off int64) *Event {
	if s.hooks&(1<<id) == 0 || s.decided {
		return nil
	}
	ev := &s.ev
	*ev = Event{ID: id, Dir: d, Time: s.now, Offset: off}
	return ev
}

// raise triggers ev in the machine, whose hook delivers it.
func (s *Session) raise(ev *Event) {
	if s.in.Finished() || ev.ID == EvParseError {
		s.deliver(ev)
	} else {
		s.in.Trigger(s.def.ids[ev.ID], Param{Event: ev})
	}
	if ev.chainDone && len(ev.chainAnoms) > 0 {
		s.chainAnoms = ev.chainAnoms
	}
	s.ev = Event{} // let the messages go
}

// deliver hands ev to the handler; it is the machine's hook.
func (s *Session) deliver(ev *Event) {
	if ev == nil || s.decided {
		return
	}
	s.decide(s.h.Event(ev))
}

// anomaly notes a and raises it.
func (s *Session) anomaly(a dissect.Anomaly, off int64) {
	s.note(a)
	if ev := s.event(EvAnomaly, a.Direction, off); ev != nil {
		ev.Anomaly = a
		s.raise(ev)
	}
}

func (s *Session) note(a dissect.Anomaly) {
	if len(s.anomalies) >= maxAnomaliesListed {
		return
	}
	for _, b := range s.anomalies {
		if b.Name == a.Name && b.Direction == a.Direction {
			return
		}
	}
	s.anomalies = append(s.anomalies, a)
}

func (s *Session) setState(name string) {
	prev := s.State()
	for i, n := range s.def.names {
		if n == name {
			s.state.Store(&s.def.names[i])
			break
		}
	}
	if s.trace != nil && prev != name {
		s.trace(s, prev, name)
	}
}

func (s *Session) setInfo(f func(*inspect.Info)) {
	i := s.Info()
	f(&i)
	s.info.Store(&i)
}

// peer names the sender of d.
func peer(d dissect.Direction) string {
	if d == dissect.Up {
		return "client"
	}
	return "server"
}

// errText is an error's message without the package prefix of dissect's
// errors, for reasons and parse_error messages.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "dissect: ")
}

// The machine's actions.

func (s *Session) onEnter(in *instance, _ smEvent) {
	s.dirs[dissect.Up].rank, s.dirs[dissect.Down].rank = 0, 0
	s.setState(in.State())
}

func (s *Session) onEstablished(in *instance, ev smEvent) {
	s.onEnter(in, ev)
	s.becomeEstablished()
}

func (s *Session) becomeEstablished() {
	if s.established {
		return
	}
	s.established = true
	if ev := s.event(EvEstablished, dissect.Down, 0); ev != nil {
		s.raise(ev)
	}
}

func (s *Session) onFail(in *instance, ev smEvent) {
	reason := s.failReason
	if reason == "" {
		reason = "state machine failed: " + errText(ev.Err)
	}
	s.decide(inspect.Decision{Verdict: inspect.Drop, Reason: reason, Rule: RuleFail})
	s.setState(sm.Fail)
}

func (s *Session) onParseError(in *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	msg := errText(e.Err)
	s.failReason = "parse error: " + msg
	if ev := s.event(EvParseError, d, e.Unit.Unit.Start); ev != nil {
		ev.Err = e.Err
		s.raise(ev)
	}
}

func (s *Session) onUnexpected(in *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	p := e.Param
	if e.ID == sm.EvMissingGrammar {
		p = classify(e.Unit.Unit)
	}
	detail := fmt.Sprintf("%s from the %s in state %s", p.describe(), peer(d), in.State())
	s.failReason = "unexpected message: " + detail
	s.anomaly(dissect.Anomaly{Name: AnomalyUnexpectedMessage, Direction: d, Detail: detail}, e.Unit.Unit.Start)
}

func (s *Session) onAppData(_ *instance, ev smEvent) {
	s.dirs[ev.Dir].appData = true
}

func (s *Session) onOpaque(_ *instance, e smEvent) {
	u := e.Unit.Unit
	if u.Header.Type == dissect.TypeChangeCipherSpec {
		// The ChangeCipherSpec of a renegotiation, under the current keys.
		if ev := s.event(EvChangeCipherSpec, dissect.Direction(e.Dir), u.Start); ev != nil {
			s.raise(ev)
		}
	}
}

func (s *Session) onSSLv2(_ *instance, e smEvent) {
	if s.conn.Version() == dissect.VersionSSL20 && s.Info().Version == "" {
		s.setInfo(func(i *inspect.Info) { i.Version = dissect.VersionName(dissect.VersionSSL20) })
	}
	if s.conn.Encrypted(dissect.Up) && s.conn.Encrypted(dissect.Down) {
		s.becomeEstablished()
	}
}

func (s *Session) onCCS(_ *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	s.dirs[d].ccs++
	if ev := s.event(EvChangeCipherSpec, d, e.Unit.Unit.Start); ev != nil {
		s.raise(ev)
	}
}

func (s *Session) onAlert(_ *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	u := e.Unit.Unit
	if u.Encrypted {
		if ev := s.event(EvAlert, d, u.Start); ev != nil {
			ev.Alert = Alert{Encrypted: true}
			s.raise(ev)
		}
		return
	}
	for _, a := range u.Alerts {
		if ev := s.event(EvAlert, d, u.Start); ev != nil {
			ev.Alert = Alert{Alert: a}
			s.raise(ev)
		}
	}
}

// onMessage raises the events of a cleartext handshake message: handshake,
// then the message's own event, then the anomalies its parser found.
func (s *Session) onMessage(_ *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	u := e.Unit.Unit
	t := e.Param.Type
	length := u.Msg.Length
	sslv2 := e.Param.Kind == KindSSLv2Hello
	if sslv2 {
		length = len(u.SSLv2.Body)
	}
	parsed := !u.Msg.TooLarge
	switch t {
	case dissect.MsgClientHello:
		if parsed {
			s.clientHello()
		}
	case dissect.MsgServerHello:
		s.serverHelloSeen()
	case dissect.MsgHelloRetryRequest:
		s.retried, s.tls13 = true, true
	case dissect.MsgCertificate:
		if d == dissect.Up && (!parsed || len(s.cert.Entries) > 0) {
			s.dirs[d].clientCert = true
		}
	case dissect.MsgCertificateURL:
		s.dirs[d].clientCert = true
	}
	if ev := s.event(EvHandshake, d, u.Start); ev != nil {
		ev.Message = Message{Type: t, Length: length}
		s.raise(ev)
	}
	if !parsed {
		return
	}
	switch t {
	case dissect.MsgClientHello:
		if ev := s.event(EvClientHello, d, u.Start); ev != nil {
			ev.ClientHello = &s.hello
			ev.Message = Message{Type: t, Length: length}
			fp := s.fp
			if s.retried {
				fp = s.hello.Fingerprint()
			}
			ev.JA3, ev.JA3Hash, ev.JA4 = fp.JA3, fp.JA3Hash, fp.JA4
			s.raise(ev)
		}
		s.messageAnomalies(d, s.hello.Anomalies, u.Start)
	case dissect.MsgServerHello:
		sh, _ := s.conn.ServerHello()
		if ev := s.event(EvServerHello, d, u.Start); ev != nil {
			ev.ServerHello = sh
			ev.Message = Message{Type: t, Length: length}
			ev.JA3S, ev.JA3SHash = sh.JA3S()
			s.raise(ev)
		}
		s.messageAnomalies(d, sh.Anomalies, u.Start)
	case dissect.MsgCertificate:
		if ev := s.event(EvCertificate, d, u.Start); ev != nil {
			ev.Certificate = &s.cert
			ev.Message = Message{Type: t, Length: length}
			s.raise(ev)
			// The handler may have parsed the chain: its rejects are
			// anomalies. ev is the scratch, reset by raise.
		}
		if s.chainAnoms != nil {
			anoms := s.chainAnoms
			s.chainAnoms = nil
			s.messageAnomalies(d, anoms, u.Start)
		}
	}
}

func (s *Session) messageAnomalies(d dissect.Direction, as []dissect.Anomaly, off int64) {
	for _, a := range as {
		a.Direction = d
		s.anomaly(a, off)
	}
}

// clientHello learns what the rest of the handshake needs from a
// ClientHello, copied out of the pump's buffer.
func (s *Session) clientHello() {
	h := &s.hello
	first := !s.helloSeen
	s.helloSeen = true
	s.offersTLS13 = isTLS13(h.LegacyVersion)
	for _, v := range h.SupportedVersions {
		if isTLS13(v) {
			s.offersTLS13 = true
		}
	}
	s.earlyData = h.EarlyData && !s.retried
	s.sessionIDLen = copy(s.sessionID[:], h.SessionID)
	s.ticket = len(h.SessionTicketData) > 0
	s.hbClient = 0
	if h.Heartbeat {
		s.hbClient = max(h.HeartbeatMode, 1)
	}
	if !first {
		return
	}
	s.fp = h.Fingerprint()
	alpn := ""
	if len(h.ALPN) > 0 {
		alpn = string(h.ALPN[0])
	}
	s.setInfo(func(i *inspect.Info) {
		i.SNI, i.ALPN, i.JA3, i.JA4 = h.ServerName, alpn, s.fp.JA3Hash, s.fp.JA4
	})
}

// serverHelloSeen learns the negotiated parameters from the ServerHello.
func (s *Session) serverHelloSeen() {
	sh, err := s.conn.ServerHello()
	if err != nil {
		return
	}
	if sh.HelloRetryRequest {
		s.retried, s.tls13 = true, true
		return
	}
	s.serverHello = true
	v := sh.Version()
	s.tls13 = isTLS13(v)
	s.kx = sh.KeyExchange()
	s.prot = recordProtection{suite: sh.CipherSuite, version: v, compressed: sh.CompressionMethod != 0}
	for _, e := range sh.Extensions {
		switch e.Type {
		case dissect.ExtEncryptThenMAC:
			s.prot.etm = true
		case extTruncatedHMAC:
			s.prot.truncMAC = true
		}
	}
	s.resumable = s.ticket || len(sh.SessionID) > 0 && bytes.Equal(sh.SessionID, s.sessionID[:s.sessionIDLen])
	s.serverTicket = sh.SessionTicket
	s.hbServer = 0
	if sh.Heartbeat {
		s.hbServer = max(sh.HeartbeatMode, 1)
	}
	s.setInfo(func(i *inspect.Info) {
		i.Version = dissect.VersionName(v)
		if sh.ALPN != nil {
			i.ALPN = string(sh.ALPN)
		}
	})
}
