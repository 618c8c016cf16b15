package dissect

// Limits bound the memory a Conn spends reassembling handshake messages.
// A zero field takes its default.
type Limits struct {
	// MaxClientHello is the largest ClientHello body reassembled.
	MaxClientHello int
	// MaxMessage is the largest body of any other handshake message.
	MaxMessage int
}

const (
	// DefaultMaxClientHello is the default cap of a ClientHello body, the
	// bound crypto/tls puts on every handshake message but certificates:
	// a ClientHello's extensions block has a 16-bit length, and with
	// post-quantum key shares (about 1.2 KB each) and a few PSK identities
	// real hellos stay far below it.
	DefaultMaxClientHello = 64 << 10
	// DefaultMaxMessage is the default cap of any other handshake message,
	// crypto/tls's bound for Certificate messages, the largest there are.
	// A chain over it (a test certificate with 10,000 SANs) is reported as
	// handshake_message_too_large and passed uninspected.
	DefaultMaxMessage = 256 << 10

	// retainBuffer is the largest reassembly buffer kept for the next
	// message: a connection that once reassembled a large Certificate
	// does not hold that memory for its whole life.
	retainBuffer = 16 << 10

	// rlMsgHeaderLen is the msg_type and uint24 length of a handshake
	// message.
	rlMsgHeaderLen = 4

	rlClientHello = 1 // client_hello: the message with its own cap
)

func (l Limits) withDefaults() Limits {
	if l.MaxClientHello <= 0 {
		l.MaxClientHello = DefaultMaxClientHello
	}
	if l.MaxMessage <= 0 {
		l.MaxMessage = DefaultMaxMessage
	}
	return l
}

func (l Limits) capFor(msgType uint8) int {
	if msgType == rlClientHello {
		return l.MaxClientHello
	}
	return l.MaxMessage
}

// Message is a complete handshake message (RFC 8446, section 4), or the
// header of one too large to reassemble.
//
// Body and Raw are sub-slices of the record they lie in when the message
// lies within one record; a message spread over several records is copied
// into the Conn's buffer, valid until the next call to Next for that
// direction.
type Message struct {
	// Type is the HandshakeType (1 client_hello, 2 server_hello, ...).
	Type uint8
	// Length is the body length the message header declares.
	Length int
	// Body is the message body; Raw is the 4-byte header and the body. Both
	// are nil when TooLarge.
	Body, Raw []byte
	// TooLarge reports that Length is over the cap for Type: the message
	// is not reassembled and its bytes pass uninspected.
	TooLarge bool
	// Reassembled reports that the message spanned records and was copied.
	Reassembled bool
}

type reassemblyState uint8

const (
	rsIdle   reassemblyState = iota
	rsHeader                 // part of a message header is in hdr
	rsBuffer                 // a message is being copied into buf
	rsSkip                   // a message over its cap is being skipped
)

// reassembler turns the fragments of one direction's handshake records
// into messages. It copies only a message that spans records, into a buffer
// bounded by its cap; a message within one record is returned in place.
type reassembler struct {
	limits Limits

	frag      []byte // unread part of the current fragment
	fragStart int64  // stream offset of the record frag belongs to

	state    reassemblyState
	hdr      [rlMsgHeaderLen]byte
	nhdr     int
	buf      []byte // header and body so far of the message being copied
	want     int    // body bytes still to copy (rsBuffer) or skip (rsSkip)
	declared int    // body length of the current message
	msgStart int64  // stream offset of the record where it began
}

// push hands over the fragment of a handshake record that starts at stream
// offset start. The previous fragment must have been drained (next
// returned false).
func (r *reassembler) push(frag []byte, start int64) {
	r.frag, r.fragStart = frag, start
}

// drained reports whether every message of the pushed fragments has been
// returned.
func (r *reassembler) drained() bool { return len(r.frag) == 0 }

// incomplete reports whether a message has begun and is not complete, and
// the stream offset of the record where it began. A message being skipped
// for its size is not incomplete: nothing waits for it.
func (r *reassembler) incomplete() (int64, bool) {
	if r.state == rsHeader || r.state == rsBuffer {
		return r.msgStart, true
	}
	return 0, false
}

// next returns the next message of the fragments pushed so far and the
// stream offset of the record in which it began.
func (r *reassembler) next() (Message, int64, bool) {
	for {
		switch r.state {
		case rsSkip:
			k := min(r.want, len(r.frag))
			r.frag, r.want = r.frag[k:], r.want-k
			if r.want > 0 {
				return Message{}, 0, false
			}
			r.state = rsIdle

		case rsBuffer:
			k := min(r.want, len(r.frag))
			r.buf = appendCapped(r.buf, r.frag[:k], rlMsgHeaderLen+r.declared)
			r.frag, r.want = r.frag[k:], r.want-k
			if r.want > 0 {
				return Message{}, 0, false
			}
			r.state = rsIdle
			m := Message{Type: r.buf[0], Length: r.declared, Body: r.buf[rlMsgHeaderLen:], Raw: r.buf, Reassembled: true}
			if cap(r.buf) > retainBuffer {
				r.buf = nil
			}
			return m, r.msgStart, true

		case rsHeader:
			k := min(rlMsgHeaderLen-r.nhdr, len(r.frag))
			copy(r.hdr[r.nhdr:], r.frag[:k])
			r.nhdr += k
			r.frag = r.frag[k:]
			if r.nhdr < rlMsgHeaderLen {
				return Message{}, 0, false
			}
			if m, ok := r.begin(r.hdr[:]); ok {
				return m, r.msgStart, true
			}
			if r.state == rsIdle {
				// An empty body after a split header: it is complete.
				m := Message{Type: r.buf[0], Body: r.buf[rlMsgHeaderLen:], Raw: r.buf, Reassembled: true}
				return m, r.msgStart, true
			}

		case rsIdle:
			if len(r.frag) == 0 {
				return Message{}, 0, false
			}
			r.msgStart = r.fragStart
			if len(r.frag) < rlMsgHeaderLen {
				r.nhdr = copy(r.hdr[:], r.frag)
				r.frag = nil
				r.state = rsHeader
				return Message{}, 0, false
			}
			t, n := r.frag[0], int(r.frag[1])<<16|int(r.frag[2])<<8|int(r.frag[3])
			if n <= r.limits.capFor(t) && rlMsgHeaderLen+n <= len(r.frag) {
				raw := r.frag[: rlMsgHeaderLen+n : rlMsgHeaderLen+n]
				r.frag = r.frag[rlMsgHeaderLen+n:]
				return Message{Type: t, Length: n, Body: raw[rlMsgHeaderLen:], Raw: raw}, r.msgStart, true
			}
			hdr := r.frag[:rlMsgHeaderLen]
			r.frag = r.frag[rlMsgHeaderLen:]
			if m, ok := r.begin(hdr); ok {
				return m, r.msgStart, true
			}
		}
	}
}

// begin starts a message whose header is hdr and whose body follows in
// r.frag and later fragments. It returns the header-only message of one
// over its cap, which is then skipped; otherwise it starts copying.
func (r *reassembler) begin(hdr []byte) (Message, bool) {
	t, n := hdr[0], int(hdr[1])<<16|int(hdr[2])<<8|int(hdr[3])
	r.declared = n
	if n > r.limits.capFor(t) {
		r.state, r.want = rsSkip, n
		return Message{Type: t, Length: n, TooLarge: true}, true
	}
	total := rlMsgHeaderLen + n
	if cap(r.buf) < total {
		// Grow with the bytes that arrive, never past the message: a
		// header alone must not make us allocate its declared length.
		r.buf = make([]byte, 0, min(total, max(2*cap(r.buf), len(r.frag)+rlMsgHeaderLen, 512)))
	}
	r.buf = append(r.buf[:0], hdr...)
	r.state, r.want = rsBuffer, n
	if n == 0 {
		r.state = rsIdle
	}
	return Message{}, false
}

// reset abandons the message in progress and any unread fragment, and
// reports what was abandoned: the declared body length and the body bytes
// seen of the message in progress, or the unread fragment bytes.
func (r *reassembler) reset() (declared, seen int, inMessage bool, unread int) {
	switch r.state {
	case rsHeader:
		declared, seen, inMessage = -1, r.nhdr, true
	case rsBuffer:
		declared, seen, inMessage = r.declared, len(r.buf)-rlMsgHeaderLen, true
	case rsSkip:
		declared, seen, inMessage = r.declared, r.declared-r.want, true
	}
	unread = len(r.frag)
	r.frag, r.state, r.nhdr, r.want = nil, rsIdle, 0, 0
	if cap(r.buf) > retainBuffer {
		r.buf = nil
	}
	return declared, seen, inMessage, unread
}

// appendCapped appends p to buf, growing it as append does but never to a
// capacity over limit, so that the buffer of a message is bounded by the
// message's length and that by its cap.
func appendCapped(buf, p []byte, limit int) []byte {
	if need := len(buf) + len(p); need > cap(buf) {
		nb := make([]byte, len(buf), max(need, min(limit, 2*cap(buf))))
		copy(nb, buf)
		buf = nb
	}
	return append(buf, p...)
}
