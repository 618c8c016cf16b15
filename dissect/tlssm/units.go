package tlssm

import (
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// UnitHandler is a Handler that runs state machines of its own beside the
// TLS machine, over the same units (package rules runs the machines users
// write in Lua with it). The TLS machine keeps its own judgement: a unit
// it refuses (malformed, or not allowed in its state) fails the connection
// before any other machine sees it, and a killing decision of either ends
// the connection.
//
// A Session whose Handler implements UnitHandler calls Unit for every unit
// its machine accepted: each cleartext handshake message (the messages of
// a cleartext handshake record come instead of the record), and every
// other record (an application_data record by its header). It calls Unit
// once the machine and the events of the unit have run, only while the
// connection passes, with the Session's lock held, units of one direction
// in stream order. Advance lets the handler's stream time pass: it is
// called when the Session starts (the handler's machines may decide at
// once), before each Feed, EOF and Gap, and when the Session's timer
// fires; the Session keeps one timer for its machine and the handler,
// armed on the earlier of their NextDeadlines.
//
// A Handler that does not implement it costs a Session nothing: the
// Session asks once, when it starts, and keeps nothing per unit.
type UnitHandler interface {
	Handler
	// Unit judges one unit; the decision is that of the handler's flow,
	// as Event's.
	Unit(u *Unit) inspect.Decision
	// Advance lets stream time pass until now.
	Advance(now time.Time) inspect.Decision
	// NextDeadline returns when Advance must be called next, if ever.
	NextDeadline() (time.Time, bool)
}

// Unit is a unit of the record layer as the TLS machine accepted it.
//
// Event describes it with the fields of the event the unit is about: ID is
// EvClientHello, EvServerHello or EvCertificate for those messages when
// they parsed (a message over the reassembly cap is passed unparsed),
// EvHandshake for another cleartext message, EvAlert, EvHeartbeat or
// EvChangeCipherSpec for those records, and EvRecord for the rest
// (application data, encrypted records, SSLv2 records). Message is set for
// every message and Record for every unit (for a message, the header of
// the record that completed it). An alert record gives its first alert;
// a heartbeat carries what the Heartbleed checks found in it.
//
// Like an Event, a Unit and everything it references are valid only
// during the call: copy what you keep.
type Unit struct {
	Event
	// Kind and Type are what the TLS machine made of the unit; Kind is
	// never KindUnexpected.
	Kind Kind
	Type dissect.HandshakeType
	// Raw is the record layer's unit.
	Raw *dissect.Unit
}

// unitScratch is what a Session keeps for a UnitHandler: allocated only
// when the Handler is one, so that other Sessions pay a nil pointer.
type unitScratch struct {
	h UnitHandler
	u Unit
	// hb is what the Heartbleed checks found in the last heartbeat.
	hb Heartbeat
}

// unitDone hands the unit the machine just accepted to the UnitHandler.
func (s *Session) unitDone(d dissect.Direction, du *dissect.Unit) {
	x := s.ux
	p := classify(du)
	u := &x.u
	*u = Unit{
		Event: Event{ID: EvRecord, Dir: d, Time: s.now, Offset: du.Start,
			Record: Record{Header: du.Header, Encrypted: du.Encrypted, SSLv2: du.Kind == dissect.UnitSSLv2}},
		Kind: p.Kind,
		Type: p.Type,
		Raw:  du,
	}
	switch p.Kind {
	case KindMessage, KindSSLv2Hello:
		length, parsed := du.Msg.Length, !du.Msg.TooLarge
		if p.Kind == KindSSLv2Hello {
			length = len(du.SSLv2.Body)
		}
		u.ID, u.Message = EvHandshake, Message{Type: p.Type, Length: length}
		switch p.Type {
		case dissect.MsgClientHello:
			if parsed {
				u.ID, u.ClientHello = EvClientHello, &s.hello
				fp := s.fp
				if s.retried {
					fp = s.hello.Fingerprint()
				}
				u.JA3, u.JA3Hash, u.JA4 = fp.JA3, fp.JA3Hash, fp.JA4
			}
		case dissect.MsgServerHello:
			if sh, err := s.conn.ServerHello(); err == nil {
				u.ID, u.ServerHello = EvServerHello, sh
				u.JA3S, u.JA3SHash = sh.JA3S()
			}
		case dissect.MsgCertificate:
			if parsed {
				u.ID, u.Certificate = EvCertificate, &s.cert
			}
		}
	case KindAlert:
		u.ID = EvAlert
		if len(du.Alerts) > 0 {
			u.Alert = Alert{Alert: du.Alerts[0]}
		}
	case KindEncryptedAlert:
		u.ID, u.Alert = EvAlert, Alert{Encrypted: true}
	case KindHeartbeat:
		u.ID, u.Heartbeat = EvHeartbeat, x.hb
	case KindCCS:
		u.ID = EvChangeCipherSpec
	}
	s.decide(x.h.Unit(u))
	*u = Unit{} // let the messages go
}

// unitsAdvance lets the UnitHandler's stream time pass.
func (s *Session) unitsAdvance() {
	if s.ux != nil && !s.decided {
		s.decide(s.ux.h.Advance(s.now))
	}
}
