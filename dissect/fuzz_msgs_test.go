package dissect

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// seedCaptures are the captures whose hellos and server flights seed the
// fuzz targets.
var seedCaptures = []string{
	"zeek/chrome-1250-tls-x25519-kyber.pcap",
	"zeek/tls13-ech.pcap",
	"zeek/hrr.pcap",
	"zeek/tls1.2.pcap",
	"zeek/tls1.2-protocol-violation.pcap",
	"zeek/tls13_wolfssl.pcap",
	"zeek/signed_certificate_timestamp_tls1_0.pcap",
	"zeek/ssl-v2.pcap",
	"arkime/curl-enabled-tls13.pcap",
	"arkime/tls-split-client-hello.pcap",
	"arkime/badcurveball.pcap",
	"arkime/openssl-ssl3.pcap",
	"arkime/https2-301-get.pcap",
	"suricata-verify/tls/tls13-draft14/tls13_draft14.pcap",
	"suricata-verify/tls-duplicate-hello/input.pcap",
}

// seedStreams reads the seed captures that are present; fuzzing without
// the shared set still runs on the recorded handshakes and the corpus.
func seedStreams() [][2][]byte {
	var out [][2][]byte
	for _, name := range seedCaptures {
		p, err := pcaptest.Path(name)
		if err != nil {
			continue
		}
		streams, _ := pcaptest.Read(p)
		for _, s := range streams {
			out = append(out, [2][]byte{s.Payload(true), s.Payload(false)})
		}
	}
	return out
}

func FuzzClientHello(f *testing.F) {
	for _, s := range seedStreams() {
		for _, h := range clientHellosOfStream(f, s[0]) {
			f.Add(h)
		}
		if _, v2 := cleartextMessages(f, s[0]); v2 != nil {
			f.Add(v2)
		}
	}
	for _, r := range recordedHandshakes(f) {
		for _, m := range r.up {
			if m.typ == MsgClientHello {
				f.Add(m.body)
			}
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var h ClientHello
		if err := h.Unmarshal(body); err == nil {
			checkClientHello(t, &h, body)
		}
		if err := h.UnmarshalSSLv2(body); err == nil {
			checkClientHello(t, &h, body)
		}
	})
}

// checkClientHello holds the invariants of a successful parse: it
// re-serialises to its input, every decoded list is bounded by the input
// (so is what was allocated for it), and the fingerprints are well formed.
func checkClientHello(t *testing.T, h *ClientHello, body []byte) {
	t.Helper()
	b, err := h.Marshal()
	if err != nil || !bytes.Equal(b, body) {
		t.Fatalf("Marshal: %v\n got %x\nwant %x", err, b, body)
	}
	n := len(body)
	if 2*len(h.CipherSuites) > n || 3*len(h.SSLv2CipherSpecs) > n || 4*len(h.Extensions) > n ||
		2*len(h.ALPN) > n || 2*len(h.SupportedVersions) > n || 2*len(h.SupportedGroups) > n ||
		2*len(h.SignatureAlgorithms) > n || 5*len(h.KeyShares) > n || len(h.Anomalies) > n {
		t.Fatalf("decoded lists larger than the %d-byte input allows", n)
	}
	if h.ServerName != "" && !bytes.Contains(body, []byte(h.ServerName)) {
		t.Fatalf("SNI %q is not in the body", h.ServerName)
	}
	ja3, hash := h.JA3()
	if len(hash) != 32 || len(ja3) < 4 {
		t.Fatalf("JA3 %q %q", ja3, hash)
	}
	if ja4 := h.JA4(); len(ja4) != 36 || ja4[10] != '_' || ja4[23] != '_' {
		t.Fatalf("JA4 %q", ja4)
	}
}

// appendMsg appends a handshake message with its 4-byte header.
func appendMsg(dst []byte, m hsMsg) []byte { return append(dst, m.wire()...) }

func FuzzServerFlight(f *testing.F) {
	for _, s := range seedStreams() {
		msgs, _ := cleartextMessages(f, s[1])
		var flight []byte
		for _, m := range msgs {
			flight = appendMsg(flight, m)
		}
		if len(flight) > 0 && len(flight) < 64<<10 {
			f.Add(flight)
		}
	}
	for _, r := range recordedHandshakes(f) {
		var flight []byte
		for _, m := range r.down {
			flight = appendMsg(flight, m)
		}
		f.Add(flight)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs := splitHandshakeMsgs(t, data)
		fl, err := parseServerFlight(msgs)
		if fl.hello != nil {
			b, merr := fl.hello.Marshal()
			if merr != nil || !bytes.Contains(data, b) {
				t.Fatalf("ServerHello does not re-serialise to its input: %v", merr)
			}
			fl.hello.JA3S()
			if len(fl.hello.Extensions)*4 > len(fl.hello.Raw) {
				t.Fatal("more extensions than the body can hold")
			}
		}
		if fl.cert != nil {
			b, merr := fl.cert.Marshal()
			if merr != nil || !bytes.Equal(b, fl.cert.Raw) {
				t.Fatalf("Certificate does not re-serialise to its input: %v", merr)
			}
			if len(fl.cert.Entries)*4 > len(fl.cert.Raw) {
				t.Fatal("more certificates than the body can hold")
			}
			if len(fl.cert.Entries) <= 4 {
				chain, _ := fl.cert.Chain()
				for _, ci := range chain {
					_ = ci.SANs()
				}
			}
		}
		if fl.ske != nil && len(fl.ske.Params)+len(fl.ske.Signature) > len(fl.ske.Raw) {
			t.Fatal("ServerKeyExchange fields longer than the body")
		}
		_ = err
		// The key exchange messages under every key exchange and form.
		for _, m := range msgs {
			for kx := KeyExchangeUnknown; kx <= KeyExchangeTLS13; kx++ {
				for _, v := range []uint16{VersionSSL30, VersionTLS12} {
					switch m.typ {
					case MsgServerKeyExchange:
						if ske, err := ParseServerKeyExchange(m.body, kx, v); err == nil &&
							len(ske.Params)+len(ske.Signature) > len(m.body) {
							t.Fatal("ServerKeyExchange fields longer than the body")
						}
					case MsgClientKeyExchange:
						if cke, err := ParseClientKeyExchange(m.body, kx, v); err == nil &&
							len(cke.PSKIdentity)+len(cke.Exchange) > len(m.body) {
							t.Fatal("ClientKeyExchange fields longer than the body")
						}
					}
				}
			}
		}
	})
}

// TestFuzzCorpusCommitted makes sure the committed corpus exists, so that
// plain go test runs the interesting inputs fuzzing found.
func TestFuzzCorpusCommitted(t *testing.T) {
	for _, target := range []string{"FuzzClientHello", "FuzzServerFlight", "FuzzFramer"} {
		ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", target))
		if err != nil || len(ents) == 0 {
			t.Errorf("no committed corpus for %s: %v", target, err)
		}
	}
}
