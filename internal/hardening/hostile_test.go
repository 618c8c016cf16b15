package hardening

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/rules"
)

// A client sends its ClientHello one byte at a time, slower than anyone
// real: --handshake-timeout cuts it, counted from the accept, and the
// upstream never sees a byte of it.
func TestSlowlorisClientHello(t *testing.T) {
	f := flight(t)
	const timeout = 2500 * time.Millisecond
	upstreamGot := make(chan int, 1)
	fault := startBackend(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		upstreamGot <- len(b)
	})
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{Limits: proxy.Limits{HandshakeTimeout: timeout}})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		start := time.Now()
		c := r.connect(srcFault)
		defer c.Close()
		c.SetNoDelay(true)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			// The attack's own pace: a byte a second, a ClientHello of
			// 200 bytes in over three minutes; the timeout comes
			// between the second and the third byte.
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for _, b := range f.Turns[0] {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		// A drop closes with a FIN, but the client keeps writing into
		// the closed socket, which answers with a reset: either ends it.
		got, _ := expectClosed(t, c)
		elapsed := time.Since(start)
		if len(got) != 0 {
			t.Errorf("the client read %d bytes", len(got))
		}
		if elapsed < timeout || elapsed > timeout+time.Second {
			t.Errorf("cut after %v, want the handshake timeout of %v", elapsed, timeout)
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "drop" || rec.Rule != proxy.RuleHandshakeTimeout {
			t.Errorf("record %+v", rec)
		}
		if n := <-upstreamGot; n != 0 {
			t.Errorf("the upstream got %d bytes of the unfinished ClientHello", n)
		}
	})
	if v := metric(r.metrics.Limits.WithLabelValues(proxy.LimitHandshakeTimeout)); v != 1 {
		t.Errorf("haka_proxy_limits_total{limit=handshake_timeout} %v", v)
	}
}

// handshakeMessages splits the handshake records of a turn into their
// messages, each with its 4-byte header.
func handshakeMessages(t *testing.T, turn []byte) [][]byte {
	t.Helper()
	var stream []byte
	for len(turn) > 0 {
		n := int(turn[3])<<8 | int(turn[4])
		if turn[0] != typeHandshake {
			t.Fatalf("record of type %d in a handshake turn", turn[0])
		}
		stream = append(stream, turn[5:5+n]...)
		turn = turn[5+n:]
	}
	var msgs [][]byte
	for len(stream) > 0 {
		n := 4 + (int(stream[1])<<16 | int(stream[2])<<8 | int(stream[3]))
		msgs = append(msgs, stream[:n])
		stream = stream[n:]
	}
	return msgs
}

// handshakeRecords puts msgs in handshake records of at most size bytes.
func handshakeRecords(size int, msgs ...[]byte) []byte {
	var out []byte
	stream := bytes.Join(msgs, nil)
	for len(stream) > 0 {
		k := min(size, len(stream))
		out = tlspeer.AppendRecord(out, typeHandshake, tls12, stream[:k])
		stream = stream[k:]
	}
	return out
}

// serverFlightWith is the recorded server flight with its Certificate
// message replaced by cert, every message in records of at most
// recordSize bytes, and the index where the certificate's records start.
func serverFlightWith(t *testing.T, cert []byte, recordSize int) ([]byte, int) {
	msgs := handshakeMessages(t, flight(t).Turns[1])
	if len(msgs) != 4 || msgs[1][0] != 11 {
		t.Fatalf("unexpected recorded server flight: %d messages", len(msgs))
	}
	out := handshakeRecords(maxPlaintext, msgs[0])
	at := len(out)
	out = append(out, handshakeRecords(recordSize, cert)...)
	return append(out, handshakeRecords(maxPlaintext, msgs[2], msgs[3])...), at
}

// junkCertificate is a Certificate message of total bytes (header
// included) whose body is random: it only frames as one while it is over
// the reassembly cap, which leaves it unparsed.
func junkCertificate(total int) []byte {
	cert := make([]byte, total)
	body := total - 4
	cert[0], cert[1], cert[2], cert[3] = 11, byte(body>>16), byte(body>>8), byte(body)
	fillRandom(rand.New(rand.NewPCG(11, 12)), cert[4:])
	return cert
}

// bulkyCertificate is a well-formed TLS 1.2 Certificate message: the
// recorded server's certificate, then an entry of extra random bytes
// (X.509 is only parsed when a rule reads the chain).
func bulkyCertificate(t *testing.T, extra int) []byte {
	recorded := handshakeMessages(t, flight(t).Turns[1])[1]
	list := recorded[7:] // header, then the list's own length
	blob := make([]byte, extra)
	fillRandom(rand.New(rand.NewPCG(13, 14)), blob)
	list = append(append(list[:len(list):len(list)], byte(extra>>16), byte(extra>>8), byte(extra)), blob...)
	body := append([]byte{byte(len(list) >> 16), byte(len(list) >> 8), byte(len(list))}, list...)
	return append([]byte{11, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// playServer is a backend that plays the recorded conversation with
// server as its first answer.
func playServer(f *loadgen.Flight, server []byte) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		buf := make([]byte, f.MaxTurn())
		if _, err := io.ReadFull(c, buf[:len(f.Turns[0])]); err != nil {
			return
		}
		c.Write(server)
		if _, err := io.ReadFull(c, buf[:len(f.Turns[2])]); err != nil {
			return
		}
		c.Write(f.Turns[3])
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// playClient plays the client's side against playServer(server) and
// checks every byte; it returns when the server has closed.
func playClient(t *testing.T, c *net.TCPConn, f *loadgen.Flight, server []byte) {
	t.Helper()
	c.Write(f.Turns[0])
	got := make([]byte, len(server))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, server) {
		t.Fatalf("the client got %d bytes of the server's flight (%v), first difference at %d", len(got), err, firstDiff(got, server))
	}
	c.Write(f.Turns[2])
	c.CloseWrite()
	got, reset := expectClosed(t, c)
	if reset || !bytes.Equal(got, f.Turns[3]) {
		t.Fatalf("the end of the handshake: %d bytes, reset %v", len(got), reset)
	}
}

// A 1 MiB Certificate in 64 records is over the 256 KiB reassembly cap:
// the machine names it (handshake_message_too_large, which the stock
// rules log), holds none of it and lets it through uninspected, so
// --max-held-bytes (512 KiB) is never reached; every byte arrives.
func TestHandshakeMessageOverTheCap(t *testing.T) {
	f := flight(t)
	server, _ := serverFlightWith(t, junkCertificate(1<<20), maxPlaintext)
	if n := bytes.Count(server, []byte{typeHandshake, 3, 3, 0x40, 0}); n < 64 {
		t.Fatalf("the crafted flight has %d full records", n)
	}
	fault := startBackend(t, playServer(f, server))
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		playClient(t, c, f, server)
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "pass" || rec.BytesDown != int64(len(server)+len(f.Turns[3])) {
			t.Errorf("record %+v", rec)
		}
		r.logs.wait(t, "log of the anomaly", 1, func(m map[string]any) bool {
			s, _ := m["msg"].(string)
			return strings.Contains(s, "handshake_message_too_large")
		})
	})
}

// A 200 KiB Certificate is under the reassembly cap, so its records are
// held until it is complete and judged; with --max-held-bytes 128KiB the
// connection is dropped once the proxy holds more, and not one byte of
// the certificate reaches the client.
func TestHandshakeMessageOverMaxHeldBytes(t *testing.T) {
	f := flight(t)
	const maxHeld = 128 << 10
	server, certAt := serverFlightWith(t, junkCertificate(200<<10), maxPlaintext)
	fault := startBackend(t, func(c *net.TCPConn) {
		if _, err := io.ReadFull(c, make([]byte, len(f.Turns[0]))); err != nil {
			return
		}
		c.Write(server)
		io.Copy(io.Discard, c)
	})
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{Limits: proxy.Limits{MaxHeldBytes: maxHeld}})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		c.Write(f.Turns[0])
		got, _ := expectClosed(t, c)
		if !bytes.Equal(got, server[:certAt]) {
			t.Errorf("the client got %d bytes, want the %d before the certificate", len(got), certAt)
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		want := fmt.Sprintf("more than max-held-bytes %d", maxHeld)
		if rec.Verdict != "drop" || rec.Rule != proxy.RuleMaxHeldBytes || !strings.Contains(rec.Reason, want) {
			t.Errorf("record %+v", rec)
		}
	})
	if v := metric(r.metrics.Limits.WithLabelValues(proxy.LimitMaxHeldBytes)); v != 1 {
		t.Errorf("haka_proxy_limits_total{limit=max_held_bytes} %v", v)
	}
}

// withStock returns the stock rules plus extra files.
func withStock(t *testing.T, extra map[string]string) fs.FS {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(rules.Stock(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(rules.Stock(), path)
		m[path] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, src := range extra {
		m[name] = &fstest.MapFile{Data: []byte(src)}
	}
	return m
}

// helloExchange sends a ClientHello for sni from src and reads what
// comes back until the connection ends.
func helloExchange(t *testing.T, r *rig, src netip.Addr, sni string) (got []byte, reset bool) {
	c := r.connect(src)
	defer c.Close()
	c.Write(tlspeer.ClientHello12(sni, false))
	return expectClosed(t, c)
}

// A rule loops forever for one server name: the evaluation is stopped at
// its deadline, logged, and the error policy applied to that connection;
// twenty such clients at once do not keep the others from being served.
func TestRuleInfiniteLoop(t *testing.T) {
	const loop = `haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, hello)
    if hello.sni == "loop.test" then
      while true do end
    end
  end,
}
`
	f := flight(t)
	for _, policy := range []rules.ErrorPolicy{rules.PolicyDrop, rules.PolicyPass} {
		t.Run(policy.String(), func(t *testing.T) {
			upstreamGot := make(chan int, 32)
			fault := startBackend(t, func(c *net.TCPConn) {
				b, _ := io.ReadAll(c)
				upstreamGot <- len(b)
			})
			be := startBackend(t, tlsEcho(f))
			r := newRig(t, be.addr, rigConfig{Rules: withStock(t, map[string]string{"loop.lua": loop}), Policy: policy})
			r.route(srcFault, fault.addr)
			during(t, r, func() {
				const n = 20
				var wg sync.WaitGroup
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c := r.connect(srcFault)
						defer c.Close()
						c.Write(tlspeer.ClientHello12("loop.test", false))
						if policy == rules.PolicyPass {
							c.CloseWrite()
						}
						expectClosed(t, c)
					}()
				}
				wg.Wait()
				recs := r.waitRecords("records of the looping connections", n, fromAddr(srcFault))
				for _, rec := range recs {
					switch policy {
					case rules.PolicyDrop:
						if rec.Verdict != "drop" || rec.Rule != "loop.lua:1" || !strings.HasPrefix(rec.Reason, "rule deadline exceeded") {
							t.Errorf("record %+v", rec)
						}
					case rules.PolicyPass:
						if rec.Verdict != "pass" {
							t.Errorf("record %+v", rec)
						}
					}
				}
				failed := r.logs.wait(t, "rule failed lines", n, isMsg("rule failed"))
				if e, _ := failed[0]["error"].(string); !strings.Contains(e, "deadline") {
					t.Errorf("rule failed: %v", failed[0])
				}
				for range n {
					got := <-upstreamGot
					if policy == rules.PolicyDrop && got != 0 || policy == rules.PolicyPass && got == 0 {
						t.Errorf("policy %s: the upstream got %d bytes", policy, got)
					}
				}
			})
		})
	}
}

// everyEvent is a rule file that fails on every event of the connections
// from srcFault.
func everyEvent() string {
	var b strings.Builder
	for _, e := range tlssm.Events {
		fmt.Fprintf(&b, "haka.rule { on = tls.events.%s, eval = function(flow) if flow.src_ip == %q then error(\"no good\") end end }\n", e.Name, srcFault.String())
	}
	return b.String()
}

// A rule that raises an error on every event: with the drop policy the
// connection ends at the first (new_connection: before the upstream is
// dialled); with the pass policy every failure is logged and the
// connection goes on, byte-exact.
func TestRuleErrorsOnEveryEvent(t *testing.T) {
	f := flight(t)
	for _, policy := range []rules.ErrorPolicy{rules.PolicyDrop, rules.PolicyPass} {
		t.Run(policy.String(), func(t *testing.T) {
			be := startBackend(t, tlsEcho(f))
			r := newRig(t, be.addr, rigConfig{Rules: withStock(t, map[string]string{"zz_errors.lua": everyEvent()}), Policy: policy})
			during(t, r, func() {
				err := exchange(r.addr, srcFault, f, rand.New(rand.NewPCG(1, 1)))
				rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
				failed := r.logs.match(func(m map[string]any) bool {
					return m["msg"] == "rule failed" && m["flow"] == float64(rec.ID)
				})
				switch policy {
				case rules.PolicyDrop:
					if err == nil {
						t.Error("the exchange went through")
					}
					// new_connection fails and drops the connection;
					// end_connection still runs (and fails) on every
					// connection.
					var events []string
					for _, m := range failed {
						events = append(events, fmt.Sprint(m["event"]))
					}
					if rec.Verdict != "drop" || !strings.HasPrefix(rec.Reason, "rule error: ") ||
						strings.Join(events, ",") != "new_connection,end_connection" {
						t.Errorf("record %+v, rule failed on %v", rec, events)
					}
					if v := metric(r.metrics.Refused.WithLabelValues(proxy.RefusedInspector)); v != 1 {
						t.Errorf("refused by the inspector: %v", v)
					}
				case rules.PolicyPass:
					if err != nil {
						t.Errorf("the exchange failed: %v", err)
					}
					if rec.Verdict != "pass" || len(failed) < 10 {
						t.Errorf("record %+v, %d rule failed lines", rec, len(failed))
					}
					t.Logf("%d rule failures logged for one connection", len(failed))
				}
			})
		})
	}
}
