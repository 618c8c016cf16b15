package hardening

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"strings"
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

// heartbeatPeer is a backend that plays the recorded handshake, then
// answers every heartbeat record with one of the same length, as a
// conforming peer does, and echoes application data.
func heartbeatPeer(t *testing.T) *backend {
	f := flight(t)
	return startBackend(t, func(c *net.TCPConn) {
		if err := f.PlayServer(c, make([]byte, f.MaxTurn())); err != nil {
			return
		}
		br := bufio.NewReaderSize(c, 64<<10)
		hdr := make([]byte, 5)
		for {
			if _, err := io.ReadFull(br, hdr); err != nil {
				c.CloseWrite()
				return
			}
			n := int(hdr[3])<<8 | int(hdr[4])
			rec := make([]byte, 5+n)
			copy(rec, hdr)
			if _, err := io.ReadFull(br, rec[5:]); err != nil {
				return
			}
			if _, err := c.Write(rec); err != nil {
				return
			}
		}
	})
}

// Heartbeats sent one at a time, each answered before the next, are what
// a conforming peer does: ten thousand of them pass (each one judged by
// the stock rules, and named heartbeat_not_negotiated since the recorded
// hellos did not offer the extension, which the stock rules let through).
// Sent all at once without waiting for the answers, they are a flood:
// the fifth unanswered request ends the connection before it is
// forwarded.
func TestHeartbeatFlood(t *testing.T) {
	f := flight(t)
	peer := heartbeatPeer(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{})
	r.route(srcFault, peer.addr)
	const n = 10_000
	req := tlspeer.AppendRecord(nil, tlspeer.TypeHeartbeat, tls12, randomBytes(64))
	during(t, r, func() {
		c := r.connect(srcFault)
		defer c.Close()
		if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp := make([]byte, len(req))
		for i := range n {
			if _, err := c.Write(req); err != nil {
				t.Fatalf("heartbeat %d: %v", i, err)
			}
			if _, err := io.ReadFull(c, resp); err != nil || !bytes.Equal(resp, req) {
				rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
				t.Fatalf("heartbeat %d: answer %v; %+v", i, err, rec)
			}
		}
		took := time.Since(start)
		c.CloseWrite()
		if _, reset := expectClosed(t, c); reset {
			t.Fatal("reset")
		}
		rec := r.waitRecords("record", 1, fromAddr(srcFault))[0]
		if rec.Verdict != "pass" || rec.BytesUp != int64(len(f.Turns[0])+len(f.Turns[2])+n*len(req)) {
			t.Errorf("record %+v", rec)
		}
		t.Logf("%d heartbeat round trips in %v (%v each)", n, took, took/n)

		// The flood.
		c = r.connect(srcFault2)
		r.route(srcFault2, peer.addr)
		defer c.Close()
		if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
		go c.Write(bytes.Repeat(req, n))
		got, _ := expectClosed(t, c)
		if len(got) > 4*len(req) {
			t.Errorf("%d bytes of answers came back, more than the four requests the proxy forwards", len(got))
		}
		rec = r.waitRecords("record", 1, fromAddr(srcFault2))[0]
		if rec.Verdict != "drop" || !strings.Contains(rec.Reason, "heartbeat requests unanswered") {
			t.Errorf("record %+v", rec)
		}
	})
}
