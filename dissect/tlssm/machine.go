package tlssm

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The states of the TLS machine: what flow.state reads in the rules. A
// state is named after the part of the handshake it waits for, so an event
// raised by a message sees the state that message belongs to (a
// client_hello event sees "client_hello", a certificate event
// "server_flight").
const (
	// StateClientHello: the connection is new; the client's hello is
	// awaited. The initial state.
	StateClientHello = "client_hello"
	// StateServerHello: the ClientHello was seen; the server's answer is
	// awaited (a TLS 1.3 client may send early data meanwhile).
	StateServerHello = "server_hello"
	// StateHelloRetry: the server sent a HelloRetryRequest; the second
	// ClientHello is awaited.
	StateHelloRetry = "hello_retry"
	// StateServerFlight: after a TLS 1.2 (or earlier) ServerHello: the
	// server's Certificate ... ServerHelloDone, or the NewSessionTicket
	// and ChangeCipherSpec of a resumption.
	StateServerFlight = "server_flight"
	// StateClientFlight: after ServerHelloDone: the client's
	// Certificate, ClientKeyExchange, CertificateVerify and
	// ChangeCipherSpec.
	StateClientFlight = "client_flight"
	// StateServerFinished: the client has switched to encryption; the
	// server's NewSessionTicket and ChangeCipherSpec are awaited.
	StateServerFinished = "server_finished"
	// StateClientFinished: a resumption where the server switched first;
	// the client's ChangeCipherSpec is awaited.
	StateClientFinished = "client_finished"
	// StateEstablished: both directions are encrypted (in TLS 1.3, from
	// the ServerHello on).
	StateEstablished = "established"
	// StateSSLv2: the server answered in SSLv2: the session is opaque.
	StateSSLv2 = "sslv2"
)

// DefaultHandshakeTimeout bounds the stream time the machine waits in one
// handshake state (every state between the ClientHello and established):
// nginx's ssl_handshake_timeout. A peer that stops half-way through a
// handshake holds a connection and the bytes held for it.
const DefaultHandshakeTimeout = 60 * time.Second

// MachineOptions tune the definition.
type MachineOptions struct {
	// HandshakeTimeout is the timeout of each handshake state: zero means
	// DefaultHandshakeTimeout, a negative value none.
	HandshakeTimeout time.Duration
}

// definition is a built machine and the IDs of the events of the contract
// in it.
type definition struct {
	m *Machine
	// ids maps the contract's events to the machine's. parse_error is the
	// machine's own base event and cannot be triggered: it is delivered
	// directly.
	ids [NumEvents]sm.EventID
	// names are the states' names, then fail and finish: what
	// Session.State points into.
	names []string
}

// NewMachine builds the TLS machine.
func NewMachine(opts MachineOptions) (*Machine, error) {
	d, err := newDefinition(opts)
	if err != nil {
		return nil, err
	}
	return d.m, nil
}

var defaultDefinition = sync.OnceValues(func() (*definition, error) {
	return newDefinition(MachineOptions{})
})

// WriteDOT renders the TLS machine with the default options as a Graphviz
// digraph (`haka-proxy sm graph tls`).
func WriteDOT(w io.Writer) error {
	d, err := defaultDefinition()
	if err != nil {
		return err
	}
	return d.m.WriteDOT(w)
}

// The elements of the machine. Every state has one per direction, so a
// unit never meets a missing grammar: what a state does not expect is
// classified unexpected by its element and judged by the transitions.
var (
	gClientHello = &grammar{name: "client_hello",
		msgs: []dissect.HandshakeType{dissect.MsgClientHello}, sslv2Hello: true, alert: true}
	// The server speaks only after the ClientHello.
	gServerSilent = &grammar{name: "alert", alert: true}
	gEarly        = &grammar{name: "early_data",
		ccs: ccsCompat, early: true, alert: true, heartbeat: true}
	gServerHello = &grammar{name: "server_hello",
		msgs:  []dissect.HandshakeType{dissect.MsgServerHello, dissect.MsgHelloRetryRequest, dissect.MsgHelloRequest},
		msgOK: serverHelloOK, sslv2: true, alert: true, heartbeat: true}
	gClientHelloRetry = &grammar{name: "client_hello_retry",
		msgs: []dissect.HandshakeType{dissect.MsgClientHello}, ccs: ccsCompat, early: true, alert: true}
	gServerRetryCCS = &grammar{name: "compat_ccs", ccs: ccsCompat, alert: true}
	gServerFlight   = &grammar{name: "server_flight",
		msgs: []dissect.HandshakeType{dissect.MsgNewSessionTicket, dissect.MsgSupplementalData, dissect.MsgCertificate,
			dissect.MsgCertificateStatus, dissect.MsgServerKeyExchange, dissect.MsgCertificateRequest,
			dissect.MsgServerHelloDone, dissect.MsgHelloRequest},
		order: serverFlightOrder,
		msgOK: serverFlightOK, ccs: ccsResumption, alert: true, heartbeat: true}
	gClientWaits  = &grammar{name: "alert_heartbeat", alert: true, heartbeat: true}
	gClientFlight = &grammar{name: "client_flight",
		msgs: []dissect.HandshakeType{dissect.MsgSupplementalData, dissect.MsgCertificate, dissect.MsgCertificateURL,
			dissect.MsgClientKeyExchange, dissect.MsgCertificateVerify},
		order: clientFlightOrder,
		msgOK: clientFlightOK, ccs: ccsAfterKeyExchange, alert: true, heartbeat: true}
	gServerWaits = &grammar{name: "hello_request",
		msgs: []dissect.HandshakeType{dissect.MsgHelloRequest}, alert: true, heartbeat: true}
	gServerFinish = &grammar{name: "server_finish",
		msgs:  []dissect.HandshakeType{dissect.MsgNewSessionTicket, dissect.MsgHelloRequest},
		order: []dissect.HandshakeType{dissect.MsgNewSessionTicket},
		ccs:   ccsAny, alert: true, heartbeat: true}
	gClientFinish = &grammar{name: "client_finish", ccs: ccsAny, alert: true, heartbeat: true}
	gEncrypted    = &grammar{name: "encrypted", opaque: true, ccs: ccsCompat, alert: true, heartbeat: true}
	gSSLv2        = &grammar{name: "sslv2", sslv2: true}
)

// The flights of RFC 5246 7.3, in order. A resumption's NewSessionTicket
// opens the server's; Certificate and CertificateURL are alternatives in
// the client's.
var (
	serverFlightOrder = []dissect.HandshakeType{dissect.MsgNewSessionTicket, dissect.MsgSupplementalData,
		dissect.MsgCertificate, dissect.MsgCertificateStatus, dissect.MsgServerKeyExchange,
		dissect.MsgCertificateRequest, dissect.MsgServerHelloDone}
	clientFlightOrder = []dissect.HandshakeType{dissect.MsgSupplementalData, dissect.MsgCertificate,
		dissect.MsgCertificateURL, dissect.MsgClientKeyExchange, dissect.MsgCertificateVerify}
)

// rankIn returns the position of t in order, from 1, or 0.
func rankIn(order []dissect.HandshakeType, t dissect.HandshakeType) int {
	return slices.Index(order, t) + 1
}

// ccsCompat accepts the middlebox-compatibility ChangeCipherSpec of TLS
// 1.3 (RFC 8446 D.4): once per direction, from a client that offered TLS
// 1.3 or once TLS 1.3 is negotiated.
func ccsCompat(s *Session, d dissect.Direction) bool {
	return s.dirs[d].ccs == 0 && (s.tls13 || d == dissect.Up && s.offersTLS13)
}

// ccsResumption accepts the server's ChangeCipherSpec right after its
// ServerHello (and NewSessionTicket) when the client offered a session the
// server may resume: the same session id, or a ticket. Anything else is
// the early ChangeCipherSpec of CVE-2014-0224.
func ccsResumption(s *Session, d dissect.Direction) bool {
	r := s.dirs[d].rank
	return (r == 0 || r == rankIn(serverFlightOrder, dissect.MsgNewSessionTicket)) && s.resumable
}

// ccsAfterKeyExchange accepts the client's ChangeCipherSpec once its
// ClientKeyExchange was sent: earlier, no keys exist to switch to.
func ccsAfterKeyExchange(s *Session, d dissect.Direction) bool {
	return s.dirs[d].rank >= rankIn(clientFlightOrder, dissect.MsgClientKeyExchange)
}

func ccsAny(*Session, dissect.Direction) bool { return true }

// serverHelloOK refuses a second HelloRetryRequest (RFC 8446 4.1.4).
func serverHelloOK(s *Session, _ dissect.Direction, t dissect.HandshakeType) bool {
	switch t {
	case dissect.MsgHelloRetryRequest:
		return !s.retried
	case dissect.MsgServerHello:
		sh, err := s.conn.ServerHello()
		return err != nil || !sh.HelloRetryRequest || !s.retried
	}
	return true
}

// serverFlightOK: a NewSessionTicket opens a resumption, after which only
// the ChangeCipherSpec may follow; a ServerKeyExchange exists only for the
// key exchanges that send one (static RSA, DH and ECDH, Kerberos do not;
// FREAK was an RSA server sending one).
func serverFlightOK(s *Session, d dissect.Direction, t dissect.HandshakeType) bool {
	r := s.dirs[d].rank
	switch t {
	case dissect.MsgHelloRequest:
		return true
	case dissect.MsgNewSessionTicket:
		return r == 0 && s.resumable && s.serverTicket
	case dissect.MsgServerKeyExchange:
		switch s.kx {
		case dissect.KeyExchangeRSA, dissect.KeyExchangeDH, dissect.KeyExchangeECDH,
			dissect.KeyExchangeKRB5, dissect.KeyExchangeTLS13:
			return false
		}
	}
	return r != rankIn(serverFlightOrder, dissect.MsgNewSessionTicket)
}

// clientFlightOK: Certificate and CertificateURL are alternatives, and a
// CertificateVerify follows a certificate.
func clientFlightOK(s *Session, d dissect.Direction, t dissect.HandshakeType) bool {
	switch t {
	case dissect.MsgCertificateURL:
		return s.dirs[d].rank < rankIn(clientFlightOrder, dissect.MsgCertificate)
	case dissect.MsgCertificateVerify:
		return s.dirs[d].clientCert
	}
	return true
}

// Guards on what an element made of a unit.
func isKind(k Kind) sm.Guard[*Session, *Input, Param] {
	return func(_ *instance, ev smEvent) bool { return ev.Param.Kind == k }
}

func isKinds(ks ...Kind) sm.Guard[*Session, *Input, Param] {
	return func(_ *instance, ev smEvent) bool {
		for _, k := range ks {
			if ev.Param.Kind == k {
				return true
			}
		}
		return false
	}
}

func isMsg(t dissect.HandshakeType) sm.Guard[*Session, *Input, Param] {
	return func(_ *instance, ev smEvent) bool { return ev.Param.Kind == KindMessage && ev.Param.Type == t }
}

// isRetry passes a HelloRetryRequest in the form of a ServerHello (RFC
// 8446 and drafts from 22); isServerHello13 a ServerHello selecting TLS
// 1.3 or a draft of it.
func isRetry(in *instance, ev smEvent) bool {
	if ev.Param.Kind != KindMessage || ev.Param.Type != dissect.MsgServerHello {
		return false
	}
	sh, _ := in.Context().conn.ServerHello()
	return sh.HelloRetryRequest
}

func isServerHello13(in *instance, ev smEvent) bool {
	if ev.Param.Kind != KindMessage || ev.Param.Type != dissect.MsgServerHello {
		return false
	}
	sh, _ := in.Context().conn.ServerHello()
	return isTLS13(sh.Version())
}

func isTLS13(v uint16) bool { return v == dissect.VersionTLS13 || dissect.IsTLS13Draft(v) }

// Actions: methods of the Session, reached from the instance's context.
func do(f func(s *Session, in *instance, ev smEvent)) sm.Action[*Session, *Input, Param] {
	return func(in *instance, ev smEvent) { f(in.Context(), in, ev) }
}

func newDefinition(opts MachineOptions) (*definition, error) {
	timeout := opts.HandshakeTimeout
	if timeout == 0 {
		timeout = DefaultHandshakeTimeout
	}
	type T = transition
	b := sm.NewBuilder[*Session, *Input, Param]("tls")
	def := &definition{}
	for _, e := range Events {
		if e.ID == EvParseError {
			def.ids[e.ID] = sm.EvParseError
			continue
		}
		def.ids[e.ID] = b.RegisterEvent(e.Name)
	}
	b.Hook(func(in *instance, ev smEvent) { in.Context().deliver(ev.Param.Event) })

	up, down := []sm.EventID{sm.EvUp}, []sm.EventID{sm.EvDown}
	both := []sm.EventID{sm.EvUp, sm.EvDown}
	state := func(name string, u, d *grammar) *sm.StateDef[*Session, *Input, Param] {
		return b.BidirectionalState(name, u.element(), d.element())
	}
	handshake := func(st *sm.StateDef[*Session, *Input, Param]) {
		if timeout > 0 {
			st.On(T{Event: b.Timeout(timeout), Execute: do(func(s *Session, in *instance, _ smEvent) {
				s.failReason = fmt.Sprintf("handshake timeout: no progress for %s in state %s", timeout, in.State())
			}), Jump: sm.Fail})
		}
	}
	message := do((*Session).onMessage)

	st := state(StateClientHello, gClientHello, gServerSilent)
	st.On(T{Events: up, When: isKinds(KindMessage, KindSSLv2Hello), Label: "client_hello", Execute: message, Jump: StateServerHello})

	st = state(StateServerHello, gEarly, gServerHello)
	st.On(T{Events: down, When: isRetry, Label: "hello_retry_request", Execute: message, Jump: StateHelloRetry})
	st.On(T{Events: down, When: isMsg(dissect.MsgHelloRetryRequest), Label: "draft hello_retry_request", Execute: message, Jump: StateHelloRetry})
	st.On(T{Events: down, When: isServerHello13, Label: "server_hello TLS 1.3", Execute: message, Jump: StateEstablished})
	st.On(T{Events: down, When: isMsg(dissect.MsgServerHello), Label: "server_hello", Execute: message, Jump: StateServerFlight})
	st.On(T{Events: down, When: isKinds(KindSSLv2, KindSSLv2Hello), Label: "SSLv2", Execute: do((*Session).onSSLv2), Jump: StateSSLv2})
	handshake(st)

	st = state(StateHelloRetry, gClientHelloRetry, gServerRetryCCS)
	st.On(T{Events: up, When: isMsg(dissect.MsgClientHello), Label: "client_hello", Execute: message, Jump: StateServerHello})
	handshake(st)

	st = state(StateServerFlight, gClientWaits, gServerFlight)
	st.On(T{Events: down, When: isMsg(dissect.MsgServerHelloDone), Label: "server_hello_done", Execute: message, Jump: StateClientFlight})
	st.On(T{Events: down, When: isKind(KindCCS), Label: "change_cipher_spec: resumption", Execute: do((*Session).onCCS), Jump: StateClientFinished})
	handshake(st)

	st = state(StateClientFlight, gClientFlight, gServerWaits)
	st.On(T{Events: up, When: isKind(KindCCS), Label: "change_cipher_spec", Execute: do((*Session).onCCS), Jump: StateServerFinished})
	handshake(st)

	st = state(StateServerFinished, gEncrypted, gServerFinish)
	st.On(T{Events: down, When: isKind(KindCCS), Label: "change_cipher_spec", Execute: do((*Session).onCCS), Jump: StateEstablished})
	handshake(st)

	st = state(StateClientFinished, gClientFinish, gEncrypted)
	st.On(T{Events: up, When: isKind(KindCCS), Label: "change_cipher_spec", Execute: do((*Session).onCCS), Jump: StateEstablished})
	handshake(st)

	st = state(StateEstablished, gEncrypted, gEncrypted)
	st.On(T{Event: sm.EvEnter, Execute: do((*Session).onEstablished)})

	st = state(StateSSLv2, gSSLv2, gSSLv2)
	st.On(T{Events: both, When: isKinds(KindSSLv2, KindSSLv2Hello), Label: "SSLv2", Execute: do((*Session).onSSLv2)})

	// The defaults: what every state does with the units its elements
	// accept and its own transitions leave, most frequent first.
	a := b.Any()
	a.On(T{Event: sm.EvEnter, Execute: do((*Session).onEnter)})
	a.On(T{Events: both, When: isKind(KindAppData), Label: "application_data", Execute: do((*Session).onAppData)})
	a.On(T{Events: both, When: isKind(KindOpaque), Label: "encrypted record", Execute: do((*Session).onOpaque)})
	a.On(T{Events: both, When: isKind(KindHeartbeat), Label: "heartbeat", Execute: do((*Session).onHeartbeat)})
	a.On(T{Events: both, When: isKinds(KindAlert, KindEncryptedAlert), Label: "alert", Execute: do((*Session).onAlert)})
	a.On(T{Events: both, When: isKind(KindMessage), Label: "handshake message", Execute: message})
	a.On(T{Events: both, When: isKind(KindCCS), Label: "change_cipher_spec", Execute: do((*Session).onCCS)})
	a.On(T{Events: both, When: isKind(KindUnexpected), Label: "unexpected", Execute: do((*Session).onUnexpected), Jump: sm.Fail})
	a.On(T{Event: sm.EvParseError, Execute: do((*Session).onParseError), Jump: sm.Fail})
	a.On(T{Event: sm.EvMissingGrammar, Execute: do((*Session).onUnexpected), Jump: sm.Fail})
	a.On(T{Event: sm.EvFail, Execute: do((*Session).onFail)})

	b.Initial(StateClientHello)
	m, err := b.Build()
	if err != nil {
		return nil, err
	}
	if ws := m.Warnings(); len(ws) > 0 {
		return nil, fmt.Errorf("tls machine: %v", ws)
	}
	def.m = m
	def.names = append(m.States(), sm.Fail, sm.Finish)
	return def, nil
}
