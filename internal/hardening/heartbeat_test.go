package hardening

import (
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// vulnerable starts the Heartbleed-vulnerable TLS echo backend (every
// encrypted heartbeat request is answered with a 16000-byte record) and
// returns it with a client configuration that trusts it.
func vulnerable(t *testing.T) (*tlspeer.Backend, *tls.Config) {
	t.Helper()
	m, err := material()
	if err != nil {
		t.Fatal(err)
	}
	b := &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{m.cert}}, LeakSize: 16000}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, &tls.Config{RootCAs: m.roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12}
}

// heartbeatSession completes a real TLS 1.2 session through c and
// exchanges one message, so that later heartbeats come after application
// data; leaked counts the heartbeat bytes that come back.
func heartbeatSession(t *testing.T, c net.Conn, cfg *tls.Config, leaked *atomic.Int64) (*tlspeer.RecordConn, *tls.Conn) {
	t.Helper()
	rc := &tlspeer.RecordConn{Conn: c, OnHeartbeat: func(rec []byte) { leaked.Add(int64(len(rec))) }}
	tc := tls.Client(rc, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake through the proxy: %v", err)
	}
	if _, err := tc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(tc, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	return rc, tc
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// The proxy matches an encrypted heartbeat response with the request it
// answers, first in first out, and keeps only a few unanswered requests:
// a client that sends a small request and then four of the largest size
// at once must not push the small one out, so that the server's leaking
// answer to it is taken for the answer to a large one. More requests
// unanswered than that is not TLS (RFC 6520 allows one in flight) and
// ends the connection before the request that overflows is forwarded.
func TestHeartbeatFloodHidesNoLeak(t *testing.T) {
	f := flight(t)
	vb, cfg := vulnerable(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, vb.Addr())
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		var leaked atomic.Int64
		rc, tc := heartbeatSession(t, c, cfg, &leaked)
		// A request as short as AES-GCM allows with a little payload,
		// then four as long as a record can be.
		rc.WriteRecord(tlspeer.TypeHeartbeat, tls12, randomBytes(64))
		for range 4 {
			rc.WriteRecord(tlspeer.TypeHeartbeat, tls12, randomBytes(maxPlaintext))
		}
		c.SetReadDeadline(time.Now().Add(waitFor))
		_, err := tc.Read(make([]byte, 1))
		if n := leaked.Load(); n != 0 {
			t.Fatalf("%d bytes of heartbeat responses reached the client (%v)", n, err)
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "drop" || rec.Rule == "" {
			t.Errorf("record %+v", rec)
		}
		t.Logf("%+v; the backend saw %d heartbeat(s)", rec, vb.Heartbeats.Load())
		if n := vb.Heartbeats.Load(); n > 4 {
			t.Errorf("the backend got %d heartbeats; the fifth should not have been forwarded", n)
		}
	})
}
