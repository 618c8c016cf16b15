package main

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// tlsEcho is a TLS echo server for the proxy to stand in front of: the
// proxy inspects TLS, and drops what is not.
type tlsEcho struct {
	*tlspeer.Backend
	addr string
	// cfg is a client configuration that trusts it.
	cfg *tls.Config
}

// echoServer runs the tlspeer backend, an echo server (vulnerable to
// Heartbleed, which no test here sends).
func echoServer(t *testing.T) *tlsEcho {
	t.Helper()
	cert, pool, err := tlspeer.NewCert("echo.test")
	if err != nil {
		t.Fatal(err)
	}
	b := &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{cert}}, LeakSize: 1000}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &tlsEcho{Backend: b, addr: b.Addr(), cfg: &tls.Config{RootCAs: pool, ServerName: "echo.test"}}
}

// dial connects to the proxy at addr and completes a TLS handshake with
// the echo server behind it.
func (e *tlsEcho) dial(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, e.cfg)
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(waitFor))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake through the proxy: %v", err)
	}
	return tc
}

func roundTrip(t *testing.T, c net.Conn, s string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitFor))
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(s))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != s {
		t.Fatalf("echo %q, %v", b, err)
	}
}

// SIGTERM or SIGINT, either as the first signal: the real binary stops
// accepting, lets the open connection finish, and exits 0 once it has.
func TestSignalDrains(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGINT", syscall.SIGINT}} {
		sig := tc.sig
		t.Run(tc.name, func(t *testing.T) {
			echo := echoServer(t)
			p := startBinary(t, bin, "--listen", "127.0.0.1:0", "--upstream", echo.addr)
			c := echo.dial(t, p.addr)
			roundTrip(t, c, "before")

			p.cmd.Process.Signal(sig)
			if got := p.waitLog(t, "shutting down")["signal"]; got != sig.String() {
				t.Fatalf("shutting down on %v, want %v", got, sig)
			}
			// The listener closes: new clients are refused by the kernel (no
			// event says when, so poll, bounded). A probe accepted as the drain
			// begins is reset instead (refused while draining).
			deadline := time.Now().Add(waitFor)
			for {
				nc, err := net.Dial("tcp", p.addr)
				if err != nil {
					if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
						t.Fatalf("dial during the drain: %v", err)
					}
					break
				}
				nc.Close()
				if time.Now().After(deadline) {
					t.Fatalf("still accepting after %v", sig)
				}
				time.Sleep(10 * time.Millisecond)
			}
			roundTrip(t, c, "during the drain")
			select {
			case err := <-p.exited:
				t.Fatalf("exited (%v) with a connection open", err)
			default:
			}
			c.Close()
			p.waitLog(t, "stopped")
			p.wait(t)
			// The drained connection's record, among those of the probes that
			// were accepted before the listener closed.
			found := false
			for _, l := range p.stdout.all() {
				if !strings.Contains(l, `"type":"connection"`) || !strings.Contains(l, `"verdict":"pass"`) {
					t.Errorf("record %s", l)
				}
				found = found || strings.Contains(l, `"src":"`+c.LocalAddr().String()+`"`)
			}
			if !found {
				t.Fatal("no record of the drained connection on stdout")
			}
		})
	}
}

// At the drain timeout the open connections are closed and the process
// still exits 0.
func TestSIGTERMDrainTimeout(t *testing.T) {
	bin := buildBinary(t)
	echo := echoServer(t)
	p := startBinary(t, bin, "--listen", "127.0.0.1:0", "--upstream", echo.addr, "--drain-timeout", "300ms")
	c := echo.dial(t, p.addr)
	roundTrip(t, c, "x")
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog(t, "drain cut short")
	c.SetReadDeadline(time.Now().Add(waitFor))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client: %q, %v; want EOF", b, err)
	}
	p.wait(t)
	rec := p.stdout.all()
	if len(rec) == 0 || !strings.Contains(rec[0], `"reason":"shutdown: drain timeout"`) {
		t.Fatalf("record %s", rec)
	}
}
