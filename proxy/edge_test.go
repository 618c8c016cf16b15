package proxy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// The client closes its sending side first: the backend sees EOF, and
// still answers through the other direction.
func TestHalfCloseClientFirst(t *testing.T) {
	be := startBackend(t, func(c *net.TCPConn) {
		got, _ := io.ReadAll(c)
		c.Write([]byte("you said " + string(got)))
		c.CloseWrite()
	})
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	c.Write([]byte("bye"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, c)
	if err != nil || string(got) != "you said bye" {
		t.Fatalf("got %q, %v", got, err)
	}
	if rec := h.record(); rec.Verdict != "pass" || rec.Reason != "" {
		t.Fatalf("record %+v", rec)
	}
}

// The server closes its sending side first: the client sees EOF, and its
// later bytes still reach the server.
func TestHalfCloseServerFirst(t *testing.T) {
	got := make(chan string, 1)
	be := startBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("greeting"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	b, err := readAll(t, c)
	if err != nil || string(b) != "greeting" {
		t.Fatalf("got %q, %v", b, err)
	}
	c.Write([]byte("late words"))
	c.CloseWrite()
	if s := recv(t, got); s != "late words" {
		t.Fatalf("server got %q", s)
	}
	if rec := h.record(); rec.Verdict != "pass" || rec.BytesUp != 10 || rec.BytesDown != 8 {
		t.Fatalf("record %+v", rec)
	}
}

// The upstream refuses: the client is reset at once and the log line
// names the cause.
func TestUpstreamRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h := startProxy(t, dead, proxy.Config{})
	start := time.Now()
	h.expectReset()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the client waited %s", d)
	}
	rec := h.record()
	if rec.Verdict != "reset" || rec.Rule != proxy.RuleUpstream || !strings.HasPrefix(rec.Reason, "upstream refused: ") {
		t.Fatalf("record %+v", rec)
	}
	lines := h.logs.FilterMessage("connection closed").All()
	if len(lines) != 1 || !strings.Contains(lines[0].ContextMap()["reason"].(string), "connection refused") ||
		lines[0].ContextMap()["upstream"] != dead {
		t.Fatalf("log lines %+v", lines)
	}
	if v := value(h.metrics.DialErrors.WithLabelValues(proxy.DialRefused)); v != 1 {
		t.Fatalf("dial errors {cause=refused} = %v", v)
	}
}

// The upstream does not answer (its accept queue is full, so its kernel
// drops our SYN): the dial times out and the log line says so.
func TestUpstreamTimeout(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 queues one connection; nobody accepts it.
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	filler, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()

	h := startProxy(t, addr, proxy.Config{Limits: proxy.Limits{DialTimeout: 300 * time.Millisecond}})
	h.expectReset()
	rec := h.record()
	if !strings.HasPrefix(rec.Reason, "upstream timeout: ") {
		t.Fatalf("record %+v", rec)
	}
	if v := value(h.metrics.DialErrors.WithLabelValues(proxy.DialTimeout)); v != 1 {
		t.Fatalf("dial errors {cause=timeout} = %v", v)
	}
}

// The upstream resets mid-stream: what it sent before reaches the client,
// then the client is reset and the log line names the upstream.
func TestUpstreamResetsMidStream(t *testing.T) {
	be := startBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("partial answer"))
		c.SetLinger(0)
	})
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	c.Write([]byte("hello"))
	got, err := readAll(t, c)
	if !errors.Is(err, syscall.ECONNRESET) || !strings.HasPrefix("partial answer", string(got)) {
		t.Fatalf("client got %q, %v; want a prefix of the answer, then ECONNRESET", got, err)
	}
	rec := h.record()
	if rec.Verdict != "pass" || rec.Reason != "upstream: read: connection reset by peer" {
		t.Fatalf("record %+v", rec)
	}
}

// The upstream closes cleanly mid-stream, a FIN while the client is still
// sending: the client gets the whole answer, then EOF, and the connection
// is no failure. The upstream keeps reading after its FIN: a socket
// closed outright with bytes still arriving is answered by a reset, which
// is TestUpstreamResetsMidStream.
func TestUpstreamClosesMidStream(t *testing.T) {
	const answer = "the whole answer"
	received := make(chan int64, 1)
	be := startBackend(t, func(c *net.TCPConn) {
		n, _ := io.ReadFull(c, make([]byte, 5))
		c.Write([]byte(answer))
		c.CloseWrite()
		rest, _ := io.Copy(io.Discard, c)
		received <- int64(n) + rest
	})
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	// The client streams until it has read the upstream's EOF, so that
	// the FIN comes while it is sending.
	stop := make(chan struct{})
	sent := make(chan int64, 1)
	go func() {
		var n int64
		defer func() { c.CloseWrite(); sent <- n }()
		chunk := randomBlock(4 << 10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			w, err := c.Write(chunk)
			n += int64(w)
			if err != nil {
				t.Errorf("client write after %d bytes: %v", n, err)
				return
			}
		}
	}()
	got, err := readAll(t, c)
	close(stop)
	if err != nil || string(got) != answer {
		t.Fatalf("client got %q, %v; want the answer, then EOF", got, err)
	}
	up := recv(t, sent)
	if up < 5 {
		t.Fatalf("the client sent only %d bytes", up)
	}
	if n := recv(t, received); n != up {
		t.Fatalf("the upstream received %d of the %d bytes the client sent", n, up)
	}
	rec := h.record()
	if rec.Verdict != "pass" || rec.Reason != "" || rec.Rule != "" || rec.BytesUp != up || rec.BytesDown != int64(len(answer)) {
		t.Fatalf("record %+v; want pass, no reason, %d bytes up and %d down", rec, up, len(answer))
	}
}

// A client that sends part of its opening message and then trickles
// bytes hits the handshake timeout: the deadline is from accept, not from
// the last byte.
func TestHandshakeTimeoutSlowClient(t *testing.T) {
	be, got := lineBackend(t)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(nil), Limits: proxy.Limits{HandshakeTimeout: 300 * time.Millisecond}})
	c := h.dial()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	}()
	readAll(t, c)
	rec := h.record()
	if rec.Verdict != "drop" || rec.Rule != proxy.RuleHandshakeTimeout ||
		rec.Reason != "handshake timeout: the client's opening message was not complete within 300ms" {
		t.Fatalf("record %+v", rec)
	}
	if s := recv(t, got); s != "" {
		t.Fatalf("the backend got %q of an unfinished opening message", s)
	}
}

// A client that connects and sends nothing is closed at the handshake
// timeout.
func TestSilentClient(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{Limits: proxy.Limits{HandshakeTimeout: 200 * time.Millisecond}})
	c := h.dial()
	if b, err := readAll(t, c); err != nil || len(b) != 0 {
		t.Fatalf("got %q, %v; want EOF", b, err)
	}
	if rec := h.record(); rec.Rule != proxy.RuleHandshakeTimeout {
		t.Fatalf("record %+v", rec)
	}
}

// Idle connections are closed after the idle timeout; one that trickles
// bytes more often than that is not.
func TestIdleTimeout(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{Limits: proxy.Limits{IdleTimeout: 300 * time.Millisecond}})

	busy := h.dial()
	idle := h.dial()
	idle.Write([]byte("x"))
	one := make([]byte, 1)
	if _, err := io.ReadFull(idle, one); err != nil {
		t.Fatal(err)
	}
	// Keep busy going, one byte each way every 50ms, until idle is gone.
	idleGone := make(chan struct{})
	go func() {
		readAll(t, idle)
		close(idleGone)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	for done := false; !done || sent < 12; sent++ {
		if _, err := busy.Write([]byte("y")); err != nil {
			t.Fatalf("busy connection write after %d bytes: %v", sent, err)
		}
		if _, err := io.ReadFull(busy, one); err != nil {
			t.Fatalf("busy connection read after %d bytes: %v", sent, err)
		}
		select {
		case <-idleGone:
			done = true
		default:
		}
		<-tick.C
	}
	rec := h.record()
	if rec.Rule != proxy.RuleIdleTimeout || rec.Reason != "idle timeout: no data either way for 300ms" {
		t.Fatalf("record %+v", rec)
	}
	busy.Close()
	if rec := h.record(); rec.Verdict != "pass" || rec.BytesUp != int64(sent) {
		t.Fatalf("busy record %+v (sent %d)", rec, sent)
	}
}

// Bytes that are not TLS end in the inspector's parse error: the
// connection is dropped with that reason, nothing reaches the backend.
func TestNotTLS(t *testing.T) {
	for name, input := range map[string][]byte{
		"http":    []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"garbage": {0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01},
	} {
		t.Run(name, func(t *testing.T) {
			be, got := lineBackend(t)
			h := startProxy(t, be.addr, proxy.Config{Factory: recordInspector{}})
			c := h.dial()
			c.Write(input)
			readAll(t, c)
			rec := h.record()
			if rec.Verdict != "drop" || rec.Rule != "builtin:fail" || !strings.HasPrefix(rec.Reason, "parse error: ") {
				t.Fatalf("record %+v", rec)
			}
			if s := recv(t, got); s != "" {
				t.Fatalf("backend got %q", s)
			}
			if v := value(h.metrics.InspectionErrors); v != 1 {
				t.Fatalf("inspection errors %v", v)
			}
		})
	}
}

// Beyond max-conns, new clients are refused at once and counted; when a
// slot frees up, clients are served again.
func TestMaxConns(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{Limits: proxy.Limits{MaxConns: 2}})
	var open []net.Conn
	for range 2 {
		c := h.dial()
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	h.expectReset()
	if v := value(h.metrics.Refused.WithLabelValues(proxy.RefusedMaxConns)); v != 1 {
		t.Fatalf("refused {reason=max_conns} = %v", v)
	}
	if n := h.logs.FilterMessage("max-conns reached: refusing new connections").Len(); n != 1 {
		t.Fatalf("%d warnings about max-conns", n)
	}
	open[0].Close()
	h.record()
	c := h.dial()
	c.Write([]byte("again"))
	c.CloseWrite()
	if b, err := readAll(t, c); err != nil || string(b) != "again" {
		t.Fatalf("after a slot freed: %q, %v", b, err)
	}
}

// lengthInspector frames a direction as 4-byte big-endian lengths, each
// followed by that many bytes. It judges headers only: a frame's body is
// passed (Result.Pass), so it never sees most of the bytes.
type lengthInspector struct{ fed [2]int }

func (li *lengthInspector) Feed(dir dissect.Direction, p []byte, _ time.Time) inspect.Result {
	li.fed[dir] += len(p)
	pos := 0
	for len(p)-pos >= 4 {
		n := int(p[pos])<<24 | int(p[pos+1])<<16 | int(p[pos+2])<<8 | int(p[pos+3])
		if len(p)-pos-4 >= n {
			pos += 4 + n
			continue
		}
		return inspect.Result{Forward: len(p), Pass: int64(4 + n - (len(p) - pos)), HelloDone: true}
	}
	return inspect.Result{Forward: pos, HelloDone: true}
}
func (li *lengthInspector) EOF(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(p)}
}
func (li *lengthInspector) Info() inspect.Info    { return inspect.Info{} }
func (li *lengthInspector) Close(inspect.Summary) {}

// Bytes covered by Result.Pass go on without being fed, exactly once
// and in order.
func TestPassBytes(t *testing.T) {
	const frames, frameSize = 16, 256 << 10
	be := startBackend(t, echo)
	made := make(chan *lengthInspector, 1)
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		li := &lengthInspector{}
		made <- li
		return li, inspect.Decision{}
	})
	h := startProxy(t, be.addr, proxy.Config{Factory: f})
	c := h.dial()
	li := <-made
	var msg bytes.Buffer
	block := randomBlock(frameSize)
	for i := range frames {
		msg.Write(binary.BigEndian.AppendUint32(nil, frameSize))
		msg.Write(block[i:])
		msg.Write(block[:i])
	}
	go func() {
		c.Write(msg.Bytes())
		c.CloseWrite()
	}()
	got, err := readAll(t, c)
	if err != nil || !bytes.Equal(got, msg.Bytes()) {
		t.Fatalf("echo through Pass differs (%d bytes, want %d): %v", len(got), msg.Len(), err)
	}
	rec := h.record()
	if rec.BytesUp != int64(msg.Len()) || rec.BytesDown != int64(msg.Len()) {
		t.Fatalf("record %+v", rec)
	}
	// Each frame is fed at most one read's worth of bytes.
	if up := li.fed[0]; up > msg.Len()/4 {
		t.Fatalf("the inspector was fed %d of %d bytes: Pass was not honoured", up, msg.Len())
	}
}
