package dissect

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// Expected fingerprints come from other projects' published test
// expectations for the same captures:
//
//   - Arkime: tests/pcap/<name>.test of arkime/arkime (ja3, ja3string,
//     ja3s, ja3sstring, ja4, ja4_r), at the commits cited per case.
//   - Suricata: tests/<name>/test.yaml of OISF/suricata-verify (tls.ja3.*).
//
// The MANIFEST of the shared captures gives the SNI and versions.
type helloCase struct {
	capture string
	stream  int
	nth     int // which ClientHello of the stream (0: the first)

	sni      string
	legacy   uint16
	versions []uint16
	alpn     []string
	sslv2    bool
	ech      bool

	ja3, ja3Hash, ja4, ja4r string
	ja3s, ja3sHash          string
}

var helloCases = []helloCase{
	{
		// arkime/arkime tests/pcap/curl-enabled-tls13.test @038545b4a97eb214df3eed69b73cc7e9fd65b45a
		capture:  "arkime/curl-enabled-tls13.pcap",
		sni:      "enabled.tls13.com",
		legacy:   VersionTLS12,
		versions: []uint16{VersionTLS13},
		alpn:     []string{"h2", "http/1.1"},
		ja3:      "771,4866-4867-4865-255,0-11-10-13172-16-22-23-49-13-43-45-51-21,29-23-30-25-24,0-1-2",
		ja3Hash:  "eeadfd2f446a45ded96f804720a0c75b",
		ja4:      "t13d0413h2_16476d049b0b_ffceb19bae65",
		ja4r:     "t13d0413h2_00ff,1301,1302,1303_000a,000b,000d,0015,0016,0017,002b,002d,0031,0033,3374_0403,0503,0603,0807,0808,0809,080a,080b,0804,0805,0806,0401,0501,0601",
		ja3s:     "771,4866,51-43",
		ja3sHash: "907bf3ecef1c987c889946b737b43de8",
	},
	{
		// arkime/arkime tests/pcap/tls-split-client-hello.test @01455b2bca396894bc76d54c25a36ad687a50f11
		capture:  "arkime/tls-split-client-hello.pcap",
		sni:      "clients2.google.com",
		legacy:   VersionTLS12,
		versions: []uint16{0x9a9a, VersionTLS13, VersionTLS12},
		alpn:     []string{"h2", "http/1.1"},
		ech:      true,
		ja3:      "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,13-18-45-27-65037-43-51-0-11-35-5-23-16-10-65281-17513,4588-29-23-24,0",
		ja3Hash:  "35708a08e7be9f7aa5bce7f2d5c1cecb",
		ja4:      "t13d1516h2_8daaf6152771_02713d6af862",
		ja4r:     "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,4469,fe0d,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		ja3s:     "771,4865,51-43",
		ja3sHash: "eb1d94daa7e0344597e756a1fb6e7054",
	},
	{
		// arkime/arkime tests/pcap/badcurveball.test @12861fdb73d38d546a90a0717ff5e41edec3a28f;
		// the JA4 reference implementation prints the same JA4 for this
		// capture (FoxIO-LLC/ja4 rust/ja4/src/snapshots/ja4__insta@badcurveball.pcap.snap
		// @44569a1fc8cf288d8aa35e2e7436a53f9a680460).
		capture:  "arkime/badcurveball.pcap",
		sni:      "bad.curveballtest.com",
		legacy:   VersionTLS12,
		alpn:     []string{"H2", "http/1.1"}, // upper case on the wire; JA4 prints "h2"
		ja3:      "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53-10,0-23-65281-10-11-35-16-5-13-18-51-45-43-27-21,29-23-24,0",
		ja3Hash:  "66918128f1b9b03303d77c6f2eefd128",
		ja4:      "t13d1615h2_46e7e9700bed_45f260be83e2",
		ja4r:     "t13d1615h2_000a,002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,ff01_0403,0804,0401,0503,0805,0501,0806,0601,0201",
		ja3s:     "771,49195,0-65281-11-35-16",
		ja3sHash: "2d1eb5817ece335c24904f516ad5da12",
	},
	{
		// OISF/suricata-verify tests/tls/tls13-draft14/test.yaml @64b4675d8d1edd5949d4128ee083b113b07af8b0:
		// a draft-14 hello puts 0x0304 in client_version itself.
		capture: "suricata-verify/tls/tls13-draft14/tls13_draft14.pcap",
		sni:     "tls13.crypto.mozilla.org",
		legacy:  VersionTLS13,
		ja3:     "772,49195-49199-52393-52392-49196-49200-49162-49161-49171-49172-51-57-47-53-10,0-23-65281-10-11-35-13172-16-5-65282-40-13,23-24-25-256-257-258-259-260,0",
		ja3Hash: "65825469c473e48f3ee2571129256ab0",
	},
	{
		// OISF/suricata-verify tests/tls-duplicate-hello/test.yaml @bc401e6a431852a7f060a6fc2db5f7ae79f1863b
		// (the first of the two hellos; stream 0 is a refused connection).
		capture:  "suricata-verify/tls-duplicate-hello/input.pcap",
		stream:   1,
		sni:      "localhost",
		legacy:   VersionTLS12,
		versions: []uint16{VersionTLS13, VersionTLS12, VersionTLS11, VersionTLS10},
		ja3:      "771,4866-4867-4865-4868-49196-52393-49325-49162-49195-49324-49161-49200-52392-49172-49199-49171-157-49309-53-156-49308-47-159-52394-49311-57-158-49310-51,5-10-11-13-22-23-35-51-43-65281-0-45,23,0",
	},
	{
		capture:  "zeek/chrome-1250-tls-x25519-kyber.pcap",
		sni:      "lh3.google.com",
		legacy:   VersionTLS12,
		versions: []uint16{0x8a8a, VersionTLS13, VersionTLS12},
		alpn:     []string{"h2", "http/1.1"},
		ech:      true,
	},
	{capture: "zeek/tls13-ech.pcap", stream: 1, sni: "cloudflare-ech.com", legacy: VersionTLS12, ech: true},
	{capture: "zeek/tls-fragmented-handshake.pcap.gz", sni: "104.236.167.107", legacy: VersionTLS12},
	{capture: "zeek/tls13_wolfssl.pcap", legacy: VersionTLS12, versions: []uint16{VersionTLS13, VersionTLS12, VersionTLS11}},
	{capture: "zeek/hrr.pcap", legacy: VersionTLS12, versions: []uint16{VersionTLS13}},
	{capture: "zeek/hrr.pcap", nth: 1, legacy: VersionTLS12, versions: []uint16{VersionTLS13}},
	{capture: "zeek/tls1_1.pcap", legacy: VersionTLS11},
	{capture: "zeek/tls1.2.pcap", legacy: VersionTLS12},
	{capture: "zeek/signed_certificate_timestamp_tls1_0.pcap", legacy: VersionTLS10},
	{capture: "suricata-verify/tls/tls-client-hello-frag-01/dump_mtu300.pcap", sni: "www.google.com", legacy: VersionTLS12},
	{capture: "suricata-verify/bug-7264-tcp-3whs-ack-data-tls-01/input.pcap", sni: "raw.githubusercontent.com", legacy: VersionTLS12},
	{capture: "arkime/openssl-ssl3.pcap", legacy: VersionSSL30},
	{capture: "arkime/openssl-tls1.pcap", legacy: VersionTLS10},
	{capture: "arkime/openssl-tls1_2-tls1.pcap", legacy: VersionTLS12},
	// SSLv2-format hellos.
	{capture: "zeek/ssl-v2.pcap", legacy: VersionSSL20, sslv2: true},
	{capture: "arkime/https2-301-get.pcap", legacy: VersionTLS10, sslv2: true},
	{capture: "suricata-verify/sslv2-tls-upgrade-01/ssl-v2-s1.pcap", legacy: VersionTLS10, sslv2: true},
}

// clientHelloFromCapture returns the nth ClientHello of the client's
// stream (several hellos: a HelloRetryRequest exchange, or a duplicate).
func clientHelloFromCapture(t *testing.T, c helloCase) *ClientHello {
	t.Helper()
	msgs, v2 := pcapHandshakeMsgs(t, c.capture, c.stream, true)
	if c.sslv2 {
		if v2 == nil {
			t.Fatal("no SSLv2 CLIENT-HELLO at the start of the stream")
		}
		h, err := ParseSSLv2ClientHello(v2)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	streams := pcapStreams(t, c.capture)
	hellos := clientHellosOfStream(t, streams[c.stream].Payload(true))
	if c.nth >= len(hellos) {
		t.Fatalf("%d ClientHellos in the stream, want #%d (first messages: %v)", len(hellos), c.nth, msgs)
	}
	h, err := ParseClientHello(hellos[c.nth])
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// clientHellosOfStream returns the bodies of every ClientHello in the
// handshake records of a client stream, whatever comes between them.
func clientHellosOfStream(t testing.TB, stream []byte) [][]byte {
	var hs []byte
	for off := 0; off+5 <= len(stream); {
		n := int(stream[off+3])<<8 | int(stream[off+4])
		if off+5+n > len(stream) {
			break
		}
		if stream[off] == 22 {
			hs = append(hs, stream[off+5:off+5+n]...)
		}
		off += 5 + n
	}
	var out [][]byte
	for len(hs) >= 4 {
		n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if 4+n > len(hs) {
			break
		}
		if hs[0] == byte(MsgClientHello) {
			out = append(out, hs[4:4+n])
			hs = hs[4+n:]
			continue
		}
		// Encrypted handshake records after the first flight do not split
		// into messages; nothing after them is a ClientHello.
		if !HandshakeType(hs[0]).Known() {
			break
		}
		hs = hs[4+n:]
	}
	return out
}

func TestClientHelloFromCaptures(t *testing.T) {
	for _, c := range helloCases {
		t.Run(strings.ReplaceAll(c.capture, "/", "_")+"#"+string(rune('0'+c.nth)), func(t *testing.T) {
			h := clientHelloFromCapture(t, c)
			if h.ServerName != c.sni {
				t.Errorf("SNI %q, want %q", h.ServerName, c.sni)
			}
			if h.LegacyVersion != c.legacy {
				t.Errorf("version %s, want %s", VersionName(h.LegacyVersion), VersionName(c.legacy))
			}
			if c.versions != nil && !slices.Equal(h.SupportedVersions, c.versions) {
				t.Errorf("supported_versions %x, want %x", h.SupportedVersions, c.versions)
			}
			if c.alpn != nil && !slices.Equal(h.ALPNStrings(), c.alpn) {
				t.Errorf("ALPN %q, want %q", h.ALPNStrings(), c.alpn)
			}
			if h.SSLv2 != c.sslv2 || h.ECH != c.ech {
				t.Errorf("sslv2 %v ech %v, want %v %v", h.SSLv2, h.ECH, c.sslv2, c.ech)
			}
			if len(h.Anomalies) != 0 {
				t.Errorf("anomalies %v", h.Anomalies)
			}
			ja3, ja3Hash := h.JA3()
			if c.ja3 != "" && ja3 != c.ja3 {
				t.Errorf("JA3\n got %s\nwant %s", ja3, c.ja3)
			}
			if c.ja3Hash != "" && ja3Hash != c.ja3Hash {
				t.Errorf("JA3 hash %s, want %s", ja3Hash, c.ja3Hash)
			}
			if c.ja4 != "" && h.JA4() != c.ja4 {
				t.Errorf("JA4 %s, want %s", h.JA4(), c.ja4)
			}
			if c.ja4r != "" && h.JA4R() != c.ja4r {
				t.Errorf("JA4_r\n got %s\nwant %s", h.JA4R(), c.ja4r)
			}
			if fp := h.Fingerprint(); fp.JA3 != ja3 || fp.JA3Hash != ja3Hash || fp.JA4 != h.JA4() {
				t.Errorf("Fingerprint() %+v disagrees with JA3()/JA4()", fp)
			}
			if b, err := h.Marshal(); err != nil || string(b) != string(h.Raw) {
				t.Errorf("Marshal does not give back the body (err %v)", err)
			}
			t.Logf("%s ja3=%s ja4=%s", h.ServerName, ja3Hash, h.JA4())
			if c.ja3s == "" {
				return
			}
			down, _ := pcapHandshakeMsgs(t, c.capture, c.stream, false)
			shMsg, ok := findMsg(down, MsgServerHello)
			if !ok {
				t.Fatal("no ServerHello")
			}
			sh, err := ParseServerHello(shMsg.body)
			if err != nil {
				t.Fatal(err)
			}
			ja3s, ja3sHash := sh.JA3S()
			if ja3s != c.ja3s || ja3sHash != c.ja3sHash {
				t.Errorf("JA3S %s %s, want %s %s", ja3s, ja3sHash, c.ja3s, c.ja3sHash)
			}
		})
	}
}

// The second hello of suricata-verify/tls-duplicate-hello was crafted from
// the first by turning supported_versions (43) into cookie (44): its 9 bytes
// then read as a cookie of 0x0803 = 2051 bytes, the "Vector length 2051 is
// too large" tshark reports.
func TestDuplicateHelloSecondIsMalformed(t *testing.T) {
	streams := pcapStreams(t, "suricata-verify/tls-duplicate-hello/input.pcap")
	hellos := clientHellosOfStream(t, streams[1].Payload(true))
	if len(hellos) != 2 {
		t.Fatalf("%d hellos, want 2", len(hellos))
	}
	if _, err := ParseClientHello(hellos[0]); err != nil {
		t.Fatalf("first hello: %v", err)
	}
	_, err := ParseClientHello(hellos[1])
	var me *MessageError
	if !errors.As(err, &me) || !errors.Is(err, ErrMalformedMessage) || me.Field != "cookie extension" {
		t.Fatalf("second hello: got %v, want a malformed cookie extension", err)
	}
}

func TestChromeKyberKeyShare(t *testing.T) {
	h := clientHelloFromCapture(t, helloCase{capture: "zeek/chrome-1250-tls-x25519-kyber.pcap"})
	// Chrome 125: GREASE, X25519Kyber768Draft00 (0x6399, 1216 bytes), X25519.
	groups := h.KeyShareGroups()
	if len(groups) != 3 || !IsGREASE(groups[0]) || groups[1] != 0x6399 || groups[2] != 0x001d {
		t.Fatalf("key_share groups %x", groups)
	}
	if n := len(h.KeyShares[1].Data); n != 32+1184 {
		t.Errorf("X25519Kyber768 share of %d bytes, want 1216", n)
	}
	if len(h.Raw) < 1700 {
		t.Errorf("hello of %d bytes, want the ~1.7 KB post-quantum hello", len(h.Raw))
	}
}

func TestHelloRetryRequestFromCapture(t *testing.T) {
	down, _ := pcapHandshakeMsgs(t, "zeek/hrr.pcap", 0, false)
	m, ok := findMsg(down, MsgServerHello)
	if !ok {
		t.Fatal("no ServerHello")
	}
	sh, err := ParseServerHello(m.body)
	if err != nil {
		t.Fatal(err)
	}
	if !sh.HelloRetryRequest || sh.Version() != VersionTLS13 || sh.KeyShareGroup == 0 {
		t.Fatalf("HRR %v version %s group %#x", sh.HelloRetryRequest, VersionName(sh.Version()), sh.KeyShareGroup)
	}
	// The second hello answers with a share for the group asked for.
	streams := pcapStreams(t, "zeek/hrr.pcap")
	hellos := clientHellosOfStream(t, streams[0].Payload(true))
	if len(hellos) != 2 {
		t.Fatalf("%d hellos, want 2", len(hellos))
	}
	h2, err := ParseClientHello(hellos[1])
	if err != nil {
		t.Fatal(err)
	}
	if g := h2.KeyShareGroups(); len(g) != 1 || g[0] != sh.KeyShareGroup {
		t.Errorf("second hello shares %x, HRR asked for %#x", g, sh.KeyShareGroup)
	}
}

// serverFlightCase checks the cleartext server flight of a capture.
type serverFlightCase struct {
	capture string
	stream  int
	version uint16
	cipher  uint16
	certs   int
	check   func(t *testing.T, chain []CertInfo)
}

var serverFlightCases = []serverFlightCase{
	{capture: "zeek/tls1.2.pcap", version: VersionTLS12, certs: -1},
	{capture: "zeek/tls1_1.pcap", version: VersionTLS11, certs: -1},
	{capture: "zeek/heartbleed.pcap", version: VersionTLS12, certs: -1},
	{capture: "arkime/openssl-ssl3.pcap", version: VersionSSL30, certs: -1},
	{capture: "arkime/openssl-tls1_2-tls1.pcap", version: VersionTLS10, certs: -1},
	{capture: "zeek/signed_certificate_timestamp_tls1_0.pcap", version: VersionTLS10, certs: -1},
	{capture: "zeek/tls13_wolfssl.pcap", version: VersionTLS13, certs: 0},
	{capture: "zeek/chrome-1250-tls-x25519-kyber.pcap", version: VersionTLS13, certs: 0},
	{capture: "suricata-verify/tls/tls13-draft14/tls13_draft14.pcap", version: VersionTLS13, certs: 0},
	{
		// arkime/arkime tests/pcap/badcurveball.test @12861fdb73d38d546a90a0717ff5e41edec3a28f
		capture: "arkime/badcurveball.pcap", version: VersionTLS12, cipher: 0xc02b, certs: 2,
		check: func(t *testing.T, chain []CertInfo) {
			leaf := chain[0]
			if leaf.Err != nil {
				t.Fatal(leaf.Err)
			}
			if leaf.Serial != "5ecb7cee8ca206bf9ec00728889ad99f4362cfd9" || !slices.Equal(leaf.SANs(), []string{"bad.curveballtest.com"}) ||
				leaf.NotBefore.UnixMilli() != 1521875742000 || leaf.NotAfter.UnixMilli() != 1584947742000 {
				t.Errorf("leaf %s %v %v %v", leaf.Serial, leaf.SANs(), leaf.NotBefore, leaf.NotAfter)
			}
			// The CA certificate carries explicit curve parameters (the
			// CurveBall attack), which crypto/x509 refuses: it still has
			// its digest, and an anomaly.
			if chain[1].Err == nil || chain[1].SHA256 == [32]byte{} {
				t.Errorf("CurveBall CA: err %v", chain[1].Err)
			}
		},
	},
	{
		// arkime/arkime tests/pcap/https2-301-get.test @056b3ac87e4dd45bf0db2ae367d0472d05a93dc8
		capture: "arkime/https2-301-get.pcap", version: VersionTLS10, cipher: 0x0005, certs: 2,
		check: func(t *testing.T, chain []CertInfo) {
			leaf := chain[0]
			if leaf.Serial != "047fbe2e4bde0084d2caf8e3ecfe7058" || !slices.Equal(leaf.DNSNames, []string{"github.com", "www.github.com"}) ||
				leaf.NotBefore.UnixMilli() != 1370822400000 || leaf.NotAfter.UnixMilli() != 1441195200000 ||
				!strings.Contains(leaf.Subject, "CN=github.com") || !strings.Contains(leaf.Issuer, "CN=DigiCert High Assurance EV CA-1") {
				t.Errorf("leaf %+v", leaf)
			}
			if chain[1].Serial != "0337b928347c60a6aec5adb1217f3860" {
				t.Errorf("intermediate serial %s", chain[1].Serial)
			}
		},
	},
	{
		// MANIFEST: a Certificate of about 340 KB with 10,000 SANs, in 21
		// records.
		capture: "zeek/tls-fragmented-handshake.pcap.gz", version: VersionTLS12, certs: -1,
		check: func(t *testing.T, chain []CertInfo) {
			if chain[0].Err != nil {
				t.Fatal(chain[0].Err)
			}
			if n := len(chain[0].SANs()); n < 10000 {
				t.Errorf("leaf has %d SANs, want 10,000 or more", n)
			}
			if chain[0].NotAfter.Before(chain[0].NotBefore) || chain[0].NotBefore.Before(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("validity %v - %v", chain[0].NotBefore, chain[0].NotAfter)
			}
		},
	},
}

func TestServerFlightFromCaptures(t *testing.T) {
	for _, c := range serverFlightCases {
		t.Run(strings.ReplaceAll(c.capture, "/", "_"), func(t *testing.T) {
			down, _ := pcapHandshakeMsgs(t, c.capture, c.stream, false)
			f, err := parseServerFlight(down)
			if err != nil {
				t.Fatal(err)
			}
			if f.hello == nil {
				t.Fatal("no ServerHello")
			}
			if v := f.hello.Version(); v != c.version {
				t.Errorf("version %s, want %s", VersionName(v), VersionName(c.version))
			}
			if c.cipher != 0 && f.hello.CipherSuite != c.cipher {
				t.Errorf("cipher %#04x, want %#04x", f.hello.CipherSuite, c.cipher)
			}
			if c.certs == 0 {
				if f.cert != nil {
					t.Error("a cleartext Certificate in a TLS 1.3 flight")
				}
				return
			}
			if f.cert == nil {
				t.Fatal("no Certificate")
			}
			if c.certs > 0 && len(f.cert.Entries) != c.certs {
				t.Errorf("%d certificates, want %d", len(f.cert.Entries), c.certs)
			}
			chain, anomalies := f.cert.Chain()
			for i, ci := range chain {
				if ci.SHA256 != f.cert.Entries[i].SHA256() {
					t.Errorf("certificate %d: digest differs", i)
				}
			}
			nbad := 0
			for _, ci := range chain {
				if ci.Err != nil {
					nbad++
				}
			}
			if len(anomalies) != nbad {
				t.Errorf("%d anomalies for %d rejected certificates", len(anomalies), nbad)
			}
			if c.check != nil {
				c.check(t, chain)
			}
		})
	}
}

// The MANIFEST: tls1.2-protocol-violation.pcap is tls1.2.pcap with one
// length inside the server Certificate corrupted.
func TestCertificateBrokenLength(t *testing.T) {
	down, _ := pcapHandshakeMsgs(t, "zeek/tls1.2-protocol-violation.pcap", 0, false)
	m, ok := findMsg(down, MsgCertificate)
	if !ok {
		t.Fatal("no Certificate message")
	}
	_, err := ParseCertificate(m.body, VersionTLS12)
	var me *MessageError
	if !errors.As(err, &me) || me.Type != MsgCertificate || !strings.Contains(me.Field, "certificate_list") {
		t.Fatalf("got %v, want a malformed certificate_list", err)
	}
	// The well-formed twin parses.
	down, _ = pcapHandshakeMsgs(t, "zeek/tls1.2.pcap", 0, false)
	m, _ = findMsg(down, MsgCertificate)
	if _, err := ParseCertificate(m.body, VersionTLS12); err != nil {
		t.Fatalf("tls1.2.pcap: %v", err)
	}
}
