package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// dialTimeout bounds a TCP connect; on loopback it takes microseconds
// unless the listener's backlog is full.
const dialTimeout = 5 * time.Second

// TLSInfo describes what a client negotiated, so a report shows that the
// runs it compares used the same protocol.
type TLSInfo struct {
	Version string `json:"version"`
	Cipher  string `json:"cipher"`
	Group   string `json:"group"`
}

func (i TLSInfo) String() string {
	return fmt.Sprintf("version=%q cipher=%s group=%s", i.Version, i.Cipher, i.Group)
}

func tlsInfo(cs tls.ConnectionState) TLSInfo {
	return TLSInfo{
		Version: tls.VersionName(cs.Version),
		Cipher:  tls.CipherSuiteName(cs.CipherSuite),
		Group:   cs.CurveID.String(),
	}
}

// clientConfig is a TLS 1.3 client that verifies the server's chain
// against roots and never resumes (no session cache). x25519Only offers
// X25519 alone instead of Go's default, the X25519MLKEM768 hybrid whose
// ~1.8 KB ClientHello spans TCP segments.
func clientConfig(roots *x509.CertPool, x25519Only bool) *tls.Config {
	cfg := &tls.Config{
		RootCAs:    roots,
		ServerName: "localhost",
		MinVersion: tls.VersionTLS13,
	}
	if x25519Only {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	return cfg
}

func tlsDialer(cfg *tls.Config) *tls.Dialer {
	return &tls.Dialer{NetDialer: &net.Dialer{Timeout: dialTimeout}, Config: cfg}
}

func request(op byte, n uint64) []byte {
	b := make([]byte, requestLen)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], n)
	return b
}

// HandshakeConfig is a handshake-rate measurement.
type HandshakeConfig struct {
	Addr  string
	Roots *x509.CertPool
	// N handshakes at Concurrency, then LatN more at concurrency 1 for
	// the unloaded latency (0 skips that part).
	N, Concurrency, LatN int
	X25519Only           bool
	// MaxTime bounds each of the two parts.
	MaxTime time.Duration
	// PID, when not 0, is the proxy's process: the loaded run reports
	// its CPU per handshake.
	PID int
}

// HandshakeResult is the loaded run, the unloaded one, and what was
// negotiated.
type HandshakeResult struct {
	Loaded   Run     `json:"loaded"`
	Unloaded *Run    `json:"unloaded,omitempty"`
	TLS      TLSInfo `json:"tls"`
}

// Err reports the first part that is not a clean measurement.
func (r HandshakeResult) Err() error {
	return runsErr(r.Loaded, r.Unloaded)
}

func runsErr(loaded Run, unloaded *Run) error {
	if err := loaded.Err(); err != nil {
		return fmt.Errorf("c=%d: %w", loaded.Concurrency, err)
	}
	if unloaded != nil {
		if err := unloaded.Err(); err != nil {
			return fmt.Errorf("c=1: %w", err)
		}
	}
	return nil
}

// Handshakes measures full TLS 1.3 handshakes: each operation dials, does
// the handshake (verifying the chain), sends a 100-byte echo request,
// reads and checks the echo, and closes.
func Handshakes(ctx context.Context, cfg HandshakeConfig) (HandshakeResult, error) {
	if err := CheckLoopback(cfg.Addr); err != nil {
		return HandshakeResult{}, err
	}
	if cfg.N < 1 || cfg.Concurrency < 1 || cfg.LatN < 0 {
		return HandshakeResult{}, fmt.Errorf("handshakes: want n >= 1, c >= 1, lat-n >= 0; got %d, %d, %d", cfg.N, cfg.Concurrency, cfg.LatN)
	}
	d := tlsDialer(clientConfig(cfg.Roots, cfg.X25519Only))
	var once sync.Once
	var info TLSInfo
	newOp := func() operation {
		req := append(request(OpEcho, handshakePayload), bytes.Repeat([]byte{'h'}, handshakePayload)...)
		resp := make([]byte, handshakePayload)
		return func(ctx context.Context) error {
			nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
			if err != nil {
				return err
			}
			c := nc.(*tls.Conn)
			defer c.Close()
			stop := abortOnDone(ctx, c)
			defer stop()
			c.SetDeadline(time.Now().Add(handshakeTimeout))
			if _, err := c.Write(req); err != nil {
				return fmt.Errorf("request: %w", err)
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				return fmt.Errorf("response: %w", err)
			}
			if !bytes.Equal(resp, req[requestLen:]) {
				return fmt.Errorf("response: the echo differs from the request")
			}
			once.Do(func() { info = tlsInfo(c.ConnectionState()) })
			return nil
		}
	}
	loaded, err := measureCPU(cfg.PID, func() Run { return runLoad(ctx, cfg.N, cfg.Concurrency, cfg.MaxTime, newOp) })
	if err != nil {
		return HandshakeResult{}, err
	}
	res := HandshakeResult{Loaded: loaded}
	if cfg.LatN > 0 && ctx.Err() == nil {
		u := runLoad(ctx, cfg.LatN, 1, cfg.MaxTime, newOp)
		res.Unloaded = &u
	}
	res.TLS = info
	return res, nil
}

// handshakePayload is the request and response size of the handshake
// test.
const handshakePayload = 100
