// Package tlspeer holds real TLS peers for the demo and the tests: a
// self-signed certificate maker, a record-level connection wrapper that lets
// a crypto/tls endpoint see and send heartbeat records (crypto/tls itself
// rejects content type 24), a backend that acts like a Heartbleed-vulnerable
// server, and the attacks against it.
//
// Nothing here is a mock: the peers run real crypto/tls handshakes on real
// sockets; only the heartbeat records are written by hand, because no
// maintained TLS stack still sends them.
package tlspeer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"time"
)

// Content types of the TLS record layer used here.
const (
	TypeChangeCipherSpec = 20
	TypeAlert            = 21
	TypeHandshake        = 22
	TypeApplicationData  = 23
	TypeHeartbeat        = 24
)

// maxRecord bounds the records RecordConn accepts: 2^14 plus the
// expansion the TLS 1.2 record layer allows.
const maxRecord = 1<<14 + 2048

// NewCert returns a fresh self-signed ECDSA P-256 certificate valid for the
// given DNS names and 127.0.0.1, and a pool that trusts it.
func NewCert(names ...string) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "haka-proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

// RecordConn wraps the raw connection under a crypto/tls endpoint. Reads
// walk the TLS records of the stream: heartbeat records are taken out and
// handed to OnHeartbeat, every other byte is passed up unchanged. Writes are
// serialised with WriteRecord, so hand-made records go out between the
// records of the TLS layer, never inside one.
type RecordConn struct {
	net.Conn

	// OnHeartbeat is called, from the reading goroutine, with each
	// heartbeat record (header included). It may call WriteRecord.
	OnHeartbeat func(rec []byte)

	wmu  sync.Mutex
	rbuf []byte // raw bytes read, not yet passed up or diverted
	out  []byte // bytes of non-heartbeat records ready for the reader
	rerr error
}

// Read implements net.Conn.
func (c *RecordConn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if rec, ok, err := c.nextRecord(); err != nil {
			c.rerr = err
		} else if ok {
			if rec[0] == TypeHeartbeat {
				if c.OnHeartbeat != nil {
					c.OnHeartbeat(rec)
				}
				continue
			}
			c.out = rec
			continue
		}
		var buf [4096]byte
		n, err := c.Conn.Read(buf[:])
		c.rbuf = append(c.rbuf, buf[:n]...)
		if err != nil {
			c.rerr = err
			if len(c.rbuf) > 0 && errors.Is(err, io.EOF) {
				// A truncated record at EOF goes up as it is: the TLS
				// layer reports it.
				c.out, c.rbuf = c.rbuf, nil
			}
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// nextRecord cuts one whole record off rbuf.
func (c *RecordConn) nextRecord() ([]byte, bool, error) {
	if len(c.rbuf) < 5 {
		return nil, false, nil
	}
	n := int(c.rbuf[3])<<8 | int(c.rbuf[4])
	if n > maxRecord {
		return nil, false, fmt.Errorf("tlspeer: record of %d bytes", n)
	}
	if len(c.rbuf) < 5+n {
		return nil, false, nil
	}
	rec := append([]byte(nil), c.rbuf[:5+n]...)
	c.rbuf = c.rbuf[5+n:]
	return rec, true, nil
}

// Write implements net.Conn.
func (c *RecordConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

// WriteRecord writes one record of the given type, version and body.
func (c *RecordConn) WriteRecord(typ uint8, version uint16, body []byte) error {
	rec := AppendRecord(nil, typ, version, body)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.Conn.Write(rec)
	return err
}

// AppendRecord appends a TLS record to b.
func AppendRecord(b []byte, typ uint8, version uint16, body []byte) []byte {
	b = append(b, typ, byte(version>>8), byte(version), byte(len(body)>>8), byte(len(body)))
	return append(b, body...)
}

// HeartbeatRequest returns a cleartext heartbeat request message (not a
// record) that declares payloadLength but carries only payload and
// padding bytes of padding.
func HeartbeatRequest(payloadLength int, payload []byte, padding int) []byte {
	b := []byte{1, byte(payloadLength >> 8), byte(payloadLength)}
	b = append(b, payload...)
	return append(b, make([]byte, padding)...)
}
