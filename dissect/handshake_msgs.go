package dissect

import "golang.org/x/crypto/cryptobyte"

// This file holds the parsers of the small handshake messages. As
// everywhere in the package, []byte fields are sub-slices of the body
// passed in; the caller owns that buffer.

// ParseServerHelloDone checks a ServerHelloDone body, which is empty.
func ParseServerHelloDone(body []byte) error {
	if len(body) != 0 {
		return malformedMsg(MsgServerHelloDone, "message length (the body must be empty)")
	}
	return nil
}

// NewSessionTicket is a parsed NewSessionTicket body: the TLS 1.2 form
// (ticket_lifetime_hint, ticket; RFC 5077 3.3) or the TLS 1.3 form
// (ticket_lifetime, ticket_age_add, ticket_nonce, ticket, extensions; RFC
// 8446 4.6.1).
type NewSessionTicket struct {
	Raw   []byte
	TLS13 bool
	// Lifetime is ticket_lifetime_hint (TLS 1.2) or ticket_lifetime, in
	// seconds.
	Lifetime   uint32
	AgeAdd     uint32
	Nonce      []byte
	Ticket     []byte
	Extensions []Extension
}

// ParseNewSessionTicket parses a NewSessionTicket body for the negotiated
// version.
func ParseNewSessionTicket(body []byte, version uint16) (*NewSessionTicket, error) {
	m := &NewSessionTicket{Raw: body, TLS13: version >= VersionTLS13 || IsTLS13Draft(version)}
	const typ = MsgNewSessionTicket
	s := cryptobyte.String(body)
	if !s.ReadUint32(&m.Lifetime) {
		return nil, malformedMsg(typ, "ticket_lifetime")
	}
	var ticket cryptobyte.String
	if !m.TLS13 {
		if !s.ReadUint16LengthPrefixed(&ticket) || !s.Empty() {
			return nil, malformedMsg(typ, "ticket")
		}
		m.Ticket = ticket
		return m, nil
	}
	var nonce cryptobyte.String
	if !s.ReadUint32(&m.AgeAdd) || !s.ReadUint8LengthPrefixed(&nonce) {
		return nil, malformedMsg(typ, "ticket_nonce")
	}
	if !s.ReadUint16LengthPrefixed(&ticket) || ticket.Empty() {
		return nil, malformedMsg(typ, "ticket")
	}
	m.Nonce, m.Ticket = nonce, ticket
	var ok bool
	if m.Extensions, ok = readExtensions(&s, nil); !ok || !s.Empty() {
		return nil, malformedMsg(typ, "extensions")
	}
	return m, nil
}

// ParseFinished returns the verify_data of a Finished body. Its length
// depends on the cipher suite (12 bytes in TLS, 36 in SSL 3.0, the hash
// length in TLS 1.3), so only emptiness is an error.
func ParseFinished(body []byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, malformedMsg(MsgFinished, "verify_data (empty)")
	}
	return body, nil
}

// ParseEncryptedExtensions returns the extensions of an
// EncryptedExtensions body (TLS 1.3; it is only ever seen in cleartext when
// someone decrypts the handshake, and is here for completeness).
func ParseEncryptedExtensions(body []byte) ([]Extension, error) {
	s := cryptobyte.String(body)
	exts, ok := readExtensions(&s, nil)
	if !ok || !s.Empty() {
		return nil, malformedMsg(MsgEncryptedExtensions, "extensions")
	}
	return exts, nil
}

// CertificateVerify is a parsed CertificateVerify body: the signature and,
// from TLS 1.2 on, its algorithm.
type CertificateVerify struct {
	Raw                   []byte
	HasSignatureAlgorithm bool
	SignatureAlgorithm    uint16
	Signature             []byte
}

// ParseCertificateVerify parses a CertificateVerify body for the
// negotiated version.
func ParseCertificateVerify(body []byte, version uint16) (*CertificateVerify, error) {
	m := &CertificateVerify{Raw: body}
	const typ = MsgCertificateVerify
	s := cryptobyte.String(body)
	if version >= VersionTLS12 || IsTLS13Draft(version) {
		if !s.ReadUint16(&m.SignatureAlgorithm) {
			return nil, malformedMsg(typ, "signature algorithm")
		}
		m.HasSignatureAlgorithm = true
	}
	var sig cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&sig) || sig.Empty() || !s.Empty() {
		return nil, malformedMsg(typ, "signature")
	}
	m.Signature = sig
	return m, nil
}
