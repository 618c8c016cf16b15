package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// Defaults of the limits. A zero field of Limits takes these.
const (
	// DefaultMaxConns bounds open client connections. Each costs two
	// descriptors, so 10000 fits in the 20000-descriptor limit common on
	// hosts and containers, with room for listeners, logs and pipes.
	DefaultMaxConns = 10000
	// DefaultDialTimeout bounds the upstream connect: a healthy backend
	// on the same network answers in milliseconds; 5s rides out a SYN
	// retransmit (1s, then 3s on older kernels) and no more.
	DefaultDialTimeout = 5 * time.Second
	// DefaultHandshakeTimeout is how long a client has to send its whole
	// opening message (the ClientHello). Real clients need one round
	// trip; 10s is generous for slow mobile links and short enough that
	// a slowloris client cannot hold a slot for long.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a connection with no byte either way for
	// this long: HAProxy's and Envoy's usual TCP idle timeouts are
	// minutes; 5m keeps long polls alive and reaps dead peers.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxHeldBytes bounds what an inspector may hold back in one
	// direction. A TLS record is at most 16 KiB + 2 KiB and a handshake
	// message rarely exceeds a certificate chain of a few tens of KiB;
	// 512 KiB leaves room for large chains while bounding the memory an
	// attacker can pin per connection.
	DefaultMaxHeldBytes = 512 << 10
	// DefaultDrainTimeout is how long a shutdown waits for open
	// connections; 30s matches Kubernetes' default termination grace.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultProxyProtocolTimeout bounds the wait for a PROXY header. A
	// load balancer sends it in its first segment, so this only matters
	// for broken or hostile senders.
	DefaultProxyProtocolTimeout = 5 * time.Second
)

// Limits bound what the proxy and each connection may use. A zero field
// takes its default.
type Limits struct {
	// MaxConns is the number of client connections open at once; beyond
	// it new clients are accepted and reset at once.
	MaxConns int
	// DialTimeout bounds the upstream connect.
	DialTimeout time.Duration
	// HandshakeTimeout is the time from accept until the inspector
	// reports the client's opening message complete (Result.HelloDone).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that moved no byte either way.
	IdleTimeout time.Duration
	// MaxHeldBytes bounds the bytes an inspector may hold back in one
	// direction; more drops the connection.
	MaxHeldBytes int
	// DrainTimeout is how long Shutdown lets open connections finish
	// when its context has no deadline of its own (see Shutdown).
	DrainTimeout time.Duration
}

// DefaultLimits returns the limits used for zero fields.
func DefaultLimits() Limits {
	return Limits{
		MaxConns:         DefaultMaxConns,
		DialTimeout:      DefaultDialTimeout,
		HandshakeTimeout: DefaultHandshakeTimeout,
		IdleTimeout:      DefaultIdleTimeout,
		MaxHeldBytes:     DefaultMaxHeldBytes,
		DrainTimeout:     DefaultDrainTimeout,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxConns == 0 {
		l.MaxConns = d.MaxConns
	}
	if l.DialTimeout == 0 {
		l.DialTimeout = d.DialTimeout
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = d.HandshakeTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MaxHeldBytes == 0 {
		l.MaxHeldBytes = d.MaxHeldBytes
	}
	if l.DrainTimeout == 0 {
		l.DrainTimeout = d.DrainTimeout
	}
	return l
}

func (l Limits) validate() error {
	var errs []error
	if l.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("max-conns must be positive, not %d", l.MaxConns))
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"dial-timeout", l.DialTimeout},
		{"handshake-timeout", l.HandshakeTimeout},
		{"idle-timeout", l.IdleTimeout},
		{"drain-timeout", l.DrainTimeout},
	} {
		if t.d < 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %s", t.name, t.d))
		}
	}
	if l.MaxHeldBytes < 0 {
		errs = append(errs, fmt.Errorf("max-held-bytes must be positive, not %d", l.MaxHeldBytes))
	}
	return errors.Join(errs...)
}

// ProxyProtocol configures the PROXY protocol (v1 and v2) on both sides.
//
// In: a source inside Trusted must open with a valid PROXY header, and
// the header's source becomes the flow's Src; a missing or malformed
// header is refused. A source outside Trusted is served on its own
// address and must not send a header: one that does is refused, so that
// nobody outside the load balancers can forge a client address. This is
// go-proxyproto's PolicyFromRanges(Trusted, REQUIRE, REJECT).
type ProxyProtocol struct {
	// In enables reading PROXY headers from clients.
	In bool
	// Trusted lists the sources allowed (and required) to send a header.
	// In without Trusted is a configuration error: trusting every source
	// must be said explicitly (0.0.0.0/0 and ::/0).
	Trusted []netip.Prefix
	// Timeout bounds the wait for the header; zero takes
	// DefaultProxyProtocolTimeout.
	Timeout time.Duration
	// Out, 1 or 2, sends a PROXY header of that version to the upstream
	// before any byte of the client; 0 sends none.
	Out int
}

func (pp ProxyProtocol) validate() error {
	if pp.In && len(pp.Trusted) == 0 {
		return errors.New("proxy-protocol-in needs proxy-protocol-trusted: the sources allowed to send a PROXY header (0.0.0.0/0,::/0 trusts every source)")
	}
	if pp.Timeout < 0 {
		return fmt.Errorf("proxy-protocol-timeout must be positive, not %s", pp.Timeout)
	}
	if pp.Out != 0 && pp.Out != 1 && pp.Out != 2 {
		return fmt.Errorf("proxy-protocol-out must be 1 or 2, not %d", pp.Out)
	}
	return nil
}

func (pp ProxyProtocol) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range pp.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// DialFunc connects to the upstream of a flow. It must return a TCP
// connection: the pump half-closes it, sets SO_LINGER on it and splices
// to and from it.
type DialFunc func(ctx context.Context, f *inspect.Flow) (*net.TCPConn, error)

// Config is what a Proxy is made of. Only Upstream (or Dial) is required.
type Config struct {
	// Upstream is the "host:port" every connection is forwarded to
	// (sidecar mode). Ignored when Dial is set.
	Upstream string
	// Dial, when set, connects each flow to its upstream (gateway mode
	// dials the flow's original destination, possibly from the client's
	// own address).
	Dial DialFunc
	// Factory makes each connection's inspector; nil is
	// inspect.PassThrough. SetFactory replaces it at run time.
	Factory inspect.Factory
	// Logger receives one line per connection at close and the proxy's
	// own events; nil logs nothing.
	Logger *zap.Logger
	// Records receives the connection summaries ("type":"connection");
	// nil writes none.
	Records *output.Writer
	// Metrics receives the counters; nil records nothing.
	Metrics *Metrics
	// Limits bound the proxy; zero fields take their defaults.
	Limits Limits
	// ProxyProtocol configures PROXY headers in and out.
	ProxyProtocol ProxyProtocol
	// ReportOnPoller: a poller writes the log lines and records of the
	// connections that ended on it itself, instead of handing them to the
	// reporter goroutine. That saves a goroutine wake-up per batch of
	// ended connections (tens of µs of latency per connection when the
	// proxy is not busy), but a write that blocks holds up the poller's
	// other connections meanwhile: set it only when Logger and Records
	// write where a write cannot block for long (regular files,
	// /dev/null), as haka-proxy does (see WritesNeverBlock).
	ReportOnPoller bool
}

// WritesNeverBlock reports whether writes to w complete without waiting
// for a reader: w is a regular file or /dev/null, not a pipe, a socket or
// a terminal, whose reader may stop reading (see Config.ReportOnPoller).
func WritesNeverBlock(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	if fi.Mode().IsRegular() {
		return true
	}
	null, err := os.Stat(os.DevNull)
	return err == nil && os.SameFile(fi, null)
}
