package rules

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/proxytest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The rules behind the real proxy, between real TLS peers on 127.0.0.1:
// a tlssm.Factory whose Sessions hand their events to a TLSHandler.

// liveWait bounds every wait on the network: far above what a step takes
// on a loaded machine, so only a real hang trips it.
const liveWait = 20 * time.Second

// liveRig is an engine (with its logs and alerts captured) in the proxy.
type liveRig struct {
	*harness
	addr  string
	conns chan output.Connection
	// early are connection lines read while waiting for another one.
	early map[string]output.Connection
}

// connSink decodes the proxy's connection lines onto a channel.
type connSink chan output.Connection

func (s connSink) Write(b []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var c output.Connection
		if err := json.Unmarshal(line, &c); err != nil {
			return 0, err
		}
		s <- c
	}
	return len(b), nil
}

// startLive runs the proxy in front of upstream with the rules files (the
// stock rules when nil).
func startLive(t *testing.T, files map[string]string, opts Options, upstream string) *liveRig {
	t.Helper()
	r := &liveRig{harness: newHarness(t, files, opts), conns: make(chan output.Connection, 64), early: map[string]output.Connection{}}
	f, err := tlssm.NewFactory(tlssm.Options{NewHandler: r.NewTLSHandler})
	if err != nil {
		t.Fatal(err)
	}
	_, r.addr = proxytest.Start(t, proxy.Config{Upstream: upstream, Factory: f, Records: output.NewWriter(connSink(r.conns), output.JSON)})
	return r
}

// connOf returns the connection line of the client connection c.
func (r *liveRig) connOf(t *testing.T, c net.Conn) output.Connection {
	t.Helper()
	src := c.LocalAddr().String()
	timeout := time.After(liveWait)
	for {
		if rec, ok := r.early[src]; ok {
			delete(r.early, src)
			return rec
		}
		select {
		case rec := <-r.conns:
			r.early[rec.Flow.Src] = rec
		case <-timeout:
			t.Fatalf("no connection line for %s", src)
		}
	}
}

func (r *liveRig) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.addr, liveWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startBackend runs the Heartbleed-vulnerable echo backend; cfg is a
// client configuration that trusts it.
func startBackend(t *testing.T) (b *tlspeer.Backend, cfg *tls.Config) {
	t.Helper()
	cert, pool, err := tlspeer.NewCert("backend.test")
	if err != nil {
		t.Fatal(err)
	}
	b = &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{cert}}, LeakSize: 16000}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, &tls.Config{RootCAs: pool, ServerName: "backend.test"}
}

// exchange runs a TLS client of version v (0: any) with cfg on c: a
// handshake, one message echoed, a close_notify. It returns the first
// error.
func exchange(c net.Conn, cfg *tls.Config, v uint16) error {
	cfg = cfg.Clone()
	if v != 0 {
		cfg.MinVersion, cfg.MaxVersion = v, v
	}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(liveWait))
	if err := tc.Handshake(); err != nil {
		return err
	}
	msg := []byte("through the rules")
	if _, err := tc.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(tc, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return &echoError{got}
	}
	return tc.Close()
}

type echoError struct{ got []byte }

func (e *echoError) Error() string { return "echo: got " + string(e.got) }
