package dissect

import (
	"bytes"

	"golang.org/x/crypto/cryptobyte"
)

// helloRetryRequestRandom is the random of a HelloRetryRequest: SHA-256 of
// "HelloRetryRequest" (RFC 8446 4.1.3).
var helloRetryRequestRandom = []byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11,
	0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e,
	0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// firstDraftWithSessionID is the TLS 1.3 draft that put legacy_session_id
// and legacy_compression_method back into ServerHello (draft 22); earlier
// drafts send version, random, cipher_suite and extensions only.
const firstDraftWithSessionID = 22

// isDraftServerHello reports whether a ServerHello with this
// server_version has the draft form without session id and compression:
// drafts before 22, which put their version (0x7fNN, or 0x0304 itself in
// the early drafts) in server_version. RFC 8446 servers put 0x0303 there.
func isDraftServerHello(v uint16) bool {
	return v == VersionTLS13 || IsTLS13Draft(v) && v&0xff < firstDraftWithSessionID
}

// ServerHello is a parsed ServerHello body (RFC 5246 7.4.1.3, RFC 8446
// 4.1.3), HelloRetryRequest included.
//
// Buffers: Raw and every []byte field (Random, SessionID,
// Extensions[i].Data, ALPN, KeyShareData, Cookie) are sub-slices of the
// body given to Unmarshal, valid while the caller keeps that buffer.
// Extensions and Anomalies belong to the ServerHello and are reused by
// Unmarshal.
type ServerHello struct {
	Raw []byte
	// LegacyVersion is server_version: the negotiated version up to TLS
	// 1.2, 0x0303 in TLS 1.3 (see Version), 0x7fNN in early drafts.
	LegacyVersion uint16
	Random        []byte
	SessionID     []byte
	CipherSuite   uint16
	// CompressionMethod is legacy_compression_method (0 in TLS 1.3).
	CompressionMethod uint8
	HasExtensions     bool
	// Extensions, every one in wire order.
	Extensions []Extension

	// HelloRetryRequest is set when Random is the HelloRetryRequest magic.
	HelloRetryRequest bool
	// SupportedVersion is the selected_version of supported_versions, 0
	// when absent.
	SupportedVersion uint16
	// ALPN is the protocol the server selected, nil when none.
	ALPN []byte
	// KeyShareGroup is the group of key_share (the server's share, or the
	// group a HelloRetryRequest asks for); KeyShareData is the server's
	// key_exchange (empty in a HelloRetryRequest).
	KeyShareGroup uint16
	KeyShareData  []byte
	Heartbeat     bool
	HeartbeatMode uint8
	// Cookie is the cookie of a HelloRetryRequest.
	Cookie []byte
	// ExtendedMasterSecret, SessionTicket, SecureRenegotiation tell whether
	// the server agreed to these TLS 1.2 extensions.
	ExtendedMasterSecret bool
	SessionTicket        bool
	SecureRenegotiation  bool
	// PreSharedKey is set when the server accepted a PSK;
	// SelectedIdentity is its index in the client's list.
	PreSharedKey     bool
	SelectedIdentity uint16

	// Anomalies found in the hello, Direction left for the caller to set;
	// nil when there is none.
	Anomalies []Anomaly
}

// ParseServerHello parses a ServerHello body into a new ServerHello.
func ParseServerHello(body []byte) (*ServerHello, error) {
	m := new(ServerHello)
	if err := m.Unmarshal(body); err != nil {
		return nil, err
	}
	return m, nil
}

// Version returns the negotiated version: selected_version of
// supported_versions when present, else server_version.
func (m *ServerHello) Version() uint16 {
	if m.SupportedVersion != 0 {
		return m.SupportedVersion
	}
	return m.LegacyVersion
}

// KeyExchange returns the key exchange of the negotiated cipher suite,
// which ServerKeyExchange and ClientKeyExchange need to be parsed.
func (m *ServerHello) KeyExchange() KeyExchange {
	if m.Version() >= VersionTLS13 {
		return KeyExchangeTLS13
	}
	return CipherSuiteKeyExchange(m.CipherSuite)
}

// Unmarshal parses a ServerHello body into m, replacing its contents.
func (m *ServerHello) Unmarshal(body []byte) error {
	*m = ServerHello{Extensions: m.Extensions[:0], Anomalies: m.Anomalies[:0], Raw: body}
	s := cryptobyte.String(body)
	if !s.ReadUint16(&m.LegacyVersion) {
		return malformedMsg(MsgServerHello, "server_version")
	}
	if !s.ReadBytes(&m.Random, 32) {
		return malformedMsg(MsgServerHello, "random")
	}
	draftForm := isDraftServerHello(m.LegacyVersion)
	if !draftForm {
		var sid cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&sid) || len(sid) > maxSessionIDLen {
			return malformedMsg(MsgServerHello, "session_id")
		}
		m.SessionID = sid
	}
	if !s.ReadUint16(&m.CipherSuite) {
		return malformedMsg(MsgServerHello, "cipher_suite")
	}
	if !draftForm && !s.ReadUint8(&m.CompressionMethod) {
		return malformedMsg(MsgServerHello, "compression_method")
	}
	m.HelloRetryRequest = bytes.Equal(m.Random, helloRetryRequestRandom)
	if s.Empty() {
		if draftForm {
			return malformedMsg(MsgServerHello, "extensions")
		}
		return nil
	}
	m.HasExtensions = true
	var ok bool
	if m.Extensions, ok = readExtensions(&s, m.Extensions); !ok {
		return malformedMsg(MsgServerHello, "extensions")
	}
	if !s.Empty() {
		return malformedMsg(MsgServerHello, "message length (bytes after the extensions)")
	}
	var seen extSeen
	for i, e := range m.Extensions {
		if seen.repeated(m.Extensions, i) {
			m.Anomalies = appendAnomaly(m.Anomalies, AnomalyDuplicateExtension, ExtensionName(e.Type))
			continue
		}
		if err := m.decodeExtension(e); err != nil {
			return err
		}
	}
	return nil
}

func (m *ServerHello) decodeExtension(e Extension) error {
	d := cryptobyte.String(e.Data)
	switch e.Type {
	case ExtSupportedVersions:
		if !d.ReadUint16(&m.SupportedVersion) || !d.Empty() {
			return malformedMsg(MsgServerHello, "supported_versions extension")
		}
	case ExtALPN:
		var list, proto cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() ||
			!list.ReadUint8LengthPrefixed(&proto) || proto.Empty() || !list.Empty() {
			return malformedMsg(MsgServerHello, "application_layer_protocol_negotiation extension")
		}
		m.ALPN = proto
	case ExtKeyShare:
		if !d.ReadUint16(&m.KeyShareGroup) {
			return malformedMsg(MsgServerHello, "key_share extension")
		}
		if m.HelloRetryRequest {
			if !d.Empty() {
				return malformedMsg(MsgServerHello, "key_share extension")
			}
			break
		}
		var key cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&key) || key.Empty() || !d.Empty() {
			return malformedMsg(MsgServerHello, "key_share extension")
		}
		m.KeyShareData = key
	case ExtCookie:
		var cookie cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&cookie) || cookie.Empty() || !d.Empty() {
			return malformedMsg(MsgServerHello, "cookie extension")
		}
		m.Cookie = cookie
	case ExtHeartbeat:
		if !d.ReadUint8(&m.HeartbeatMode) || !d.Empty() {
			return malformedMsg(MsgServerHello, "heartbeat extension")
		}
		m.Heartbeat = true
	case ExtPreSharedKey:
		if !d.ReadUint16(&m.SelectedIdentity) || !d.Empty() {
			return malformedMsg(MsgServerHello, "pre_shared_key extension")
		}
		m.PreSharedKey = true
	case ExtExtendedMasterSecret:
		m.ExtendedMasterSecret = true
	case ExtSessionTicket:
		m.SessionTicket = true
	case ExtRenegotiationInfo:
		m.SecureRenegotiation = true
	}
	return nil
}

// Marshal rebuilds the body from the fields (see ClientHello.Marshal).
func (m *ServerHello) Marshal() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddUint16(m.LegacyVersion)
	b.AddBytes(m.Random)
	draftForm := isDraftServerHello(m.LegacyVersion)
	if !draftForm {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.SessionID) })
	}
	b.AddUint16(m.CipherSuite)
	if !draftForm {
		b.AddUint8(m.CompressionMethod)
	}
	if m.HasExtensions || len(m.Extensions) > 0 {
		marshalExtensions(&b, m.Extensions)
	}
	return b.Bytes()
}
