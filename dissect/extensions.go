package dissect

import (
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// Extension is one hello extension as it appeared on the wire. Data
// references the bytes of the message it was parsed from (see the owning
// message for who owns them).
type Extension struct {
	Type uint16
	Data []byte
}

// Extension types (IANA "TLS ExtensionType Values") that the parsers decode
// or that fingerprints and rules commonly name.
const (
	ExtServerName              uint16 = 0
	ExtMaxFragmentLength       uint16 = 1
	ExtStatusRequest           uint16 = 5
	ExtSupportedGroups         uint16 = 10
	ExtECPointFormats          uint16 = 11
	ExtSignatureAlgorithms     uint16 = 13
	ExtUseSRTP                 uint16 = 14
	ExtHeartbeat               uint16 = 15
	ExtALPN                    uint16 = 16
	ExtStatusRequestV2         uint16 = 17
	ExtSignedCertTimestamp     uint16 = 18
	ExtPadding                 uint16 = 21
	ExtEncryptThenMAC          uint16 = 22
	ExtExtendedMasterSecret    uint16 = 23
	ExtCompressCertificate     uint16 = 27
	ExtRecordSizeLimit         uint16 = 28
	ExtSessionTicket           uint16 = 35
	ExtPreSharedKey            uint16 = 41
	ExtEarlyData               uint16 = 42
	ExtSupportedVersions       uint16 = 43
	ExtCookie                  uint16 = 44
	ExtPSKKeyExchangeModes     uint16 = 45
	ExtCertificateAuthorities  uint16 = 47
	ExtPostHandshakeAuth       uint16 = 49
	ExtSignatureAlgorithmsCert uint16 = 50
	ExtKeyShare                uint16 = 51
	ExtApplicationSettings     uint16 = 0x4469 // ALPS, Chrome
	ExtApplicationSettingsNew  uint16 = 0x44cd // ALPS with the new codepoint, Chrome 131+
	ExtEncryptedClientHello    uint16 = 0xfe0d
	ExtRenegotiationInfo       uint16 = 0xff01
	ExtNextProtocolNegotiation uint16 = 13172  // NPN
	ExtEncryptedServerName     uint16 = 0xffce // ESNI, ECH's predecessor
	ExtQUICTransportParameters uint16 = 57
)

// IsGREASE reports whether v is one of the reserved GREASE values of RFC 8701
// (0x0a0a, 0x1a1a, ..., 0xfafa), which clients sprinkle into cipher, group,
// extension and version lists and which fingerprints ignore.
func IsGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// heartbeat modes of RFC 6520.
const (
	HeartbeatPeerAllowedToSend    uint8 = 1
	HeartbeatPeerNotAllowedToSend uint8 = 2
)

// readExtensions reads an extensions block (a uint16-length-prefixed list of
// {type, opaque data<0..2^16-1>}) into dst, which it returns. Data
// sub-slices s. It returns false when the block is malformed.
func readExtensions(s *cryptobyte.String, dst []Extension) ([]Extension, bool) {
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) {
		return dst, false
	}
	// Sized once: appending one by one grows a fresh list four or five
	// times for a browser's hello.
	dst = slices.Grow(dst, countExtensions(exts))
	for !exts.Empty() {
		var e Extension
		var data cryptobyte.String
		if !exts.ReadUint16(&e.Type) || !exts.ReadUint16LengthPrefixed(&data) {
			return dst, false
		}
		e.Data = data
		dst = append(dst, e)
	}
	return dst, true
}

// countExtensions counts the entries of an extensions block, stopping at
// the first that does not fit (readExtensions reports it).
func countExtensions(b []byte) int {
	n := 0
	for len(b) >= 4 {
		l := 4 + (int(b[2])<<8 | int(b[3]))
		if l > len(b) {
			break
		}
		b = b[l:]
		n++
	}
	return n
}

// extSeen detects repeated extension types while a list is walked. The
// hello lists are short (tens of entries), so a bitmap for the low code
// points most lists are made of and a scan back for the rest beat any set.
type extSeen struct{ low [4]uint64 }

// repeated reports whether exts[i].Type already occurs in exts[:i].
func (s *extSeen) repeated(exts []Extension, i int) bool {
	t := exts[i].Type
	if t < 256 {
		bit := uint64(1) << (t & 63)
		if s.low[t>>6]&bit != 0 {
			return true
		}
		s.low[t>>6] |= bit
		return false
	}
	for _, p := range exts[:i] {
		if p.Type == t {
			return true
		}
	}
	return false
}

// ExtensionName returns the registry name of an extension type, or
// "0x%04x" for one this package does not name.
func ExtensionName(t uint16) string {
	switch t {
	case ExtServerName:
		return "server_name"
	case ExtMaxFragmentLength:
		return "max_fragment_length"
	case ExtStatusRequest:
		return "status_request"
	case ExtSupportedGroups:
		return "supported_groups"
	case ExtECPointFormats:
		return "ec_point_formats"
	case ExtSignatureAlgorithms:
		return "signature_algorithms"
	case ExtUseSRTP:
		return "use_srtp"
	case ExtHeartbeat:
		return "heartbeat"
	case ExtALPN:
		return "application_layer_protocol_negotiation"
	case ExtSignedCertTimestamp:
		return "signed_certificate_timestamp"
	case ExtPadding:
		return "padding"
	case ExtEncryptThenMAC:
		return "encrypt_then_mac"
	case ExtExtendedMasterSecret:
		return "extended_master_secret"
	case ExtCompressCertificate:
		return "compress_certificate"
	case ExtRecordSizeLimit:
		return "record_size_limit"
	case ExtSessionTicket:
		return "session_ticket"
	case ExtPreSharedKey:
		return "pre_shared_key"
	case ExtEarlyData:
		return "early_data"
	case ExtSupportedVersions:
		return "supported_versions"
	case ExtCookie:
		return "cookie"
	case ExtPSKKeyExchangeModes:
		return "psk_key_exchange_modes"
	case ExtCertificateAuthorities:
		return "certificate_authorities"
	case ExtPostHandshakeAuth:
		return "post_handshake_auth"
	case ExtSignatureAlgorithmsCert:
		return "signature_algorithms_cert"
	case ExtKeyShare:
		return "key_share"
	case ExtQUICTransportParameters:
		return "quic_transport_parameters"
	case ExtApplicationSettings, ExtApplicationSettingsNew:
		return "application_settings"
	case ExtEncryptedClientHello:
		return "encrypted_client_hello"
	case ExtRenegotiationInfo:
		return "renegotiation_info"
	case ExtNextProtocolNegotiation:
		return "next_protocol_negotiation"
	case ExtEncryptedServerName:
		return "encrypted_server_name"
	}
	var b [6]byte
	return string(appendHex16(append(b[:0], '0', 'x'), t))
}
