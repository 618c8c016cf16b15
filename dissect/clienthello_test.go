package dissect

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

func TestVersionName(t *testing.T) {
	for v, want := range map[uint16]string{
		0x0002: "SSL2.0", 0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1",
		0x0303: "TLS1.2", 0x0304: "TLS1.3", 0x7f0e: "TLS1.3-draft-14", 0x7f1c: "TLS1.3-draft-28",
		0x0000: "0x0000", 0xfefd: "0xfefd", 0x0305: "0x0305",
		0x0200: "SSL2.0", 0x0a0a: "GREASE", 0xfafa: "GREASE", 0x0a1a: "0x0a1a",
	} {
		if got := VersionName(v); got != want {
			t.Errorf("VersionName(%#04x) = %q, want %q", v, got, want)
		}
	}
}

func TestHandshakeTypeNames(t *testing.T) {
	for typ, want := range map[HandshakeType]string{
		MsgClientHello: "client_hello", MsgServerHello: "server_hello", MsgNewSessionTicket: "new_session_ticket",
		MsgEndOfEarlyData: "end_of_early_data", MsgEncryptedExtensions: "encrypted_extensions",
		MsgCertificate: "certificate", MsgServerKeyExchange: "server_key_exchange",
		MsgCertificateRequest: "certificate_request", MsgServerHelloDone: "server_hello_done",
		MsgCertificateVerify: "certificate_verify", MsgClientKeyExchange: "client_key_exchange",
		MsgFinished: "finished", MsgCertificateStatus: "certificate_status", MsgKeyUpdate: "key_update",
		MsgMessageHash: "message_hash", MsgHelloRequest: "hello_request", 7: "unknown_7", 200: "unknown_200",
	} {
		if got := typ.String(); got != want {
			t.Errorf("%d: %q, want %q", typ, got, want)
		}
	}
	err := malformedMsg(MsgClientHello, "cipher_suites")
	if err.Error() != "dissect: client_hello: malformed cipher_suites" || !errors.Is(err, ErrMalformedMessage) {
		t.Errorf("error %q", err)
	}
}

func TestIsGREASE(t *testing.T) {
	n := 0
	for v := 0; v < 1<<16; v++ {
		if IsGREASE(uint16(v)) {
			n++
			if v&0xff != v>>8 || v&0x0f != 0x0a {
				t.Errorf("%#04x is not GREASE", v)
			}
		}
	}
	if n != 16 {
		t.Errorf("%d GREASE values, want 16", n)
	}
}

// helloSpec describes a ClientHello to build.
type helloSpec struct {
	version uint16
	sid     []byte
	ciphers []uint16
	comp    []byte
	noExts  bool
	exts    []Extension
}

func buildHello(s helloSpec) []byte {
	var b cryptobyte.Builder
	if s.version == 0 {
		s.version = VersionTLS12
	}
	b.AddUint16(s.version)
	b.AddBytes(make([]byte, 32))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.sid) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, c := range s.ciphers {
			b.AddUint16(c)
		}
	})
	if s.comp == nil {
		s.comp = []byte{0}
	}
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.comp) })
	if !s.noExts {
		marshalExtensions(&b, s.exts)
	}
	return b.BytesOrPanic()
}

func u16list(prefix8 bool, vs ...uint16) []byte {
	var b cryptobyte.Builder
	add := func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	}
	if prefix8 {
		b.AddUint8LengthPrefixed(add)
	} else {
		b.AddUint16LengthPrefixed(add)
	}
	return b.BytesOrPanic()
}

func sniExt(entries ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range entries {
			b.AddBytes(e)
		}
	})
	return b.BytesOrPanic()
}

func sniEntry(typ uint8, name string) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typ)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
	return b.BytesOrPanic()
}

func alpnExt(protos ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return b.BytesOrPanic()
}

// The JA4 specification's example (FoxIO-LLC/ja4 technical_details/JA4.md
// @d8f731ce0f194896f03261f333040cd8a80a2345, "Example" and "Raw Output"):
// ciphers, extensions in wire order and signature algorithms, giving
// t13d1516h2_8daaf6152771_e5627efa2ab1, and 6d807ffa2a79 for the extension
// part without signature algorithms.
func TestJA4SpecExample(t *testing.T) {
	ciphers := []uint16{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035}
	types := []uint16{0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015}
	sigalgs := []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}
	buildBytes := func(withSigalgs bool, grease bool) *ClientHello {
		var exts []Extension
		cs := ciphers
		if grease {
			cs = append([]uint16{0x3a3a}, ciphers...)
			exts = append(exts, Extension{Type: 0xdada})
		}
		for _, typ := range types {
			e := Extension{Type: typ}
			switch typ {
			case ExtServerName:
				e.Data = sniExt(sniEntry(0, "example.com"))
			case ExtALPN:
				e.Data = alpnExt("h2", "http/1.1")
			case ExtSignatureAlgorithms:
				if !withSigalgs {
					continue
				}
				e.Data = u16list(false, sigalgs...)
			case ExtSupportedVersions:
				e.Data = u16list(true, VersionTLS13, VersionTLS12)
			case ExtSupportedGroups:
				e.Data = u16list(false, 0x001d)
			case ExtECPointFormats:
				e.Data = []byte{1, 0}
			case ExtKeyShare:
				e.Data = []byte{0, 0}
			}
			exts = append(exts, e)
		}
		h, err := ParseClientHello(buildHello(helloSpec{ciphers: cs, exts: exts}))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := buildBytes(true, false)
	if got := h.JA4(); got != "t13d1516h2_8daaf6152771_e5627efa2ab1" {
		t.Errorf("JA4 %s", got)
	}
	const wantRaw = "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
	if got := h.JA4R(); got != wantRaw {
		t.Errorf("JA4_r\n got %s\nwant %s", got, wantRaw)
	}
	// GREASE in ciphers and extensions changes nothing.
	if got := buildBytes(true, true).JA4(); got != "t13d1516h2_8daaf6152771_e5627efa2ab1" {
		t.Errorf("JA4 with GREASE %s", got)
	}
	// Without signature algorithms (and without 000d, which the spec's
	// second example still lists), only the extension hash changes; check
	// it against a hand-built list instead.
	h2 := buildBytes(false, false)
	var want []byte
	want = appendJA4Hash(want, []byte("0005,000a,000b,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"))
	if got := h2.JA4(); got[len(got)-12:] != string(want) {
		t.Errorf("JA4 without sigalgs %s, want c = %s", got, want)
	}
	var spec []byte
	if got := string(appendJA4Hash(spec, []byte("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"))); got != "6d807ffa2a79" {
		t.Errorf("hash of the spec's extension list %s, want 6d807ffa2a79", got)
	}
}

func TestJA4ALPNRule(t *testing.T) {
	// The examples of the JA4 specification's "ALPN Extension Value".
	for _, c := range []struct {
		alpn []byte
		want string
	}{
		{[]byte("h2"), "h2"}, {[]byte("http/1.1"), "h1"}, {[]byte("h"), "hh"},
		{[]byte{0xab}, "ab"}, {[]byte{0xab, 0xcd}, "ad"}, {[]byte{0x30, 0xab}, "3b"},
		{[]byte{0x30, 0x31, 0xab, 0xcd}, "3d"}, {[]byte{0x30, 0xab, 0xcd, 0x31}, "01"},
	} {
		h := &ClientHello{LegacyVersion: VersionTLS12, ALPN: [][]byte{c.alpn}}
		if got := string(h.appendJA4A(nil)[8:]); got != c.want {
			t.Errorf("ALPN % x: %q, want %q", c.alpn, got, c.want)
		}
	}
	h := &ClientHello{LegacyVersion: VersionSSL30}
	if got := h.JA4(); got != "ts3i000000_000000000000_000000000000" {
		t.Errorf("empty SSLv3 hello: %s", got)
	}
}

func TestJA3NoExtensions(t *testing.T) {
	h, err := ParseClientHello(buildHello(helloSpec{version: VersionTLS10, ciphers: []uint16{0x0a0a, 0x002f, 0x0035}, noExts: true}))
	if err != nil {
		t.Fatal(err)
	}
	if h.HasExtensions || len(h.Extensions) != 0 {
		t.Fatal("extensions found in a hello without any")
	}
	ja3, hash := h.JA3()
	if ja3 != "769,47-53,,," || hash != md5Hex([]byte("769,47-53,,,")) {
		t.Errorf("JA3 %q %s", ja3, hash)
	}
}

func TestClientHelloAnomalies(t *testing.T) {
	long := string(bytes.Repeat([]byte{'a'}, maxHostNameLen+1))
	for _, c := range []struct {
		name string
		exts []Extension
		sni  string
		want []string
	}{
		{"clean", []Extension{{ExtServerName, sniExt(sniEntry(0, "a.example"))}}, "a.example", nil},
		{"several names", []Extension{{ExtServerName, sniExt(sniEntry(0, "a.example"), sniEntry(0, "b.example"))}}, "a.example",
			[]string{AnomalySeveralSNINames}},
		{"bad type", []Extension{{ExtServerName, sniExt(sniEntry(1, "a.example"))}}, "", []string{AnomalyInvalidSNIType}},
		{"bad type then host", []Extension{{ExtServerName, sniExt(sniEntry(7, "x"), sniEntry(0, "b.example"))}}, "b.example",
			[]string{AnomalyInvalidSNIType, AnomalySeveralSNINames}},
		{"list overruns", []Extension{{ExtServerName, []byte{0, 9, 0, 0, 3, 'a', 'b', 'c'}}}, "", []string{AnomalyInvalidSNILength}},
		{"entry overruns", []Extension{{ExtServerName, []byte{0, 6, 0, 0, 9, 'a', 'b', 'c'}}}, "", []string{AnomalyInvalidSNILength}},
		{"empty name", []Extension{{ExtServerName, sniExt(sniEntry(0, ""))}}, "", []string{AnomalyInvalidSNILength}},
		{"too long", []Extension{{ExtServerName, sniExt(sniEntry(0, long))}}, "", []string{AnomalyInvalidSNILength}},
		{"empty extension", []Extension{{ExtServerName, nil}}, "", []string{AnomalyInvalidSNILength}},
		{"duplicate sni", []Extension{{ExtServerName, sniExt(sniEntry(0, "a.example"))}, {ExtServerName, sniExt(sniEntry(0, "evil.example"))}},
			"a.example", []string{AnomalyDuplicateExtension}},
		{"duplicate high type", []Extension{{ExtRenegotiationInfo, []byte{0}}, {ExtPadding, nil}, {ExtRenegotiationInfo, []byte{0}}}, "",
			[]string{AnomalyDuplicateExtension}},
		{"psk not last", []Extension{{ExtPreSharedKey, []byte{1}}, {ExtPadding, nil}}, "", []string{AnomalyPSKNotLast}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseClientHello(buildHello(helloSpec{ciphers: []uint16{0x1301}, exts: c.exts}))
			if err != nil {
				t.Fatal(err)
			}
			if h.ServerName != c.sni {
				t.Errorf("SNI %q, want %q", h.ServerName, c.sni)
			}
			var got []string
			for _, a := range h.Anomalies {
				got = append(got, a.Name)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("anomalies %v, want %v", h.Anomalies, c.want)
			}
		})
	}
}

func TestClientHelloDecodedExtensions(t *testing.T) {
	ks := func() []byte {
		var b cryptobyte.Builder
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16(0x11ec)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 1216)) })
			b.AddUint16(0x001d)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
		})
		return b.BytesOrPanic()
	}()
	body := buildHello(helloSpec{sid: make([]byte, 32), ciphers: []uint16{0x1301, 0x1302}, exts: []Extension{
		{ExtServerName, sniExt(sniEntry(0, "example.com"))},
		{ExtALPN, alpnExt("h2", "http/1.1")},
		{ExtSupportedVersions, u16list(true, 0x7a7a, VersionTLS13, VersionTLS12)},
		{ExtSupportedGroups, u16list(false, 0x11ec, 0x001d)},
		{ExtSignatureAlgorithms, u16list(false, 0x0403, 0x0804)},
		{ExtKeyShare, ks},
		{ExtECPointFormats, []byte{1, 0}},
		{ExtHeartbeat, []byte{HeartbeatPeerAllowedToSend}},
		{ExtSessionTicket, []byte{1, 2, 3}},
		{ExtEncryptedClientHello, []byte{0}},
		{ExtEarlyData, nil},
		{ExtCookie, []byte{0, 2, 0xaa, 0xbb}},
		{ExtPreSharedKey, []byte{0}},
	}})
	h, err := ParseClientHello(body)
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "example.com" || !slices.Equal(h.ALPNStrings(), []string{"h2", "http/1.1"}) ||
		!slices.Equal(h.SupportedVersions, []uint16{0x7a7a, VersionTLS13, VersionTLS12}) || h.HighestVersion() != VersionTLS13 ||
		!slices.Equal(h.SupportedGroups, []uint16{0x11ec, 0x001d}) || !slices.Equal(h.SignatureAlgorithms, []uint16{0x0403, 0x0804}) ||
		!slices.Equal(h.KeyShareGroups(), []uint16{0x11ec, 0x001d}) || len(h.KeyShares[0].Data) != 1216 ||
		!bytes.Equal(h.ECPointFormats, []byte{0}) || !h.Heartbeat || h.HeartbeatMode != HeartbeatPeerAllowedToSend ||
		!h.SessionTicket || !bytes.Equal(h.SessionTicketData, []byte{1, 2, 3}) || !h.ECH || !h.EarlyData || !h.PreSharedKey ||
		!bytes.Equal(h.Cookie, []byte{0xaa, 0xbb}) || len(h.Extensions) != 13 || len(h.Anomalies) != 0 {
		t.Errorf("decoded %+v", h)
	}
	// Reusing the ClientHello for another hello forgets the first one.
	if err := h.Unmarshal(buildHello(helloSpec{ciphers: []uint16{0x002f}, noExts: true})); err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "" || h.ALPN != nil && len(h.ALPN) != 0 || h.Heartbeat || len(h.Extensions) != 0 || !slices.Equal(h.CipherSuites, []uint16{0x002f}) {
		t.Errorf("after reuse %+v", h)
	}
	c := h.Clone()
	if !bytes.Equal(c.Raw, h.Raw) || &c.Raw[0] == &h.Raw[0] {
		t.Error("Clone shares or loses the body")
	}
}

func TestClientHelloMalformed(t *testing.T) {
	good := helloSpec{ciphers: []uint16{0x1301}}
	for _, c := range []struct {
		name  string
		body  []byte
		field string
	}{
		{"empty", nil, "client_version"},
		{"short random", buildHello(good)[:20], "random"},
		{"session id 33", buildHello(helloSpec{sid: make([]byte, 33), ciphers: []uint16{1}}), "session_id"},
		{"odd ciphers", func() []byte {
			b := buildHello(helloSpec{ciphers: []uint16{1, 2}, noExts: true})
			b[36]--
			return b[:len(b)-1]
		}(), "cipher_suites"},
		{"trailing byte", append(buildHello(good), 0), "message length (bytes after the extensions)"},
		{"one byte of extensions", append(buildHello(helloSpec{ciphers: []uint16{1}, noExts: true}), 0), "extensions"},
		{"alpn empty name", buildHello(helloSpec{exts: []Extension{{ExtALPN, alpnExt("")}}}), "application_layer_protocol_negotiation extension"},
		{"versions odd", buildHello(helloSpec{exts: []Extension{{ExtSupportedVersions, []byte{3, 3, 4, 3}}}}), "supported_versions extension"},
		{"groups empty", buildHello(helloSpec{exts: []Extension{{ExtSupportedGroups, []byte{0, 0}}}}), "supported_groups extension"},
		{"sigalgs trailing", buildHello(helloSpec{exts: []Extension{{ExtSignatureAlgorithms, append(u16list(false, 0x0403), 0)}}}), "signature_algorithms extension"},
		{"point formats", buildHello(helloSpec{exts: []Extension{{ExtECPointFormats, []byte{0}}}}), "ec_point_formats extension"},
		{"key share empty key", buildHello(helloSpec{exts: []Extension{{ExtKeyShare, []byte{0, 4, 0, 0x1d, 0, 0}}}}), "key_share extension"},
		{"heartbeat two bytes", buildHello(helloSpec{exts: []Extension{{ExtHeartbeat, []byte{1, 1}}}}), "heartbeat extension"},
		{"cookie", buildHello(helloSpec{exts: []Extension{{ExtCookie, []byte{8, 3, 4}}}}), "cookie extension"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseClientHello(c.body)
			var me *MessageError
			if !errors.As(err, &me) || me.Field != c.field || me.Type != MsgClientHello {
				t.Fatalf("got %v, want malformed %s", err, c.field)
			}
		})
	}
}

func TestSSLv2ClientHello(t *testing.T) {
	body := []byte{
		0x03, 0x01, // version TLS 1.0
		0x00, 0x09, 0x00, 0x00, 0x00, 0x10, // 3 specs, no session id, 16-byte challenge
		0x07, 0x00, 0xc0, // SSL_CK_DES_192_EDE3_CBC_WITH_MD5: SSLv2 only
		0x00, 0x00, 0x39, // TLS_DHE_RSA_WITH_AES_256_CBC_SHA
		0x00, 0x00, 0x2f, // TLS_RSA_WITH_AES_128_CBC_SHA
	}
	body = append(body, bytes.Repeat([]byte{0xcc}, 16)...)
	h, err := ParseSSLv2ClientHello(body)
	if err != nil {
		t.Fatal(err)
	}
	if !h.SSLv2 || h.LegacyVersion != VersionTLS10 || !slices.Equal(h.SSLv2CipherSpecs, []uint32{0x0700c0, 0x39, 0x2f}) ||
		!slices.Equal(h.CipherSuites, []uint16{0x39, 0x2f}) || len(h.Random) != 16 || len(h.SessionID) != 0 {
		t.Errorf("%+v", h)
	}
	if ja3, _ := h.JA3(); ja3 != "769,57-47,,," {
		t.Errorf("JA3 %q", ja3)
	}
	if ja4 := h.JA4(); ja4[:10] != "t10i020000" || ja4[24:] != "000000000000" {
		t.Errorf("JA4 %q", ja4)
	}
	if b, err := h.Marshal(); err != nil || !bytes.Equal(b, body) {
		t.Errorf("Marshal %x %v", b, err)
	}
	for _, c := range []struct {
		name  string
		body  []byte
		field string
	}{
		{"spec length", append([]byte{3, 1, 0, 4, 0, 0, 0, 16}, body[8:]...), "SSLv2 cipher_spec_length"},
		{"session id length", append([]byte{3, 1, 0, 9, 0, 5, 0, 16}, body[8:]...), "SSLv2 session_id_length"},
		{"challenge length", append([]byte{3, 1, 0, 9, 0, 0, 0, 8}, body[8:]...), "SSLv2 challenge_length"},
		{"truncated", body[:len(body)-1], "SSLv2 CLIENT-HELLO lengths (longer than the message)"},
		{"trailing", append(slices.Clone(body), 0), "SSLv2 CLIENT-HELLO lengths (bytes after the challenge)"},
	} {
		_, err := ParseSSLv2ClientHello(c.body)
		var me *MessageError
		if !errors.As(err, &me) || me.Field != c.field {
			t.Errorf("%s: got %v, want %s", c.name, err, c.field)
		}
	}
}

func TestAppendUint16Decimal(t *testing.T) {
	for v := 0; v < 1<<16; v++ {
		if got, want := string(appendUint16Decimal(nil, uint16(v))), strconv.Itoa(v); got != want {
			t.Fatalf("%d: %q", v, got)
		}
	}
}

func TestSortSmall(t *testing.T) {
	for n := 0; n < 300; n += 7 {
		vs := make([]uint16, n)
		for i := range vs {
			vs[i] = uint16((i * 40503) ^ (n * 7919))
		}
		want := slices.Sorted(slices.Values(vs))
		sortSmall(vs)
		if !slices.Equal(vs, want) {
			t.Fatalf("n=%d: %v", n, vs)
		}
	}
}
