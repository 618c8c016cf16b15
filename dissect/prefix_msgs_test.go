package dissect

import (
	"bytes"
	"testing"
)

// prefixCase is a valid message body and the parser that accepts it.
type prefixCase struct {
	name  string
	typ   HandshakeType
	body  []byte
	parse func([]byte) error
	// boundary is the length of the one strict prefix that is itself a
	// valid message: a hello cut right after its compression method(s) is
	// a hello without extensions (RFC 5246 7.4.1.2 tells them apart only
	// by the bytes that follow). 0: no strict prefix may parse.
	boundary int
}

// helloBoundary returns where the extensions of a hello start, or 0.
func helloBoundary(body []byte, hasExts bool, exts []Extension) int {
	if !hasExts {
		return 0
	}
	n := 2
	for _, e := range exts {
		n += 4 + len(e.Data)
	}
	return len(body) - n
}

// TestNoStrictPrefixParses checks, for every message type with an internal
// structure, that no strict prefix of a valid body parses: a wrong length
// in a handshake header can never make a truncated message look complete.
// Finished, an unknown key exchange's ClientKeyExchange and SSL 3.0's RSA
// ClientKeyExchange are opaque to the end of the body and are left out:
// every non-empty prefix of them is, by the grammar, a valid message.
func TestNoStrictPrefixParses(t *testing.T) {
	var cases []prefixCase
	addFlight := func(src string, up, down []hsMsg) {
		version, kx := VersionTLS12, KeyExchangeUnknown
		for _, m := range append(append([]hsMsg(nil), down...), up...) {
			m := m
			v, k := version, kx
			c := prefixCase{name: src + "/" + m.typ.String(), typ: m.typ, body: m.body}
			switch m.typ {
			case MsgClientHello:
				h, err := ParseClientHello(m.body)
				if err != nil {
					continue
				}
				c.boundary = helloBoundary(h.Raw, h.HasExtensions, h.Extensions)
				c.parse = func(b []byte) error { _, err := ParseClientHello(b); return err }
			case MsgServerHello:
				h, err := ParseServerHello(m.body)
				if err != nil {
					continue
				}
				version, kx = h.Version(), h.KeyExchange()
				if !isDraftServerHello(h.LegacyVersion) {
					c.boundary = helloBoundary(h.Raw, h.HasExtensions, h.Extensions)
				}
				c.parse = func(b []byte) error { _, err := ParseServerHello(b); return err }
			case MsgCertificate:
				c.parse = func(b []byte) error { _, err := ParseCertificate(b, v); return err }
			case MsgServerKeyExchange:
				c.parse = func(b []byte) error { _, err := ParseServerKeyExchange(b, k, v); return err }
			case MsgCertificateRequest:
				c.parse = func(b []byte) error { _, err := ParseCertificateRequest(b, v); return err }
			case MsgClientKeyExchange:
				if k == KeyExchangeUnknown || v == VersionSSL30 && (k == KeyExchangeRSA || k == KeyExchangeRSAExport) {
					continue
				}
				c.parse = func(b []byte) error { _, err := ParseClientKeyExchange(b, k, v); return err }
			case MsgNewSessionTicket:
				c.parse = func(b []byte) error { _, err := ParseNewSessionTicket(b, v); return err }
			case MsgCertificateStatus:
				c.parse = func(b []byte) error { _, err := ParseCertificateStatus(b); return err }
			case MsgCertificateVerify:
				c.parse = func(b []byte) error { _, err := ParseCertificateVerify(b, v); return err }
			default:
				continue
			}
			if c.parse(c.body) != nil {
				continue // the broken messages of the captures
			}
			cases = append(cases, c)
		}
	}
	for _, r := range recordedHandshakes(t) {
		addFlight(r.name, r.up, r.down)
	}
	for _, name := range []string{"zeek/tls1.2.pcap", "zeek/chrome-1250-tls-x25519-kyber.pcap", "arkime/badcurveball.pcap", "arkime/openssl-ssl3.pcap"} {
		streams := pcapStreams(t, name)
		up, _ := cleartextMessages(t, streams[0].Payload(true))
		down, _ := cleartextMessages(t, streams[0].Payload(false))
		addFlight(name, up, down)
	}
	// Key exchange forms no recording has.
	point, sig := bytes.Repeat([]byte{4}, 65), []byte{1, 2, 3}
	for _, c := range []struct {
		name string
		kx   KeyExchange
		v    uint16
		body []byte
	}{
		{"rsa export", KeyExchangeRSAExport, VersionTLS10, buildBytes(vec16([]byte{0xc3, 1}, []byte{1, 0, 1}), vec16(sig))},
		{"ecdh anon", KeyExchangeECDHAnon, VersionTLS12, buildBytes(rawBytes(CurveTypeNamedCurve, 0, 0x17), vec8(point))},
		{"explicit prime", KeyExchangeECDHE, VersionTLS12, buildBytes(rawBytes(CurveTypeExplicitPrime), vec8([]byte{1}, []byte{2}, []byte{3}, []byte{4}, []byte{5}, []byte{6}), vec8(point), rawBytes(4, 3), vec16(sig))},
		{"psk", KeyExchangePSK, VersionTLS12, buildBytes(vec16([]byte("hint")))},
		{"dhe psk", KeyExchangeDHEPSK, VersionTLS12, buildBytes(vec16([]byte("hint"), []byte{0xff}, []byte{2}, []byte{7}))},
		{"srp", KeyExchangeSRP, VersionTLS10, buildBytes(vec16([]byte{1, 2}, []byte{2}), vec8([]byte("salt")), vec16([]byte{5, 5}), vec16(sig))},
	} {
		c := c
		cases = append(cases, prefixCase{name: "server_key_exchange " + c.name, typ: MsgServerKeyExchange, body: c.body,
			parse: func(b []byte) error { _, err := ParseServerKeyExchange(b, c.kx, c.v); return err }})
	}
	cases = append(cases, prefixCase{name: "certificate_status", typ: MsgCertificateStatus,
		body:  buildBytes(rawBytes(StatusTypeOCSP, 0, 0, 3, 0x30, 1, 0)),
		parse: func(b []byte) error { _, err := ParseCertificateStatus(b); return err }})
	cases = append(cases, prefixCase{name: "new_session_ticket 1.3", typ: MsgNewSessionTicket,
		body:  buildBytes(rawBytes(0, 0, 0x1c, 0x20, 1, 2, 3, 4), vec8([]byte{0}), vec16([]byte("ticket")), vec16(nil)),
		parse: func(b []byte) error { _, err := ParseNewSessionTicket(b, VersionTLS13); return err }})
	for _, c := range cases {
		if err := c.parse(c.body); err != nil {
			t.Fatalf("%s does not parse whole: %v", c.name, err)
		}
	}
	if len(cases) < 10 {
		t.Fatalf("only %d messages to cut", len(cases))
	}
	seen := map[HandshakeType]bool{}
	for _, c := range cases {
		seen[c.typ] = true
		for n := 0; n < len(c.body); n++ {
			err := c.parse(c.body[:n])
			if n == c.boundary && c.boundary != 0 {
				if err != nil {
					t.Errorf("%s: the hello without its extensions (%d bytes) does not parse: %v", c.name, n, err)
				}
				continue
			}
			if err == nil {
				t.Errorf("%s: the %d-byte prefix of the %d-byte body parses", c.name, n, len(c.body))
				break
			}
		}
	}
	for _, typ := range []HandshakeType{MsgClientHello, MsgServerHello, MsgCertificate, MsgServerKeyExchange, MsgClientKeyExchange} {
		if !seen[typ] {
			t.Errorf("no %s was cut", typ)
		}
	}
}
