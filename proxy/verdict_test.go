package proxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// lineBackend records what it receives (sent on got at EOF or error) and
// answers each line with "ack <line>".
func lineBackend(t *testing.T) (*backend, <-chan string) {
	got := make(chan string, 16)
	be := startBackend(t, func(c *net.TCPConn) {
		var all bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			all.Write(buf[:n])
			for _, line := range strings.SplitAfter(string(buf[:n]), "\n") {
				if strings.HasSuffix(line, "\n") {
					c.Write([]byte("ack " + line))
				}
			}
			if err != nil {
				select {
				case got <- all.String():
				default: // nobody is looking
				}
				return
			}
		}
	})
	return be, got
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(waitFor):
		t.Fatalf("nothing came in %v", waitFor)
	}
	var zero T
	return zero
}

// Drop: the line that triggered it never reaches the backend, the lines
// before it do, and both sides are closed.
func TestVerdictDrop(t *testing.T) {
	be, got := lineBackend(t)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(nil)})
	c := h.dial()
	lines := scanLines(c)
	c.Write([]byte("hello\n"))
	if l := <-lines; l != "ack hello" {
		t.Fatalf("got %q", l)
	}
	c.Write([]byte("DROP me and the secret that follows\nnever\n"))
	if s := recv(t, got); s != "hello\n" {
		t.Fatalf("backend received %q, want only the line before the drop", s)
	}
	for l := range lines {
		t.Fatalf("client got %q after the drop", l)
	}
	rec := h.record()
	if rec.Verdict != "drop" || rec.Rule != "test.lua:1" || rec.Reason != "line says drop" || rec.Flow.SNI != "line.test" {
		t.Fatalf("record %+v", rec)
	}
	if rec.BytesUp != int64(len("hello\n")) {
		t.Fatalf("bytes up %d", rec.BytesUp)
	}
	if v := value(h.metrics.Verdicts.WithLabelValues("drop")); v != 1 {
		t.Fatalf("drop verdicts metric %v", v)
	}
}

// Reset: the client sees ECONNRESET, the backend too, and the held line
// never reaches the backend.
func TestVerdictReset(t *testing.T) {
	be, got := lineBackend(t)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(nil)})
	c := h.dial()
	c.Write([]byte("hello\nRESET now\n"))
	buf := make([]byte, 100)
	var err error
	for err == nil {
		_, err = c.Read(buf) // "ack hello" may come first
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want ECONNRESET", err)
	}
	if s := recv(t, got); s != "hello\n" {
		t.Fatalf("backend received %q", s)
	}
	if rec := h.record(); rec.Verdict != "reset" || rec.Rule != "test.lua:2" {
		t.Fatalf("record %+v", rec)
	}
}

// Bypass: the pending bytes of both directions go on, the inspector is
// never fed again, and the rest (1 MiB each way) is spliced unaltered.
func TestVerdictBypass(t *testing.T) {
	const size = 1 << 20
	block := randomBlock(size)
	be := startBackend(t, func(c *net.TCPConn) {
		// The server says something the inspector holds (no newline),
		// then echoes.
		c.Write([]byte("partial line from the server"))
		io.Copy(c, c)
		c.CloseWrite()
	})
	made := make(chan *lineInspector, 1)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(made)})
	c := h.dial()
	li := <-made
	// Let the inspector see (and hold) the server's bytes first, so that
	// no Feed races with the bypass.
	for d := range li.fed {
		if d == dissect.Down {
			break
		}
	}
	c.Write([]byte("BYPASS\n"))
	head := make([]byte, len("partial line from the serverBYPASS\n"))
	if _, err := io.ReadFull(c, head); err != nil {
		t.Fatal(err)
	}
	if string(head) != "partial line from the serverBYPASS\n" {
		t.Fatalf("got %q: the held server bytes should come first", head)
	}
	go func() {
		io.Copy(c, bytes.NewReader(block))
		c.CloseWrite()
	}()
	back, err := readAll(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, block) {
		t.Fatalf("spliced echo differs (%d bytes, want %d)", len(back), size)
	}
	rec := h.record()
	if rec.Verdict != "bypass" || rec.Rule != "test.lua:3" {
		t.Fatalf("record %+v", rec)
	}
	li.mu.Lock()
	defer li.mu.Unlock()
	if li.afterByp != 0 {
		t.Fatalf("the inspector was fed %d times after the bypass", li.afterByp)
	}
	if !li.closed || li.summary.BytesUp != int64(len("BYPASS\n")+size) {
		t.Fatalf("inspector closed=%v with summary %+v", li.closed, li.summary)
	}
}

// A verdict given through kill (from outside Feed, as a state machine
// timeout does) ends an idle connection at once.
func TestKill(t *testing.T) {
	be := startBackend(t, echo)
	kills := make(chan func(inspect.Decision), 1)
	f := factoryFunc(func(_ *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		kills <- kill
		return &lineInspector{}, inspect.Decision{}
	})
	h := startProxy(t, be.addr, proxy.Config{Factory: f})
	c := h.dial()
	kill := <-kills
	c.Write([]byte("ping\n"))
	lines := scanLines(c)
	if l := <-lines; l != "ping" {
		t.Fatalf("got %q", l)
	}
	kill(inspect.Decision{Verdict: inspect.Reset, Reason: "state timeout", Rule: "builtin:timeout"})
	kill(inspect.Decision{Verdict: inspect.Drop, Reason: "second kill, ignored"})
	for l := range lines {
		t.Fatalf("got %q after the kill", l)
	}
	if rec := h.record(); rec.Verdict != "reset" || rec.Reason != "state timeout" {
		t.Fatalf("record %+v", rec)
	}
}

// A panic in an inspector resets that connection, is logged with its
// stack and counted, and the proxy keeps serving.
func TestPanicInInspector(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(nil)})
	c := h.dial()
	c.Write([]byte("PANIC\n"))
	if _, err := readAll(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want ECONNRESET", err)
	}
	rec := h.record()
	if rec.Verdict != "reset" || rec.Rule != proxy.RulePanic || !strings.Contains(rec.Reason, "line says panic") {
		t.Fatalf("record %+v", rec)
	}
	if v := value(h.metrics.Panics); v != 1 {
		t.Fatalf("panics metric %v", v)
	}
	logged := h.logs.FilterMessage("panic in a connection; resetting it").All()
	if len(logged) != 1 || !strings.Contains(logged[0].ContextMap()["stack"].(string), "lineInspector") {
		t.Fatalf("panic log %+v", logged)
	}
	// Still serving.
	c2 := h.dial()
	c2.Write([]byte("after\n"))
	c2.CloseWrite()
	if b, err := readAll(t, c2); err != nil || string(b) != "after\n" {
		t.Fatalf("after the panic: %q, %v", b, err)
	}
}

// A factory that refuses the connection: it is reset before any dial.
func TestFactoryRefuses(t *testing.T) {
	dialled := make(chan struct{}, 1)
	be := startBackend(t, func(*net.TCPConn) { dialled <- struct{}{} })
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		return nil, inspect.Decision{Verdict: inspect.Reset, Reason: "blocked source", Rule: "acl.lua:3"}
	})
	h := startProxy(t, be.addr, proxy.Config{Factory: f})
	h.expectReset()
	if rec := h.record(); rec.Verdict != "reset" || rec.Reason != "blocked source" {
		t.Fatalf("record %+v", rec)
	}
	select {
	case <-dialled:
		t.Fatal("the upstream was dialled for a refused connection")
	default:
	}
	if v := value(h.metrics.Refused.WithLabelValues(proxy.RefusedInspector)); v != 1 {
		t.Fatalf("refused metric %v", v)
	}
}

// An inspector that holds more than max-held-bytes gets the connection
// dropped with a reason that says so.
func TestMaxHeldBytes(t *testing.T) {
	be, got := lineBackend(t)
	h := startProxy(t, be.addr, proxy.Config{Factory: onLine(nil), Limits: proxy.Limits{MaxHeldBytes: 64 << 10}})
	c := h.dial()
	go c.Write(bytes.Repeat([]byte("x"), 200<<10)) // no newline: held
	if _, err := readAll(t, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v", err)
	}
	if s := recv(t, got); s != "" {
		t.Fatalf("backend received %d bytes of a held line", len(s))
	}
	rec := h.record()
	if rec.Verdict != "drop" || rec.Rule != proxy.RuleMaxHeldBytes || !strings.Contains(rec.Reason, "more than max-held-bytes 65536") {
		t.Fatalf("record %+v", rec)
	}
}

// An inspector that breaks the contract (clears more than it was given)
// gets the connection dropped and counted as an inspection error.
func TestInspectorContractViolation(t *testing.T) {
	be := startBackend(t, echo)
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		return badInspector{}, inspect.Decision{}
	})
	h := startProxy(t, be.addr, proxy.Config{Factory: f})
	c := h.dial()
	c.Write([]byte("x"))
	readAll(t, c)
	rec := h.record()
	if rec.Verdict != "drop" || rec.Rule != proxy.RuleInspector || !strings.Contains(rec.Reason, "Forward 2") {
		t.Fatalf("record %+v", rec)
	}
	if v := value(h.metrics.InspectionErrors); v != 1 {
		t.Fatalf("inspection errors %v", v)
	}
}

type badInspector struct{}

func (badInspector) Feed(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(p) + 1}
}
func (badInspector) EOF(dissect.Direction, []byte, time.Time) inspect.Result { return inspect.Result{} }
func (badInspector) Info() inspect.Info                                      { return inspect.Info{} }
func (badInspector) Close(inspect.Summary)                                   {}
