package dissect

import (
	"sort"

	"golang.org/x/crypto/cryptobyte"
)

// KeyExchange is the key exchange algorithm of a cipher suite, which
// decides the shape of ServerKeyExchange and ClientKeyExchange.
type KeyExchange uint8

const (
	KeyExchangeUnknown KeyExchange = iota
	// KeyExchangeRSA: the client encrypts the premaster secret to the
	// certificate's key; no ServerKeyExchange unless the suite is export.
	KeyExchangeRSA
	// KeyExchangeRSAExport: RSA_EXPORT suites; a ServerKeyExchange with a
	// temporary 512-bit RSA key follows when the certificate key is larger.
	KeyExchangeRSAExport
	// KeyExchangeDH, KeyExchangeECDH: static (EC)DH from the certificate; no
	// ServerKeyExchange.
	KeyExchangeDH
	KeyExchangeECDH
	// KeyExchangeDHE, KeyExchangeECDHE: ephemeral, signed parameters.
	KeyExchangeDHE
	KeyExchangeECDHE
	// KeyExchangeDHAnon, KeyExchangeECDHAnon: ephemeral, unsigned.
	KeyExchangeDHAnon
	KeyExchangeECDHAnon
	KeyExchangePSK
	KeyExchangeDHEPSK
	KeyExchangeECDHEPSK
	KeyExchangeRSAPSK
	KeyExchangeSRP
	// KeyExchangeKRB5: the Kerberos suites of RFC 2712.
	KeyExchangeKRB5
	// KeyExchangeTLS13: TLS 1.3 suites, whose key exchange is in the
	// hellos' key_share; there is no ServerKeyExchange.
	KeyExchangeTLS13
)

var keyExchangeNames = [...]string{
	KeyExchangeUnknown:   "unknown",
	KeyExchangeRSA:       "RSA",
	KeyExchangeRSAExport: "RSA_EXPORT",
	KeyExchangeDH:        "DH",
	KeyExchangeECDH:      "ECDH",
	KeyExchangeDHE:       "DHE",
	KeyExchangeECDHE:     "ECDHE",
	KeyExchangeDHAnon:    "DH_anon",
	KeyExchangeECDHAnon:  "ECDH_anon",
	KeyExchangePSK:       "PSK",
	KeyExchangeDHEPSK:    "DHE_PSK",
	KeyExchangeECDHEPSK:  "ECDHE_PSK",
	KeyExchangeRSAPSK:    "RSA_PSK",
	KeyExchangeSRP:       "SRP",
	KeyExchangeKRB5:      "KRB5",
	KeyExchangeTLS13:     "TLS1.3",
}

func (k KeyExchange) String() string {
	if int(k) < len(keyExchangeNames) {
		return keyExchangeNames[k]
	}
	return "invalid"
}

// suiteRange maps the cipher suites lo..hi to a key exchange.
type suiteRange struct {
	lo, hi uint16
	kx     KeyExchange
}

// suiteKeyExchanges covers the IANA TLS Cipher Suites registry (plus the
// 56-bit export suites of draft-ietf-tls-56-bit-ciphersuites and the
// pre-RFC ChaCha20 code points that old OpenSSL and Chrome sent), sorted by
// lo. Suites not listed have an unknown key exchange.
var suiteKeyExchanges = []suiteRange{
	{0x0001, 0x0002, KeyExchangeRSA},
	{0x0003, 0x0003, KeyExchangeRSAExport},
	{0x0004, 0x0005, KeyExchangeRSA},
	{0x0006, 0x0006, KeyExchangeRSAExport},
	{0x0007, 0x0007, KeyExchangeRSA},
	{0x0008, 0x0008, KeyExchangeRSAExport},
	{0x0009, 0x000a, KeyExchangeRSA},
	{0x000b, 0x0010, KeyExchangeDH},
	{0x0011, 0x0016, KeyExchangeDHE},
	{0x0017, 0x001b, KeyExchangeDHAnon},
	{0x001e, 0x002b, KeyExchangeKRB5},
	{0x002c, 0x002c, KeyExchangePSK},
	{0x002d, 0x002d, KeyExchangeDHEPSK},
	{0x002e, 0x002e, KeyExchangeRSAPSK},
	{0x002f, 0x002f, KeyExchangeRSA},
	{0x0030, 0x0031, KeyExchangeDH},
	{0x0032, 0x0033, KeyExchangeDHE},
	{0x0034, 0x0034, KeyExchangeDHAnon},
	{0x0035, 0x0035, KeyExchangeRSA},
	{0x0036, 0x0037, KeyExchangeDH},
	{0x0038, 0x0039, KeyExchangeDHE},
	{0x003a, 0x003a, KeyExchangeDHAnon},
	{0x003b, 0x003d, KeyExchangeRSA},
	{0x003e, 0x003f, KeyExchangeDH},
	{0x0040, 0x0040, KeyExchangeDHE},
	{0x0041, 0x0041, KeyExchangeRSA},
	{0x0042, 0x0043, KeyExchangeDH},
	{0x0044, 0x0045, KeyExchangeDHE},
	{0x0046, 0x0046, KeyExchangeDHAnon},
	{0x0060, 0x0062, KeyExchangeRSAExport},
	{0x0063, 0x0063, KeyExchangeDHE},
	{0x0064, 0x0064, KeyExchangeRSAExport},
	{0x0065, 0x0066, KeyExchangeDHE},
	{0x0067, 0x0067, KeyExchangeDHE},
	{0x0068, 0x0069, KeyExchangeDH},
	{0x006a, 0x006b, KeyExchangeDHE},
	{0x006c, 0x006d, KeyExchangeDHAnon},
	{0x0084, 0x0084, KeyExchangeRSA},
	{0x0085, 0x0086, KeyExchangeDH},
	{0x0087, 0x0088, KeyExchangeDHE},
	{0x0089, 0x0089, KeyExchangeDHAnon},
	{0x008a, 0x008d, KeyExchangePSK},
	{0x008e, 0x0091, KeyExchangeDHEPSK},
	{0x0092, 0x0095, KeyExchangeRSAPSK},
	{0x0096, 0x0096, KeyExchangeRSA},
	{0x0097, 0x0098, KeyExchangeDH},
	{0x0099, 0x009a, KeyExchangeDHE},
	{0x009b, 0x009b, KeyExchangeDHAnon},
	{0x009c, 0x009d, KeyExchangeRSA},
	{0x009e, 0x009f, KeyExchangeDHE},
	{0x00a0, 0x00a1, KeyExchangeDH},
	{0x00a2, 0x00a3, KeyExchangeDHE},
	{0x00a4, 0x00a5, KeyExchangeDH},
	{0x00a6, 0x00a7, KeyExchangeDHAnon},
	{0x00a8, 0x00a9, KeyExchangePSK},
	{0x00aa, 0x00ab, KeyExchangeDHEPSK},
	{0x00ac, 0x00ad, KeyExchangeRSAPSK},
	{0x00ae, 0x00b1, KeyExchangePSK},
	{0x00b2, 0x00b5, KeyExchangeDHEPSK},
	{0x00b6, 0x00b9, KeyExchangeRSAPSK},
	{0x00ba, 0x00ba, KeyExchangeRSA},
	{0x00bb, 0x00bc, KeyExchangeDH},
	{0x00bd, 0x00be, KeyExchangeDHE},
	{0x00bf, 0x00bf, KeyExchangeDHAnon},
	{0x00c0, 0x00c0, KeyExchangeRSA},
	{0x00c1, 0x00c2, KeyExchangeDH},
	{0x00c3, 0x00c4, KeyExchangeDHE},
	{0x00c5, 0x00c5, KeyExchangeDHAnon},
	{0x00c6, 0x00c7, KeyExchangeTLS13}, // SM4 suites of RFC 8998
	{0x1301, 0x1307, KeyExchangeTLS13},
	{0xc001, 0xc005, KeyExchangeECDH},
	{0xc006, 0xc00a, KeyExchangeECDHE},
	{0xc00b, 0xc00f, KeyExchangeECDH},
	{0xc010, 0xc014, KeyExchangeECDHE},
	{0xc015, 0xc019, KeyExchangeECDHAnon},
	{0xc01a, 0xc022, KeyExchangeSRP},
	{0xc023, 0xc024, KeyExchangeECDHE},
	{0xc025, 0xc026, KeyExchangeECDH},
	{0xc027, 0xc028, KeyExchangeECDHE},
	{0xc029, 0xc02a, KeyExchangeECDH},
	{0xc02b, 0xc02c, KeyExchangeECDHE},
	{0xc02d, 0xc02e, KeyExchangeECDH},
	{0xc02f, 0xc030, KeyExchangeECDHE},
	{0xc031, 0xc032, KeyExchangeECDH},
	{0xc033, 0xc03b, KeyExchangeECDHEPSK},
	{0xc03c, 0xc03d, KeyExchangeRSA},
	{0xc03e, 0xc041, KeyExchangeDH},
	{0xc042, 0xc045, KeyExchangeDHE},
	{0xc046, 0xc047, KeyExchangeDHAnon},
	{0xc048, 0xc049, KeyExchangeECDHE},
	{0xc04a, 0xc04b, KeyExchangeECDH},
	{0xc04c, 0xc04d, KeyExchangeECDHE},
	{0xc04e, 0xc04f, KeyExchangeECDH},
	{0xc050, 0xc051, KeyExchangeRSA},
	{0xc052, 0xc053, KeyExchangeDHE},
	{0xc054, 0xc055, KeyExchangeDH},
	{0xc056, 0xc057, KeyExchangeDHE},
	{0xc058, 0xc059, KeyExchangeDH},
	{0xc05a, 0xc05b, KeyExchangeDHAnon},
	{0xc05c, 0xc05d, KeyExchangeECDHE},
	{0xc05e, 0xc05f, KeyExchangeECDH},
	{0xc060, 0xc061, KeyExchangeECDHE},
	{0xc062, 0xc063, KeyExchangeECDH},
	{0xc064, 0xc065, KeyExchangePSK},
	{0xc066, 0xc067, KeyExchangeDHEPSK},
	{0xc068, 0xc069, KeyExchangeRSAPSK},
	{0xc06a, 0xc06b, KeyExchangePSK},
	{0xc06c, 0xc06d, KeyExchangeDHEPSK},
	{0xc06e, 0xc06f, KeyExchangeRSAPSK},
	{0xc070, 0xc071, KeyExchangeECDHEPSK},
	{0xc072, 0xc073, KeyExchangeECDHE},
	{0xc074, 0xc075, KeyExchangeECDH},
	{0xc076, 0xc077, KeyExchangeECDHE},
	{0xc078, 0xc079, KeyExchangeECDH},
	{0xc07a, 0xc07b, KeyExchangeRSA},
	{0xc07c, 0xc07d, KeyExchangeDHE},
	{0xc07e, 0xc07f, KeyExchangeDH},
	{0xc080, 0xc081, KeyExchangeDHE},
	{0xc082, 0xc083, KeyExchangeDH},
	{0xc084, 0xc085, KeyExchangeDHAnon},
	{0xc086, 0xc087, KeyExchangeECDHE},
	{0xc088, 0xc089, KeyExchangeECDH},
	{0xc08a, 0xc08b, KeyExchangeECDHE},
	{0xc08c, 0xc08d, KeyExchangeECDH},
	{0xc08e, 0xc08f, KeyExchangePSK},
	{0xc090, 0xc091, KeyExchangeDHEPSK},
	{0xc092, 0xc093, KeyExchangeRSAPSK},
	{0xc094, 0xc095, KeyExchangePSK},
	{0xc096, 0xc097, KeyExchangeDHEPSK},
	{0xc098, 0xc099, KeyExchangeRSAPSK},
	{0xc09a, 0xc09b, KeyExchangeECDHEPSK},
	{0xc09c, 0xc09d, KeyExchangeRSA},
	{0xc09e, 0xc09f, KeyExchangeDHE},
	{0xc0a0, 0xc0a1, KeyExchangeRSA},
	{0xc0a2, 0xc0a3, KeyExchangeDHE},
	{0xc0a4, 0xc0a5, KeyExchangePSK},
	{0xc0a6, 0xc0a7, KeyExchangeDHEPSK},
	{0xc0a8, 0xc0a9, KeyExchangePSK},
	{0xc0aa, 0xc0ab, KeyExchangeDHEPSK},
	{0xc0ac, 0xc0af, KeyExchangeECDHE},
	{0xc0b4, 0xc0b5, KeyExchangeTLS13}, // integrity-only suites of RFC 9150
	{0xcc13, 0xcc13, KeyExchangeECDHE}, // pre-RFC 7905 ChaCha20 code points
	{0xcc14, 0xcc14, KeyExchangeECDHE},
	{0xcc15, 0xcc15, KeyExchangeDHE},
	{0xcca8, 0xcca9, KeyExchangeECDHE},
	{0xccaa, 0xccaa, KeyExchangeDHE},
	{0xccab, 0xccab, KeyExchangePSK},
	{0xccac, 0xccac, KeyExchangeECDHEPSK},
	{0xccad, 0xccad, KeyExchangeDHEPSK},
	{0xccae, 0xccae, KeyExchangeRSAPSK},
	{0xd001, 0xd005, KeyExchangeECDHEPSK},
}

// CipherSuiteKeyExchange returns the key exchange of a TLS cipher suite,
// KeyExchangeUnknown for suites it does not know (signalling values such as
// 0x00ff and 0x5600 included).
func CipherSuiteKeyExchange(suite uint16) KeyExchange {
	i := sort.Search(len(suiteKeyExchanges), func(i int) bool { return suiteKeyExchanges[i].hi >= suite })
	if i < len(suiteKeyExchanges) && suiteKeyExchanges[i].lo <= suite {
		return suiteKeyExchanges[i].kx
	}
	return KeyExchangeUnknown
}

// signed reports whether the ServerKeyExchange of k carries a signature.
func (k KeyExchange) signed() bool {
	switch k {
	case KeyExchangeRSA, KeyExchangeRSAExport, KeyExchangeDHE, KeyExchangeECDHE, KeyExchangeSRP:
		return true
	}
	return false
}

// EC curve types of ECParameters (RFC 4492 5.4, RFC 8422 5.4).
const (
	CurveTypeExplicitPrime uint8 = 1
	CurveTypeExplicitChar2 uint8 = 2
	CurveTypeNamedCurve    uint8 = 3
)

// ServerKeyExchange is a parsed ServerKeyExchange body (RFC 5246 7.4.3,
// RFC 8422 5.4, RFC 4279 for the PSK forms, RFC 5054 2.8.1 for SRP).
//
// Its shape depends on the negotiated key exchange, which the body does
// not say: the caller passes it (ServerHello.KeyExchange()).
//
// RSA and RSA_EXPORT: the body is read as ServerRSAParams (modulus,
// exponent) and a signature. That is the export form; for a non-export RSA
// suite a ServerKeyExchange should not exist at all, and the FREAK attack
// (CVE-2015-0204) was a server sending this very message to a client that
// accepted it: the parse succeeds so that the state machine, which knows
// the suite, can flag it.
//
// Buffers: every []byte field is a sub-slice of the body passed in.
type ServerKeyExchange struct {
	Raw         []byte
	KeyExchange KeyExchange
	// PSKIdentityHint for the PSK key exchanges.
	PSKIdentityHint []byte
	// ECDHE, ECDH_anon, ECDHE_PSK: the curve and the server's point.
	// CurveParams holds the explicit curve parameters when CurveType is
	// not a named curve.
	CurveType   uint8
	NamedCurve  uint16
	CurveParams []byte
	// DHE, DH_anon, DHE_PSK: the group and the server's public value
	// (their lengths give the group size). SRP: N in DHP, g in DHG, B in
	// PublicKey and the salt in SRPSalt.
	DHP, DHG []byte
	SRPSalt  []byte
	// PublicKey is the server's ephemeral public value: the EC point, dh_Ys,
	// srp_B, or for RSA the modulus.
	PublicKey []byte
	// RSAExponent is the exponent of ServerRSAParams.
	RSAExponent []byte
	// Params is the signed part of the body.
	Params []byte
	// HasSignatureAlgorithm is set in TLS 1.2, where the signature is
	// preceded by its SignatureAndHashAlgorithm.
	HasSignatureAlgorithm bool
	SignatureAlgorithm    uint16
	Signature             []byte
}

// ParseServerKeyExchange parses a ServerKeyExchange body for the key
// exchange kx negotiated at version (the ServerHello's Version()). It
// fails for the key exchanges that have no ServerKeyExchange (static DH
// and ECDH, Kerberos, TLS 1.3) and for an unknown one.
func ParseServerKeyExchange(body []byte, kx KeyExchange, version uint16) (*ServerKeyExchange, error) {
	m := &ServerKeyExchange{Raw: body, KeyExchange: kx}
	s := cryptobyte.String(body)
	const typ = MsgServerKeyExchange
	start := s
	switch kx {
	case KeyExchangePSK, KeyExchangeRSAPSK, KeyExchangeDHEPSK, KeyExchangeECDHEPSK:
		var hint cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&hint) {
			return nil, malformedMsg(typ, "psk_identity_hint")
		}
		m.PSKIdentityHint = hint
	}
	var v cryptobyte.String
	switch kx {
	case KeyExchangeRSA, KeyExchangeRSAExport:
		var exp cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&v) || v.Empty() || !s.ReadUint16LengthPrefixed(&exp) || exp.Empty() {
			return nil, malformedMsg(typ, "ServerRSAParams")
		}
		m.PublicKey, m.RSAExponent = v, exp
	case KeyExchangeDHE, KeyExchangeDHAnon, KeyExchangeDHEPSK:
		var p, g cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&p) || p.Empty() || !s.ReadUint16LengthPrefixed(&g) || g.Empty() ||
			!s.ReadUint16LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "ServerDHParams")
		}
		m.DHP, m.DHG, m.PublicKey = p, g, v
	case KeyExchangeECDHE, KeyExchangeECDHAnon, KeyExchangeECDHEPSK:
		if err := m.readECParams(&s); err != nil {
			return nil, err
		}
		if !s.ReadUint8LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "ECPoint")
		}
		m.PublicKey = v
	case KeyExchangeSRP:
		var n, g, salt cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&n) || n.Empty() || !s.ReadUint16LengthPrefixed(&g) || g.Empty() ||
			!s.ReadUint8LengthPrefixed(&salt) || !s.ReadUint16LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "ServerSRPParams")
		}
		m.DHP, m.DHG, m.SRPSalt, m.PublicKey = n, g, salt, v
	case KeyExchangePSK, KeyExchangeRSAPSK:
		// The hint is all there is.
	default:
		return nil, &MessageError{Type: typ, Field: "message for key exchange " + kx.String() + " (it has no ServerKeyExchange)"}
	}
	m.Params = start[:len(start)-len(s)]
	if kx.signed() {
		if version >= VersionTLS12 {
			if !s.ReadUint16(&m.SignatureAlgorithm) {
				return nil, malformedMsg(typ, "signature algorithm")
			}
			m.HasSignatureAlgorithm = true
		}
		var sig cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&sig) {
			return nil, malformedMsg(typ, "signature")
		}
		m.Signature = sig
	}
	if !s.Empty() {
		return nil, malformedMsg(typ, "message length (bytes after the parameters)")
	}
	return m, nil
}

// readECParams reads ECParameters. Explicit curves (deprecated by RFC
// 8422, and the CurveBall attack vector) are read field by field so that
// the point and signature after them are found; their bytes are kept in
// CurveParams.
func (m *ServerKeyExchange) readECParams(s *cryptobyte.String) error {
	const typ = MsgServerKeyExchange
	start := *s
	if !s.ReadUint8(&m.CurveType) {
		return malformedMsg(typ, "ECParameters curve_type")
	}
	var f cryptobyte.String
	// vec reads one opaque<1..2^8-1>.
	vec := func() bool { return s.ReadUint8LengthPrefixed(&f) && !f.Empty() }
	switch m.CurveType {
	case CurveTypeNamedCurve:
		if !s.ReadUint16(&m.NamedCurve) {
			return malformedMsg(typ, "ECParameters named_curve")
		}
		return nil
	case CurveTypeExplicitPrime:
		// prime_p, curve (a, b), base, order, cofactor.
		if !vec() || !vec() || !vec() || !vec() || !vec() || !vec() {
			return malformedMsg(typ, "ECParameters explicit_prime")
		}
	case CurveTypeExplicitChar2:
		var m16 uint16
		var basis uint8
		if !s.ReadUint16(&m16) || !s.ReadUint8(&basis) {
			return malformedMsg(typ, "ECParameters explicit_char2")
		}
		switch basis {
		case 1: // ec_basis_trinomial: k
			if !vec() {
				return malformedMsg(typ, "ECParameters explicit_char2")
			}
		case 2: // ec_basis_pentanomial: k1, k2, k3
			if !vec() || !vec() || !vec() {
				return malformedMsg(typ, "ECParameters explicit_char2")
			}
		default:
			return malformedMsg(typ, "ECParameters explicit_char2 basis")
		}
		// curve (a, b), base, order, cofactor.
		if !vec() || !vec() || !vec() || !vec() || !vec() {
			return malformedMsg(typ, "ECParameters explicit_char2")
		}
	default:
		return malformedMsg(typ, "ECParameters curve_type")
	}
	m.CurveParams = start[1 : len(start)-len(*s)]
	return nil
}

// KeyExchangeLengthForm says how the exchange value of a ClientKeyExchange
// is framed.
type KeyExchangeLengthForm uint8

const (
	// LengthNone: the value is the rest of the body (SSL 3.0's RSA
	// premaster secret, unknown key exchanges) or absent (implicit DH).
	LengthNone KeyExchangeLengthForm = iota
	// LengthUint8: opaque<1..2^8-1>, the ECDH point.
	LengthUint8
	// LengthUint16: opaque<1..2^16-1>, RSA premaster secret from TLS 1.0
	// on, DH public value, SRP A.
	LengthUint16
)

// ClientKeyExchange is a parsed ClientKeyExchange body (RFC 5246 7.4.7,
// RFC 8422 5.7, RFC 4279). The exchange value itself is opaque: encrypted
// (RSA) or a public value nobody but the server can use. Buffers are
// sub-slices of the body passed in.
type ClientKeyExchange struct {
	Raw         []byte
	KeyExchange KeyExchange
	LengthForm  KeyExchangeLengthForm
	// PSKIdentity for the PSK key exchanges.
	PSKIdentity []byte
	// Exchange is the encrypted premaster secret or the client's public
	// value, without its length prefix; empty for implicit static DH.
	Exchange []byte
}

// ParseClientKeyExchange parses a ClientKeyExchange body for the key
// exchange kx negotiated at version. An unknown key exchange yields the
// whole body as Exchange with LengthNone.
func ParseClientKeyExchange(body []byte, kx KeyExchange, version uint16) (*ClientKeyExchange, error) {
	m := &ClientKeyExchange{Raw: body, KeyExchange: kx}
	s := cryptobyte.String(body)
	const typ = MsgClientKeyExchange
	switch kx {
	case KeyExchangePSK, KeyExchangeRSAPSK, KeyExchangeDHEPSK, KeyExchangeECDHEPSK:
		var id cryptobyte.String
		if !s.ReadUint16LengthPrefixed(&id) {
			return nil, malformedMsg(typ, "psk_identity")
		}
		m.PSKIdentity = id
	}
	var v cryptobyte.String
	switch kx {
	case KeyExchangeRSA, KeyExchangeRSAExport, KeyExchangeRSAPSK:
		if version == VersionSSL30 && kx != KeyExchangeRSAPSK {
			// SSL 3.0 sends the encrypted premaster secret bare.
			if s.Empty() {
				return nil, malformedMsg(typ, "EncryptedPreMasterSecret")
			}
			m.Exchange, s = s, nil
			break
		}
		if !s.ReadUint16LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "EncryptedPreMasterSecret")
		}
		m.LengthForm, m.Exchange = LengthUint16, v
	case KeyExchangeDHE, KeyExchangeDHAnon, KeyExchangeDHEPSK, KeyExchangeSRP, KeyExchangeDH:
		if kx == KeyExchangeDH && s.Empty() {
			break // implicit: the client certificate holds the DH key
		}
		if !s.ReadUint16LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "ClientDiffieHellmanPublic")
		}
		m.LengthForm, m.Exchange = LengthUint16, v
	case KeyExchangeECDHE, KeyExchangeECDHAnon, KeyExchangeECDHEPSK, KeyExchangeECDH:
		if kx == KeyExchangeECDH && s.Empty() {
			break // implicit: fixed ECDH client certificate
		}
		if !s.ReadUint8LengthPrefixed(&v) || v.Empty() {
			return nil, malformedMsg(typ, "ClientECDiffieHellmanPublic")
		}
		m.LengthForm, m.Exchange = LengthUint8, v
	case KeyExchangePSK:
	case KeyExchangeTLS13:
		return nil, &MessageError{Type: typ, Field: "message for TLS 1.3 (it has no ClientKeyExchange)"}
	default:
		m.Exchange, s = s, nil
	}
	if !s.Empty() {
		return nil, malformedMsg(typ, "message length (bytes after the exchange value)")
	}
	return m, nil
}
