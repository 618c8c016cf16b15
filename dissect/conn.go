package dissect

import (
	"fmt"
)

// Conn is the record layer of one connection: a Framer and a handshake
// reassembler for each direction, and the little protocol knowledge needed
// to tell where each direction switches to encrypted records.
//
// Next is driven like Framer.Next, once per unit, for either direction.
// Beyond records it returns the handshake messages that each cleartext
// handshake record completes (UnitMessage, right after the record), decodes
// heartbeat, alert and change_cipher_spec records, marks records sent after
// the switch as Encrypted and reports anomalies on the unit where they were
// found.
//
// A direction switches to encrypted records:
//   - in SSL 3.0 to TLS 1.2, after the ChangeCipherSpec it sends;
//   - in TLS 1.3, right after the ServerHello for the server, and for
//     everything the client sends after it except the middlebox
//     compatibility ChangeCipherSpec; a HelloRetryRequest switches nothing;
//   - in SSLv2, after CLIENT-MASTER-KEY, or after a SERVER-HELLO that
//     resumes a session.
//
// After the switch, handshake and alert content is opaque: the records are
// still framed but no message is reassembled. A heartbeat record stays a
// heartbeat record (Encrypted).
//
// A Conn is used by one goroutine at a time (the caller serialises the two
// directions). Between calls it keeps the fragment of the last handshake
// record until that record's messages are returned: keep the bytes given to
// Next unchanged until it returns NeedMore.
type Conn struct {
	limits Limits
	dirs   [2]connHalf
	// version is the version a ServerHello selected, 0 before.
	version uint16
	// tls13 is set once a ServerHello or HelloRetryRequest selects TLS 1.3:
	// ChangeCipherSpec is then a compatibility no-op.
	tls13 bool
	// serverHelloMsg is the last ServerHello parsed, kept so that the
	// machine does not parse it twice (see ServerHello).
	serverHelloMsg ServerHello
	serverHelloErr error
}

type connHalf struct {
	f         Framer
	r         reassembler
	rec       Header // header of the last handshake record pushed
	encrypted bool
	framed    bool // a first record was framed
	alerts    [MaxAlertsPerRecord]Alert
	anoms     []Anomaly // backing array reused for Unit.Anomalies
}

// NewConn returns the record layer of a new connection, with the given
// reassembly caps (zero fields take the defaults).
func NewConn(l Limits) *Conn {
	c := &Conn{limits: l.withDefaults()}
	for d := range c.dirs {
		c.dirs[d].f.dir = Direction(d)
		c.dirs[d].r.limits = c.limits
	}
	return c
}

// Next returns the next unit of direction dir. buf must start at the first
// byte of dir not consumed yet; n is how many bytes of it the unit
// consumed (0 for a UnitMessage). A NeedMore unit asks for more bytes; an
// error is a *RecordError after which dir cannot be framed any further.
// Call Next until it returns NeedMore before presenting more bytes: the
// messages of a record come right after it.
func (c *Conn) Next(dir Direction, buf []byte) (Unit, int, error) {
	h := &c.dirs[dir&1]
	h.anoms = h.anoms[:0]
	if !h.r.drained() {
		if u, ok := c.nextMessage(dir, h); ok {
			return c.finish(h, u), 0, nil
		}
	}
	u, n, err := h.f.Next(buf)
	if err != nil || u.Kind == NeedMore {
		return u, n, err
	}
	if !h.framed {
		h.framed = true
		other := &c.dirs[(dir^1)&1].f
		if u.Kind == UnitSSLv2 {
			other.peerIsSSLv2()
		} else {
			other.peerIsTLS()
		}
	}
	switch u.Kind {
	case UnitRecord:
		c.record(dir, h, &u)
	case UnitHeader:
		c.interrupt(dir, h, u.Header.Type)
		u.Encrypted = h.encrypted
	case UnitChunk:
		u.Encrypted = h.encrypted
	case UnitSSLv2:
		c.sslv2Record(dir, h, &u)
	}
	return c.finish(h, u), n, nil
}

func (c *Conn) finish(h *connHalf, u Unit) Unit {
	if len(h.anoms) > 0 {
		u.Anomalies = h.anoms
	}
	return u
}

func (h *connHalf) anomaly(dir Direction, name, detail string) {
	h.anoms = append(h.anoms, Anomaly{Name: name, Direction: dir, Detail: detail})
}

// record handles a complete TLS record.
func (c *Conn) record(dir Direction, h *connHalf, u *Unit) {
	t := u.Header.Type
	if t != TypeHandshake {
		c.interrupt(dir, h, t)
	}
	// In TLS 1.3 a ChangeCipherSpec is always sent in cleartext.
	u.Encrypted = h.encrypted && !(c.tls13 && t == TypeChangeCipherSpec)
	if u.Encrypted {
		return
	}
	frag := u.Fragment
	switch t {
	case TypeHandshake:
		if len(frag) == 0 {
			// RFC 5246 section 6.2.1 forbids it: it would let a peer send
			// handshake records forever without a message.
			h.anomaly(dir, AnomalyZeroLengthHandshake, "handshake record of 0 bytes")
			return
		}
		h.rec = u.Header
		h.r.push(frag, u.Start)
	case TypeAlert:
		u.Alerts = parseAlerts(frag, h.alerts[:], func(name, detail string) { h.anomaly(dir, name, detail) })
	case TypeHeartbeat:
		hb, _, name, detail := parseHeartbeat(frag)
		u.Heartbeat = hb
		if name != "" {
			h.anomaly(dir, name, detail)
		}
	case TypeChangeCipherSpec:
		if !validChangeCipherSpec(frag) {
			h.anomaly(dir, AnomalyInvalidChangeCipherSpec, fmt.Sprintf("% x", frag[:min(len(frag), 8)]))
			return
		}
		// Before a ServerHello no version is agreed and a ChangeCipherSpec
		// switches nothing: it is TLS 1.3's compatibility record after a
		// ClientHello, or an early CCS (CVE-2014-0224) for the state
		// machine to judge.
		if c.version != 0 && !c.tls13 {
			h.encrypted = true
		}
	}
}

// interrupt reports a record of another type arriving in the middle of a
// handshake message, which RFC 8446 (section 5.1) forbids, and drops the
// message.
func (c *Conn) interrupt(dir Direction, h *connHalf, t ContentType) {
	if declared, seen, in, _ := h.r.reset(); in {
		h.anomaly(dir, AnomalyHandshakeLengthMismatch, fmt.Sprintf("%s record in a handshake message of %s after %d bytes", t, declaredString(declared), seen))
	}
}

func declaredString(declared int) string {
	if declared < 0 {
		return "unknown length (split header)"
	}
	return fmt.Sprintf("%d bytes", declared)
}

// nextMessage returns the next message of the handshake records of dir.
func (c *Conn) nextMessage(dir Direction, h *connHalf) (Unit, bool) {
	m, start, ok := h.r.next()
	if !ok {
		return Unit{}, false
	}
	u := Unit{Kind: UnitMessage, Header: h.rec, Start: start, Msg: m}
	if m.TooLarge {
		h.anomaly(dir, AnomalyHandshakeMessageTooLarge, fmt.Sprintf("message type %d of %d bytes, the cap is %d", m.Type, m.Length, c.limits.capFor(m.Type)))
		return u, true
	}
	if dir == Down && m.Type == rlServerHello {
		c.serverHello(h, m.Body)
	}
	return u, true
}

const rlServerHello = 2 // server_hello

// serverHello learns the negotiated version from a ServerHello and switches
// both directions when it selects TLS 1.3.
func (c *Conn) serverHello(down *connHalf, body []byte) {
	c.serverHelloErr = c.serverHelloMsg.Unmarshal(body)
	if c.serverHelloErr != nil {
		return // the state machine reports what is wrong with it
	}
	v := c.serverHelloMsg.Version()
	if c.serverHelloMsg.HelloRetryRequest {
		// A HelloRetryRequest only exists in TLS 1.3; the client answers
		// with a second ClientHello in cleartext.
		c.tls13 = c.tls13 || versionIsTLS13(v)
		return
	}
	c.version = v
	if !versionIsTLS13(v) {
		return
	}
	c.tls13 = true
	down.encrypted = true
	if _, _, _, unread := down.r.reset(); unread > 0 {
		down.anomaly(Down, AnomalyRecordSpansKeyChange, fmt.Sprintf("%d bytes after the ServerHello in its record", unread))
	}
	up := &c.dirs[Up]
	up.encrypted = true
	if declared, seen, in, _ := up.r.reset(); in {
		down.anomaly(Up, AnomalyHandshakeLengthMismatch, fmt.Sprintf("handshake message of %s cut after %d bytes by the switch to encryption", declaredString(declared), seen))
	}
}

// sslv2Record follows an SSLv2 session to its switch to encryption.
func (c *Conn) sslv2Record(dir Direction, h *connHalf, u *Unit) {
	u.Encrypted = h.encrypted
	if u.Encrypted {
		return
	}
	switch {
	case dir == Up && u.SSLv2.MsgType == SSLv2ClientMasterKey:
		h.encrypted = true
		if down := &c.dirs[Down]; down.framed {
			down.encrypted = true
		}
	case dir == Down && u.SSLv2.MsgType == SSLv2ServerHello:
		c.version = VersionSSL20
		if len(u.SSLv2.Body) > 0 && u.SSLv2.Body[0] != 0 {
			// SESSION-ID-HIT: no CLIENT-MASTER-KEY, both sides encrypt
			// at once.
			h.encrypted = true
			c.dirs[Up].encrypted = true
		}
	}
}

// Incomplete reports whether a handshake message of dir has begun and is
// not complete yet, and the stream offset of the record where it began: the
// caller holds the records from there until the message is complete.
func (c *Conn) Incomplete(dir Direction) (start int64, incomplete bool) {
	return c.dirs[dir&1].r.incomplete()
}

// Encrypted reports whether dir has switched to encrypted records.
func (c *Conn) Encrypted(dir Direction) bool { return c.dirs[dir&1].encrypted }

// ServerHello returns the ServerHello that the last down UnitMessage of
// type server_hello carried, parsed, or the error that parsing it gave. It
// references the caller's buffer like the unit did, and is valid until the
// next call of Next on the down direction.
func (c *Conn) ServerHello() (*ServerHello, error) {
	return &c.serverHelloMsg, c.serverHelloErr
}

// Version returns the version the ServerHello selected (its
// supported_versions extension when present), or 0 before one was seen.
func (c *Conn) Version() uint16 { return c.version }

// Offset returns the stream offset of the next byte of dir that Next
// expects.
func (c *Conn) Offset(dir Direction) int64 { return c.dirs[dir&1].f.off }

// PayloadLeft returns how many bytes of dir's current application_data
// payload are neither returned nor skipped.
func (c *Conn) PayloadLeft(dir Direction) int { return c.dirs[dir&1].f.left }

// Skip records that n bytes of dir's current application_data payload went
// past unseen; see Framer.Skip.
func (c *Conn) Skip(dir Direction, n int) error { return c.dirs[dir&1].f.Skip(n) }

// EOF reports the end of dir's stream, with rest the bytes Next left
// unconsumed, and returns the anomalies of a stream cut short: a truncated
// record, a handshake message that the stream ended inside.
func (c *Conn) EOF(dir Direction, rest []byte) []Anomaly {
	h := &c.dirs[dir&1]
	var out []Anomaly
	add := func(name, detail string) { out = append(out, Anomaly{Name: name, Direction: dir, Detail: detail}) }
	switch {
	case h.f.err != nil:
		// Framing stopped at an error that was reported then.
	case h.f.left > 0:
		add(AnomalyTruncatedRecord, fmt.Sprintf("application_data record ended %d bytes short of its %d", h.f.left, h.f.cur.Length))
	case len(rest) > 0:
		add(AnomalyTruncatedRecord, fmt.Sprintf("stream ended %d bytes into a record", len(rest)))
	}
	if declared, seen, in, _ := h.r.reset(); in {
		add(AnomalyHandshakeLengthMismatch, fmt.Sprintf("stream ended %d bytes into a handshake message of %s", seen, declaredString(declared)))
	}
	return out
}
