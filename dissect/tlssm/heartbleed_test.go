package tlssm

import (
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Each Heartbleed layer on a crafted session, with the stock rule's
// decisions (heartbleedRule), and its benign twin.

// Layer 1: the classic probe, a 3-byte request declaring 16 KiB, sent in
// place of the ClientKeyExchange.
func TestHeartbleedCleartextOverflow(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{heartbeat: 1})))
	c.down(hs(serverHello(shOpts{heartbeat: 1}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
	at := c.up(cleartextHeartbeat(dissect.HeartbeatRequest, 0x4000, 0, 0))
	c.down(cleartextHeartbeat(dissect.HeartbeatResponse, 0x4000, 0x4000, 16))

	// The stock rule drops on the record layer's heartbeat_overflow,
	// raised before the heartbeat event; a rule on the event's field
	// drops on the event.
	for _, rule := range []func(*Event) inspect.Decision{heartbleedRule, fieldRule} {
		r := runConv(t, c, runOpts{verdict: rule})
		wantDrop(t, r, "heartbleed", dissect.Up, at)
		if r.p.fwd[dissect.Down] > c.off[dissect.Down]-int64(len(c.reads[3].data)) {
			t.Errorf("the response was forwarded")
		}
	}
	r := runConv(t, c, runOpts{verdict: fieldRule})
	if !r.has("up heartbeat record_length=3 type=request payload_length=16384 overflow") {
		t.Errorf("no overflowing heartbeat event:\n%v", r.rec.lines)
	}

	// Without rules the machine only reports it: the verdict is the
	// rules'.
	r = runConv(t, c, runOpts{})
	wantAnomalies(t, r, dissect.AnomalyHeartbeatOverflow, AnomalyHeartbeatDuringHandshake, AnomalyHeartbeatDuringHandshake)
	if !r.has("down heartbeat record_length=16403 type=response payload_length=16384 leak") {
		t.Errorf("the response is not a leak:\n%v", r.rec.lines)
	}
	wantPass(t, r, c)
}

// The benign twin of layer 1 (and of the cleartext leak): a request with
// its padding and a response of the same length. During the handshake it
// is still layer 2's business.
func TestHeartbeatCleartextValid(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{heartbeat: 1})))
	c.down(hs(serverHello(shOpts{heartbeat: 1}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
	c.up(cleartextHeartbeat(dissect.HeartbeatRequest, 16, 16, 16))
	c.down(cleartextHeartbeat(dissect.HeartbeatResponse, 16, 16, 16))
	c.up(hs(ecdheClientKeyExchange()), ccs(), finished())
	c.down(ccs(), finished())

	r := runConv(t, c, runOpts{verdict: fieldRule})
	wantPass(t, r, c)
	wantAnomalies(t, r, AnomalyHeartbeatDuringHandshake, AnomalyHeartbeatDuringHandshake)
	if r.has("overflow") || r.has(" leak") {
		t.Errorf("a valid exchange flagged:\n%v", r.rec.lines)
	}
	wantStates(t, r, StateClientHello, StateServerHello, StateServerFlight, StateClientFlight, StateServerFinished, StateEstablished)
}

// Layer 2: a well-formed heartbeat during the handshake.
func TestHeartbleedDuringHandshake(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{heartbeat: 1})))
	at := c.up(cleartextHeartbeat(dissect.HeartbeatRequest, 16, 16, 16))
	c.down(hs(serverHello(shOpts{heartbeat: 1})))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantDrop(t, r, AnomalyHeartbeatDuringHandshake, dissect.Up, at)
	if r.p.fwd[dissect.Up] != at {
		t.Errorf("the ClientHello before it was not forwarded: %d of %d", r.p.fwd[dissect.Up], at)
	}
}

// established12 is a TLS 1.2 session with the heartbeat extension, through
// to application data both ways.
func established12(c *conv) {
	tls12(c)
	c.up(appData(100))
	c.down(appData(300))
}

// Layer 3: the server answers a request with far more than it was sent;
// the response is held and dropped, not one byte reaches the client.
func TestHeartbleedEncryptedLeak(t *testing.T) {
	c := newConv()
	established12(c)
	c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	at := c.down(opaque(dissect.TypeHeartbeat, 16384), opaque(dissect.TypeHeartbeat, 16384))
	c.down(appData(50))

	for _, split := range []func(int) []int{nil, byteSplit} {
		r := runConv(t, c, runOpts{verdict: heartbleedRule, split: split})
		wantDrop(t, r, "heartbleed", dissect.Down, at)
		if r.p.fwd[dissect.Down] != at {
			t.Errorf("%d bytes down forwarded, want all %d before the response", r.p.fwd[dissect.Down], at)
		}
	}
	r := runConv(t, c, runOpts{})
	if !r.has("down heartbeat record_length=16384 encrypted leak") {
		t.Errorf("no leak:\n%v", r.rec.lines)
	}
	// The second record is the rest of the same response.
	if n := countLines(r, "down heartbeat record_length=16384 encrypted leak"); n != 2 {
		t.Errorf("%d leaking records, want 2:\n%v", n, r.rec.lines)
	}
	wantAnomalies(t, r)
	wantPass(t, r, c)
}

// The client may leak too: the server's request, the client's response.
func TestHeartbleedEncryptedLeakFromClient(t *testing.T) {
	c := newConv()
	established12(c)
	c.down(opaque(dissect.TypeHeartbeat, gcmHeartbeat(0)))
	at := c.up(opaque(dissect.TypeHeartbeat, 4000))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantDrop(t, r, "heartbleed", dissect.Up, at)
}

// The benign twin of layer 3: a response no longer than its request.
func TestHeartbeatEncryptedValid(t *testing.T) {
	c := newConv()
	established12(c)
	c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	c.down(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	c.down(opaque(dissect.TypeHeartbeat, gcmHeartbeat(0)))
	c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(0)))
	c.up(appData(10))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantPass(t, r, c)
	wantAnomalies(t, r)
	if r.has(" leak") {
		t.Errorf("flagged a leak:\n%v", r.rec.lines)
	}
}

// Layer 4: an encrypted request too short for AES-GCM (8 + 19 + 16 = 43),
// and its twin of exactly 43 bytes.
func TestHeartbleedEncryptedTooShort(t *testing.T) {
	c := newConv()
	established12(c)
	at := c.up(opaque(dissect.TypeHeartbeat, 42))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantDrop(t, r, AnomalyHeartbeatRequestTooShort, dissect.Up, at)

	c = newConv()
	established12(c)
	c.up(opaque(dissect.TypeHeartbeat, 43))
	c.down(opaque(dissect.TypeHeartbeat, 43))
	r = runConv(t, c, runOpts{verdict: heartbleedRule})
	wantPass(t, r, c)
	wantAnomalies(t, r)
}

// Layer 4: an encrypted request before any application data of its
// direction (heartbleed-encrypted.pcap), and the twin after some.
func TestHeartbleedBeforeApplicationData(t *testing.T) {
	c := newConv()
	tls12(c)
	c.down(appData(300)) // the server's data does not count for the client
	at := c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantDrop(t, r, AnomalyHeartbeatBeforeApplicationData, dissect.Up, at)

	c = newConv()
	tls12(c)
	c.up(appData(1))
	c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	r = runConv(t, c, runOpts{verdict: heartbleedRule})
	wantPass(t, r, c)
}

// Heartbeats nobody negotiated, or in TLS 1.3, are named, not judged.
func TestHeartbeatNotNegotiated(t *testing.T) {
	c := newConv()
	c.up(hs(clientHello(helloOpts{})))
	c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
	c.up(hs(ecdheClientKeyExchange()), ccs(), finished())
	c.down(ccs(), finished())
	c.up(appData(10))
	c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
	r := runConv(t, c, runOpts{verdict: heartbleedRule})
	wantPass(t, r, c)
	wantAnomalies(t, r, AnomalyHeartbeatNotNegotiated)

	// The client allowed the server nothing: its request is refused.
	c = newConv()
	c.up(hs(clientHello(helloOpts{heartbeat: dissect.HeartbeatPeerNotAllowedToSend})))
	c.down(hs(serverHello(shOpts{heartbeat: 1}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
	c.down(cleartextHeartbeat(dissect.HeartbeatRequest, 0, 0, 16))
	r = runConv(t, c, runOpts{})
	wantAnomalies(t, r, AnomalyHeartbeatDuringHandshake, AnomalyHeartbeatNotNegotiated)
}

func countLines(r *result, s string) int {
	n := 0
	for _, l := range r.rec.lines {
		if l == s {
			n++
		}
	}
	return n
}

// The smallest encrypted heartbeat per record protection.
func TestMinHeartbeatRecord(t *testing.T) {
	const (
		ssl3  = dissect.VersionSSL30
		tls10 = dissect.VersionTLS10
		tls11 = dissect.VersionTLS11
		tls12 = dissect.VersionTLS12
	)
	for _, c := range []struct {
		name string
		p    recordProtection
		want int // 0: no check
	}{
		{"AES-128-GCM TLS 1.2", recordProtection{suite: 0xc02f, version: tls12}, 43},
		{"AES-256-GCM RSA", recordProtection{suite: 0x009d, version: tls12}, 43},
		{"ARIA-GCM", recordProtection{suite: 0xc061, version: tls12}, 43},
		{"AES-CCM", recordProtection{suite: 0xc0ac, version: tls12}, 43},
		{"AES-CCM_8", recordProtection{suite: 0xc0ae, version: tls12}, 35},
		{"ChaCha20-Poly1305", recordProtection{suite: 0xcca8, version: tls12}, 35},
		// IV 16 + roundup(19 + 20 + 1, 16) = 16 + 48.
		{"AES-128-CBC-SHA TLS 1.2", recordProtection{suite: 0x002f, version: tls12}, 64},
		{"AES-128-CBC-SHA TLS 1.1", recordProtection{suite: 0xc013, version: tls11}, 64},
		{"AES-128-CBC-SHA TLS 1.0", recordProtection{suite: 0xc013, version: tls10}, 48},
		{"AES-128-CBC-SHA SSL 3.0", recordProtection{suite: 0x002f, version: ssl3}, 48},
		// 16 + roundup(19 + 32 + 1, 16) = 16 + 64.
		{"AES-128-CBC-SHA256", recordProtection{suite: 0xc027, version: tls12}, 80},
		// 16 + roundup(19 + 48 + 1, 16) = 16 + 80.
		{"AES-256-CBC-SHA384", recordProtection{suite: 0xc028, version: tls12}, 96},
		{"Camellia-256-CBC-SHA384", recordProtection{suite: 0xc077, version: tls12}, 96},
		// 8 + roundup(19 + 20 + 1, 8) = 8 + 40.
		{"3DES-EDE-CBC-SHA TLS 1.2", recordProtection{suite: 0x000a, version: tls12}, 48},
		{"3DES-EDE-CBC-SHA TLS 1.0", recordProtection{suite: 0x000a, version: tls10}, 40},
		{"RC4-MD5", recordProtection{suite: 0x0004, version: ssl3}, 35},
		{"RC4-SHA", recordProtection{suite: 0x0005, version: tls10}, 39},
		{"NULL-SHA256", recordProtection{suite: 0x003b, version: tls12}, 51},
		// encrypt_then_mac: 16 + roundup(19 + 1, 16) + 20.
		{"AES-128-CBC-SHA EtM", recordProtection{suite: 0x002f, version: tls12, etm: true}, 68},
		// truncated_hmac: roundup(19 + 10 + 1, 16).
		{"AES-128-CBC-SHA truncated", recordProtection{suite: 0x002f, version: tls10, truncMAC: true}, 32},
		{"TLS 1.3", recordProtection{suite: 0x1301, version: dissect.VersionTLS13}, 0},
		{"unknown suite", recordProtection{suite: 0xff85, version: tls12}, 0},
		{"compressed", recordProtection{suite: 0xc02f, version: tls12, compressed: true}, 0},
	} {
		got, ok := minHeartbeatRecord(c.p)
		if !ok {
			got = 0
		}
		if got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	// The table is sorted and its ranges do not overlap.
	for i := 1; i < len(suiteProtections); i++ {
		if suiteProtections[i].lo <= suiteProtections[i-1].hi {
			t.Errorf("ranges %04x-%04x and %04x-%04x overlap", suiteProtections[i-1].lo, suiteProtections[i-1].hi, suiteProtections[i].lo, suiteProtections[i].hi)
		}
	}
}
