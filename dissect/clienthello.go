package dissect

import (
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// maxHostNameLen caps a server_name host name. DNS names are at most 255
// octets (RFC 1035 2.3.4): a longer one cannot name a server, and Suricata
// flags the same bound.
const maxHostNameLen = 255

// maxSessionIDLen is the bound of SessionID<0..32> (RFC 5246 7.4.1.2).
const maxSessionIDLen = 32

// ClientHello is a parsed ClientHello body (RFC 5246 7.4.1.2, RFC 8446
// 4.1.2), or an SSLv2-format CLIENT-HELLO (SSLv2 set; see
// ParseSSLv2ClientHello).
//
// Buffers: Raw and every []byte field — Random, SessionID,
// CompressionMethods, Extensions[i].Data, ALPN[i], KeyShares[i].Data,
// SessionTicket, Cookie — are sub-slices of the body given to Unmarshal and
// stay valid only as long as the caller leaves that buffer alone; a caller
// that recycles its read buffer must copy what it keeps (Clone does).
// ServerName is a copy. The number slices and Anomalies belong to the
// ClientHello; Unmarshal reuses their capacity, so one ClientHello per
// connection parses without allocating after the first hello.
type ClientHello struct {
	// Raw is the whole message body (without the 4-byte handshake header).
	Raw []byte
	// SSLv2 is set when the hello came in SSLv2 record format.
	SSLv2 bool
	// LegacyVersion is client_version: the highest version up to TLS 1.2,
	// 0x0303 for TLS 1.3 clients (which list theirs in SupportedVersions),
	// 0x0304 in TLS 1.3 drafts before supported_versions existed.
	LegacyVersion uint16
	// Random is the 32-byte client random; for SSLv2 the challenge (16 to
	// 32 bytes), which a TLS server right-aligns into its client random.
	Random    []byte
	SessionID []byte
	// CipherSuites in the order offered. For an SSLv2 hello, the cipher
	// specs whose first byte is zero, which are TLS cipher suites (RFC 5246
	// E.2); SSLv2CipherSpecs holds all of them.
	CipherSuites       []uint16
	SSLv2CipherSpecs   []uint32
	CompressionMethods []byte
	// HasExtensions tells an empty extensions block (two zero bytes) from
	// none at all, which SSLv3 and early TLS 1.0 clients send.
	HasExtensions bool
	// Extensions, every one in wire order, GREASE included.
	Extensions []Extension

	// Decoded extensions. When an extension occurs twice, the first one is
	// decoded and AnomalyDuplicateExtension is reported.

	// ServerName is the first host_name of server_name, "" when absent.
	ServerName string
	// ALPN lists the protocol names offered, in order.
	ALPN [][]byte
	// SupportedVersions lists supported_versions, GREASE included.
	SupportedVersions   []uint16
	SupportedGroups     []uint16
	SignatureAlgorithms []uint16
	// KeyShares lists the key_share entries (group and key_exchange).
	KeyShares      []KeyShare
	ECPointFormats []byte
	// Heartbeat is set when the heartbeat extension (RFC 6520) is offered;
	// HeartbeatMode is its mode (HeartbeatPeerAllowedToSend, ...).
	Heartbeat     bool
	HeartbeatMode uint8
	// ECH is set when encrypted_client_hello (0xfe0d) is present.
	ECH bool
	// SessionTicket is set when session_ticket is present;
	// SessionTicketData is the ticket offered (empty to ask for one).
	SessionTicket     bool
	SessionTicketData []byte
	// PreSharedKey and EarlyData tell whether pre_shared_key and
	// early_data (TLS 1.3 resumption, 0-RTT) are present.
	PreSharedKey bool
	EarlyData    bool
	// Cookie is the cookie extension echoed after a HelloRetryRequest.
	Cookie []byte

	// Anomalies found in the hello, Direction left for the caller to set.
	// nil when there is none.
	Anomalies []Anomaly
}

// KeyShare is one key_share entry. Data references the message body.
type KeyShare struct {
	Group uint16
	Data  []byte
}

// ParseClientHello parses a ClientHello body (the handshake message without
// its 4-byte header) into a new ClientHello. See ClientHello for who owns
// the buffers it references.
func ParseClientHello(body []byte) (*ClientHello, error) {
	h := new(ClientHello)
	if err := h.Unmarshal(body); err != nil {
		return nil, err
	}
	return h, nil
}

// reset empties h and keeps the capacity of its slices.
func (h *ClientHello) reset() {
	*h = ClientHello{
		CipherSuites:        h.CipherSuites[:0],
		SSLv2CipherSpecs:    h.SSLv2CipherSpecs[:0],
		Extensions:          h.Extensions[:0],
		ALPN:                h.ALPN[:0],
		SupportedVersions:   h.SupportedVersions[:0],
		SupportedGroups:     h.SupportedGroups[:0],
		SignatureAlgorithms: h.SignatureAlgorithms[:0],
		KeyShares:           h.KeyShares[:0],
		Anomalies:           h.Anomalies[:0],
	}
}

// Unmarshal parses a TLS-format ClientHello body into h, replacing its
// contents. On error h holds a partial parse and must not be used.
func (h *ClientHello) Unmarshal(body []byte) error {
	h.reset()
	h.Raw = body
	s := cryptobyte.String(body)
	var sid, ciphers, comp cryptobyte.String
	if !s.ReadUint16(&h.LegacyVersion) {
		return malformedMsg(MsgClientHello, "client_version")
	}
	if !s.ReadBytes(&h.Random, 32) {
		return malformedMsg(MsgClientHello, "random")
	}
	if !s.ReadUint8LengthPrefixed(&sid) || len(sid) > maxSessionIDLen {
		return malformedMsg(MsgClientHello, "session_id")
	}
	h.SessionID = sid
	if !s.ReadUint16LengthPrefixed(&ciphers) || len(ciphers)%2 != 0 {
		return malformedMsg(MsgClientHello, "cipher_suites")
	}
	h.CipherSuites = appendUint16s(h.CipherSuites, ciphers)
	if !s.ReadUint8LengthPrefixed(&comp) {
		return malformedMsg(MsgClientHello, "compression_methods")
	}
	h.CompressionMethods = comp
	if s.Empty() {
		// SSLv3 and early TLS 1.0 hellos end here (RFC 5246 7.4.1.2:
		// "the presence of extensions can be detected by determining
		// whether there are bytes following the compression_methods").
		return nil
	}
	h.HasExtensions = true
	var ok bool
	if h.Extensions, ok = readExtensions(&s, h.Extensions); !ok {
		return malformedMsg(MsgClientHello, "extensions")
	}
	if !s.Empty() {
		return malformedMsg(MsgClientHello, "message length (bytes after the extensions)")
	}
	return h.decodeExtensions()
}

func (h *ClientHello) decodeExtensions() error {
	var seen extSeen
	for i, e := range h.Extensions {
		if seen.repeated(h.Extensions, i) {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalyDuplicateExtension, ExtensionName(e.Type))
			continue
		}
		if err := h.decodeExtension(e); err != nil {
			return err
		}
		if e.Type == ExtPreSharedKey && i != len(h.Extensions)-1 {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalyPSKNotLast, "")
		}
	}
	return nil
}

func (h *ClientHello) decodeExtension(e Extension) error {
	d := cryptobyte.String(e.Data)
	switch e.Type {
	case ExtServerName:
		h.decodeServerName(d)
	case ExtALPN:
		var list cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() || list.Empty() {
			return malformedMsg(MsgClientHello, "application_layer_protocol_negotiation extension")
		}
		// Room for the usual few at once, not one growth per name.
		h.ALPN = slices.Grow(h.ALPN, 4)
		for !list.Empty() {
			var proto cryptobyte.String
			if !list.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
				return malformedMsg(MsgClientHello, "application_layer_protocol_negotiation extension")
			}
			h.ALPN = append(h.ALPN, proto)
		}
	case ExtSupportedVersions:
		var list cryptobyte.String
		if !d.ReadUint8LengthPrefixed(&list) || !d.Empty() || list.Empty() || len(list)%2 != 0 {
			return malformedMsg(MsgClientHello, "supported_versions extension")
		}
		h.SupportedVersions = appendUint16s(h.SupportedVersions, list)
	case ExtSupportedGroups:
		var list cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() || list.Empty() || len(list)%2 != 0 {
			return malformedMsg(MsgClientHello, "supported_groups extension")
		}
		h.SupportedGroups = appendUint16s(h.SupportedGroups, list)
	case ExtSignatureAlgorithms:
		var list cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() || list.Empty() || len(list)%2 != 0 {
			return malformedMsg(MsgClientHello, "signature_algorithms extension")
		}
		h.SignatureAlgorithms = appendUint16s(h.SignatureAlgorithms, list)
	case ExtECPointFormats:
		var list cryptobyte.String
		if !d.ReadUint8LengthPrefixed(&list) || !d.Empty() || list.Empty() {
			return malformedMsg(MsgClientHello, "ec_point_formats extension")
		}
		h.ECPointFormats = list
	case ExtKeyShare:
		// client_shares may be empty: a client asking for a
		// HelloRetryRequest to learn the server's group (RFC 8446 4.2.8).
		var list cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() {
			return malformedMsg(MsgClientHello, "key_share extension")
		}
		h.KeyShares = slices.Grow(h.KeyShares, 4)
		for !list.Empty() {
			var ks KeyShare
			var key cryptobyte.String
			if !list.ReadUint16(&ks.Group) || !list.ReadUint16LengthPrefixed(&key) || key.Empty() {
				return malformedMsg(MsgClientHello, "key_share extension")
			}
			ks.Data = key
			h.KeyShares = append(h.KeyShares, ks)
		}
	case ExtHeartbeat:
		if !d.ReadUint8(&h.HeartbeatMode) || !d.Empty() {
			return malformedMsg(MsgClientHello, "heartbeat extension")
		}
		h.Heartbeat = true
	case ExtCookie:
		var cookie cryptobyte.String
		if !d.ReadUint16LengthPrefixed(&cookie) || !d.Empty() || cookie.Empty() {
			return malformedMsg(MsgClientHello, "cookie extension")
		}
		h.Cookie = cookie
	case ExtSessionTicket:
		h.SessionTicket = true
		h.SessionTicketData = e.Data
	case ExtPreSharedKey:
		h.PreSharedKey = true
	case ExtEarlyData:
		h.EarlyData = true
	case ExtEncryptedClientHello:
		h.ECH = true
	}
	return nil
}

// decodeServerName reads server_name (RFC 6066 3). A broken list is an
// anomaly, not a parse error: servers differ in what they accept here, and
// the rules are better placed to judge an evasion attempt than the grammar.
func (h *ClientHello) decodeServerName(d cryptobyte.String) {
	var list cryptobyte.String
	if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() || list.Empty() {
		h.Anomalies = appendAnomaly(h.Anomalies, AnomalyInvalidSNILength, "server_name_list length does not match the extension")
		return
	}
	entries := 0
	for !list.Empty() {
		var typ uint8
		var name cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&name) {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalyInvalidSNILength, "server_name entry overruns its list")
			return
		}
		entries++
		if entries == 2 {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalySeveralSNINames, "")
		}
		if typ != 0 {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalyInvalidSNIType, "name_type "+string(appendDecimal(nil, uint64(typ))))
			continue
		}
		if len(name) == 0 || len(name) > maxHostNameLen {
			h.Anomalies = appendAnomaly(h.Anomalies, AnomalyInvalidSNILength, "host_name of "+string(appendDecimal(nil, uint64(len(name))))+" bytes")
			continue
		}
		if h.ServerName == "" {
			h.ServerName = string(name)
		}
	}
}

// appendUint16s appends the big-endian uint16 values of b (of even length).
func appendUint16s(dst []uint16, b []byte) []uint16 {
	dst = slices.Grow(dst, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		dst = append(dst, uint16(b[i])<<8|uint16(b[i+1]))
	}
	return dst
}

// HighestVersion returns the highest non-GREASE version of
// supported_versions, or LegacyVersion when the extension is absent or
// holds only GREASE.
func (h *ClientHello) HighestVersion() uint16 {
	var best uint16
	for _, v := range h.SupportedVersions {
		if !IsGREASE(v) && v > best {
			best = v
		}
	}
	if best == 0 {
		return h.LegacyVersion
	}
	return best
}

// ALPNStrings returns the ALPN protocol names as strings (a copy).
func (h *ClientHello) ALPNStrings() []string {
	if len(h.ALPN) == 0 {
		return nil
	}
	out := make([]string, len(h.ALPN))
	for i, p := range h.ALPN {
		out[i] = string(p)
	}
	return out
}

// KeyShareGroups returns the groups of the key_share entries, in order.
func (h *ClientHello) KeyShareGroups() []uint16 {
	if len(h.KeyShares) == 0 {
		return nil
	}
	out := make([]uint16, len(h.KeyShares))
	for i, ks := range h.KeyShares {
		out[i] = ks.Group
	}
	return out
}

// Marshal returns the body h was parsed from, rebuilt from its fields: the
// version, random, session id, cipher suites, compression methods and the
// raw extensions (SSLv2 hellos in their SSLv2 form). Tests check that it
// gives back Raw; a rule engine may use it after editing a field.
func (h *ClientHello) Marshal() ([]byte, error) {
	if h.SSLv2 {
		return h.marshalSSLv2()
	}
	var b cryptobyte.Builder
	b.AddUint16(h.LegacyVersion)
	b.AddBytes(h.Random)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.SessionID) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, c := range h.CipherSuites {
			b.AddUint16(c)
		}
	})
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.CompressionMethods) })
	if h.HasExtensions || len(h.Extensions) > 0 {
		marshalExtensions(&b, h.Extensions)
	}
	return b.Bytes()
}

func marshalExtensions(b *cryptobyte.Builder, exts []Extension) {
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range exts {
			b.AddUint16(e.Type)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Data) })
		}
	})
}

// Clone returns a deep copy of a successfully parsed h that references
// none of the caller's buffers (it parses a copy of Raw again).
func (h *ClientHello) Clone() *ClientHello {
	c := new(ClientHello)
	if h.SSLv2 {
		_ = c.UnmarshalSSLv2(append([]byte(nil), h.Raw...))
	} else {
		_ = c.Unmarshal(append([]byte(nil), h.Raw...))
	}
	return c
}
