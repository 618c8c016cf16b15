package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// The two ways a connection is set up carry the same traffic alike: the
// fast path (the upstream is an IP address: the proxy's own
// non-blocking connect, finished by the poller) and the general one (a
// hostname, or a DialFunc: the net package's dialer on a goroutine of
// its own).
func TestSetupPaths(t *testing.T) {
	for _, path := range []string{"fast", "hostname", "DialFunc"} {
		t.Run(path, func(t *testing.T) {
			cfgFor := func(upstream string, cfg proxy.Config) (string, proxy.Config) {
				switch path {
				case "hostname":
					_, port, _ := net.SplitHostPort(upstream)
					return "localhost:" + port, cfg
				case "DialFunc":
					var d net.Dialer
					cfg.Dial = func(ctx context.Context, _ *inspect.Flow) (*net.TCPConn, error) {
						c, err := d.DialContext(ctx, "tcp", upstream)
						if err != nil {
							return nil, err
						}
						return c.(*net.TCPConn), nil
					}
				}
				return upstream, cfg
			}

			t.Run("echo and half-close", func(t *testing.T) {
				be := startBackend(t, echo)
				u, cfg := cfgFor(be.addr, proxy.Config{})
				h := startProxy(t, u, cfg)
				c := h.dial()
				msg := randomBlock(3 << 20)
				go func() {
					c.Write(msg)
					c.CloseWrite()
				}()
				got, err := readAll(t, c)
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo of %d bytes: got %d, %v", len(msg), len(got), err)
				}
				if rec := h.record(); rec.Verdict != "pass" || rec.BytesUp != int64(len(msg)) || rec.BytesDown != int64(len(msg)) {
					t.Fatalf("record %+v", rec)
				}
			})

			t.Run("drop", func(t *testing.T) {
				be, got := lineBackend(t)
				u, cfg := cfgFor(be.addr, proxy.Config{Factory: onLine(nil)})
				h := startProxy(t, u, cfg)
				c := h.dial()
				c.Write([]byte("hello\nDROP this\nnever\n"))
				readAll(t, c)
				if s := recv(t, got); s != "hello\n" {
					t.Fatalf("backend received %q", s)
				}
				if rec := h.record(); rec.Verdict != "drop" || rec.Rule != "test.lua:1" {
					t.Fatalf("record %+v", rec)
				}
			})

			t.Run("bypass", func(t *testing.T) {
				be := startBackend(t, echo)
				u, cfg := cfgFor(be.addr, proxy.Config{Factory: onLine(nil)})
				h := startProxy(t, u, cfg)
				c := h.dial()
				block := randomBlock(1 << 20)
				go func() {
					c.Write([]byte("BYPASS\n"))
					c.Write(block)
					c.CloseWrite()
				}()
				got, err := readAll(t, c)
				if err != nil || !bytes.Equal(got, append([]byte("BYPASS\n"), block...)) {
					t.Fatalf("bypassed echo: %d bytes, %v", len(got), err)
				}
				if rec := h.record(); rec.Verdict != "bypass" {
					t.Fatalf("record %+v", rec)
				}
			})

			t.Run("refused", func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				dead := ln.Addr().String()
				ln.Close()
				u, cfg := cfgFor(dead, proxy.Config{})
				h := startProxy(t, u, cfg)
				h.expectReset()
				if rec := h.record(); rec.Verdict != "reset" || !strings.HasPrefix(rec.Reason, "upstream refused: ") {
					t.Fatalf("record %+v", rec)
				}
			})
		})
	}
}

// Serve returns when its listener is closed by its owner (not only at
// Shutdown), and the port is free at once.
func TestServeReturnsWhenListenerClosed(t *testing.T) {
	be := startBackend(t, echo)
	p, err := proxy.New(proxy.Config{Upstream: be.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	// Serving: a connection goes through.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	c.(*net.TCPConn).CloseWrite()
	if b, err := readAll(t, c); err != nil || string(b) != "x" {
		t.Fatalf("echo %q, %v", b, err)
	}
	c.Close()
	ln.Close()
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port is still taken after Close: %v", err)
	}
	again.Close()
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Serve did not return after its listener was closed")
	}
}
