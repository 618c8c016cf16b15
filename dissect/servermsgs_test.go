package dissect

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

func buildServerHello(version uint16, random []byte, suite uint16, exts []Extension) []byte {
	var b cryptobyte.Builder
	b.AddUint16(version)
	if random == nil {
		random = make([]byte, 32)
	}
	b.AddBytes(random)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
	b.AddUint16(suite)
	b.AddUint8(0)
	if exts != nil {
		marshalExtensions(&b, exts)
	}
	return b.BytesOrPanic()
}

func TestServerHello(t *testing.T) {
	sh, err := ParseServerHello(buildServerHello(VersionTLS12, nil, 0x1301, []Extension{
		{ExtSupportedVersions, []byte{3, 4}},
		{ExtKeyShare, []byte{0x00, 0x1d, 0x00, 0x02, 0xaa, 0xbb}},
		{ExtALPN, alpnExt("h2")},
		{ExtHeartbeat, []byte{2}},
		{ExtPreSharedKey, []byte{0, 1}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if sh.Version() != VersionTLS13 || sh.KeyExchange() != KeyExchangeTLS13 || sh.HelloRetryRequest || sh.KeyShareGroup != 0x1d ||
		!bytes.Equal(sh.KeyShareData, []byte{0xaa, 0xbb}) || string(sh.ALPN) != "h2" || !sh.Heartbeat || sh.HeartbeatMode != 2 ||
		!sh.PreSharedKey || sh.SelectedIdentity != 1 {
		t.Errorf("%+v", sh)
	}
	if s, h := sh.JA3S(); s != "771,4865,43-51-16-15-41" || h != md5Hex([]byte(s)) {
		t.Errorf("JA3S %s %s", s, h)
	}

	hrr, err := ParseServerHello(buildServerHello(VersionTLS12, helloRetryRequestRandom, 0x1301, []Extension{
		{ExtSupportedVersions, []byte{3, 4}}, {ExtKeyShare, []byte{0x11, 0xec}}, {ExtCookie, []byte{0, 1, 9}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !hrr.HelloRetryRequest || hrr.KeyShareGroup != 0x11ec || !bytes.Equal(hrr.Cookie, []byte{9}) {
		t.Errorf("HRR %+v", hrr)
	}

	tls12, err := ParseServerHello(buildServerHello(VersionTLS12, nil, 0xc02f, []Extension{
		{ExtRenegotiationInfo, []byte{0}}, {ExtExtendedMasterSecret, nil}, {ExtSessionTicket, nil}, {ExtECPointFormats, []byte{1, 0}},
		{ExtExtendedMasterSecret, nil},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if tls12.Version() != VersionTLS12 || tls12.KeyExchange() != KeyExchangeECDHE || !tls12.SecureRenegotiation ||
		!tls12.ExtendedMasterSecret || !tls12.SessionTicket || len(tls12.Anomalies) != 1 || tls12.Anomalies[0].Name != AnomalyDuplicateExtension {
		t.Errorf("TLS 1.2 %+v", tls12)
	}
	noExt, err := ParseServerHello(buildServerHello(VersionSSL30, nil, 0x000a, nil))
	if err != nil || noExt.HasExtensions || noExt.Version() != VersionSSL30 {
		t.Fatalf("SSLv3 %+v %v", noExt, err)
	}
	if s, _ := noExt.JA3S(); s != "768,10," {
		t.Errorf("JA3S without extensions %q", s)
	}

	for name, body := range map[string][]byte{
		"hrr key share with key": buildServerHello(VersionTLS12, helloRetryRequestRandom, 0x1301, []Extension{{ExtKeyShare, []byte{0, 0x1d, 0, 1, 1}}}),
		"two alpn":               buildServerHello(VersionTLS12, nil, 0x1301, []Extension{{ExtALPN, alpnExt("h2", "h3")}}),
		"versions long":          buildServerHello(VersionTLS12, nil, 0x1301, []Extension{{ExtSupportedVersions, []byte{3, 4, 3, 3}}}),
		"trailing":               append(buildServerHello(VersionTLS12, nil, 0x1301, []Extension{}), 1),
		"short":                  buildServerHello(VersionTLS12, nil, 0x1301, nil)[:36],
	} {
		if _, err := ParseServerHello(body); !errors.Is(err, ErrMalformedMessage) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCipherSuiteKeyExchangeAgainstOpenSSL compares the key exchange table
// with what the machine's OpenSSL says of every suite it knows.
func TestCipherSuiteKeyExchangeAgainstOpenSSL(t *testing.T) {
	out, err := exec.Command("openssl", "ciphers", "-V", "ALL:COMPLEMENTOFALL:@SECLEVEL=0").Output()
	if err != nil {
		t.Skipf("openssl ciphers: %v", err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "0x") {
			continue
		}
		hi, _ := strconv.ParseUint(f[0][2:4], 16, 8)
		lo, _ := strconv.ParseUint(f[0][7:9], 16, 8)
		suite := uint16(hi)<<8 | uint16(lo)
		kx, au := strings.TrimPrefix(f[4], "Kx="), strings.TrimPrefix(f[5], "Au=")
		want := map[string]KeyExchange{
			"RSA": KeyExchangeRSA, "DH": KeyExchangeDHE, "ECDH": KeyExchangeECDHE, "PSK": KeyExchangePSK,
			"DHEPSK": KeyExchangeDHEPSK, "ECDHEPSK": KeyExchangeECDHEPSK, "RSAPSK": KeyExchangeRSAPSK,
			"SRP": KeyExchangeSRP, "any": KeyExchangeTLS13,
		}[kx]
		if au == "None" && want == KeyExchangeDHE {
			want = KeyExchangeDHAnon
		}
		if au == "None" && want == KeyExchangeECDHE {
			want = KeyExchangeECDHAnon
		}
		if got := CipherSuiteKeyExchange(suite); got != want {
			t.Errorf("%s (%#04x): %s, OpenSSL says Kx=%s Au=%s", f[2], suite, got, kx, au)
		}
		n++
	}
	if n < 100 {
		t.Errorf("only %d suites listed by openssl", n)
	}
	for suite, want := range map[uint16]KeyExchange{0x0003: KeyExchangeRSAExport, 0x000b: KeyExchangeDH, 0xc004: KeyExchangeECDH,
		0x00ff: KeyExchangeUnknown, 0x5600: KeyExchangeUnknown, 0x0000: KeyExchangeUnknown, 0xffff: KeyExchangeUnknown, 0x0020: KeyExchangeKRB5} {
		if got := CipherSuiteKeyExchange(suite); got != want {
			t.Errorf("%#04x: %s, want %s", suite, got, want)
		}
	}
	for i := 1; i < len(suiteKeyExchanges); i++ {
		if suiteKeyExchanges[i].lo <= suiteKeyExchanges[i-1].hi || suiteKeyExchanges[i].lo > suiteKeyExchanges[i].hi {
			t.Errorf("table not sorted at %#04x", suiteKeyExchanges[i].lo)
		}
	}
}

func vec8(b ...[]byte) func(*cryptobyte.Builder) {
	return func(bb *cryptobyte.Builder) {
		for _, x := range b {
			bb.AddUint8LengthPrefixed(func(bb *cryptobyte.Builder) { bb.AddBytes(x) })
		}
	}
}

func vec16(b ...[]byte) func(*cryptobyte.Builder) {
	return func(bb *cryptobyte.Builder) {
		for _, x := range b {
			bb.AddUint16LengthPrefixed(func(bb *cryptobyte.Builder) { bb.AddBytes(x) })
		}
	}
}

func buildBytes(parts ...func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	for _, p := range parts {
		p(&b)
	}
	return b.BytesOrPanic()
}

func rawBytes(b ...byte) func(*cryptobyte.Builder) {
	return func(bb *cryptobyte.Builder) { bb.AddBytes(b) }
}

func TestServerKeyExchange(t *testing.T) {
	point := bytes.Repeat([]byte{4}, 65)
	sig := bytes.Repeat([]byte{0x30}, 70)
	ecdhe := buildBytes(rawBytes(CurveTypeNamedCurve, 0x00, 0x17), vec8(point), rawBytes(0x04, 0x03), vec16(sig))
	m, err := ParseServerKeyExchange(ecdhe, KeyExchangeECDHE, VersionTLS12)
	if err != nil {
		t.Fatal(err)
	}
	if m.CurveType != CurveTypeNamedCurve || m.NamedCurve != 0x17 || !bytes.Equal(m.PublicKey, point) || !m.HasSignatureAlgorithm ||
		m.SignatureAlgorithm != 0x0403 || !bytes.Equal(m.Signature, sig) || len(m.Params) != 4+65 {
		t.Errorf("ECDHE %+v", m)
	}
	// TLS 1.0: no SignatureAndHashAlgorithm.
	ecdhe10 := buildBytes(rawBytes(CurveTypeNamedCurve, 0x00, 0x17), vec8(point), vec16(sig))
	if m, err := ParseServerKeyExchange(ecdhe10, KeyExchangeECDHE, VersionTLS10); err != nil || m.HasSignatureAlgorithm {
		t.Errorf("ECDHE TLS 1.0: %v %+v", err, m)
	}
	if _, err := ParseServerKeyExchange(ecdhe10, KeyExchangeECDHE, VersionTLS12); err == nil {
		t.Error("a TLS 1.0 body parsed as TLS 1.2")
	}
	p, g, ys := bytes.Repeat([]byte{0xff}, 256), []byte{2}, bytes.Repeat([]byte{7}, 256)
	dhe := buildBytes(vec16(p, g, ys), rawBytes(0x08, 0x04), vec16(sig))
	if m, err := ParseServerKeyExchange(dhe, KeyExchangeDHE, VersionTLS12); err != nil || len(m.DHP) != 256 || len(m.DHG) != 1 || len(m.PublicKey) != 256 {
		t.Errorf("DHE: %v %+v", err, m)
	}
	anon := buildBytes(vec16(p, g, ys))
	if m, err := ParseServerKeyExchange(anon, KeyExchangeDHAnon, VersionTLS12); err != nil || m.Signature != nil {
		t.Errorf("DH_anon: %v %+v", err, m)
	}
	mod, exp := bytes.Repeat([]byte{0xc3}, 64), []byte{1, 0, 1}
	rsaExport := buildBytes(vec16(mod, exp), vec16(sig))
	if m, err := ParseServerKeyExchange(rsaExport, KeyExchangeRSAExport, VersionTLS10); err != nil || len(m.PublicKey) != 64 || !bytes.Equal(m.RSAExponent, exp) {
		t.Errorf("RSA_EXPORT: %v %+v", err, m)
	}
	psk := buildBytes(vec16([]byte("hint")))
	if m, err := ParseServerKeyExchange(psk, KeyExchangePSK, VersionTLS12); err != nil || string(m.PSKIdentityHint) != "hint" {
		t.Errorf("PSK: %v %+v", err, m)
	}
	ecdhePSK := buildBytes(vec16([]byte("hint")), rawBytes(CurveTypeNamedCurve, 0, 0x1d), vec8(bytes.Repeat([]byte{9}, 32)))
	if m, err := ParseServerKeyExchange(ecdhePSK, KeyExchangeECDHEPSK, VersionTLS12); err != nil || m.NamedCurve != 0x1d || m.Signature != nil {
		t.Errorf("ECDHE_PSK: %v %+v", err, m)
	}
	// An explicit prime curve, as CurveBall servers sent.
	explicit := buildBytes(rawBytes(CurveTypeExplicitPrime), vec8([]byte{1}, []byte{2}, []byte{3}, []byte{4}, []byte{5}, []byte{6}), vec8(point), rawBytes(4, 3), vec16(sig))
	if m, err := ParseServerKeyExchange(explicit, KeyExchangeECDHE, VersionTLS12); err != nil || m.CurveType != CurveTypeExplicitPrime || len(m.CurveParams) != 12 || !bytes.Equal(m.PublicKey, point) {
		t.Errorf("explicit prime: %v %+v", err, m)
	}
	char2 := buildBytes(rawBytes(CurveTypeExplicitChar2, 0, 163, 2), vec8([]byte{1}, []byte{2}, []byte{3}), vec8([]byte{1}, []byte{2}, []byte{3}, []byte{4}, []byte{5}), vec8(point), rawBytes(4, 3), vec16(sig))
	if m, err := ParseServerKeyExchange(char2, KeyExchangeECDHE, VersionTLS12); err != nil || m.CurveType != CurveTypeExplicitChar2 {
		t.Errorf("explicit char2: %v %+v", err, m)
	}
	srp := buildBytes(vec16([]byte{1, 2}, []byte{2}), vec8([]byte("salt")), vec16([]byte{5, 5}), vec16(sig))
	if m, err := ParseServerKeyExchange(srp, KeyExchangeSRP, VersionTLS10); err != nil || string(m.SRPSalt) != "salt" {
		t.Errorf("SRP: %v %+v", err, m)
	}
	for _, kx := range []KeyExchange{KeyExchangeUnknown, KeyExchangeDH, KeyExchangeECDH, KeyExchangeKRB5, KeyExchangeTLS13} {
		if _, err := ParseServerKeyExchange(ecdhe, kx, VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
			t.Errorf("%s: %v", kx, err)
		}
	}
	if _, err := ParseServerKeyExchange(append(slices.Clone(ecdhe), 0), KeyExchangeECDHE, VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
		t.Error("trailing byte accepted")
	}
	if _, err := ParseServerKeyExchange(buildBytes(rawBytes(9, 0, 0x17), vec8(point)), KeyExchangeECDHE, VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
		t.Error("unknown curve type accepted")
	}
}

func TestClientKeyExchange(t *testing.T) {
	enc := bytes.Repeat([]byte{0xee}, 256)
	for _, c := range []struct {
		name    string
		body    []byte
		kx      KeyExchange
		version uint16
		form    KeyExchangeLengthForm
		exch    int
		id      string
	}{
		{"rsa tls", buildBytes(vec16(enc)), KeyExchangeRSA, VersionTLS12, LengthUint16, 256, ""},
		{"rsa ssl3", enc, KeyExchangeRSA, VersionSSL30, LengthNone, 256, ""},
		{"dhe", buildBytes(vec16(enc)), KeyExchangeDHE, VersionTLS12, LengthUint16, 256, ""},
		{"ecdhe", buildBytes(vec8(enc[:65])), KeyExchangeECDHE, VersionTLS12, LengthUint8, 65, ""},
		{"psk", buildBytes(vec16([]byte("me"))), KeyExchangePSK, VersionTLS12, LengthNone, 0, "me"},
		{"ecdhe psk", buildBytes(vec16([]byte("me")), vec8(enc[:32])), KeyExchangeECDHEPSK, VersionTLS12, LengthUint8, 32, "me"},
		{"rsa psk", buildBytes(vec16([]byte("me")), vec16(enc)), KeyExchangeRSAPSK, VersionTLS12, LengthUint16, 256, "me"},
		{"implicit dh", nil, KeyExchangeDH, VersionTLS12, LengthNone, 0, ""},
		{"unknown", enc[:10], KeyExchangeUnknown, VersionTLS12, LengthNone, 10, ""},
	} {
		m, err := ParseClientKeyExchange(c.body, c.kx, c.version)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if m.LengthForm != c.form || len(m.Exchange) != c.exch || string(m.PSKIdentity) != c.id {
			t.Errorf("%s: %+v", c.name, m)
		}
	}
	for name, c := range map[string]struct {
		body []byte
		kx   KeyExchange
	}{
		"rsa short":  {buildBytes(vec16(enc))[:100], KeyExchangeRSA},
		"ecdhe long": {append(buildBytes(vec8(enc[:65])), 0), KeyExchangeECDHE},
		"ecdhe 0":    {[]byte{0}, KeyExchangeECDHE},
		"tls13":      {buildBytes(vec16(enc)), KeyExchangeTLS13},
	} {
		if _, err := ParseClientKeyExchange(c.body, c.kx, VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSmallMessages(t *testing.T) {
	if err := ParseServerHelloDone(nil); err != nil {
		t.Error(err)
	}
	if err := ParseServerHelloDone([]byte{0}); !errors.Is(err, ErrMalformedMessage) {
		t.Error("non-empty ServerHelloDone accepted")
	}
	nst, err := ParseNewSessionTicket(buildBytes(rawBytes(0, 0, 0x1c, 0x20), vec16([]byte("ticket"))), VersionTLS12)
	if err != nil || nst.Lifetime != 7200 || string(nst.Ticket) != "ticket" || nst.TLS13 {
		t.Errorf("NST 1.2: %v %+v", err, nst)
	}
	nst13, err := ParseNewSessionTicket(buildBytes(rawBytes(0, 0, 0x1c, 0x20, 1, 2, 3, 4), vec8([]byte{0}), vec16([]byte("ticket")), vec16(buildBytes(rawBytes(0, 42), vec16([]byte{0, 0, 0x40, 0})))), VersionTLS13)
	if err != nil || nst13.AgeAdd != 0x01020304 || len(nst13.Nonce) != 1 || len(nst13.Extensions) != 1 || nst13.Extensions[0].Type != ExtEarlyData {
		t.Errorf("NST 1.3: %v %+v", err, nst13)
	}
	if _, err := ParseNewSessionTicket(buildBytes(rawBytes(0, 0, 0, 1), vec16([]byte("t")), rawBytes(0)), VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
		t.Error("NST with trailing byte accepted")
	}
	if vd, err := ParseFinished(make([]byte, 12)); err != nil || len(vd) != 12 {
		t.Error("Finished", err)
	}
	if _, err := ParseFinished(nil); !errors.Is(err, ErrMalformedMessage) {
		t.Error("empty Finished accepted")
	}
	cs, err := ParseCertificateStatus(buildBytes(rawBytes(StatusTypeOCSP), func(b *cryptobyte.Builder) {
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte{0x30, 3, 1, 2, 3}) })
	}))
	if err != nil || cs.StatusType != StatusTypeOCSP || len(cs.Response) != 5 {
		t.Errorf("CertificateStatus: %v %+v", err, cs)
	}
	ee, err := ParseEncryptedExtensions(buildBytes(vec16(buildBytes(rawBytes(0, 16), vec16(alpnExt("h2"))))))
	if err != nil || len(ee) != 1 || ee[0].Type != ExtALPN {
		t.Errorf("EncryptedExtensions: %v %v", err, ee)
	}
	cv, err := ParseCertificateVerify(buildBytes(rawBytes(8, 4), vec16([]byte{1, 2, 3})), VersionTLS12)
	if err != nil || cv.SignatureAlgorithm != 0x0804 || len(cv.Signature) != 3 {
		t.Errorf("CertificateVerify: %v %+v", err, cv)
	}
	cr, err := ParseCertificateRequest(buildBytes(vec8([]byte{1, 64}), vec16(u16list(false, 0x0403, 0x0804)[2:]), vec16(buildBytes(vec16([]byte{0x30, 0}, []byte{0x30, 1, 0})))), VersionTLS12)
	if err != nil || !bytes.Equal(cr.CertificateTypes, []byte{1, 64}) || !slices.Equal(cr.SignatureAlgorithms, []uint16{0x0403, 0x0804}) || len(cr.CertificateAuthorities) != 2 {
		t.Errorf("CertificateRequest 1.2: %v %+v", err, cr)
	}
	cr10, err := ParseCertificateRequest(buildBytes(vec8([]byte{1}), vec16(nil)), VersionTLS10)
	if err != nil || cr10.SignatureAlgorithms != nil {
		t.Errorf("CertificateRequest 1.0: %v %+v", err, cr10)
	}
	cr13, err := ParseCertificateRequest(buildBytes(vec8(nil), vec16(buildBytes(rawBytes(0, 13), vec16(u16list(false, 0x0807))))), VersionTLS13)
	if err != nil || !cr13.TLS13 || !slices.Equal(cr13.SignatureAlgorithms, []uint16{0x0807}) {
		t.Errorf("CertificateRequest 1.3: %v %+v", err, cr13)
	}
}

// selfSigned makes a certificate with every kind of SAN.
func selfSigned(t testing.TB) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://example.org/proxy")
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(0x0102abcdef),
		Subject:        pkix.Name{CommonName: "proxy.example", Organization: []string{"haka"}},
		Issuer:         pkix.Name{CommonName: "proxy.example"},
		NotBefore:      time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:       time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		DNSNames:       []string{"proxy.example", "*.proxy.example"},
		IPAddresses:    []net.IP{net.ParseIP("192.0.2.1"), net.ParseIP("2001:db8::1")},
		EmailAddresses: []string{"ops@proxy.example"},
		URIs:           []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCertificateTLS13FormAndX509(t *testing.T) {
	der := selfSigned(t)
	junk := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	body := buildBytes(vec8([]byte{7}), func(b *cryptobyte.Builder) {
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(der) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(buildBytes(rawBytes(0, 18), vec16([]byte{0, 0}))) })
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(junk) })
			b.AddUint16(0)
		})
	})
	m, err := ParseCertificate(body, VersionTLS13)
	if err != nil {
		t.Fatal(err)
	}
	if !m.TLS13 || !bytes.Equal(m.RequestContext, []byte{7}) || len(m.Entries) != 2 || len(m.Entries[0].Extensions) != 6 {
		t.Fatalf("%+v", m)
	}
	if b, err := m.Marshal(); err != nil || !bytes.Equal(b, body) {
		t.Error("Marshal does not give back the body")
	}
	chain, anomalies := m.Chain()
	c := chain[0]
	if c.Err != nil || c.Subject != "CN=proxy.example,O=haka" || c.Issuer != "CN=proxy.example,O=haka" || c.Serial != "0102abcdef" ||
		!slices.Equal(c.SANs(), []string{"proxy.example", "*.proxy.example", "192.0.2.1", "2001:db8::1", "ops@proxy.example", "spiffe://example.org/proxy"}) ||
		!c.NotBefore.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) || !c.NotAfter.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) ||
		c.SHA256 != sha256.Sum256(der) || c.X509 == nil {
		t.Errorf("leaf %+v", c)
	}
	if chain[1].Err == nil || chain[1].SHA256 != sha256.Sum256(junk) || chain[1].SHA256Hex() != func() string { s := sha256.Sum256(junk); return string(appendHexBytes(nil, s[:])) }() {
		t.Errorf("junk certificate %+v", chain[1])
	}
	if len(anomalies) != 1 || anomalies[0].Name != AnomalyInvalidCertificate || !strings.HasPrefix(anomalies[0].Detail, "certificate 1 of the chain: ") {
		t.Errorf("anomalies %v", anomalies)
	}
	// The same body read as TLS 1.2 is broken.
	if _, err := ParseCertificate(body, VersionTLS12); !errors.Is(err, ErrMalformedMessage) {
		t.Errorf("TLS 1.3 body as TLS 1.2: %v", err)
	}
	// Reuse keeps working.
	if err := m.Unmarshal(buildBytes(func(b *cryptobyte.Builder) { b.AddUint24(0) }), VersionTLS12); err != nil || len(m.Entries) != 0 {
		t.Errorf("empty list: %v %+v", err, m)
	}
}
