package dissect

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Certificate is a parsed Certificate message: the TLS 1.2 form
// (certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1>, RFC 5246 7.4.2) or
// the TLS 1.3 form (a certificate_request_context, then entries that each
// carry their own extensions, RFC 8446 4.4.2).
//
// Parsing the message does not parse X.509: that is the expensive part,
// done by CertificateEntry.Parse or Certificate.Chain only when someone
// wants the fields (a rule hooking the certificate event).
//
// Buffers: Raw, RequestContext and the entries' DER and Extensions are
// sub-slices of the body passed in; Entries belongs to the Certificate.
type Certificate struct {
	Raw []byte
	// TLS13 is set when the body was read in the TLS 1.3 form.
	TLS13          bool
	RequestContext []byte
	// Entries in the order sent: the end-entity certificate first.
	Entries []CertificateEntry
}

// CertificateEntry is one certificate of the chain.
type CertificateEntry struct {
	// DER is the certificate as sent.
	DER []byte
	// Extensions is the raw extensions block of a TLS 1.3 entry
	// (status_request, signed_certificate_timestamp ...), without its
	// length prefix; nil in TLS 1.2.
	Extensions []byte
}

// ParseCertificate parses a Certificate body. version is the negotiated
// version (ServerHello.Version()), which decides the form; a broken length
// anywhere in the lists is an error.
func ParseCertificate(body []byte, version uint16) (*Certificate, error) {
	m := new(Certificate)
	if err := m.Unmarshal(body, version); err != nil {
		return nil, err
	}
	return m, nil
}

// Unmarshal parses a Certificate body into m, reusing m.Entries.
func (m *Certificate) Unmarshal(body []byte, version uint16) error {
	*m = Certificate{Raw: body, Entries: m.Entries[:0], TLS13: version >= VersionTLS13 || IsTLS13Draft(version)}
	const typ = MsgCertificate
	s := cryptobyte.String(body)
	if m.TLS13 {
		var ctx cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&ctx) {
			return malformedMsg(typ, "certificate_request_context")
		}
		m.RequestContext = ctx
	}
	var list cryptobyte.String
	if !s.ReadUint24LengthPrefixed(&list) || !s.Empty() {
		return malformedMsg(typ, "certificate_list length")
	}
	for !list.Empty() {
		var der cryptobyte.String
		if !list.ReadUint24LengthPrefixed(&der) || der.Empty() {
			return malformedMsg(typ, "certificate_list entry length")
		}
		e := CertificateEntry{DER: der}
		if m.TLS13 {
			var exts cryptobyte.String
			if !list.ReadUint16LengthPrefixed(&exts) {
				return malformedMsg(typ, "certificate entry extensions")
			}
			e.Extensions = exts
		}
		m.Entries = append(m.Entries, e)
	}
	return nil
}

// Marshal rebuilds the body from the fields.
func (m *Certificate) Marshal() ([]byte, error) {
	var b cryptobyte.Builder
	if m.TLS13 {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.RequestContext) })
	}
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range m.Entries {
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.DER) })
			if m.TLS13 {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Extensions) })
			}
		}
	})
	return b.Bytes()
}

// CertInfo is what rules see of one certificate (the certificate event's
// chain entries). It references no buffer of the message: it may be kept.
type CertInfo struct {
	// SHA256 is the digest of the DER, computed even when X.509 parsing
	// fails.
	SHA256 [32]byte
	// Err is set when crypto/x509 rejected the certificate; the fields
	// below are then empty and X509 is nil.
	Err error
	// Subject and Issuer in RFC 2253 form, as crypto/x509 renders them.
	Subject, Issuer string
	// Serial is the serial number in lowercase hex, big-endian, as Arkime
	// prints it ("047fbe2e4bde0084d2caf8e3ecfe7058").
	Serial string
	// Subject alternative names by kind.
	DNSNames, EmailAddresses, IPAddresses, URIs []string
	NotBefore, NotAfter                         time.Time
	// X509 is the parsed certificate, for fields this type does not lift.
	X509 *x509.Certificate
}

// SHA256Hex returns the certificate's SHA-256 in lowercase hex.
func (c *CertInfo) SHA256Hex() string { return hex.EncodeToString(c.SHA256[:]) }

// SANs returns every subject alternative name as a string: DNS names, IP
// addresses, email addresses and URIs, in that order.
func (c *CertInfo) SANs() []string {
	n := len(c.DNSNames) + len(c.IPAddresses) + len(c.EmailAddresses) + len(c.URIs)
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	out = append(out, c.DNSNames...)
	out = append(out, c.IPAddresses...)
	out = append(out, c.EmailAddresses...)
	return append(out, c.URIs...)
}

// SHA256 returns the digest of the entry's DER without parsing it.
func (e CertificateEntry) SHA256() [32]byte { return sha256.Sum256(e.DER) }

// Parse parses the entry's certificate with crypto/x509. A certificate
// that crypto/x509 rejects gives a CertInfo with SHA256 and Err set.
func (e CertificateEntry) Parse() CertInfo {
	ci := CertInfo{SHA256: sha256.Sum256(e.DER)}
	c, err := x509.ParseCertificate(e.DER)
	if err != nil {
		ci.Err = err
		return ci
	}
	ci.X509 = c
	ci.Subject = c.Subject.String()
	ci.Issuer = c.Issuer.String()
	if c.SerialNumber != nil {
		ci.Serial = serialHex(c.SerialNumber.Bytes())
	}
	ci.DNSNames = c.DNSNames
	ci.EmailAddresses = c.EmailAddresses
	if len(c.IPAddresses) > 0 {
		ci.IPAddresses = make([]string, len(c.IPAddresses))
		for i, ip := range c.IPAddresses {
			ci.IPAddresses[i] = ip.String()
		}
	}
	if len(c.URIs) > 0 {
		ci.URIs = make([]string, len(c.URIs))
		for i, u := range c.URIs {
			ci.URIs[i] = u.String()
		}
	}
	ci.NotBefore, ci.NotAfter = c.NotBefore, c.NotAfter
	return ci
}

func serialHex(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	return hex.EncodeToString(b)
}

// Chain parses every certificate of the message (see CertificateEntry.Parse)
// and returns one AnomalyInvalidCertificate, Direction unset, per
// certificate crypto/x509 rejected; anomalies is nil when there is none.
func (m *Certificate) Chain() (chain []CertInfo, anomalies []Anomaly) {
	chain = make([]CertInfo, len(m.Entries))
	for i, e := range m.Entries {
		chain[i] = e.Parse()
		if chain[i].Err != nil {
			anomalies = appendAnomaly(anomalies, AnomalyInvalidCertificate,
				"certificate "+string(appendDecimal(nil, uint64(i)))+" of the chain: "+chain[i].Err.Error())
		}
	}
	return chain, anomalies
}

// CertificateRequest is a parsed CertificateRequest body: the TLS 1.2 and
// earlier form (certificate_types, supported_signature_algorithms from TLS
// 1.2 on, certificate_authorities; RFC 5246 7.4.4) or the TLS 1.3 form
// (certificate_request_context and extensions; RFC 8446 4.3.2).
// Buffers are sub-slices of the body.
type CertificateRequest struct {
	Raw                 []byte
	TLS13               bool
	CertificateTypes    []byte
	SignatureAlgorithms []uint16
	// CertificateAuthorities are the DER-encoded distinguished names.
	CertificateAuthorities [][]byte
	RequestContext         []byte
	Extensions             []Extension
}

// ParseCertificateRequest parses a CertificateRequest body for the
// negotiated version.
func ParseCertificateRequest(body []byte, version uint16) (*CertificateRequest, error) {
	m := &CertificateRequest{Raw: body, TLS13: version >= VersionTLS13 || IsTLS13Draft(version)}
	const typ = MsgCertificateRequest
	s := cryptobyte.String(body)
	if m.TLS13 {
		var ctx cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&ctx) {
			return nil, malformedMsg(typ, "certificate_request_context")
		}
		m.RequestContext = ctx
		var ok bool
		if m.Extensions, ok = readExtensions(&s, nil); !ok || !s.Empty() {
			return nil, malformedMsg(typ, "extensions")
		}
		for _, e := range m.Extensions {
			if e.Type != ExtSignatureAlgorithms {
				continue
			}
			d := cryptobyte.String(e.Data)
			var list cryptobyte.String
			if !d.ReadUint16LengthPrefixed(&list) || !d.Empty() || list.Empty() || len(list)%2 != 0 {
				return nil, malformedMsg(typ, "signature_algorithms extension")
			}
			m.SignatureAlgorithms = appendUint16s(m.SignatureAlgorithms, list)
		}
		return m, nil
	}
	var types cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&types) || types.Empty() {
		return nil, malformedMsg(typ, "certificate_types")
	}
	m.CertificateTypes = types
	if version >= VersionTLS12 {
		var algs cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&algs) || algs.Empty() || len(algs)%2 != 0 {
			return nil, malformedMsg(typ, "supported_signature_algorithms")
		}
		m.SignatureAlgorithms = appendUint16s(nil, algs)
	}
	var cas cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&cas) || !s.Empty() {
		return nil, malformedMsg(typ, "certificate_authorities")
	}
	for !cas.Empty() {
		var dn cryptobyte.String
		if !cas.ReadUint16LengthPrefixed(&dn) || dn.Empty() {
			return nil, malformedMsg(typ, "certificate_authorities entry")
		}
		m.CertificateAuthorities = append(m.CertificateAuthorities, dn)
	}
	return m, nil
}

// CertificateStatus type of RFC 6066 8 and RFC 6961.
const (
	StatusTypeOCSP      uint8 = 1
	StatusTypeOCSPMulti uint8 = 2
)

// CertificateStatus is a parsed CertificateStatus body: a status type and
// the OCSP response (for ocsp_multi, the whole OCSPResponseList), opaque.
// Response is a sub-slice of the body.
type CertificateStatus struct {
	Raw        []byte
	StatusType uint8
	Response   []byte
}

// ParseCertificateStatus parses a CertificateStatus body.
func ParseCertificateStatus(body []byte) (*CertificateStatus, error) {
	m := &CertificateStatus{Raw: body}
	s := cryptobyte.String(body)
	var resp cryptobyte.String
	if !s.ReadUint8(&m.StatusType) {
		return nil, malformedMsg(MsgCertificateStatus, "status_type")
	}
	if !s.ReadUint24LengthPrefixed(&resp) || resp.Empty() || !s.Empty() {
		return nil, malformedMsg(MsgCertificateStatus, "OCSPResponse")
	}
	m.Response = resp
	return m, nil
}
