package tlspeer

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

func startBackend(t *testing.T) (*Backend, *tls.Config) {
	t.Helper()
	cert, pool, err := NewCert("backend.test")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Config: &tls.Config{Certificates: []tls.Certificate{cert}}, LeakSize: 16000}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, &tls.Config{RootCAs: pool, ServerName: "backend.test"}
}

// Without a proxy in the way both attacks succeed: this is what makes the
// backend a fair target for the proxy's tests.
func TestAttacksLeakWithoutProxy(t *testing.T) {
	b, cfg := startBackend(t)

	c, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	o := CleartextHeartbleed(c, 5*time.Second)
	c.Close()
	if o.Leaked < 16384 {
		t.Fatalf("cleartext attack leaked %d bytes directly, want > 16384 (%+v)", o.Leaked, o)
	}

	c, err = net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o = EncryptedHeartbleed(c, cfg, 64, 5*time.Second)
	if o.Leaked != 5+16000 {
		t.Fatalf("encrypted attack leaked %d bytes directly, want %d (%+v)", o.Leaked, 5+16000, o)
	}
	if got := b.Heartbeats.Load(); got != 2 {
		t.Fatalf("backend saw %d heartbeats, want 2", got)
	}
}

func TestNormalClientEchoes(t *testing.T) {
	b, cfg := startBackend(t)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cfg := cfg.Clone()
		cfg.MaxVersion = v
		c, err := tls.Dial("tcp", b.Addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("ping")
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo: %q %v", got, err)
		}
		c.Close()
	}
}
