package hardening

import (
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
)

// partialHello is the first sent bytes of a ClientHello that declares a
// body of declared bytes, in records of at most 16 KiB: a message the
// proxy must hold until it is complete, and that never completes.
func partialHello(declared, sent int) []byte {
	msg := make([]byte, 4+sent)
	msg[0], msg[1], msg[2], msg[3] = 1, byte(declared>>16), byte(declared>>8), byte(declared)
	fillRandom(rand.New(rand.NewPCG(21, 22)), msg[4:])
	return handshakeRecords(maxPlaintext, msg)
}

// pathRules take a connection down each way a rule can, by server name.
const pathRules = `haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, hello)
    if flow.src_ip == "127.0.2.101" then return end
    local sni = hello.sni
    if sni == "drop.test" then flow:drop("asked to")
    elseif sni == "reset.test" then flow:reset("asked to")
    elseif sni == "error.test" then error("asked to")
    elseif sni == "loop.test" then while true do end
    elseif sni == "bypass.test" then flow:bypass()
    end
  end,
}
haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, p)
    if flow.src_ip == "127.0.2.101" then return p.value end
  end,
}
`

// Every way a connection can end — passed, dropped, reset or bypassed
// by a rule, a rule's error, overrun or Go panic, a panic in the
// inspector, the upstream refused, every timeout, max-held-bytes, a
// malformed stream, a client's reset — gives back everything it held:
// its goroutines, its Session (no timer keeps one alive), and its hold
// on the rule set, whose interpreter states close once a reload replaces
// it.
func TestNothingLeaksOnAnyPath(t *testing.T) {
	f := flight(t)
	echo := startBackend(t, tlsEcho(f))
	silent := startBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	var sessions, collected atomic.Int64
	var alive sync.Map
	pathSrc := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 2, byte(i)}) }
	srcPanic, srcGoPanic := pathSrc(100), pathSrc(101)
	r := newRig(t, echo.addr, rigConfig{
		Rules: withStock(t, map[string]string{"paths.lua": pathRules}),
		Limits: proxy.Limits{
			HandshakeTimeout: 300 * time.Millisecond,
			IdleTimeout:      time.Second,
			MaxHeldBytes:     48 << 10,
		},
		// Every connection still in its handshake has the machine's
		// timer armed for an hour: one that Close did not stop would keep
		// its Session alive that long.
		MachineTimeout: time.Hour,
		OnSession: func(s *tlssm.Session) {
			sessions.Add(1)
			src := s.Flow().Src.String()
			alive.Store(src, true)
			// A cleanup, not a finalizer: a Session is in a cycle
			// (its handler's flow reads it), which finalizers never
			// collect.
			runtime.AddCleanup(s, func(src string) {
				collected.Add(1)
				alive.Delete(src)
			}, src)
		},
		Wrap: func(fl *inspect.Flow, h tlssm.Handler) tlssm.Handler {
			switch fl.Src.Addr() {
			case srcPanic:
				return panicking{Handler: h, on: tlssm.EvClientHello}
			case srcGoPanic:
				return evalBoom{h.(*rules.TLSHandler)}
			}
			return h
		},
	})
	runtime.GC()
	baseGoroutines := ownGoroutines()

	hello := func(sni string) func(c *net.TCPConn) {
		return func(c *net.TCPConn) {
			c.Write(tlspeer.ClientHello12(sni, false))
			expectClosed(t, c)
		}
	}
	paths := []struct {
		name     string
		upstream string
		client   func(c *net.TCPConn)
		verdict  string
		rule     string
	}{
		{"pass", "", nil, "pass", ""},
		{"rule drop", "", hello("drop.test"), "drop", "paths.lua:1"},
		{"rule reset", "", hello("reset.test"), "reset", "paths.lua:1"},
		{"rule error", "", hello("error.test"), "drop", "paths.lua:1"},
		{"rule overrun", "", hello("loop.test"), "drop", "paths.lua:1"},
		{"rule bypass", "", func(c *net.TCPConn) {
			c.Write(tlspeer.ClientHello12("bypass.test", false))
			c.CloseWrite()
			expectClosed(t, c)
		}, "bypass", "paths.lua:1"},
		{"upstream refused", deadAddr(t), func(c *net.TCPConn) { expectClosed(t, c) }, "reset", proxy.RuleUpstream},
		{"handshake timeout", "", func(c *net.TCPConn) { expectClosed(t, c) }, "drop", proxy.RuleHandshakeTimeout},
		{"server silent", silent.addr, func(c *net.TCPConn) {
			c.Write(f.Turns[0])
			c.CloseWrite()
			expectClosed(t, c)
		}, "pass", ""},
		{"idle timeout", "", func(c *net.TCPConn) {
			f.PlayClient(c, make([]byte, f.MaxTurn()))
			expectClosed(t, c)
		}, "drop", proxy.RuleIdleTimeout},
		{"max-held-bytes", "", func(c *net.TCPConn) {
			c.Write(partialHello(60<<10, 56<<10))
			expectClosed(t, c)
		}, "drop", proxy.RuleMaxHeldBytes},
		{"malformed", "", func(c *net.TCPConn) {
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			expectClosed(t, c)
		}, "drop", "hygiene.lua:"},
		{"client reset", "", func(c *net.TCPConn) {
			c.Write(f.Turns[0][:40])
			c.SetLinger(0)
			c.Close()
		}, "pass", ""},
	}
	var wg sync.WaitGroup
	for i, p := range paths {
		src := pathSrc(i + 1)
		if p.upstream != "" {
			r.route(src, p.upstream)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.client == nil {
				if err := exchange(r.addr, src, f, rand.New(rand.NewPCG(1, 2))); err != nil {
					t.Errorf("%s: %v", p.name, err)
				}
				return
			}
			c := r.connect(src)
			defer c.Close()
			p.client(c)
		}()
	}
	for _, src := range []netip.Addr{srcPanic, srcGoPanic} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			helloExchange(t, r, src, "localhost")
		}()
	}
	wg.Wait()
	for i, p := range paths {
		rec := r.waitRecords(p.name, 1, fromAddr(pathSrc(i+1)))[0]
		// A rule of a Lua file is named by its file's prefix: its line
		// moves when the file is edited.
		if rec.Verdict != p.verdict || !strings.HasPrefix(rec.Rule, p.rule) || !strings.HasSuffix(p.rule, ":") && rec.Rule != p.rule {
			t.Errorf("%s: record %+v, want %s by %q", p.name, rec, p.verdict, p.rule)
		}
	}
	for _, src := range []netip.Addr{srcPanic, srcGoPanic} {
		if rec := r.waitRecords("panic", 1, fromAddr(src))[0]; rec.Rule != proxy.RulePanic {
			t.Errorf("record %+v", rec)
		}
	}
	eventually(t, "every connection closed", func() bool { return r.p.Active() == 0 })
	for _, l := range []string{proxy.LimitHandshakeTimeout, proxy.LimitIdleTimeout, proxy.LimitMaxHeldBytes} {
		if v := metric(r.metrics.Limits.WithLabelValues(l)); v != 1 {
			t.Errorf("haka_proxy_limits_total{limit=%q} %v", l, v)
		}
	}

	if err := r.engine.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := r.engine.Stats(); s.Sets != 1 {
		t.Errorf("%d rule sets open after the reload (%d states): a connection kept the replaced one", s.Sets, s.States)
	}
	eventually(t, "the connections' goroutines ended", func() bool { return ownGoroutines() <= baseGoroutines })
	deadline := time.Now().Add(waitFor)
	for collected.Load() < sessions.Load() && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	alive.Range(func(k, _ any) bool {
		t.Errorf("the Session of %v was not collected", k)
		return true
	})
	t.Logf("%d connections, %d Sessions collected, goroutines back to %d", sessions.Load(), collected.Load(), baseGoroutines)
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// Clients that each hold a large handshake message part-way cannot make
// the proxy hold more than its caps per connection: the pump's buffer
// (at most --max-held-bytes plus one read buffer) and the reassembly of
// the message (at most its cap: 64 KiB for a ClientHello, 256 KiB for
// the rest). Measured with 200 clients holding 56 KiB of a 60 KiB
// ClientHello, and 40 servers holding 200 KiB of a 250 KiB Certificate;
// once they are gone, the heap comes back.
func TestHeldMemoryBounded(t *testing.T) {
	f := flight(t)
	diag, err := newSockDiag()
	if err != nil {
		t.Skip(err)
	}
	defer diag.close()
	const readBuffer = 32 << 10 // the pump's
	lim := proxy.DefaultLimits()
	cases := []struct {
		name      string
		n         int
		up        bool
		held      []byte
		cap       int
		heldBytes int
	}{
		{"ClientHello", 200, true, partialHello(60<<10, 56<<10), dissect.DefaultMaxClientHello, 56 << 10},
		{"Certificate", 40, false, nil, dissect.DefaultMaxMessage, 200 << 10},
	}
	declared := 250 << 10
	cert := make([]byte, 4+200<<10)
	cert[0], cert[1], cert[2], cert[3] = 11, byte(declared>>16), byte(declared>>8), byte(declared)
	fillRandom(rand.New(rand.NewPCG(3, 3)), cert[4:])
	server, _ := serverFlightWith(t, cert, maxPlaintext)
	cases[1].held = server

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The proxy's ends of the connections that carry the held
			// bytes, as (own, peer) addresses.
			var mu sync.Mutex
			var ends [][2]netip.AddrPort
			be := startBackend(t, func(c *net.TCPConn) {
				if !tc.up {
					io.ReadFull(c, make([]byte, len(f.Turns[0])))
					c.Write(tc.held)
					mu.Lock()
					ends = append(ends, [2]netip.AddrPort{addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())})
					mu.Unlock()
				}
				io.Copy(io.Discard, c)
			})
			r := newRig(t, be.addr, rigConfig{})
			base := heapInUse()
			conns := make([]*net.TCPConn, tc.n)
			for i := range conns {
				c := r.connect(netip.Addr{})
				conns[i] = c
				if tc.up {
					c.Write(tc.held)
					ends = append(ends, [2]netip.AddrPort{addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())})
				} else {
					c.Write(f.Turns[0])
				}
			}
			eventually(t, "the proxy read what it holds", func() bool {
				mu.Lock()
				defer mu.Unlock()
				if len(ends) < tc.n {
					return false
				}
				for _, e := range ends {
					if n, err := diag.rqueue(e[0], e[1]); err != nil || n > 0 {
						return false
					}
				}
				return true
			})
			held := heapInUse() - base
			perConn := held / int64(tc.n)
			bound := int64(lim.MaxHeldBytes + readBuffer + tc.cap)
			t.Logf("%d connections each holding %d KiB: the heap grew by %.1f MiB, %.0f KiB per connection (bound %d KiB)",
				tc.n, tc.heldBytes>>10, float64(held)/(1<<20), float64(perConn)/1024, bound>>10)
			if perConn > bound {
				t.Errorf("%d KiB per connection, over the caps' %d KiB", perConn>>10, bound>>10)
			}
			if r.p.Active() != tc.n {
				t.Fatalf("%d connections open, want %d", r.p.Active(), tc.n)
			}
			for _, c := range conns {
				c.SetLinger(0)
				c.Close()
			}
			eventually(t, "every connection closed", func() bool { return r.p.Active() == 0 })
			eventually(t, "the heap came back", func() bool { return heapInUse()-base < 4<<20 })
		})
	}
}
