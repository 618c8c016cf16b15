package tlssm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The instantiation of package sm for TLS: a Session is the context, an
// *Input the unit, a Param what elements return and events carry.
type (
	// Machine is the TLS machine: one immutable definition for every
	// connection.
	Machine    = sm.Machine[*Session, *Input, Param]
	instance   = sm.Instance[*Session, *Input, Param]
	transition = sm.Transition[*Session, *Input, Param]
	smEvent    = sm.Event[*Input, Param]
	element    = sm.Element[*Session, *Input, Param]
)

// Input is what a Session feeds the machine: a unit of dissect.Conn, or
// the error that stopped the framing of a direction, which every element
// turns into parse_error.
type Input struct {
	Unit *dissect.Unit
	Err  error
}

// Kind tells what an element made of a unit.
type Kind uint8

const (
	// KindMessage is a cleartext handshake message (Param.Type).
	KindMessage Kind = iota + 1
	// KindSSLv2Hello is an SSLv2-format CLIENT-HELLO.
	KindSSLv2Hello
	// KindSSLv2 is any other SSLv2 record: opaque.
	KindSSLv2
	// KindAlert is a cleartext alert record.
	KindAlert
	// KindHeartbeat is a heartbeat record, cleartext or encrypted.
	KindHeartbeat
	// KindCCS is a cleartext change_cipher_spec record.
	KindCCS
	// KindAppData is the header of an application_data record.
	KindAppData
	// KindEncryptedAlert is an encrypted alert record.
	KindEncryptedAlert
	// KindOpaque is another encrypted record: a Finished, a renegotiation,
	// a post-handshake message, a ChangeCipherSpec of a renegotiation.
	KindOpaque
	// KindUnexpected is a unit the state does not allow; Param.Got says
	// what it was.
	KindUnexpected
)

var kindNames = [...]string{
	KindMessage:        "message",
	KindSSLv2Hello:     "SSLv2 client_hello",
	KindSSLv2:          "SSLv2 record",
	KindAlert:          "alert",
	KindHeartbeat:      "heartbeat",
	KindCCS:            "change_cipher_spec",
	KindAppData:        "application_data",
	KindEncryptedAlert: "encrypted alert",
	KindOpaque:         "encrypted record",
	KindUnexpected:     "unexpected",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "invalid"
}

// Param is what travels in the machine's events: the result of an element
// (Kind, and Type for a message) for up and down, the *Event of a
// registered event for the hook.
type Param struct {
	Kind Kind
	Type dissect.HandshakeType
	// Got is what an unexpected unit was.
	Got   Kind
	Event *Event
}

// describe names a unit for anomalies and reasons: "server_hello",
// "heartbeat record", ...
func (p Param) describe() string {
	k := p.Kind
	if k == KindUnexpected {
		k = p.Got
	}
	switch k {
	case KindMessage:
		return p.Type.String()
	case KindAppData, KindCCS, KindHeartbeat, KindAlert, KindSSLv2, KindOpaque:
		return k.String() + " record"
	}
	return k.String()
}

// grammar is a grammar element of the TLS machine: the units one
// direction may send in one state. Alerts and heartbeats are accepted
// wherever the flags say; the Heartbleed checks run on every heartbeat
// accepted (see heartbeat.go).
type grammar struct {
	name string
	// msgs are the cleartext handshake messages accepted.
	msgs []dissect.HandshakeType
	// order lists the messages of msgs that form a flight, in the order
	// RFC 5246 7.3 gives them: each must come after the ones seen so far
	// in the state.
	order []dissect.HandshakeType
	// msgOK, if set, further restricts the messages of msgs.
	msgOK func(s *Session, d dissect.Direction, t dissect.HandshakeType) bool
	// ccs, if set, accepts a cleartext ChangeCipherSpec when it returns
	// true.
	ccs func(s *Session, d dissect.Direction) bool
	// opaque accepts the records of a direction that has switched to
	// encryption.
	opaque bool
	// early accepts application data before the switch, when the
	// ClientHello offered early_data (TLS 1.3 0-RTT).
	early bool
	// sslv2Hello accepts an SSLv2-format CLIENT-HELLO; sslv2 any SSLv2
	// record.
	sslv2Hello, sslv2 bool
	alert, heartbeat  bool
}

// errZeroLengthHandshake is the parse error of a cleartext handshake record
// with no fragment, which RFC 5246 6.2.1 forbids: accepting them would let
// a peer send handshake records forever without a message.
var errZeroLengthHandshake = errors.New("handshake record of 0 bytes")

// element returns g as an sm grammar element.
func (g *grammar) element() *element {
	return &element{Name: g.name, Parse: g.parse}
}

func (g *grammar) parse(s *Session, smDir sm.Direction, in *Input) (Param, error) {
	if in.Err != nil {
		return Param{}, in.Err
	}
	d := dissect.Direction(smDir)
	u := in.Unit
	p := classify(u)
	if !g.accepts(s, d, p) {
		return Param{Kind: KindUnexpected, Got: p.Kind, Type: p.Type}, nil
	}
	switch p.Kind {
	case KindMessage:
		if err := s.parseMessage(d, u, p.Type); err != nil {
			return Param{}, err
		}
	case KindSSLv2Hello:
		s.messages = true
		if err := s.hello.UnmarshalSSLv2(u.SSLv2.Body); err != nil {
			return Param{}, err
		}
	case KindCCS:
		if len(u.Fragment) != 1 || u.Fragment[0] != 1 {
			return Param{}, fmt.Errorf("change_cipher_spec: malformed (% x, the message is the single byte 01)", u.Fragment[:min(len(u.Fragment), 8)])
		}
	}
	return p, nil
}

// classify tells what a unit is, before any state is asked.
func classify(u *dissect.Unit) Param {
	switch u.Kind {
	case dissect.UnitMessage:
		return Param{Kind: KindMessage, Type: dissect.HandshakeType(u.Msg.Type)}
	case dissect.UnitSSLv2:
		if !u.Encrypted && u.SSLv2.MsgType == dissect.SSLv2ClientHello {
			return Param{Kind: KindSSLv2Hello, Type: dissect.MsgClientHello}
		}
		return Param{Kind: KindSSLv2}
	case dissect.UnitHeader:
		return Param{Kind: KindAppData}
	}
	switch u.Header.Type {
	case dissect.TypeHeartbeat:
		return Param{Kind: KindHeartbeat}
	case dissect.TypeAlert:
		if u.Encrypted {
			return Param{Kind: KindEncryptedAlert}
		}
		return Param{Kind: KindAlert}
	case dissect.TypeChangeCipherSpec:
		if u.Encrypted {
			return Param{Kind: KindOpaque}
		}
		return Param{Kind: KindCCS}
	}
	// A handshake record reaches the machine only encrypted: the
	// messages of a cleartext one are fed instead.
	return Param{Kind: KindOpaque}
}

func (g *grammar) accepts(s *Session, d dissect.Direction, p Param) bool {
	switch p.Kind {
	case KindMessage:
		if !slices.Contains(g.msgs, p.Type) {
			return false
		}
		if r := rankIn(g.order, p.Type); r > 0 && r <= s.dirs[d].rank {
			return false
		}
		if g.msgOK != nil && !g.msgOK(s, d, p.Type) {
			return false
		}
		if r := rankIn(g.order, p.Type); r > 0 {
			s.dirs[d].rank = r
		}
		return true
	case KindSSLv2Hello:
		return g.sslv2Hello || g.sslv2
	case KindSSLv2:
		return g.sslv2
	case KindAlert:
		return g.alert
	case KindHeartbeat:
		return g.heartbeat && (!s.conn.Encrypted(d) || g.opaque)
	case KindCCS:
		return g.ccs != nil && g.ccs(s, d)
	case KindAppData:
		if s.conn.Encrypted(d) {
			return g.opaque
		}
		// TLS 1.3 early data goes out before the ServerHello, under keys
		// of its own while the record layer still reads cleartext.
		return g.early && d == dissect.Up && s.earlyData
	case KindEncryptedAlert, KindOpaque:
		return g.opaque
	}
	return false
}

// parseMessage parses a cleartext handshake message with the parser of
// package dissect for its type, into the Session's scratch values.
func (s *Session) parseMessage(d dissect.Direction, u *dissect.Unit, t dissect.HandshakeType) error {
	m := &u.Msg
	if m.TooLarge {
		// Over the reassembly cap (the record layer reported
		// handshake_message_too_large). A certificate chain may be that
		// large and passes uninspected; the hellos the machine needs may
		// not: no client sends one so large, and skipping it would let a
		// connection past the inspection of its hello.
		if t == dissect.MsgClientHello || t == dissect.MsgServerHello {
			return fmt.Errorf("%s: %d bytes, over the reassembly cap", t, m.Length)
		}
		return nil
	}
	body := m.Body
	v := s.conn.Version()
	s.messages = true
	var err error
	switch t {
	case dissect.MsgHelloRequest:
		if len(body) != 0 {
			err = &dissect.MessageError{Type: t, Field: "message length (the body must be empty)"}
		}
	case dissect.MsgClientHello:
		err = s.hello.Unmarshal(body)
	case dissect.MsgServerHello:
		_, err = s.conn.ServerHello()
	case dissect.MsgCertificate:
		err = s.cert.Unmarshal(body, v)
	case dissect.MsgCertificateStatus:
		_, err = dissect.ParseCertificateStatus(body)
	case dissect.MsgServerKeyExchange:
		if s.kx != dissect.KeyExchangeUnknown {
			_, err = dissect.ParseServerKeyExchange(body, s.kx, v)
		}
	case dissect.MsgCertificateRequest:
		_, err = dissect.ParseCertificateRequest(body, v)
	case dissect.MsgServerHelloDone:
		err = dissect.ParseServerHelloDone(body)
	case dissect.MsgClientKeyExchange:
		_, err = dissect.ParseClientKeyExchange(body, s.kx, v)
	case dissect.MsgCertificateVerify:
		_, err = dissect.ParseCertificateVerify(body, v)
	case dissect.MsgNewSessionTicket:
		_, err = dissect.ParseNewSessionTicket(body, v)
	}
	// supplemental_data, certificate_url and the draft hello_retry_request
	// are accepted as they are: nothing in them changes what follows.
	return err
}
