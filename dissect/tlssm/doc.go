// Package tlssm is the TLS state machine of haka-proxy and the inspector
// built on it. It owns the machine's definition, written with package sm
// and bound to the grammar of package dissect; the Session, one per
// connection, which implements inspect.Inspector (what bytes are held and
// what is forwarded); the Heartbleed checks; and the events of the "tls"
// dissector (Events), which leave the package through a Handler. It does
// no I/O and knows nothing of Lua: package rules implements Handler.
//
//	f, err := tlssm.NewFactory(tlssm.Options{
//		NewHandler: func(fl *inspect.Flow, s *tlssm.Session) tlssm.Handler {
//			return rulesAdapter(engine.NewFlow(fl, s)) // s gives flow.sni, flow.state, ...
//		},
//	})
//	proxy.Serve(..., f) // or replay.New(replay.Options{Factory: f})
//
// # The machine
//
// `haka-proxy sm graph tls` draws it. Its states are named after the part
// of the handshake they wait for, so flow.state reads well in a rule:
// client_hello, server_hello, hello_retry, server_flight, client_flight,
// server_finished, client_finished, established, sslv2, and the
// pseudo-states fail and finish. It follows TLS 1.0 to 1.2 and SSL 3.0 in
// full and abbreviated handshakes (a resumption by session id or ticket,
// where the server switches to encryption first), client certificates, TLS
// 1.3 with its HelloRetryRequest, middlebox-compatibility ChangeCipherSpec
// and 0-RTT early data, SSLv2-format ClientHellos answered in TLS, and pure
// SSLv2 sessions (the CLIENT-HELLO is parsed, the rest is opaque). After
// the switch to encryption every record is opaque but for its header:
// application data, encrypted alerts, renegotiations, post-handshake
// messages, heartbeats.
//
// Every state binds one grammar element per direction. An element is a
// Parse over the units of dissect.Conn: it classifies the unit (a
// handshake message, an alert, a heartbeat, a ChangeCipherSpec, an
// application_data header, an opaque encrypted record, an SSLv2 record),
// checks that the state allows it — the message types valid at that point
// of the flight and in that order, a ChangeCipherSpec only once keys
// exist, application data only once the direction is encrypted or as TLS
// 1.3 early data — and parses a message with the parser of package
// dissect for its type. A unit the state does not allow comes out as
// KindUnexpected, a unit that does not parse as an error (parse_error).
// Bytes the record layer cannot frame are a record anomaly and then a
// parse_error, except as the very first bytes of a direction when the
// other direction has not framed a record either: the connection never
// spoke TLS (SSH, HTTP, ... on the port), and the parse_error is a
// *NotTLSError whose message starts with "not TLS", without the anomaly.
//
// The choice between composite elements and `any` defaults is both, each
// for what it does best. Elements are composite: one per state and
// direction accepts every kind of unit that direction may send there,
// because package sm binds a single element per direction and because only
// the element knows the state's grammar (an alert is valid in almost every
// state, a heartbeat in most, application data in few). Transitions then
// guard on what the element made of the unit: a state's own transitions
// take the messages that move the handshake on (a ServerHelloDone jumps to
// client_flight), and the `any` defaults take the rest in every state the
// same way: application data, opaque records, heartbeats (with the
// Heartbleed checks), alerts, the other messages (their events),
// ChangeCipherSpec, and unexpected units (anomaly unexpected_message, then
// fail). The checks of the heartbeat and the events of a message are thus
// written once, and a state lists only what is particular to it. A
// message that is unexpected fails the connection: RFC 5246 7.4 and RFC
// 8446 6 make every unexpected handshake message fatal (unexpected_message
// alert); the HelloRequest, which a client ignores during a handshake, is
// accepted.
//
// A handshake state arms timeout(HandshakeTimeout) (DefaultHandshakeTimeout,
// nginx's ssl_handshake_timeout): a peer that stops half-way through is
// failed. Timeouts run in stream time; live, a Session keeps one
// time.AfterFunc on the machine's next deadline (none once established)
// and kills the connection through the Factory's kill function.
//
// # Forwarding
//
// Feed is given the pending bytes of a direction (read, not forwarded).
// The record layer frames them into units and each unit is judged before
// any of its bytes is cleared:
//
//   - a record of a type the rules judge (handshake, alert, heartbeat,
//     change_cipher_spec) and an SSLv2 record are held until complete; its
//     events run when it is; the records of a handshake message that is
//     still incomplete stay held until the message completes and its
//     events ran;
//   - an application_data record needs only its header: once judged, the
//     payload present is cleared and the rest is passed unseen
//     (Result.Pass), which the pump may splice;
//   - a killing decision (a rule's drop or reset, the machine's fail)
//     clears nothing of the record that caused it: the response of a
//     Heartbleed leak never reaches the client.
//
// Without rules (a nil Handler, or one that hooks nothing) malformed input
// and forbidden messages still fail the machine: the decision is Drop,
// rule RuleFail, reason "parse error: ...", "unexpected message: ..." or
// "handshake timeout: ...". Rules cannot undo a fail.
//
// # Events
//
// Events are registered with the machine (the contract's names, Events)
// and triggered by its actions with an *Event; the machine's hook hands
// them to the Handler. parse_error is the machine's own base event, which
// the fail transition forwards; new_connection is raised by Factory.New and
// end_connection by Close. A Session asks its Handler once which events it
// hooks, and builds the parameters of, and dispatches, only those: a
// record event costs nothing unless a rule hooks it, and a certificate's
// X.509 is parsed only when a rule reads the chain (Event.Chain).
//
// A Handler that also implements UnitHandler runs machines of its own
// beside this one (the state machines users write in Lua): it is given
// every unit this machine accepted, and its stream time advances and its
// timeouts fire with the Session's. Other Handlers pay nothing for it.
//
// For a unit, the record event comes first, then the anomalies the record
// layer found in it, then the unit's events (handshake then the message's
// own event; alert; heartbeat; change_cipher_spec), then the anomalies the
// message parser and the machine found. The first killing decision stops
// everything after it.
//
// # Heartbleed
//
// Four layers, each a field of the heartbeat event or an anomaly, all
// evaluated before the heartbeat record is forwarded:
//
//  1. a cleartext request whose payload_length + 3 + 16 exceeds its record
//     (RFC 6520's mandatory padding): hb.overflow, and the record layer's
//     heartbeat_overflow anomaly;
//  2. any heartbeat before both directions are encrypted:
//     heartbeat_during_handshake;
//  3. a response longer than the request outstanding in the other
//     direction: hb.leak. Encrypted, the two record lengths are compared
//     (a request the other side has not answered is matched first in,
//     first out; heartbeat records right after a leaking one are its
//     rest); in cleartext, the response's payload_length against what the
//     request could hold. Four unanswered requests per direction are
//     kept; a request past them is named (too_many_heartbeat_requests),
//     since a leak in the answer to the oldest, forgotten, could then
//     pass for the answer to a longer one;
//  4. an encrypted request shorter than the negotiated record protection
//     allows (heartbeat_request_too_short: the explicit nonce and tag of
//     GCM and CCM, the tag of ChaCha20-Poly1305, the MAC, padding and, from
//     TLS 1.1, the IV of CBC, with encrypt_then_mac and truncated_hmac;
//     no check for an unknown suite or under compression), or sent before
//     any application data in its direction
//     (heartbeat_before_application_data).
//
// A heartbeat the hellos did not negotiate is named too
// (heartbeat_not_negotiated), without failing the connection.
package tlssm
