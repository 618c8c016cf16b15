package tlssm

import (
	"bytes"
	"crypto/rand"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// Builders of crafted TLS sessions: the bytes a client and a server would
// send, record by record. The machine checks no cryptography, so the
// encrypted records are random bytes of the right lengths.

// conv is a conversation: reads in order, one per call.
type conv struct {
	reads []read
	at    time.Time
	// off is the stream offset of the next byte of each direction.
	off [2]int64
}

func newConv() *conv { return &conv{at: t0} }

// send appends one read of d made of the given records, and returns the
// stream offset where it starts.
func (c *conv) send(d dissect.Direction, recs ...[]byte) int64 {
	b := bytes.Join(recs, nil)
	start := c.off[d]
	c.reads = append(c.reads, read{d, b, c.at})
	c.off[d] += int64(len(b))
	c.at = c.at.Add(time.Millisecond)
	return start
}

func (c *conv) up(recs ...[]byte) int64   { return c.send(dissect.Up, recs...) }
func (c *conv) down(recs ...[]byte) int64 { return c.send(dissect.Down, recs...) }

// stream returns the bytes of one direction.
func (c *conv) stream(d dissect.Direction) []byte {
	var b []byte
	for _, r := range c.reads {
		if r.dir == d {
			b = append(b, r.data...)
		}
	}
	return b
}

func rec(t dissect.ContentType, body []byte) []byte {
	return recV(t, dissect.VersionTLS12, body)
}

func recV(t dissect.ContentType, v uint16, body []byte) []byte {
	return tlspeer.AppendRecord(nil, uint8(t), v, body)
}

func msg(t dissect.HandshakeType, body []byte) []byte {
	n := len(body)
	return append([]byte{byte(t), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// hs is a handshake record carrying msgs.
func hs(msgs ...[]byte) []byte { return rec(dissect.TypeHandshake, bytes.Join(msgs, nil)) }

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// opaque is an encrypted record of n bytes.
func opaque(t dissect.ContentType, n int) []byte { return rec(t, random(n)) }

func ccs() []byte { return rec(dissect.TypeChangeCipherSpec, []byte{1}) }

func ext(t uint16, data []byte) dissect.Extension { return dissect.Extension{Type: t, Data: data} }

// helloOpts shape a ClientHello.
type helloOpts struct {
	version    uint16 // legacy_version, TLS 1.2 by default
	suites     []uint16
	sessionID  []byte
	ticket     []byte // session_ticket extension data, nil for none
	heartbeat  uint8  // heartbeat mode offered, 0 for none
	tls13      bool   // supported_versions TLS 1.3, 1.2; key_share
	earlyData  bool
	sni        string
	extensions []dissect.Extension
}

func clientHello(o helloOpts) []byte {
	h := dissect.ClientHello{
		LegacyVersion:      dissect.VersionTLS12,
		Random:             random(32),
		SessionID:          o.sessionID,
		CipherSuites:       o.suites,
		CompressionMethods: []byte{0},
		HasExtensions:      true,
	}
	if o.version != 0 {
		h.LegacyVersion = o.version
	}
	if h.CipherSuites == nil {
		h.CipherSuites = []uint16{0xc02f, 0xc030, 0x009c, 0x1301}
	}
	if o.sni != "" {
		var b cryptobyte.Builder
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8(0)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(o.sni)) })
		})
		h.Extensions = append(h.Extensions, ext(dissect.ExtServerName, b.BytesOrPanic()))
	}
	h.Extensions = append(h.Extensions,
		ext(dissect.ExtSupportedGroups, []byte{0, 4, 0, 29, 0, 23}),
		ext(dissect.ExtSignatureAlgorithms, []byte{0, 4, 4, 3, 8, 4}))
	if o.ticket != nil {
		h.Extensions = append(h.Extensions, ext(dissect.ExtSessionTicket, o.ticket))
	}
	if o.heartbeat != 0 {
		h.Extensions = append(h.Extensions, ext(dissect.ExtHeartbeat, []byte{o.heartbeat}))
	}
	if o.tls13 {
		h.Extensions = append(h.Extensions,
			ext(dissect.ExtSupportedVersions, []byte{4, 3, 4, 3, 3}),
			ext(dissect.ExtKeyShare, append([]byte{0, 36, 0, 29, 0, 32}, random(32)...)))
	}
	if o.earlyData {
		h.Extensions = append(h.Extensions, ext(dissect.ExtEarlyData, nil))
	}
	h.Extensions = append(h.Extensions, o.extensions...)
	b, err := h.Marshal()
	if err != nil {
		panic(err)
	}
	return msg(dissect.MsgClientHello, b)
}

// helloRetryRandom is the random of a HelloRetryRequest (RFC 8446 4.1.3).
var helloRetryRandom = []byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// shOpts shape a ServerHello.
type shOpts struct {
	version   uint16 // TLS 1.2 by default
	suite     uint16 // 0xc02f by default
	sessionID []byte
	heartbeat uint8
	tls13     bool
	retry     bool
	ticketExt bool
	etm       bool
}

func serverHello(o shOpts) []byte {
	m := dissect.ServerHello{LegacyVersion: dissect.VersionTLS12, Random: random(32), SessionID: o.sessionID,
		CipherSuite: 0xc02f, HasExtensions: true}
	if o.version != 0 {
		m.LegacyVersion = o.version
	}
	if o.suite != 0 {
		m.CipherSuite = o.suite
	}
	m.Extensions = append(m.Extensions, ext(dissect.ExtRenegotiationInfo, []byte{0}))
	if o.heartbeat != 0 {
		m.Extensions = append(m.Extensions, ext(dissect.ExtHeartbeat, []byte{o.heartbeat}))
	}
	if o.ticketExt {
		m.Extensions = append(m.Extensions, ext(dissect.ExtSessionTicket, nil))
	}
	if o.etm {
		m.Extensions = append(m.Extensions, ext(dissect.ExtEncryptThenMAC, nil))
	}
	if o.tls13 || o.retry {
		m.CipherSuite = 0x1301
		m.Extensions = []dissect.Extension{ext(dissect.ExtSupportedVersions, []byte{3, 4})}
		if o.retry {
			m.Random = helloRetryRandom
			m.Extensions = append(m.Extensions, ext(dissect.ExtKeyShare, []byte{0, 23}))
		} else {
			m.Extensions = append(m.Extensions, ext(dissect.ExtKeyShare, append([]byte{0, 29, 0, 32}, random(32)...)))
		}
	}
	b, err := m.Marshal()
	if err != nil {
		panic(err)
	}
	return msg(dissect.MsgServerHello, b)
}

var testCert = sync.OnceValue(func() []byte {
	c, _, err := tlspeer.NewCert("haka.test")
	if err != nil {
		panic(err)
	}
	return c.Certificate[0]
})

// certificate is a Certificate message (TLS 1.2 form) of n copies of the
// test certificate; n = 0 is the empty list of a client without one.
func certificate(n int) []byte {
	var m dissect.Certificate
	for range n {
		m.Entries = append(m.Entries, dissect.CertificateEntry{DER: testCert()})
	}
	b, err := m.Marshal()
	if err != nil {
		panic(err)
	}
	return msg(dissect.MsgCertificate, b)
}

// ecdheKeyExchange is a ServerKeyExchange for ECDHE on x25519, signed
// with ecdsa_secp256r1_sha256 (TLS 1.2).
func ecdheKeyExchange() []byte {
	b := append([]byte{3, 0, 29, 32}, random(32)...)
	b = append(b, 4, 3, 0, 64)
	return msg(dissect.MsgServerKeyExchange, append(b, random(64)...))
}

func serverHelloDone() []byte { return msg(dissect.MsgServerHelloDone, nil) }

func ecdheClientKeyExchange() []byte {
	return msg(dissect.MsgClientKeyExchange, append([]byte{32}, random(32)...))
}

func certificateRequest() []byte {
	// certificate_types: ecdsa_sign; signature algorithms; no authorities.
	return msg(dissect.MsgCertificateRequest, []byte{1, 64, 0, 2, 4, 3, 0, 0})
}

func certificateVerify() []byte {
	return msg(dissect.MsgCertificateVerify, append([]byte{4, 3, 0, 64}, random(64)...))
}

func newSessionTicket() []byte {
	return msg(dissect.MsgNewSessionTicket, append([]byte{0, 0, 1, 0, 0, 32}, random(32)...))
}

// finished is an encrypted Finished under AES-GCM: explicit nonce, 16
// bytes of verify_data with its header, tag.
func finished() []byte { return opaque(dissect.TypeHandshake, 8+16+16) }

// appData is an application_data record of n bytes.
func appData(n int) []byte { return opaque(dissect.TypeApplicationData, n) }

// gcmHeartbeat is the length of an encrypted heartbeat under AES-GCM with a
// payload of n bytes and the 16 bytes of padding.
func gcmHeartbeat(n int) int { return 8 + 3 + n + 16 + 16 }

// cleartextHeartbeat is a heartbeat record declaring payloadLength and
// carrying payload bytes of payload and padding bytes of padding.
func cleartextHeartbeat(typ uint8, payloadLength, payload, padding int) []byte {
	b := []byte{typ, byte(payloadLength >> 8), byte(payloadLength)}
	b = append(b, random(payload)...)
	b = append(b, make([]byte, padding)...)
	return rec(dissect.TypeHeartbeat, b)
}

// tls12 is a full TLS 1.2 ECDHE handshake with the heartbeat extension
// negotiated (peer_allowed_to_send both ways), ending established.
func tls12(c *conv) {
	c.up(hs(clientHello(helloOpts{heartbeat: 1, sni: "haka.test"})))
	c.down(hs(serverHello(shOpts{heartbeat: 1}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
	c.up(hs(ecdheClientKeyExchange()), ccs(), finished())
	c.down(ccs(), finished())
}
