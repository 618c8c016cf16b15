package dissect

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// clientFlight parses a client's cleartext messages with what the server
// negotiated.
type clientFlight struct {
	hellos []*ClientHello
	cert   *Certificate
	cke    *ClientKeyExchange
	cv     *CertificateVerify
}

func parseClientFlight(t *testing.T, msgs []hsMsg, sh *ServerHello) clientFlight {
	t.Helper()
	var f clientFlight
	version, kx := VersionTLS12, KeyExchangeUnknown
	if sh != nil {
		version, kx = sh.Version(), sh.KeyExchange()
	}
	for _, m := range msgs {
		var err error
		switch m.typ {
		case MsgClientHello:
			var h *ClientHello
			if h, err = ParseClientHello(m.body); err == nil {
				f.hellos = append(f.hellos, h)
			}
		case MsgCertificate:
			f.cert, err = ParseCertificate(m.body, version)
		case MsgClientKeyExchange:
			f.cke, err = ParseClientKeyExchange(m.body, kx, version)
		case MsgCertificateVerify:
			f.cv, err = ParseCertificateVerify(m.body, version)
		default:
			t.Fatalf("unexpected %s from the client", m.typ)
		}
		if err != nil {
			t.Fatalf("%s: %v", m.typ, err)
		}
	}
	return f
}

func TestRecordedHandshakes(t *testing.T) {
	checks := map[string]func(t *testing.T, c clientFlight, s serverFlight, down []hsMsg){
		"go-tls13-x25519mlkem768": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			h := c.hellos[0]
			if h.ServerName != "ecdsa.proxy.test" || !slices.Contains(h.SupportedVersions, VersionTLS13) || h.KeyShares[0].Group != 0x11ec ||
				len(h.KeyShares[0].Data) != 1216 || !slices.Equal(h.ALPNStrings(), []string{"h2", "http/1.1"}) {
				t.Errorf("hello %s %x %x", h.ServerName, h.SupportedVersions, h.KeyShareGroups())
			}
			if s.hello.Version() != VersionTLS13 || s.hello.KeyShareGroup != 0x11ec || len(s.hello.KeyShareData) != 1120 {
				t.Errorf("server hello %s %#x %d", VersionName(s.hello.Version()), s.hello.KeyShareGroup, len(s.hello.KeyShareData))
			}
		},
		"go-tls13-x25519": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if g := c.hellos[0].KeyShareGroups(); !slices.Equal(g, []uint16{0x001d}) || slices.Contains(c.hellos[0].SupportedGroups, 0x11ec) {
				t.Errorf("key shares %x groups %x", g, c.hellos[0].SupportedGroups)
			}
			if s.hello.KeyShareGroup != 0x001d {
				t.Errorf("server share %#x", s.hello.KeyShareGroup)
			}
		},
		"go-tls13-hrr": func(t *testing.T, c clientFlight, _ serverFlight, down []hsMsg) {
			hrr, err := ParseServerHello(down[0].body)
			if err != nil || !hrr.HelloRetryRequest || hrr.KeyShareGroup != 0x0017 {
				t.Fatalf("HRR %v %+v", err, hrr)
			}
			if len(c.hellos) != 2 || !slices.Equal(c.hellos[1].KeyShareGroups(), []uint16{0x0017}) {
				t.Errorf("second hello shares %x", c.hellos[len(c.hellos)-1].KeyShareGroups())
			}
			sh, err := ParseServerHello(down[1].body)
			if err != nil || sh.HelloRetryRequest || sh.KeyShareGroup != 0x0017 {
				t.Errorf("ServerHello %v %+v", err, sh)
			}
		},
		"go-tls12-ecdhe-rsa-clientauth": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if s.ske == nil || s.ske.KeyExchange != KeyExchangeECDHE || s.ske.NamedCurve != 0x001d || len(s.ske.PublicKey) != 32 || !s.ske.HasSignatureAlgorithm {
				t.Errorf("SKE %+v", s.ske)
			}
			if s.certReq == nil || len(s.certReq.SignatureAlgorithms) == 0 || !s.done {
				t.Errorf("CertificateRequest %+v done %v", s.certReq, s.done)
			}
			if c.cert == nil || len(c.cert.Entries) != 0 || c.cke == nil || c.cke.LengthForm != LengthUint8 || len(c.cke.Exchange) != 32 {
				t.Errorf("client cert %+v cke %+v", c.cert, c.cke)
			}
		},
		"go-tls12-rsa-kx": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if s.ske != nil || s.hello.KeyExchange() != KeyExchangeRSA {
				t.Errorf("SKE %+v kx %s", s.ske, s.hello.KeyExchange())
			}
			if c.cke == nil || c.cke.LengthForm != LengthUint16 || len(c.cke.Exchange) != 256 {
				t.Errorf("cke %+v", c.cke)
			}
		},
		"openssl-tls12-dhe-rsa": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if s.ske == nil || s.ske.KeyExchange != KeyExchangeDHE || len(s.ske.DHP) < 256 || len(s.ske.DHG) != 1 || len(s.ske.Signature) == 0 {
				t.Errorf("SKE %+v", s.ske)
			}
			if s.ticket == nil || s.ticket.TLS13 || len(s.ticket.Ticket) == 0 {
				t.Errorf("ticket %+v", s.ticket)
			}
			if c.cke == nil || c.cke.LengthForm != LengthUint16 || len(c.cke.Exchange) != len(s.ske.DHP) {
				t.Errorf("cke %+v", c.cke)
			}
		},
		"openssl-tls12-ecdhe-ecdsa-clientcert": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if s.certReq == nil || len(s.certReq.CertificateAuthorities) != 1 {
				t.Errorf("CertificateRequest %+v", s.certReq)
			}
			chain, _ := c.cert.Chain()
			if len(chain) != 1 || !strings.Contains(chain[0].Subject, "client.proxy.test") {
				t.Errorf("client chain %+v", chain)
			}
			if c.cv == nil || !c.cv.HasSignatureAlgorithm || c.cv.SignatureAlgorithm != 0x0403 {
				t.Errorf("CertificateVerify %+v", c.cv)
			}
		},
		"openssl-tls12-ocsp": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			if s.status == nil || s.status.StatusType != StatusTypeOCSP || s.status.Response[0] != 0x30 {
				t.Errorf("CertificateStatus %+v", s.status)
			}
			if !slices.ContainsFunc(c.hellos[0].Extensions, func(e Extension) bool { return e.Type == ExtStatusRequest }) {
				t.Error("no status_request in the hello")
			}
		},
		"openssl-tls13": func(t *testing.T, c clientFlight, s serverFlight, _ []hsMsg) {
			h := c.hellos[0]
			if h.ServerName != "ecdsa.proxy.test" || !slices.Equal(h.ALPNStrings(), []string{"h2", "http/1.1"}) || h.HighestVersion() != VersionTLS13 {
				t.Errorf("hello %+v", h)
			}
			if s.hello.Version() != VersionTLS13 || s.cert != nil {
				t.Errorf("server hello %+v", s.hello)
			}
		},
	}
	recs := recordedHandshakes(t)
	if len(recs) != len(checks) {
		t.Errorf("%d recordings, %d checks", len(recs), len(checks))
	}
	for _, r := range recs {
		t.Run(r.name, func(t *testing.T) {
			check := checks[r.name]
			if check == nil {
				t.Fatal("no check for this recording")
			}
			// A HelloRetryRequest exchange has two ServerHellos: the
			// flight parser takes the last.
			s, err := parseServerFlight(r.down)
			if err != nil {
				t.Fatal(err)
			}
			c := parseClientFlight(t, r.up, s.hello)
			for _, h := range c.hellos {
				if b, err := h.Marshal(); err != nil || !bytes.Equal(b, h.Raw) {
					t.Error("ClientHello does not re-serialise")
				}
				if len(h.Anomalies) != 0 {
					t.Errorf("anomalies %v", h.Anomalies)
				}
			}
			if b, err := s.hello.Marshal(); err != nil || !bytes.Equal(b, s.hello.Raw) {
				t.Error("ServerHello does not re-serialise")
			}
			if s.cert != nil {
				chain, anomalies := s.cert.Chain()
				if len(anomalies) != 0 || len(chain) != 1 || !strings.HasSuffix(chain[0].Subject, "proxy.test") {
					t.Errorf("chain %+v %v", chain, anomalies)
				}
			}
			check(t, c, s, r.down)
		})
	}
}
