package rules

import (
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The adapter's path, measured through real Sessions: bytes of a real
// connection fed to a tlssm Session whose events the stock rules judge
// through a TLSHandler, against the same Session without rules.
//
//	go test ./rules -run '^$' -bench 'TLSSession' -benchmem

// chunk is what one side of a connection wrote at once.
type chunk struct {
	dir  dissect.Direction
	data []byte
}

// recordingConn notes every write of one side, in the order the two
// sides wrote (net.Pipe writes complete only once read).
type recordingConn struct {
	net.Conn
	dir    dissect.Direction
	mu     *sync.Mutex
	chunks *[]chunk
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	*c.chunks = append(*c.chunks, chunk{c.dir, append([]byte(nil), p...)})
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// tls12Transcript records a crypto/tls TLS 1.2 connection (ECDHE-ECDSA,
// AES-128-GCM): the handshake and one message each way.
func tls12Transcript(tb testing.TB) []chunk {
	tb.Helper()
	return tlsTranscriptWith(tb, tls.VersionTLS12, func(_, client *tls.Config) {
		client.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	})
}

// withHeartbeat returns the transcript with the heartbeat extension
// (peer_allowed_to_send) appended to the ClientHello and the ServerHello,
// as OpenSSL 1.0.1 peers negotiate it (crypto/tls does not). The machine
// checks no MAC, so the rest of the transcript is still valid to it.
func withHeartbeat(tb testing.TB, transcript []chunk) []chunk {
	tb.Helper()
	out := make([]chunk, len(transcript))
	copy(out, transcript)
	patched := 0
	for i, c := range out {
		if len(c.data) < dissect.HeaderLen+4 || c.data[0] != tlspeer.TypeHandshake {
			continue
		}
		typ := c.data[dissect.HeaderLen]
		if typ != 1 && typ != 2 || patched == 2 {
			continue
		}
		rec := int(c.data[3])<<8 | int(c.data[4])
		body := c.data[dissect.HeaderLen+4 : dissect.HeaderLen+rec]
		// The extensions block is the end of the hello: its length is
		// the two bytes before the first extension, found by walking
		// the fields before it.
		off := 2 + 32
		off += 1 + int(body[off])
		if typ == 1 {
			off += 2 + (int(body[off])<<8 | int(body[off+1]))
			off += 1 + int(body[off])
		} else {
			off += 2 + 1
		}
		extLen := int(body[off])<<8 | int(body[off+1])
		if off+2+extLen != len(body) {
			tb.Fatalf("hello type %d: extensions end at %d of %d", typ, off+2+extLen, len(body))
		}
		var b []byte
		b = append(b, c.data[:dissect.HeaderLen+4]...)
		b = append(b, body...)
		b = append(b, 0x00, 0x0f, 0x00, 0x01, 0x01) // heartbeat, peer_allowed_to_send
		b = append(b, c.data[dissect.HeaderLen+rec:]...)
		put16 := func(at, v int) { b[at], b[at+1] = byte(v>>8), byte(v) }
		put16(3, rec+5)
		bodyLen := len(body) + 5
		b[dissect.HeaderLen+1], b[dissect.HeaderLen+2], b[dissect.HeaderLen+3] = byte(bodyLen>>16), byte(bodyLen>>8), byte(bodyLen)
		put16(dissect.HeaderLen+4+off, extLen+5)
		out[i] = chunk{c.dir, b}
		patched++
	}
	if patched != 2 {
		tb.Fatalf("patched %d hellos", patched)
	}
	return out
}

// feeder feeds a Session what each direction wrote, keeping what it
// holds as the pump would.
type feeder struct {
	tb      testing.TB
	s       inspect.Inspector
	pending [2][]byte
	now     time.Time
}

func (f *feeder) feed(d dissect.Direction, b []byte) {
	p := append(f.pending[d], b...)
	res := f.s.Feed(d, p, f.now)
	if res.Decision.Verdict.Kills() {
		f.tb.Fatalf("%s: %+v", d, res.Decision)
	}
	if res.Pass != 0 {
		f.tb.Fatalf("%s: %d bytes passed unseen", d, res.Pass)
	}
	f.pending[d] = p[res.Forward:]
}

// benchFactory is a Factory whose Sessions run the stock rules (nil h:
// none).
func benchFactory(tb testing.TB, h *harness) *tlssm.Factory {
	tb.Helper()
	opts := tlssm.Options{NoTimers: true}
	if h != nil {
		opts.NewHandler = h.NewTLSHandler
	}
	f, err := tlssm.NewFactory(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// chromeHelloRecord is the ClientHello record of Chrome 125 (1751 bytes, an
// X25519Kyber768 key share) from a shared capture, or nil.
func chromeHelloRecord(tb testing.TB) []byte {
	p, err := pcaptest.Path("zeek/chrome-1250-tls-x25519-kyber.pcap")
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	streams, err := pcaptest.Read(p)
	if err != nil || len(streams) == 0 {
		tb.Fatalf("%s: %v", p, err)
	}
	up := streams[0].Payload(true)
	n := dissect.HeaderLen + (int(up[3])<<8 | int(up[4]))
	return up[:n]
}

// BenchmarkTLSSessionClientHello: a connection's life up to its
// ClientHello — a Session made, the hello fed and judged, the Session
// closed — with the stock rules and without rules. The difference is
// what the rules cost a connection's hello: pinning a Flow, evaluating
// client_hello (version_policy.lua's rule reads hello.sslv2 and
// hello.version), unpinning. stock+200-other adds 200 rules hooked on
// events a hello does not raise: the hello must cost what it costs with
// the stock rules alone.
func BenchmarkTLSSessionClientHello(b *testing.B) {
	hellos := map[string][]byte{"crypto-tls": tls12Transcript(b)[0].data}
	if h := chromeHelloRecord(b); h != nil {
		hellos["chrome"] = h
	}
	for name, hello := range hellos {
		for _, rules := range []string{"stock-rules", "no-rules", "stock+200-other"} {
			label := name + "/" + rules
			var h *harness
			switch rules {
			case "stock-rules":
				h = benchEngine(b)
			case "stock+200-other":
				h = newHarness(b, stockPlusOtherRules(b, 200), Options{PoolSize: 8, Deadline: time.Minute})
			}
			b.Run(label, func(b *testing.B) {
				f := benchFactory(b, h)
				var created int64
				if h != nil {
					created = h.created.Load()
				}
				flow := &inspect.Flow{ID: 1, Start: time.Unix(1, 0)}
				b.ReportAllocs()
				for b.Loop() {
					s, d := f.New(flow, nil)
					if d.Verdict != inspect.Pass {
						b.Fatal(d)
					}
					if res := s.Feed(dissect.Up, hello, flow.Start); res.Forward != len(hello) || !res.HelloDone {
						b.Fatalf("%+v", res)
					}
					s.Close(inspect.Summary{})
				}
				if h != nil && h.created.Load() != created {
					b.Fatalf("%d interpreter states created while evaluating", h.created.Load()-created)
				}
			})
		}
	}
}

// BenchmarkTLSSessionHeartbeat: an established TLS 1.2 session (AES-GCM)
// gets a benign encrypted heartbeat request and its answer of the same
// length: two heartbeat events per iteration (ns/heartbeat is per
// event), judged by heartbleed.lua's heartbeat rule. Negotiated, as
// between OpenSSL peers; not negotiated, as between crypto/tls peers,
// each heartbeat also raises heartbeat_not_negotiated, which the anomaly
// rules of heartbleed.lua and hygiene.lua judge too. With the stock rules
// and without rules.
func BenchmarkTLSSessionHeartbeat(b *testing.B) {
	plain := tls12Transcript(b)
	payload := make([]byte, 64)
	rand.Read(payload)
	req := tlspeer.AppendRecord(nil, tlspeer.TypeHeartbeat, 0x0303, payload)
	resp := tlspeer.AppendRecord(nil, tlspeer.TypeHeartbeat, 0x0303, payload)
	for _, bc := range []struct {
		name       string
		transcript []chunk
	}{
		{"negotiated", withHeartbeat(b, plain)},
		{"not-negotiated", plain},
	} {
		for _, rules := range []bool{true, false} {
			label := bc.name + "/no-rules"
			var h *harness
			if rules {
				label = bc.name + "/stock-rules"
				h = benchEngine(b)
			}
			b.Run(label, func(b *testing.B) {
				f := benchFactory(b, h)
				flow := &inspect.Flow{ID: 1, Start: time.Unix(1, 0)}
				s, _ := f.New(flow, nil)
				defer s.Close(inspect.Summary{})
				fd := &feeder{tb: b, s: s, now: flow.Start}
				for _, c := range bc.transcript {
					fd.feed(c.dir, c.data)
				}
				if st := s.(*tlssm.Session).State(); st != tlssm.StateEstablished {
					b.Fatalf("state %s after the transcript", st)
				}
				var created int64
				if h != nil {
					created = h.created.Load()
				}
				b.ReportAllocs()
				for b.Loop() {
					fd.feed(dissect.Up, req)
					fd.feed(dissect.Down, resp)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/heartbeat")
				if h != nil && h.created.Load() != created {
					b.Fatalf("%d interpreter states created while evaluating", h.created.Load()-created)
				}
			})
		}
	}
}

// The benchmarks' sessions judge what they are fed the way the live
// proxy does: the transcript passes, and so do the heartbeats.
func TestBenchTranscript(t *testing.T) {
	plain := tls12Transcript(t)
	for _, negotiated := range []bool{false, true} {
		transcript, want := plain, "up heartbeat_not_negotiated, down heartbeat_not_negotiated"
		if negotiated {
			transcript, want = withHeartbeat(t, plain), ""
		}
		t.Run(fmt.Sprintf("negotiated=%v", negotiated), func(t *testing.T) { testTranscript(t, transcript, want) })
	}
}

func testTranscript(t *testing.T, transcript []chunk, wantAnomalies string) {
	h := newHarness(t, nil, Options{PoolSize: 1})
	created := h.created.Load()
	s, _ := benchFactory(t, h).New(&inspect.Flow{ID: 1, Start: time.Unix(1, 0)}, nil)
	fd := &feeder{tb: t, s: s, now: time.Unix(1, 0)}
	for _, c := range transcript {
		fd.feed(c.dir, c.data)
	}
	hb := tlspeer.AppendRecord(nil, tlspeer.TypeHeartbeat, 0x0303, make([]byte, 64))
	for range 3 {
		fd.feed(dissect.Up, hb)
		fd.feed(dissect.Down, hb)
	}
	s.Close(inspect.Summary{})
	ss := s.(*tlssm.Session)
	if ss.State() != sm.Finish || ss.Decision().Verdict != inspect.Pass {
		t.Fatalf("state %s, decision %+v", ss.State(), ss.Decision())
	}
	// Without the extension, each direction's heartbeats are named once
	// for not being negotiated: nothing else is wrong with them.
	var names []string
	for _, a := range ss.Anomalies() {
		names = append(names, a.Direction.String()+" "+a.Name)
	}
	if got := strings.Join(names, ", "); got != wantAnomalies {
		t.Errorf("anomalies %q, want %q", got, wantAnomalies)
	}
	if got := h.created.Load(); got != created {
		t.Errorf("%d interpreter states created by a connection's events", got-created)
	}
}

// stockPlusOtherRules is the stock rule set plus a file of n rules
// hooked on events other than client_hello, spread over heartbeat,
// server_hello, alert and certificate.
func stockPlusOtherRules(tb testing.TB, n int) map[string]string {
	tb.Helper()
	files := map[string]string{}
	err := fs.WalkDir(Stock(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := fs.ReadFile(Stock(), path)
		files[path] = string(src)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	var extra strings.Builder
	events := []string{"heartbeat", "server_hello", "alert", "certificate"}
	for i := range n {
		fmt.Fprintf(&extra, "haka.rule { on = tls.events.%s, eval = function(flow) flow.data.n%d = true end }\n", events[i%len(events)], i)
	}
	files["zz_other.lua"] = extra.String()
	return files
}

// BenchmarkTLSSessionConnection: a whole TLS 1.2 connection as the proxy
// inspects it under the connection-rate load — the Session made, both
// flights fed and judged by the stock rules, a record of application
// data each way, the ends, Info read and the Session closed — with the
// machine's wall-clock timers armed as in the proxy. This is the
// inspection's share of the CPU a new connection costs.
func BenchmarkTLSSessionConnection(b *testing.B) {
	chunks := tls12Transcript(b)
	for _, v := range []struct {
		rules, timers bool
	}{{true, true}, {false, true}, {true, false}} {
		label := "no-rules"
		opts := tlssm.Options{NoTimers: !v.timers}
		if v.rules {
			label = "stock-rules"
			opts.NewHandler = benchEngine(b).NewTLSHandler
		}
		if !v.timers {
			label += "/no-timers"
		}
		f, err := tlssm.NewFactory(opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(label, func(b *testing.B) {
			b.ReportAllocs()
			flow := benchFlow
			// The pump's buffers, reused as the proxy reuses its pooled
			// ones: only the inspection allocates.
			var bufs [2][]byte
			for i := range bufs {
				bufs[i] = make([]byte, 0, 64<<10)
			}
			for b.Loop() {
				flow.Start = time.Now()
				s, d := f.New(&flow, nil)
				if d.Verdict != inspect.Pass {
					b.Fatal(d)
				}
				pending := [2][]byte{bufs[0][:0], bufs[1][:0]}
				for _, c := range chunks {
					p := append(pending[c.dir], c.data...)
					res := s.Feed(c.dir, p, time.Now())
					if res.Decision.Verdict != inspect.Pass {
						b.Fatal(res.Decision)
					}
					pending[c.dir] = p[res.Forward+int(res.Pass):]
				}
				s.EOF(dissect.Down, pending[dissect.Down], time.Now())
				s.EOF(dissect.Up, pending[dissect.Up], time.Now())
				if info := s.Info(); info.JA4 == "" {
					b.Fatalf("no fingerprint: %+v", info)
				}
				s.Close(inspect.Summary{})
			}
		})
	}
}
