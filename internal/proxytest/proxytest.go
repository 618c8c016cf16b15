// Package proxytest runs a proxy.Proxy on 127.0.0.1 for the length of a
// test: the one way the packages' live tests start and stop the proxy,
// so that each checks the same shutdown.
package proxytest

import (
	"context"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/proxy"
)

// ShutdownWithin bounds the graceful shutdown at the test's end.
const ShutdownWithin = 20 * time.Second

// Start builds a proxy from cfg, serves it on 127.0.0.1 at a free port
// and returns it with that address. When the test ends the proxy is shut
// down; an error of Shutdown or Serve fails the test.
func Start(t testing.TB, cfg proxy.Config) (*proxy.Proxy, string) {
	t.Helper()
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownWithin)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, ln.Addr().String()
}
