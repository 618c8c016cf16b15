package dissect

import "golang.org/x/crypto/cryptobyte"

// Bounds of the SSLv2 CLIENT-HELLO (draft-hickman-netscape-ssl-00, and RFC
// 5246 E.2 for the backward-compatible form).
const (
	// sslv2SessionIDLen: the session id is empty or 16 bytes.
	sslv2SessionIDLen = 16
	// sslv2MinChallenge, sslv2MaxChallenge: the challenge is 16 to 32 bytes
	// (RFC 5246 E.2); OpenSSL rejects anything else, and so do we.
	sslv2MinChallenge = 16
	sslv2MaxChallenge = 32
)

// ParseSSLv2ClientHello parses the body of an SSLv2-format CLIENT-HELLO:
// the bytes after the 2- or 3-byte SSLv2 record header and the message
// type (1): version, cipher_spec_length, session_id_length,
// challenge_length, the 3-byte cipher specs, the session id and the
// challenge. The result is a ClientHello with SSLv2 set, no extensions,
// CipherSuites holding the specs that are TLS cipher suites, and Random
// holding the challenge. See ClientHello for who owns the buffers.
func ParseSSLv2ClientHello(body []byte) (*ClientHello, error) {
	h := new(ClientHello)
	if err := h.UnmarshalSSLv2(body); err != nil {
		return nil, err
	}
	return h, nil
}

// UnmarshalSSLv2 is ParseSSLv2ClientHello into an existing ClientHello,
// reusing its slices.
func (h *ClientHello) UnmarshalSSLv2(body []byte) error {
	h.reset()
	h.Raw = body
	h.SSLv2 = true
	s := cryptobyte.String(body)
	var specLen, sidLen, chLen uint16
	if !s.ReadUint16(&h.LegacyVersion) || !s.ReadUint16(&specLen) || !s.ReadUint16(&sidLen) || !s.ReadUint16(&chLen) {
		return malformedMsg(MsgClientHello, "SSLv2 CLIENT-HELLO header")
	}
	if specLen == 0 || specLen%3 != 0 {
		return malformedMsg(MsgClientHello, "SSLv2 cipher_spec_length")
	}
	if sidLen != 0 && sidLen != sslv2SessionIDLen {
		return malformedMsg(MsgClientHello, "SSLv2 session_id_length")
	}
	if chLen < sslv2MinChallenge || chLen > sslv2MaxChallenge {
		return malformedMsg(MsgClientHello, "SSLv2 challenge_length")
	}
	var specs []byte
	if !s.ReadBytes(&specs, int(specLen)) || !s.ReadBytes(&h.SessionID, int(sidLen)) || !s.ReadBytes(&h.Random, int(chLen)) {
		return malformedMsg(MsgClientHello, "SSLv2 CLIENT-HELLO lengths (longer than the message)")
	}
	if !s.Empty() {
		return malformedMsg(MsgClientHello, "SSLv2 CLIENT-HELLO lengths (bytes after the challenge)")
	}
	for i := 0; i < len(specs); i += 3 {
		spec := uint32(specs[i])<<16 | uint32(specs[i+1])<<8 | uint32(specs[i+2])
		h.SSLv2CipherSpecs = append(h.SSLv2CipherSpecs, spec)
		if spec>>16 == 0 {
			h.CipherSuites = append(h.CipherSuites, uint16(spec))
		}
	}
	return nil
}

func (h *ClientHello) marshalSSLv2() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddUint16(h.LegacyVersion)
	b.AddUint16(uint16(3 * len(h.SSLv2CipherSpecs)))
	b.AddUint16(uint16(len(h.SessionID)))
	b.AddUint16(uint16(len(h.Random)))
	for _, c := range h.SSLv2CipherSpecs {
		b.AddUint24(c)
	}
	b.AddBytes(h.SessionID)
	b.AddBytes(h.Random)
	return b.Bytes()
}
