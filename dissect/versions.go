package dissect

import "strconv"

// Protocol versions as they appear on the wire (record headers, hello
// versions, supported_versions). The record layer and the message parsers
// share these.
const (
	VersionSSL20 uint16 = 0x0002
	VersionSSL30 uint16 = 0x0300
	VersionTLS10 uint16 = 0x0301
	VersionTLS11 uint16 = 0x0302
	VersionTLS12 uint16 = 0x0303
	VersionTLS13 uint16 = 0x0304
)

// draftVersionPrefix marks the versions TLS 1.3 drafts used before the RFC:
// 0x7f00 + draft number.
const draftVersionPrefix = 0x7f00

// VersionName returns the name rules and logs use for a protocol version:
// "SSL2.0", "SSL3.0", "TLS1.0" … "TLS1.3", "TLS1.3-draft-N" for the drafts
// (0x7fNN), "GREASE" for the reserved values of RFC 8701 and "0x%04x" for
// anything else. It allocates only for drafts
// and unknown values.
func VersionName(v uint16) string {
	switch v {
	case VersionSSL20, 0x0200:
		// 0x0200 is how some stacks write SSLv2 in an SSLv3-style field.
		return "SSL2.0"
	case VersionSSL30:
		return "SSL3.0"
	case VersionTLS10:
		return "TLS1.0"
	case VersionTLS11:
		return "TLS1.1"
	case VersionTLS12:
		return "TLS1.2"
	case VersionTLS13:
		return "TLS1.3"
	}
	if v&0xff00 == draftVersionPrefix {
		var b [20]byte
		n := copy(b[:], "TLS1.3-draft-")
		return string(appendDecimal(b[:n], uint64(v&0xff)))
	}
	if v&0x0f0f == 0x0a0a && v>>8 == v&0xff {
		// The reserved values of RFC 8701.
		return "GREASE"
	}
	var b [6]byte
	return string(appendHex16(append(b[:0], '0', 'x'), v))
}

// IsTLS13Draft reports whether v is the version number of a TLS 1.3 draft.
func IsTLS13Draft(v uint16) bool { return v&0xff00 == draftVersionPrefix }

const lowerHex = "0123456789abcdef"

// appendHex16 appends v as 4 lowercase hex digits.
func appendHex16(dst []byte, v uint16) []byte {
	return append(dst, lowerHex[v>>12], lowerHex[v>>8&0xf], lowerHex[v>>4&0xf], lowerHex[v&0xf])
}

// appendHexBytes appends b as lowercase hex.
func appendHexBytes(dst []byte, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, lowerHex[c>>4], lowerHex[c&0xf])
	}
	return dst
}

// appendDecimal appends v in decimal.
func appendDecimal(dst []byte, v uint64) []byte { return strconv.AppendUint(dst, v, 10) }
