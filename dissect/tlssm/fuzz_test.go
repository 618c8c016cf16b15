package tlssm

import (
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// A fuzz input is a conversation: chunks of [direction byte, uint16
// length, bytes], the last one cut short by the end of the input.

// maxFuzzSeed bounds the bytes of a capture stream used as a seed: the
// handshake and the start of the encrypted phase are where the machine
// has work to do, and short inputs fuzz faster.
const maxFuzzSeed = 24 << 10

func encodeReads(reads []read) []byte {
	var b []byte
	for _, r := range reads {
		data := r.data
		for len(data) > 0 {
			n := min(len(data), 0xffff)
			b = append(b, byte(r.dir))
			b = binary.BigEndian.AppendUint16(b, uint16(n))
			b = append(b, data[:n]...)
			data = data[n:]
		}
	}
	return b
}

func decodeReads(b []byte) []read {
	var out []read
	for len(b) >= 3 {
		d := dissect.Direction(b[0] & 1)
		n := min(int(binary.BigEndian.Uint16(b[1:3])), len(b)-3)
		out = append(out, read{d, b[3 : 3+n], t0})
		b = b[3+n:]
	}
	return out
}

// FuzzSession feeds mutated conversations, in random pieces, through a
// Session with a handler that hooks every event: no panic, the inspector
// contract kept, no event about a byte already forwarded, no killing
// decision that let the bytes of its record through, the bytes forwarded
// exactly the stream's; and the same outcome whatever the pieces.
func FuzzSession(f *testing.F) {
	root, err := pcaptest.Root()
	if err == nil {
		for _, name := range []string{
			"zeek/heartbleed.pcap", "zeek/heartbleed-encrypted.pcap", "zeek/tls1.2.pcap", "zeek/hrr.pcap",
			"zeek/ssl-v2.pcap", "zeek/tls13_wolfssl.pcap", "suricata-verify/sslv2-tls-upgrade-01/ssl-v2-s1.pcap",
			"suricata-verify/ssl_version_negated/input.pcap", "arkime/openssl-ssl3.pcap", "arkime/curl-enabled-tls13.pcap",
			"zeek/tls1.2-protocol-violation.pcap", "suricata-verify/tls-duplicate-hello/input.pcap",
		} {
			streams, _ := pcaptest.Read(filepath.Join(root, name))
			for _, s := range streams {
				var reads []read
				total := 0
				for _, r := range streamReads(s, nil) {
					if total += len(r.data); total > maxFuzzSeed {
						break
					}
					reads = append(reads, r)
				}
				if len(reads) > 0 {
					f.Add(encodeReads(reads), uint64(len(reads)))
				}
			}
		}
	}
	for i, build := range []func(*conv){
		established12,
		func(c *conv) {
			established12(c)
			c.up(opaque(dissect.TypeHeartbeat, gcmHeartbeat(16)))
			c.down(opaque(dissect.TypeHeartbeat, 16384))
		},
		func(c *conv) {
			c.up(hs(clientHello(helloOpts{heartbeat: 1})))
			c.down(hs(serverHello(shOpts{heartbeat: 1}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
			c.up(cleartextHeartbeat(dissect.HeartbeatRequest, 0x4000, 0, 0))
		},
		func(c *conv) {
			c.up(hs(clientHello(helloOpts{tls13: true, earlyData: true})), ccs(), appData(100))
			c.down(hs(serverHello(shOpts{retry: true})), ccs())
			c.up(hs(clientHello(helloOpts{tls13: true})))
			c.down(hs(serverHello(shOpts{tls13: true})), appData(900))
		},
		func(c *conv) {
			sid := random(32)
			c.up(hs(clientHello(helloOpts{sessionID: sid, ticket: random(40)})))
			c.down(hs(serverHello(shOpts{sessionID: sid, ticketExt: true}), newSessionTicket()), ccs(), finished())
			c.up(ccs(), finished())
		},
		func(c *conv) { c.up(sslv2ClientHello(dissect.VersionTLS10)) },
	} {
		c := newConv()
		build(c)
		f.Add(encodeReads(c.reads), uint64(i))
	}

	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		reads := decodeReads(data)
		whole := fuzzRun(t, reads)
		r := rand.New(rand.NewPCG(seed, 0))
		pieces := fuzzRun(t, streamReadsOf(reads, randomSplit(r)))
		if whole != pieces {
			t.Fatalf("the outcome depends on the pieces:\n%s", diffLines(whole, pieces))
		}
	})
}

// fuzzRun plays reads and checks the invariants.
func fuzzRun(t *testing.T, reads []read) string {
	var p *pump
	var rc *recorder
	f, err := NewFactory(Options{NoTimers: true, NewHandler: func(_ *inspect.Flow, s *Session) Handler {
		rc = &recorder{s: s, hook: func(EventID) bool { return true }, check: heldChecker(&p)}
		return rc
	}})
	if err != nil {
		t.Fatal(err)
	}
	insp, _ := f.New(&inspect.Flow{Start: t0}, nil)
	p = &pump{t: t, s: insp.(*Session), now: t0, keepOut: true}
	var streams [2][]byte
	for _, r := range reads {
		streams[r.dir] = append(streams[r.dir], r.data...)
		p.read(r.dir, r.data, r.at)
	}
	p.finish()
	for _, e := range p.errs {
		t.Error(e)
	}
	for d := range streams {
		if got := p.out[d]; len(got) > len(streams[d]) || string(got) != string(streams[d][:len(got)]) {
			t.Errorf("%s: the forwarded bytes are not the stream's", dissect.Direction(d))
		}
		// What is neither forwarded nor killed is held or truncated: at
		// most one handshake message and a record.
		if !p.killed && !p.bypassed && len(streams[d])-len(p.out[d]) > dissect.DefaultMaxMessage+dissect.MaxUnitBytes*2 {
			t.Errorf("%s: %d bytes never forwarded", dissect.Direction(d), len(streams[d])-len(p.out[d]))
		}
	}
	if rc.closed != 1 {
		t.Errorf("handler closed %d times", rc.closed)
	}
	return outcome(rc, p)
}
