package tlssm

import (
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Handler is how events leave the package: the rules implement it (package
// rules converts each *Event into the Lua tables of the contract); tests
// implement it in Go. A Session has one Handler for its whole life and
// calls it with the Session's lock held, from whichever goroutine feeds the
// Session, one call at a time.
type Handler interface {
	// Hooked reports whether anything listens to id. A Session asks once
	// per event kind when it starts and builds parameters, and dispatches
	// record events, only for hooked ones.
	Hooked(id EventID) bool
	// Event evaluates one event before the bytes that raised it are
	// forwarded. A killing verdict ends the connection at once; Bypass
	// stops the inspection. The *Event and everything it references are
	// valid only during the call: copy what you keep.
	Event(ev *Event) inspect.Decision
	// Close releases what the handler holds for the connection; it is
	// called once, after end_connection.
	Close()
}

// Event is one event of the tls dissector with its parameter. Which fields
// are set depends on ID (see Events for the contract); the others are zero.
// Offset says where in the stream of Dir the event comes from, so that a
// log line or a test can name the bytes.
type Event struct {
	ID  EventID
	Dir dissect.Direction
	// Time is the stream time of the event: the now of the Feed that raised
	// it (wall clock live, packet time in a replay).
	Time time.Time
	// Offset is the stream offset in Dir of the first byte of the record
	// that carried the event's unit; for a handshake message spread over
	// several records, of the first of them. Zero for new_connection,
	// established and end_connection.
	Offset int64

	// client_hello. JA3 is the JA3 string, JA3Hash its MD5 in hex.
	ClientHello       *dissect.ClientHello
	JA3, JA3Hash, JA4 string

	// server_hello. ServerHello.HelloRetryRequest tells a retry apart;
	// ServerHello.Version() is the negotiated version.
	ServerHello    *dissect.ServerHello
	JA3S, JA3SHash string

	// certificate. The certificates are parsed with crypto/x509 only when
	// Chain is called.
	Certificate *dissect.Certificate
	chain       []dissect.CertInfo
	chainAnoms  []dissect.Anomaly
	chainDone   bool

	// handshake: every cleartext handshake message; the message events
	// above also carry it.
	Message Message

	// alert: one event per alert of a record.
	Alert Alert

	// heartbeat.
	Heartbeat Heartbeat

	// record.
	Record Record

	// anomaly.
	Anomaly dissect.Anomaly

	// parse_error: what could not be parsed. Error() is the message.
	Err error

	// end_connection.
	Summary inspect.Summary
}

// Chain parses the certificates of a certificate event with crypto/x509,
// leaf first, the first time it is called. A certificate crypto/x509
// rejects has its SHA256 and Err set, and is reported as an
// invalid_certificate anomaly once the handler returns.
func (e *Event) Chain() []dissect.CertInfo {
	if !e.chainDone && e.Certificate != nil {
		e.chain, e.chainAnoms = e.Certificate.Chain()
		e.chainDone = true
	}
	return e.chain
}

// Message is a cleartext handshake message, as the handshake event gives it.
type Message struct {
	Type dissect.HandshakeType
	// Length is the length of the message body.
	Length int
}

// Alert is one alert. Level and Description are meaningful only when
// Encrypted is false.
type Alert struct {
	dissect.Alert
	Encrypted bool
}

// Heartbeat describes a heartbeat record and what the Heartbleed checks
// found in it.
type Heartbeat struct {
	// RecordLength is the length of the record's fragment.
	RecordLength int
	Encrypted    bool
	// Type and PayloadLength are decoded from a cleartext record only;
	// TypeName is "request" or "response" (cleartext only, "" otherwise).
	Type          uint8
	PayloadLength int
	// Overflow: a cleartext request whose payload_length + 3 + 16 exceeds
	// the record (layer 1).
	Overflow bool
	// Leak: an encrypted record answering an outstanding request of the
	// other direction and longer than it (layer 3).
	Leak bool
}

// TypeName returns "request" or "response" for a cleartext heartbeat, ""
// for an encrypted one.
func (h Heartbeat) TypeName() string {
	if h.Encrypted {
		return ""
	}
	return dissect.Heartbeat{Type: h.Type}.TypeName()
}

// Record is a record header, as the record event gives it.
type Record struct {
	dissect.Header
	// Encrypted: the record came after its direction switched to
	// encrypted records.
	Encrypted bool
	// SSLv2 marks an SSLv2-format record (Header.Type is then 0).
	SSLv2 bool
}

// TypeName returns the content type's name, "sslv2" for an SSLv2 record.
func (r Record) TypeName() string {
	if r.SSLv2 {
		return "sslv2"
	}
	return r.Type.String()
}

// noHandler is the Handler of a connection without rules.
type noHandler struct{}

func (noHandler) Hooked(EventID) bool           { return false }
func (noHandler) Event(*Event) inspect.Decision { return inspect.Decision{} }
func (noHandler) Close()                        {}
