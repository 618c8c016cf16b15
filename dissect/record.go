package dissect

import (
	"fmt"
	"strconv"
)

// ContentType is the type of a TLS record (RFC 8446, section 5.1; RFC 6520
// for heartbeat).
type ContentType uint8

// The content types of the TLS record layer.
const (
	TypeChangeCipherSpec ContentType = 20
	TypeAlert            ContentType = 21
	TypeHandshake        ContentType = 22
	TypeApplicationData  ContentType = 23
	TypeHeartbeat        ContentType = 24
)

// String returns the name rules and logs use ("handshake", ...), or
// "unknown(N)" for a type outside 20–24.
func (t ContentType) String() string {
	switch t {
	case TypeChangeCipherSpec:
		return "change_cipher_spec"
	case TypeAlert:
		return "alert"
	case TypeHandshake:
		return "handshake"
	case TypeApplicationData:
		return "application_data"
	case TypeHeartbeat:
		return "heartbeat"
	}
	return "unknown(" + strconv.Itoa(int(t)) + ")"
}

// Known reports whether t is one of the five content types.
func (t ContentType) Known() bool { return t >= TypeChangeCipherSpec && t <= TypeHeartbeat }

// versionIsTLS13 reports whether a negotiated version is TLS 1.3 or one of its
// drafts, which all encrypt everything after the ServerHello.
func versionIsTLS13(v uint16) bool { return v == VersionTLS13 || v&0xff00 == 0x7f00 }

const (
	// HeaderLen is the length of a TLS record header: type, version,
	// length.
	HeaderLen = 5

	// MaxRecordLength is the largest record fragment accepted: 2^14 bytes
	// of plaintext plus 2048 of compression and cipher expansion, the
	// TLSCiphertext bound of RFC 5246 section 6.2.3. TLS 1.3 allows only
	// 2^14+256, but a record layer that cannot see the version of every
	// record must take the larger bound. It also bounds what the pump has to
	// buffer to see one complete record.
	MaxRecordLength = 1<<14 + 2048

	// MaxUnitBytes is the most bytes Next may need before it returns a
	// unit: an SSLv2 record with a 2-byte header and the largest length
	// its 15 bits hold. A TLS record needs at most HeaderLen +
	// MaxRecordLength. A caller that holds this many unconsumed bytes
	// always gets a unit or an error.
	MaxUnitBytes = 2 + 0x7fff
)

// Anomaly names raised by the record layer. They are stable: rules match on
// them.
const (
	AnomalyInvalidRecordType        = "invalid_record_type"
	AnomalyInvalidRecordVersion     = "invalid_record_version"
	AnomalyInvalidRecordLength      = "invalid_record_length"
	AnomalyInvalidSSLv2Header       = "invalid_sslv2_header"
	AnomalyTruncatedRecord          = "truncated_record"
	AnomalyZeroLengthHandshake      = "zero_length_handshake_fragment"
	AnomalyHandshakeLengthMismatch  = "handshake_length_mismatch"
	AnomalyHandshakeMessageTooLarge = "handshake_message_too_large"
	AnomalyRecordSpansKeyChange     = "record_spans_key_change"
	AnomalyInvalidHeartbeatType     = "invalid_heartbeat_type"
	AnomalyInvalidHeartbeatLength   = "invalid_heartbeat_length"
	AnomalyHeartbeatPaddingTooShort = "heartbeat_padding_too_short"
	AnomalyHeartbeatOverflow        = "heartbeat_overflow"
	AnomalyInvalidAlertLength       = "invalid_alert_length"
	AnomalyInvalidAlertLevel        = "invalid_alert_level"
	AnomalyTooManyAlertsInRecord    = "too_many_alerts_in_record"
	AnomalyInvalidChangeCipherSpec  = "invalid_change_cipher_spec"
)

// Header is a record header. For an SSLv2 record Type is 0, Version is
// VersionSSL20 and Length is the length of the record data (padding
// included).
type Header struct {
	Type    ContentType
	Version uint16
	Length  int
}

// RecordError is a framing error: the bytes at Offset are not a record
// header the framer accepts, so the stream cannot be framed any further.
// Anomaly names the problem; the framer keeps returning the same error.
type RecordError struct {
	Anomaly Anomaly
	// Offset is the stream offset of the first byte of the bad header.
	Offset int64
}

func (e *RecordError) Error() string {
	return "dissect: " + e.Anomaly.String() + " (stream offset " + strconv.FormatInt(e.Offset, 10) + ")"
}

// checkHeader validates as much of the TLS record header at the start of b
// as b holds, so that a stream that is not TLS fails on its first byte
// rather than after five. complete reports that the whole header was there
// and accepted; name and detail describe a header it rejects.
func checkHeader(b []byte) (h Header, complete bool, name, detail string) {
	if len(b) >= 1 {
		h.Type = ContentType(b[0])
		if !h.Type.Known() {
			return h, false, AnomalyInvalidRecordType, "content type " + strconv.Itoa(int(b[0]))
		}
	}
	if len(b) >= 3 {
		// Every TLS record says 3.x with x at most 3: TLS 1.3 freezes the
		// record version at 0x0303 (0x0301 is allowed in a first
		// ClientHello).
		h.Version = uint16(b[1])<<8 | uint16(b[2])
		if h.Version < VersionSSL30 || h.Version > VersionTLS12 {
			return h, false, AnomalyInvalidRecordVersion, fmt.Sprintf("version 0x%04x in a %s record", h.Version, h.Type)
		}
	}
	if len(b) < HeaderLen {
		return h, false, "", ""
	}
	h.Length = int(b[3])<<8 | int(b[4])
	if h.Length > MaxRecordLength {
		return h, false, AnomalyInvalidRecordLength, fmt.Sprintf("%s record of %d bytes, the limit is %d", h.Type, h.Length, MaxRecordLength)
	}
	return h, true, "", ""
}
