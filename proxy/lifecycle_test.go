package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/proxy"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// settle waits, bounded, until f() <= want: a goroutine's exit and a
// socket's close have no event to wait on.
func settle(t *testing.T, what string, want int, f func() int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for f() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: %d, want at most %d\n%s", what, f(), want, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// After connections of every kind have ended (normal, verdicts, bypass,
// upstream refused, timeouts, PROXY refusal) and the proxy has shut down,
// no goroutine and no descriptor is left.
func TestNoLeaks(t *testing.T) {
	// No collection during the test: finalizers would close leaked
	// sockets and hide the leak.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	// Warm up what the runtime opens once (epoll, the timer's pipe).
	warm, _ := net.Listen("tcp", "127.0.0.1:0")
	warm.Close()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	func() {
		be, _ := lineBackend(t)
		dead, _ := net.Listen("tcp", "127.0.0.1:0")
		deadAddr := dead.Addr().String()
		dead.Close()

		run := func(upstream string, cfg proxy.Config, client func(c *net.TCPConn)) {
			h := startProxy(t, upstream, cfg)
			for range 5 {
				c, err := net.Dial("tcp", h.addr)
				if err == nil {
					client(c.(*net.TCPConn))
					c.Close()
				} else if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatal(err) // a reset may beat the connect: see expectReset
				}
				h.record()
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := h.p.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		lines := proxy.Config{Factory: onLine(nil)}
		talk := func(s string) func(*net.TCPConn) {
			return func(c *net.TCPConn) {
				c.Write([]byte(s))
				c.CloseWrite()
				readAll(t, c)
			}
		}
		run(be.addr, lines, talk("hello\n"))
		run(be.addr, lines, talk("hello\nDROP\n"))
		run(be.addr, lines, talk("RESET\n"))
		run(be.addr, lines, talk("BYPASS\nand then some bytes\n"))
		run(be.addr, lines, talk("PANIC\n"))
		run(deadAddr, proxy.Config{}, talk("x"))
		run(be.addr, proxy.Config{Limits: proxy.Limits{HandshakeTimeout: 50 * time.Millisecond}}, func(c *net.TCPConn) { readAll(t, c) })
		run(be.addr, proxy.Config{Limits: proxy.Limits{IdleTimeout: 50 * time.Millisecond}}, func(c *net.TCPConn) {
			c.Write([]byte("x\n"))
			readAll(t, c)
		})
		run(be.addr, proxy.Config{ProxyProtocol: proxy.ProxyProtocol{In: true, Trusted: trusted(t, "127.0.0.1/32")}}, talk("no header"))
		stopped := make(chan struct{})
		go func() {
			be.stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(waitFor):
			t.Fatal("backend handlers still running: an upstream connection was never closed")
		}
	}()

	settle(t, "goroutines", goroutines, runtime.NumGoroutine)
	settle(t, "open descriptors", fds, func() int { return openFDs(t) })
}

// Shutdown stops accepting at once, lets an open connection finish, and
// returns when it has.
func TestShutdownDrains(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	c.Write([]byte("before"))
	if _, err := io.ReadFull(c, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.p.Shutdown(context.Background()) }()
	// The listener closes: new clients are refused by the kernel.
	deadline := time.Now().Add(waitFor)
	for {
		nc, err := net.Dial("tcp", h.addr)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after Shutdown")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The open connection still works, and Shutdown waits for it.
	c.Write([]byte("after"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatalf("open connection during the drain: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a connection open", err)
	default:
	}
	c.CloseWrite()
	readAll(t, c)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if rec := h.record(); rec.Verdict != "pass" {
		t.Fatalf("record %+v", rec)
	}
}

// At the drain timeout the remaining connections are dropped with a
// reason saying so.
func TestShutdownDrainTimeout(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := h.p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want DeadlineExceeded", err)
	}
	if b, err := readAll(t, c); err != nil || len(b) != 0 {
		t.Fatalf("client: %q, %v; want EOF", b, err)
	}
	if rec := h.record(); rec.Rule != proxy.RuleShutdown || rec.Reason != "shutdown: drain timeout" {
		t.Fatalf("record %+v", rec)
	}
}

// The metrics handler serves every metric under its documented name.
func TestMetricsExposition(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{})
	c := h.dial()
	c.Write([]byte("x"))
	c.CloseWrite()
	readAll(t, c)
	h.record()
	h.metrics.ObserveRuleEval(3 * time.Microsecond)

	srv := httptest.NewServer(h.metrics.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"haka_proxy_connections_active 0",
		"haka_proxy_connections_total 1",
		`haka_proxy_bytes_total{direction="up"} 1`,
		`haka_proxy_bytes_total{direction="down"} 1`,
		`haka_proxy_verdicts_total{verdict="pass"} 1`,
		"haka_proxy_inspection_errors_total 0",
		"haka_proxy_rule_eval_duration_seconds_count 1",
		"haka_proxy_panics_total 0",
		`haka_proxy_connections_refused_total{reason="max_conns"} 0`,
		`haka_proxy_upstream_dial_errors_total{cause="refused"} 0`,
		"go_goroutines",
		"process_open_fds",
	} {
		if !strings.Contains(string(body), want+"\n") && !strings.Contains(string(body), want+" ") {
			t.Errorf("metrics lack %q", want)
		}
	}
}
