package dissect

import (
	"fmt"
	"strconv"
)

// SSLv2Header describes an SSLv2-format record. An SSLv2 record has no
// content type: its data starts with a message type while the session is
// in cleartext, and is opaque (MAC, data, padding) once it is encrypted.
type SSLv2Header struct {
	// HeaderLen is 2 for the header with the high bit set, 3 for the form
	// that carries a padding count.
	HeaderLen int
	// Padding is how many bytes at the end of the record data are padding
	// (3-byte header only).
	Padding uint8
	// Escape is the IS-ESCAPE bit of a 3-byte header.
	Escape bool
	// MsgType is the first byte of the record data: the message type
	// (SSLv2ClientHello, ...) when the record is cleartext.
	MsgType uint8
	// Body is the record data after the message type, padding excluded:
	// the message body of a cleartext record (for a CLIENT-HELLO, what
	// ParseSSLv2ClientHello reads: version, the three lengths, cipher
	// specs, session id, challenge). It is a sub-slice of the buffer the
	// record was framed from.
	Body []byte
}

// SSLv2 message types (SSL 2.0 specification, appendix A).
const (
	SSLv2Error              uint8 = 0
	SSLv2ClientHello        uint8 = 1
	SSLv2ClientMasterKey    uint8 = 2
	SSLv2ClientFinished     uint8 = 3
	SSLv2ServerHello        uint8 = 4
	SSLv2ServerVerify       uint8 = 5
	SSLv2ServerFinished     uint8 = 6
	SSLv2RequestCertificate uint8 = 7
	SSLv2ClientCertificate  uint8 = 8
)

var sslv2MessageNames = [...]string{
	SSLv2Error:              "error",
	SSLv2ClientHello:        "client_hello",
	SSLv2ClientMasterKey:    "client_master_key",
	SSLv2ClientFinished:     "client_finished",
	SSLv2ServerHello:        "server_hello",
	SSLv2ServerVerify:       "server_verify",
	SSLv2ServerFinished:     "server_finished",
	SSLv2RequestCertificate: "request_certificate",
	SSLv2ClientCertificate:  "client_certificate",
}

// SSLv2MessageName returns the name of an SSLv2 message type, or
// "unknown(N)".
func SSLv2MessageName(t uint8) string {
	if int(t) < len(sslv2MessageNames) {
		return sslv2MessageNames[t]
	}
	return "unknown(" + strconv.Itoa(int(t)) + ")"
}

// sslv2Opening reports whether b, at least 4 bytes that open a stream and
// whose first byte has the high bit clear, is an SSLv2 record with the
// 3-byte header. The check is strict because any byte may start a 3-byte
// header: SSH, HTTP or a stray newline must not pass for SSLv2. A cleartext
// opening message needs no padding, so none is allowed.
func sslv2Opening(dir Direction, b []byte) bool {
	length := int(b[0]&0x3f)<<8 | int(b[1])
	return b[0]&0x40 == 0 && b[2] == 0 && sslv2OpeningProblem(dir, b[3], length) == ""
}

// Shortest bodies of the messages that may open an SSLv2 stream: a
// CLIENT-HELLO has a version and three lengths, a SERVER-HELLO a session id
// hit flag, a certificate type, a version and three lengths, an ERROR a
// two-byte code.
const (
	sslv2MinClientHello = 1 + 2 + 3*2
	sslv2MinServerHello = 1 + 1 + 1 + 2 + 3*2
	sslv2ErrorLen       = 1 + 2
)

// sslv2OpeningProblem says what is wrong with the first record of an SSLv2
// stream of direction dir, with message type t and record length length, or
// "" when nothing is: a client opens with CLIENT-HELLO, a server with
// SERVER-HELLO or ERROR.
func sslv2OpeningProblem(dir Direction, t uint8, length int) string {
	switch {
	case dir == Up && t == SSLv2ClientHello && length >= sslv2MinClientHello,
		dir == Down && t == SSLv2ServerHello && length >= sslv2MinServerHello,
		dir == Down && t == SSLv2Error && length == sslv2ErrorLen:
		return ""
	}
	return fmt.Sprintf("%s of %d bytes opens the %s stream", SSLv2MessageName(t), length, dir)
}

// parseSSLv2Header reads the SSLv2 record header at the start of b. ok is
// false when b is too short to decide. first asks for the checks of the
// record that opens the stream of dir, which is cleartext.
func parseSSLv2Header(b []byte, dir Direction, first bool) (sh SSLv2Header, length int, ok bool, name, detail string) {
	if len(b) < 2 {
		return sh, 0, false, "", ""
	}
	if b[0]&0x80 != 0 {
		sh.HeaderLen = 2
		length = int(b[0]&0x7f)<<8 | int(b[1])
	} else {
		if len(b) < 3 {
			return sh, 0, false, "", ""
		}
		sh.HeaderLen = 3
		length = int(b[0]&0x3f)<<8 | int(b[1])
		sh.Escape = b[0]&0x40 != 0
		sh.Padding = b[2]
	}
	if length == 0 {
		return sh, 0, false, AnomalyInvalidSSLv2Header, "empty record"
	}
	if int(sh.Padding) >= length {
		return sh, 0, false, AnomalyInvalidSSLv2Header, fmt.Sprintf("%d bytes of padding in a record of %d bytes", sh.Padding, length)
	}
	if first {
		if len(b) <= sh.HeaderLen {
			return sh, 0, false, "", ""
		}
		if p := sslv2OpeningProblem(dir, b[sh.HeaderLen], length); p != "" {
			return sh, 0, false, AnomalyInvalidSSLv2Header, p
		}
	}
	return sh, length, true, "", ""
}
