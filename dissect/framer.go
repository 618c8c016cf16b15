package dissect

import (
	"errors"
	"fmt"
)

// UnitKind tells what a Unit is.
type UnitKind uint8

const (
	// NeedMore is the zero Unit: nothing more can be returned from the
	// bytes given. Call again with the same unconsumed bytes and more.
	NeedMore UnitKind = iota
	// UnitRecord is a complete record, header and whole fragment: every
	// record type except application_data.
	UnitRecord
	// UnitHeader is the header of an application_data record. Its payload
	// follows as UnitChunk units (or is skipped with Skip); it is never
	// buffered.
	UnitHeader
	// UnitChunk is a piece of the payload of the application_data record
	// whose header came last.
	UnitChunk
	// UnitSSLv2 is a complete SSLv2-format record.
	UnitSSLv2
	// UnitMessage is a complete handshake message (Conn only). It consumes
	// no bytes: it comes from handshake records already returned.
	UnitMessage
)

var unitKindNames = [...]string{
	NeedMore:    "need_more",
	UnitRecord:  "record",
	UnitHeader:  "header",
	UnitChunk:   "chunk",
	UnitSSLv2:   "sslv2",
	UnitMessage: "message",
}

func (k UnitKind) String() string {
	if int(k) < len(unitKindNames) {
		return unitKindNames[k]
	}
	return "invalid"
}

// Unit is one step of a direction's stream: a record, a record header, a
// piece of an application_data payload, an SSLv2 record or (from Conn) a
// handshake message.
//
// Raw, Fragment and SSLv2.Body are sub-slices of the buffer given to Next:
// they are valid as long as the caller keeps that buffer's bytes unchanged.
// Msg.Body and Msg.Raw are the same when the message lies within one record;
// a message reassembled from several records is in the Conn's own buffer,
// valid until the next call to Next for that direction. Alerts and
// Anomalies are valid until the next call to Next for that direction.
type Unit struct {
	Kind UnitKind
	// Header is the record's header; for a UnitChunk the header of the
	// record the chunk belongs to; for a UnitMessage the header of the
	// record that completed the message.
	Header Header
	// Start is the stream offset of the first header byte of the record.
	// For a UnitMessage it is that of the record in which the message
	// began. The caller subtracts the stream offset of the first byte of
	// its buffer to find the record in it.
	Start int64
	// Raw is the header and fragment of a UnitRecord or UnitSSLv2, and the
	// header alone of a UnitHeader.
	Raw []byte
	// Fragment is the fragment of a UnitRecord, the record data of a
	// UnitSSLv2 and the bytes of a UnitChunk.
	Fragment []byte
	// Offset is the position of a UnitChunk's bytes within its record's
	// payload.
	Offset int
	// SSLv2 describes a UnitSSLv2.
	SSLv2 SSLv2Header
	// Msg is the message of a UnitMessage.
	Msg Message

	// The fields below are set by Conn, not by a bare Framer.

	// Encrypted reports that the record was sent after its direction
	// switched to encrypted records: its content is opaque.
	Encrypted bool
	// Heartbeat is the decoded heartbeat of a cleartext heartbeat record.
	Heartbeat Heartbeat
	// Alerts are the alerts of a cleartext alert record, in order, at most
	// MaxAlertsPerRecord of them.
	Alerts []Alert
	// Anomalies found in this unit, in the order found.
	Anomalies []Anomaly
}

// Framer splits one direction of a connection into records. It works like
// a bufio.SplitFunc with state: each call is given the bytes from the first
// one it has not consumed, and returns the next unit and how many bytes it
// consumed, or NeedMore. The caller presents the unconsumed bytes again,
// with whatever arrived since, on the next call.
//
// Records that rules judge (handshake, alert, heartbeat,
// change_cipher_spec) are returned only when complete. An application_data
// record is returned as its header as soon as the 5 header bytes are
// there; its payload is then returned in chunks of whatever is available,
// or skipped unseen with Skip. The framer never copies: units hold
// sub-slices of the caller's buffer.
//
// A stream whose first byte has the high bit set is framed as SSLv2
// records (RFC 6101 appendix E; the SSL 2.0 specification); so is one that
// opens with a 3-byte SSLv2 header, no padding and the message a client or
// server opens with (CLIENT-HELLO up; SERVER-HELLO or ERROR down).
//
// After an error the Framer returns the same error on every call.
type Framer struct {
	dir  Direction
	off  int64 // stream offset of the next byte to consume
	mode framerMode
	err  *RecordError
	// The application_data record being streamed.
	cur      Header
	curStart int64
	left     int // payload bytes not yet consumed nor skipped
}

type framerMode uint8

const (
	modeStart framerMode = iota
	modeTLS
	// modeSSLv2Compat: the stream opened with an SSLv2 record; a TLS
	// record may follow (an SSLv2-compatible ClientHello answered in TLS).
	modeSSLv2Compat
	// modeSSLv2: a pure SSLv2 session, only SSLv2 records.
	modeSSLv2
)

// NewFramer returns the framer of one direction of a connection; dir only
// labels the anomalies it reports.
func NewFramer(dir Direction) *Framer { return &Framer{dir: dir} }

// Offset returns the stream offset of the next byte the framer expects,
// which is the number of bytes consumed or skipped so far.
func (f *Framer) Offset() int64 { return f.off }

// PayloadLeft returns how many bytes of the current application_data
// record's payload have been neither returned nor skipped.
func (f *Framer) PayloadLeft() int { return f.left }

// ErrSkipTooFar is returned by Skip when asked to skip past the end of the
// current application_data record.
var ErrSkipTooFar = errors.New("dissect: skip past the end of the application_data record")

// Skip records that n payload bytes of the current application_data record
// went past without being shown (the proxy spliced them). The next call to
// Next is given the bytes after them.
func (f *Framer) Skip(n int) error {
	if n < 0 || n > f.left {
		return fmt.Errorf("%w: %d bytes asked, %d left", ErrSkipTooFar, n, f.left)
	}
	f.left -= n
	f.off += int64(n)
	return nil
}

// Next returns the next unit at the start of buf and the number of bytes
// of buf it consumed. It returns a NeedMore unit and 0 when buf holds no
// complete unit yet, and a *RecordError when buf starts with a header it
// rejects.
func (f *Framer) Next(buf []byte) (Unit, int, error) {
	if f.err != nil {
		return Unit{}, 0, f.err
	}
	if f.left > 0 {
		if len(buf) == 0 {
			return Unit{}, 0, nil
		}
		k := min(f.left, len(buf))
		u := Unit{Kind: UnitChunk, Header: f.cur, Start: f.curStart, Fragment: buf[:k:k], Offset: f.cur.Length - f.left}
		f.left -= k
		f.off += int64(k)
		return u, k, nil
	}
	if len(buf) == 0 {
		return Unit{}, 0, nil
	}
	switch f.mode {
	case modeStart:
		switch {
		case buf[0]&0x80 != 0:
			return f.nextSSLv2(buf, true)
		case ContentType(buf[0]).Known():
			// The TLS header decides; the mode is set once it is valid.
		default:
			// Not TLS; perhaps an SSLv2 record with the 3-byte header.
			if len(buf) < 4 {
				return Unit{}, 0, nil
			}
			if sslv2Opening(f.dir, buf) {
				return f.nextSSLv2(buf, true)
			}
		}
	case modeSSLv2Compat:
		if !(ContentType(buf[0]).Known() && (len(buf) < 2 || buf[1] == 3)) {
			return f.nextSSLv2(buf, false)
		}
		if len(buf) < 2 {
			return Unit{}, 0, nil
		}
	case modeSSLv2:
		return f.nextSSLv2(buf, false)
	}
	return f.nextTLS(buf)
}

func (f *Framer) nextTLS(buf []byte) (Unit, int, error) {
	h, complete, name, detail := checkHeader(buf)
	if name != "" {
		return Unit{}, 0, f.fail(name, detail)
	}
	if !complete {
		return Unit{}, 0, nil
	}
	f.mode = modeTLS
	if h.Type == TypeApplicationData {
		u := Unit{Kind: UnitHeader, Header: h, Start: f.off, Raw: buf[:HeaderLen:HeaderLen]}
		f.cur, f.curStart, f.left = h, f.off, h.Length
		f.off += HeaderLen
		return u, HeaderLen, nil
	}
	n := HeaderLen + h.Length
	if len(buf) < n {
		return Unit{}, 0, nil
	}
	u := Unit{Kind: UnitRecord, Header: h, Start: f.off, Raw: buf[:n:n], Fragment: buf[HeaderLen:n:n]}
	f.off += int64(n)
	return u, n, nil
}

func (f *Framer) nextSSLv2(buf []byte, first bool) (Unit, int, error) {
	sh, length, ok, name, detail := parseSSLv2Header(buf, f.dir, first)
	if name != "" {
		return Unit{}, 0, f.fail(name, detail)
	}
	if !ok {
		return Unit{}, 0, nil
	}
	n := sh.HeaderLen + length
	if len(buf) < n {
		return Unit{}, 0, nil
	}
	data := buf[sh.HeaderLen:n:n]
	sh.MsgType = data[0]
	sh.Body = data[1 : length-int(sh.Padding)]
	u := Unit{
		Kind:     UnitSSLv2,
		Header:   Header{Version: VersionSSL20, Length: length},
		Start:    f.off,
		Raw:      buf[:n:n],
		Fragment: data,
		SSLv2:    sh,
	}
	if f.mode == modeStart {
		f.mode = modeSSLv2Compat
	}
	f.off += int64(n)
	return u, n, nil
}

func (f *Framer) fail(name, detail string) *RecordError {
	f.err = &RecordError{Anomaly: Anomaly{Name: name, Direction: f.dir, Detail: detail}, Offset: f.off}
	return f.err
}

// peerIsTLS tells a framer whose stream opened with an SSLv2-compatible
// ClientHello that the peer answered in TLS: only TLS records follow.
func (f *Framer) peerIsTLS() {
	if f.mode == modeSSLv2Compat {
		f.mode = modeTLS
	}
}

// peerIsSSLv2 tells the framer that the peer speaks pure SSLv2: only SSLv2
// records follow.
func (f *Framer) peerIsSSLv2() {
	if f.mode == modeSSLv2Compat {
		f.mode = modeSSLv2
	}
}
