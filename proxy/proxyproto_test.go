package proxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hakaproxy/haka-proxy/proxy"
)

// lbAddrs are the client and virtual-IP addresses a load balancer puts
// in its header (documentation ranges).
func lbAddrs() (src, dst *net.TCPAddr) {
	return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40123}, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 443}
}

type seenHeader struct {
	h   *proxyproto.Header
	err error
}

// ppBackend parses the PROXY header the proxy sends with go-proxyproto,
// reports it, and echoes the rest.
func ppBackend(t *testing.T) (*backend, <-chan seenHeader) {
	seen := make(chan seenHeader, 4)
	be := startBackend(t, func(c *net.TCPConn) {
		pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE))
		h := pc.ProxyHeader()
		var err error
		if h == nil {
			_, err = pc.Read(make([]byte, 1))
		}
		seen <- seenHeader{h, err}
		io.Copy(pc, pc)
		c.CloseWrite()
	})
	return be, seen
}

func trusted(t *testing.T, s ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, x := range s {
		ps = append(ps, netip.MustParsePrefix(x))
	}
	return ps
}

// A trusted load balancer's v1 or v2 header gives the flow its client
// address, and the proxy tells the backend with a v1 or v2 header of its
// own. Header and data arrive in one segment: the bytes read past the
// header are not lost.
func TestProxyProtocolInOut(t *testing.T) {
	lbSrc, lbDst := lbAddrs()
	for _, in := range []byte{1, 2} {
		for _, out := range []int{1, 2} {
			t.Run(fmt.Sprintf("in=v%d/out=v%d", in, out), func(t *testing.T) {
				be, seen := ppBackend(t)
				h := startProxy(t, be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{
					In: true, Trusted: trusted(t, "127.0.0.0/8"), Out: out,
				}})
				c := h.dial()
				hdr, err := proxyproto.HeaderProxyFromAddrs(in, lbSrc, lbDst).Format()
				if err != nil {
					t.Fatal(err)
				}
				c.Write(append(hdr, "hello through the LB"...))
				c.CloseWrite()
				got, err := readAll(t, c)
				if err != nil || string(got) != "hello through the LB" {
					t.Fatalf("echo %q, %v", got, err)
				}
				s := <-seen
				if s.err != nil || s.h == nil {
					t.Fatalf("backend: no PROXY header: %v", s.err)
				}
				if s.h.Version != byte(out) || s.h.SourceAddr.String() != lbSrc.String() || s.h.DestinationAddr.String() != lbDst.String() {
					t.Fatalf("backend got v%d %s -> %s, want v%d %s -> %s",
						s.h.Version, s.h.SourceAddr, s.h.DestinationAddr, out, lbSrc, lbDst)
				}
				rec := h.record()
				if rec.Flow.Src != lbSrc.String() || rec.Flow.Dst != lbDst.String() {
					t.Fatalf("record flow %+v, want the header's addresses", rec.Flow)
				}
			})
		}
	}
}

// Without PROXY protocol in, the proxy still tells the backend the real
// client address.
func TestProxyProtocolOutOnly(t *testing.T) {
	be, seen := ppBackend(t)
	h := startProxy(t, be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{Out: 2}})
	c := h.dial()
	c.Write([]byte("x"))
	c.CloseWrite()
	readAll(t, c)
	s := <-seen
	if s.h == nil || s.h.SourceAddr.String() != c.LocalAddr().String() {
		t.Fatalf("backend header %+v, want source %s", s.h, c.LocalAddr())
	}
	h.record()
}

// A trusted source must send a valid header; what goes wrong is refused
// with a log line naming the cause.
func TestProxyProtocolTrustedRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		send   []byte
		reason string
	}{
		{"missing", []byte("\x16\x03\x01\x02\x00hello"), `missing PROXY header: the stream starts with "\x16\x03\x01\x02\x00hello"`},
		{"malformed v1", []byte("PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n"), "malformed PROXY header: "},
		{"malformed v2", append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0x00, 0x02, 1, 2), "malformed PROXY header: "},
		{"timeout", nil, "no PROXY header within 200ms"},
		{"truncated", proxyproto.SIGV2[:8], "incomplete PROXY header within 200ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be, _ := lineBackend(t)
			h := startProxy(t, be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{
				In: true, Trusted: trusted(t, "127.0.0.1/32"), Timeout: 200 * time.Millisecond,
			}})
			c := h.dial()
			if tc.send != nil {
				c.Write(tc.send)
			}
			if _, err := readAll(t, c); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read: %v, want ECONNRESET", err)
			}
			rec := h.record()
			if rec.Rule != proxy.RuleProxyProtocol || !strings.HasPrefix(rec.Reason, "PROXY protocol: "+tc.reason) {
				t.Fatalf("record %+v, want reason %q", rec, tc.reason)
			}
			warn := h.logs.FilterMessage("PROXY protocol: connection refused").All()
			if len(warn) != 1 || !strings.HasPrefix(warn[0].ContextMap()["reason"].(string), tc.reason) {
				t.Fatalf("warn lines %+v", warn)
			}
			if v := value(h.metrics.Refused.WithLabelValues(proxy.RefusedProxyProtocol)); v != 1 {
				t.Fatalf("refused {reason=proxy_protocol} = %v", v)
			}
		})
	}
}

// An untrusted source is served on its own address, and must not send a
// header: it could forge any client address.
func TestProxyProtocolUntrusted(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{
		In: true, Trusted: trusted(t, "10.0.0.0/8"),
	}})

	c := h.dial()
	c.Write([]byte("plain client"))
	c.CloseWrite()
	if got, err := readAll(t, c); err != nil || string(got) != "plain client" {
		t.Fatalf("untrusted without header: %q, %v", got, err)
	}
	if rec := h.record(); rec.Flow.Src != c.LocalAddr().String() {
		t.Fatalf("record src %s, want the socket's %s", rec.Flow.Src, c.LocalAddr())
	}

	c = h.dial()
	lbSrc, lbDst := lbAddrs()
	hdr, _ := proxyproto.HeaderProxyFromAddrs(2, lbSrc, lbDst).Format()
	c.Write(hdr)
	if _, err := readAll(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("untrusted with header: %v, want ECONNRESET", err)
	}
	if rec := h.record(); rec.Reason != "PROXY protocol: PROXY header from an untrusted source" {
		t.Fatalf("record %+v", rec)
	}
}

// A LOCAL header (a health check from the balancer) keeps the socket's
// addresses.
func TestProxyProtocolLocal(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{
		In: true, Trusted: trusted(t, "127.0.0.1/32"),
	}})
	c := h.dial()
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := local.Format()
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append(b, "ping"...))
	c.CloseWrite()
	if got, err := readAll(t, c); err != nil || !bytes.Equal(got, []byte("ping")) {
		t.Fatalf("%q, %v", got, err)
	}
	if rec := h.record(); rec.Flow.Src != c.LocalAddr().String() {
		t.Fatalf("record src %s", rec.Flow.Src)
	}
}

func TestProxyProtocolConfig(t *testing.T) {
	_, err := proxy.New(proxy.Config{Upstream: "127.0.0.1:1", ProxyProtocol: proxy.ProxyProtocol{In: true}})
	if err == nil || !strings.Contains(err.Error(), "proxy-protocol-trusted") {
		t.Fatalf("In without Trusted: %v", err)
	}
	_, err = proxy.New(proxy.Config{Upstream: "127.0.0.1:1", ProxyProtocol: proxy.ProxyProtocol{Out: 3}})
	if err == nil {
		t.Fatal("Out: 3 accepted")
	}
}
