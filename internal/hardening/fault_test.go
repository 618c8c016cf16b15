package hardening

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/proxy"
)

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// The upstream refuses: the client is reset at once, the record and the
// metric name the cause.
func TestUpstreamRefused(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, deadAddr(t))
	during(t, r, func() {
		start := time.Now()
		// The reset can come before the dialler has looked at its
		// socket: connect then reports it.
		c, err := dialFrom(srcFault, r.addr)
		switch {
		case err == nil:
			defer c.Close()
			c.Write(f.Turns[0])
			if _, reset := expectClosed(t, c); !reset {
				t.Error("the client was not reset")
			}
		case !isReset(err):
			t.Fatalf("dial the proxy: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the client learnt of the refusal after %v", d)
		}
		rec := r.waitRecords("record of the refused connection", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "reset" || rec.Rule != proxy.RuleUpstream || !strings.HasPrefix(rec.Reason, "upstream refused") {
			t.Errorf("record %+v", rec)
		}
	})
	if v := metric(r.metrics.DialErrors.WithLabelValues(proxy.DialRefused)); v != 1 {
		t.Errorf("dial errors (refused): %v", v)
	}
}

// blackhole returns the address of a listener whose accept queue is full:
// the kernel drops every further SYN, as a host behind a firewall that
// drops does, and a connect only ends by its timeout.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 queues one connection; nothing ever accepts it.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	// Fill the queue: connects succeed until one is dropped.
	for i := 0; ; i++ {
		if i == 8 {
			t.Fatal("the accept queue of a listener with backlog 0 never filled")
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// The upstream never answers the SYN: the dial times out after
// --dial-timeout and the client is reset; the others are served meanwhile.
func TestUpstreamBlackholed(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	const dialTimeout = 300 * time.Millisecond
	r := newRig(t, be.addr, rigConfig{Limits: proxy.Limits{DialTimeout: dialTimeout}})
	r.route(srcFault, blackhole(t))
	during(t, r, func() {
		start := time.Now()
		// The reset can come before the dialler has looked at its
		// socket: connect then reports it.
		c, err := dialFrom(srcFault, r.addr)
		switch {
		case err == nil:
			defer c.Close()
			c.Write(f.Turns[0])
			if _, reset := expectClosed(t, c); !reset {
				t.Error("the client was not reset")
			}
		case !isReset(err):
			t.Fatalf("dial the proxy: %v", err)
		}
		if d := time.Since(start); d < dialTimeout || d > dialTimeout+2*time.Second {
			t.Errorf("the client was reset after %v, want the dial timeout of %v", d, dialTimeout)
		}
		rec := r.waitRecords("record of the blackholed connection", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "reset" || rec.Rule != proxy.RuleUpstream || !strings.HasPrefix(rec.Reason, "upstream timeout") {
			t.Errorf("record %+v", rec)
		}
	})
	if v := metric(r.metrics.DialErrors.WithLabelValues(proxy.DialTimeout)); v != 1 {
		t.Errorf("dial errors (timeout): %v", v)
	}
}

// midStream is a backend for the faults in the middle of a connection:
// the handshake, then serve.
func midStream(t *testing.T, serve func(c *net.TCPConn)) *backend {
	f := flight(t)
	return startBackend(t, func(c *net.TCPConn) {
		if err := f.PlayServer(c, make([]byte, f.MaxTurn())); err != nil {
			return
		}
		serve(c)
	})
}

// The upstream resets the connection while it streams: the client gets a
// prefix of what the upstream sent, intact, then a reset; the record says
// who failed.
func TestUpstreamResetMidStream(t *testing.T) {
	f := flight(t)
	stream := randomRecords(rand.New(rand.NewPCG(3, 4)), 256<<10, maxPlaintext)
	fault := midStream(t, func(c *net.TCPConn) {
		c.Write(stream)
		c.SetLinger(0)
		c.Close()
	})
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
		got, reset := expectClosed(t, c)
		if !bytes.HasPrefix(stream, got) {
			t.Fatalf("the client got %d bytes that are not a prefix of the stream (first difference at %d)", len(got), firstDiff(got, stream))
		}
		if !reset {
			t.Error("the upstream's reset did not reach the client")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "pass" || rec.Reason != "upstream: read: connection reset by peer" {
			t.Errorf("record %+v", rec)
		}
		t.Logf("%d of %d bytes reached the client before the reset", len(got), len(stream))
	})
}

// The client resets the connection while it sends: the upstream gets a
// prefix of the client's bytes, intact, then a reset.
func TestClientResetMidStream(t *testing.T) {
	f := flight(t)
	stream := randomRecords(rand.New(rand.NewPCG(5, 6)), 256<<10, maxPlaintext)
	type result struct {
		got   []byte
		reset bool
	}
	results := make(chan result, 1)
	fault := midStream(t, func(c *net.TCPConn) {
		got, err := io.ReadAll(c)
		results <- result{got, isReset(err)}
	})
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		c := r.connect(srcFault)
		if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
		c.Write(stream[:len(stream)/2])
		c.SetLinger(0)
		c.Close()
		var res result
		select {
		case res = <-results:
		case <-time.After(waitFor):
			t.Fatal("the upstream's connection did not end")
		}
		if !bytes.HasPrefix(stream, res.got) {
			t.Fatalf("the upstream got %d bytes that are not a prefix of the stream", len(res.got))
		}
		if !res.reset {
			t.Error("the client's reset did not reach the upstream")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "pass" || rec.Reason != "client: read: connection reset by peer" {
			t.Errorf("record %+v", rec)
		}
	})
}

// The client half-closes after its request and the server goes on
// sending: every byte of the server reaches the client, and the request
// reached the server.
func TestClientHalfCloseServerStillSending(t *testing.T) {
	f := flight(t)
	request := randomRecords(rand.New(rand.NewPCG(7, 8)), 10<<10, 4<<10)
	answer := randomRecords(rand.New(rand.NewPCG(9, 10)), 4<<20, maxPlaintext)
	gotRequest := make(chan [32]byte, 1)
	fault := midStream(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		gotRequest <- sha256.Sum256(b)
		c.Write(answer)
		c.CloseWrite()
	})
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, fault.addr)
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
		c.Write(request)
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, reset := expectClosed(t, c)
		if reset || sha256.Sum256(got) != sha256.Sum256(answer) {
			t.Fatalf("the client got %d of %d bytes (reset %v), first difference at %d", len(got), len(answer), reset, firstDiff(got, answer))
		}
		if <-gotRequest != sha256.Sum256(request) {
			t.Fatal("the server got a different request")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		want := int64(len(answer) + len(f.Turns[1]) + len(f.Turns[3]))
		if rec.Verdict != "pass" || rec.Reason != "" || rec.BytesDown != want {
			t.Errorf("record %+v, want pass with %d bytes down", rec, want)
		}
	})
}
