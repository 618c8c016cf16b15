package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// Rules named in the decisions the proxy itself takes, for the "rule"
// field of logs and connection records ("file.lua:line" is a Lua rule,
// "builtin:..." the state machine).
const (
	RuleUpstream         = "proxy:upstream"
	RuleHandshakeTimeout = "proxy:handshake-timeout"
	RuleIdleTimeout      = "proxy:idle-timeout"
	RuleMaxHeldBytes     = "proxy:max-held-bytes"
	RulePanic            = inspect.RulePanic
	RuleShutdown         = "proxy:shutdown"
	RuleProxyProtocol    = "proxy:proxy-protocol"
	RuleInspector        = "proxy:inspector"
)

// ruleBuiltinFail is the state machine's default verdict on malformed
// input; it counts as an inspection error.
const ruleBuiltinFail = "builtin:fail"

// ppReadBufSize is the buffer the PROXY header is read with: it holds a
// whole v1 line (107 bytes, which go-proxyproto requires in one buffer)
// and a v2 header with small TLVs; larger TLVs are read in several
// passes. The client bytes read past the header are handed to the pump.
const ppReadBufSize = 256

// past is a deadline in the past: setting it wakes a goroutine blocked on
// the connection, which then looks at the connection's state.
var past = time.Unix(1, 0)

// conn is one proxied connection: the client socket, the upstream socket,
// the inspector and the two pumps.
type conn struct {
	p      *Proxy
	flow   inspect.Flow
	client sock
	insp   inspect.Inspector

	// stopped is set once the connection must end (a killing verdict, an
	// error, a timeout); pumps check it between steps and are woken by a
	// deadline in the past.
	stopped atomic.Bool
	// bypassed is set by a Bypass verdict: pumps forward what they hold
	// and splice from then on.
	bypassed atomic.Bool
	// helloDone lifts the handshake timeout.
	helloDone atomic.Bool
	// active is set by every read either way; the sweeper turns it into
	// lastActive, the time of the last sweep that found it set, as an
	// offset from flow.Start (monotonic): idle time is known to a sweep
	// period, and a read costs no clock reading.
	active     atomic.Bool
	lastActive atomic.Int64
	// pumping is set once the pumps are set up: from then on the
	// sweeper watches the connection's timeouts.
	pumping atomic.Bool
	// connecting: the proxy's own non-blocking connect to the upstream
	// is in progress (see connect); the pumps wait for it.
	connecting atomic.Bool
	// slow: an inspection took long; the poller runs the pumps on
	// goroutines of their own (see dir.feed).
	slow atomic.Bool
	// pl is the poller the pumps park in (nil without one).
	pl *poller

	mu         sync.Mutex
	server     *sock // set once, under mu: stop may look at it meanwhile
	upstream   string
	cancelDial context.CancelFunc
	decision   inspect.Decision // killing or bypass verdict
	decided    bool             // decision holds a killing verdict: final
	reason     string           // why it ended, when no verdict says
	rst        bool             // close both sides with RST
	refused    string           // metrics reason when refused before dialling

	up, down dir
	pumps    atomic.Int32 // pumps not ended; the last one finishes
	duration time.Duration
}

// newConn makes a connection; the caller sets its client socket.
func (p *Proxy) newConn(src, dst netip.AddrPort) *conn {
	c := &conn{
		p: p,
		flow: inspect.Flow{
			ID:    p.nextID.Add(1),
			Src:   src,
			Dst:   dst,
			Start: time.Now(),
		},
	}
	c.client.fd = -1
	return c
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// handle sets a connection up, dialling the upstream with the Go dialer
// or the DialFunc, and runs its pumps' first steps on the accepting
// goroutine, which then ends (see run).
func (p *Proxy) handle(c *conn) {
	if !c.serve() {
		c.finish(false)
		return
	}
	c.run()
}

// run runs the pumps' first steps once the upstream is connected: the
// down pump parks in the poller at once (the upstream has nothing to say
// yet), the up pump forwards what the client sent first and parks when
// the client has nothing more. From then on a pump runs only when its
// source has bytes; whichever ends last finishes the connection.
func (c *conn) run() {
	if c.pl == nil {
		// No poller: each pump keeps a goroutine.
		go c.down.resume(false)
	} else {
		c.down.skipRead = true
		c.down.resume(false)
	}
	c.up.resume(false)
}

// serve sets the connection up; it reports false when the connection
// ended before the pumps could start.
func (c *conn) serve() (started bool) {
	defer c.recoverSetup()
	p := c.p
	if p.cfg.ProxyProtocol.In && !c.readProxyHeader() {
		return
	}
	if !c.inspect() {
		return
	}
	tc := c.dial()
	if tc == nil {
		return
	}
	server := &sock{fd: -1}
	if err := server.setTCP(tc); err != nil {
		tc.Close()
		c.abort(fmt.Sprintf("upstream: %v", err), true)
		return
	}
	c.setServer(server)
	if v := p.cfg.ProxyProtocol.Out; v != 0 {
		if err := c.writeProxyHeader(v); err != nil {
			c.abort(fmt.Sprintf("upstream: writing PROXY header: %v", err), true)
			return
		}
	}
	c.startPumps()
	return true
}

// inspect gets the connection's inspector from the factory; it reports
// false when the factory refused the connection.
func (c *conn) inspect() bool {
	p := c.p
	insp, d := p.factory.Load().f.New(&c.flow, c.inspectorKill)
	c.insp = insp
	switch {
	case d.Verdict.Kills():
		c.refused = RefusedInspector
		c.kill(d)
		return false
	case insp == nil:
		p.metrics.InspectionError()
		c.kill(inspect.Decision{Verdict: inspect.Reset, Reason: "inspector factory returned no inspector", Rule: RuleInspector})
		return false
	case d.Verdict == inspect.Bypass:
		c.bypass(d)
	}
	return !c.stopped.Load()
}

// setServer records the upstream socket; a stop that ran before saw
// none, so it is woken here.
func (c *conn) setServer(s *sock) {
	c.mu.Lock()
	c.server = s
	c.mu.Unlock()
	if c.stopped.Load() {
		s.setDeadline(past)
	}
}

// startPumps sets the pumps up, before they first run.
func (c *conn) startPumps() {
	p := c.p
	server := c.server
	c.pl = p.pollerFor(c.flow.ID)
	c.up.init(c, dissect.Up, &c.client, server)
	c.down.init(c, dissect.Down, server, &c.client)
	if c.pl != nil {
		c.pl.register(c)
	}
	c.pumps.Store(2)
	// The sweeper enforces the handshake timeout (from accept) and the
	// idle timeout from here on. A stop before this point found no pump
	// to wake: the pumps see it when they start.
	c.pumping.Store(true)
}

// dial connects to the upstream with the Go dialer or the DialFunc; on
// failure it ends the connection with a reason naming the cause and
// returns nil.
func (c *conn) dial() *net.TCPConn {
	p := c.p
	ctx, cancel := context.WithTimeout(context.Background(), p.lim.DialTimeout)
	defer cancel()
	c.mu.Lock()
	if c.stopped.Load() {
		c.mu.Unlock()
		return nil
	}
	c.cancelDial = cancel
	// Named in the log line even when the dial fails.
	c.upstream = p.cfg.Upstream
	if p.cfg.Dial != nil {
		c.upstream = c.flow.Dst.String()
	}
	c.mu.Unlock()

	server, err := p.dial(ctx, &c.flow)

	c.mu.Lock()
	c.cancelDial = nil
	if err == nil {
		c.upstream = server.RemoteAddr().String()
	}
	c.mu.Unlock()
	if err != nil {
		c.dialFailed(err)
		return nil
	}
	if c.stopped.Load() {
		server.Close() // killed while dialling
		return nil
	}
	return server
}

// dialFailed ends the connection after a failed dial, with a reason
// naming the cause.
func (c *conn) dialFailed(err error) {
	if c.stopped.Load() {
		return // killed while dialling: the kill gave the reason
	}
	cause, text := dialCause(err)
	c.p.metrics.dialError(cause)
	c.kill(inspect.Decision{Verdict: inspect.Reset, Reason: "upstream " + text + ": " + err.Error(), Rule: RuleUpstream})
}

// dialCause classifies a dial error: the metric label and the words for
// the log line.
func dialCause(err error) (label, text string) {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return DialRefused, "refused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return DialNoRoute, "no route"
	case errors.Is(err, syscall.ENETUNREACH):
		return DialUnreachable, "network unreachable"
	case errors.As(err, &dnsErr):
		return DialResolve, "name resolution failed"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return DialTimeout, "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return DialTimeout, "timeout"
	}
	return DialOther, "dial failed"
}

// readProxyHeader applies the PROXY protocol policy (see ProxyProtocol);
// it reports false when the connection was refused.
func (c *conn) readProxyHeader() bool {
	pp := &c.p.cfg.ProxyProtocol
	trusted := pp.trusts(c.flow.Src.Addr())
	br := bufio.NewReaderSize(c.client.tc, ppReadBufSize)
	hdr, err := proxyproto.ReadHeaderTimeout(c.client.tc, br, pp.Timeout)
	if c.stopped.Load() {
		return false
	}
	switch {
	case !trusted && err == nil:
		c.refuseProxyProtocol("PROXY header from an untrusted source")
		return false
	case !trusted && !errors.Is(err, proxyproto.ErrNoProxyProtocol):
		c.refuseProxyProtocol(fmt.Sprintf("untrusted source: %v", err))
		return false
	case trusted && errors.Is(err, proxyproto.ErrNoProxyProtocol):
		b, _ := br.Peek(min(br.Buffered(), 16))
		switch {
		case len(b) == 0:
			c.refuseProxyProtocol(fmt.Sprintf("no PROXY header within %s", pp.Timeout))
		case bytes.HasPrefix(proxyproto.SIGV1, b[:min(len(b), len(proxyproto.SIGV1))]),
			bytes.HasPrefix(proxyproto.SIGV2, b[:min(len(b), len(proxyproto.SIGV2))]):
			c.refuseProxyProtocol(fmt.Sprintf("incomplete PROXY header within %s", pp.Timeout))
		default:
			c.refuseProxyProtocol(fmt.Sprintf("missing PROXY header: the stream starts with %q", b))
		}
		return false
	case trusted && err != nil:
		c.refuseProxyProtocol(fmt.Sprintf("malformed PROXY header: %v", err))
		return false
	case trusted && hdr.Command.IsProxy():
		switch hdr.TransportProtocol {
		case proxyproto.TCPv4, proxyproto.TCPv6:
			src, _ := hdr.SourceAddr.(*net.TCPAddr)
			dst, _ := hdr.DestinationAddr.(*net.TCPAddr)
			if src == nil || dst == nil {
				c.refuseProxyProtocol("PROXY header without TCP addresses")
				return false
			}
			c.flow.Src = addrPort(src)
			c.flow.Dst = addrPort(dst)
		case proxyproto.UNSPEC:
			// The sender does not know the addresses: keep the
			// socket's, as the specification asks.
		default:
			c.refuseProxyProtocol(fmt.Sprintf("PROXY header announces a non-TCP transport (%#x)", byte(hdr.TransportProtocol)))
			return false
		}
	}
	// A LOCAL header (a load balancer's health check) keeps the socket's
	// addresses.

	// Bytes read past the header are the first bytes of the stream.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		c.up.preload(c, b)
	}
	return true
}

func (c *conn) refuseProxyProtocol(reason string) {
	c.refused = RefusedProxyProtocol
	c.p.log.Warn("PROXY protocol: connection refused",
		zap.Uint64("id", c.flow.ID), zap.String("src", c.flow.Src.String()), zap.String("reason", reason))
	c.kill(inspect.Decision{Verdict: inspect.Reset, Reason: "PROXY protocol: " + reason, Rule: RuleProxyProtocol})
}

// writeProxyHeader sends the PROXY header to the freshly connected
// upstream: a few dozen bytes into an empty send buffer, so a write that
// would block or comes up short is an error, not something to wait for.
func (c *conn) writeProxyHeader(version int) error {
	h := proxyproto.HeaderProxyFromAddrs(byte(version),
		net.TCPAddrFromAddrPort(c.flow.Src), net.TCPAddrFromAddrPort(c.flow.Dst))
	b, err := h.Format()
	if err != nil {
		return err
	}
	for {
		n, err := unix.Write(c.server.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n < len(b):
			return fmt.Errorf("wrote %d of %d bytes", n, len(b))
		}
		return nil
	}
}

// kill ends the connection with a verdict; it is the kill function given
// to Factory.New, safe from any goroutine and more than once. The first
// killing decision wins. A non-killing verdict given here is taken as a
// drop: kill always ends the connection.
func (c *conn) kill(d inspect.Decision) {
	if !d.Verdict.Kills() {
		d.Verdict = inspect.Drop
	}
	c.mu.Lock()
	if c.decided {
		c.mu.Unlock()
		return
	}
	c.decided = true
	c.decision = d
	c.rst = c.rst || d.Verdict == inspect.Reset
	c.mu.Unlock()
	c.stop()
}

// inspectorKill is the kill function given to Factory.New. A decision
// with RulePanic reports a panic the inspector recovered on a goroutine of
// its own: it is counted and logged like the pumps' (recoverPanic), with
// the stack of the call, which still shows where it panicked.
func (c *conn) inspectorKill(d inspect.Decision) {
	if d.Rule == RulePanic {
		c.p.metrics.panicked()
		c.p.log.Error("panic in a connection; resetting it",
			zap.Uint64("id", c.flow.ID), zap.String("where", "inspector"),
			zap.String("panic", strings.TrimPrefix(d.Reason, "panic: ")), zap.StackSkip("stack", 1))
		d.Verdict = inspect.Reset
	}
	c.kill(d)
}

// abort ends the connection without a verdict (an I/O error): reason goes
// to the log line, rst resets both sides.
func (c *conn) abort(reason string, rst bool) {
	c.mu.Lock()
	if !c.decided && c.reason == "" {
		c.reason = reason
	}
	c.rst = c.rst || rst
	c.mu.Unlock()
	c.stop()
}

// stop marks the connection stopped and wakes whatever waits on it. It
// never closes a socket: a pump may be using its descriptor. The sockets
// are closed by finish, once both pumps have ended.
func (c *conn) stop() {
	c.stopped.Store(true)
	c.mu.Lock()
	server, cancel := c.server, c.cancelDial
	c.mu.Unlock()
	// Wake what waits in the runtime's poller: a dial, a PROXY header
	// read, a hot pump, a write to a full socket.
	c.client.setDeadline(past)
	if server != nil {
		server.setDeadline(past)
	}
	if cancel != nil {
		cancel()
	}
	// And the pumps parked in the poller.
	if c.pumping.Load() {
		c.up.wake()
		c.down.wake()
	}
}

// bypass records a Bypass verdict and wakes both pumps so that they
// forward what they hold and splice from then on. A later kill still
// ends the connection.
func (c *conn) bypass(d inspect.Decision) {
	c.mu.Lock()
	if !c.decided {
		c.decision = d
	}
	server := c.server
	c.mu.Unlock()
	c.helloDone.Store(true)
	if c.bypassed.Swap(true) {
		return
	}
	c.client.setReadDeadline(past)
	if server != nil {
		server.setReadDeadline(past)
	}
	if c.pumping.Load() {
		c.up.wake()
		c.down.wake()
	}
}

func (c *conn) touch() {
	if !c.active.Load() {
		c.active.Store(true)
	}
}

// recoverSetup contains a panic while the connection is set up.
func (c *conn) recoverSetup() {
	if r := recover(); r != nil {
		c.panicked(r, "setup")
	}
}

// panicked logs and counts a panic in the connection's path, and resets
// the connection.
func (c *conn) panicked(r any, where string) {
	c.p.metrics.panicked()
	c.p.log.Error("panic in a connection; resetting it",
		zap.Uint64("id", c.flow.ID), zap.String("where", where),
		zap.String("panic", fmt.Sprint(r)), zap.StackSkip("stack", 2))
	c.kill(inspect.Decision{Verdict: inspect.Reset, Reason: fmt.Sprintf("panic: %v", r), Rule: RulePanic})
}

// final is the verdict the connection ended with.
func (c *conn) final() (inspect.Decision, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.decision
	if !c.decided && d.Verdict != inspect.Bypass {
		d = inspect.Decision{Verdict: inspect.Pass}
	}
	if d.Reason == "" {
		d.Reason = c.reason
	}
	return d, c.rst
}

// finish closes both sockets and frees the connection's slot; the
// inspection's end, the log line, the record and the metrics follow at
// once, or, when finish runs on a poller, once the poller's batch of
// events is done: on the reporter's goroutine (a slow log or record
// writer must not hold up the other connections), or on the poller
// itself when no write there can block (Config.ReportOnPoller).
func (c *conn) finish(onPoller bool) {
	p := c.p
	c.mu.Lock()
	server := c.server
	c.mu.Unlock()
	c.mu.Lock()
	rst := c.rst
	c.mu.Unlock()
	if rst {
		c.client.resetOnClose()
		if server != nil {
			server.resetOnClose()
		}
	}
	c.client.close()
	if server != nil {
		server.close()
	}
	if c.pl != nil {
		c.pl.unregister(c)
	}
	c.up.release()
	c.down.release()
	c.duration = time.Since(c.flow.Start)
	// The slot is free once the sockets are: release it before the
	// slower logging.
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.active.Add(-1)
	p.metrics.closed()
	if onPoller {
		c.pl.ended = append(c.pl.ended, c)
		return
	}
	c.report()
}

// report ends the inspection and writes the connection's log line,
// record and metrics.
func (c *conn) report() {
	p := c.p
	defer p.wg.Done()
	d, _ := c.final()
	c.mu.Lock()
	upstream := c.upstream
	c.mu.Unlock()
	sum := inspect.Summary{
		BytesUp:   c.up.fwd,
		BytesDown: c.down.fwd,
		Duration:  c.duration,
		Decision:  d,
	}
	info := c.closeInspector(sum)

	if c.refused != "" {
		p.metrics.refused(c.refused)
	}
	p.metrics.verdict(d.Verdict)
	p.metrics.limit(d.Rule)
	if d.Rule == ruleBuiltinFail {
		p.metrics.InspectionError()
	}
	src, dst := c.flow.Src.String(), c.flow.Dst.String()
	if ce := p.log.Check(zap.InfoLevel, "connection closed"); ce != nil {
		ce.Write(
			zap.Uint64("id", c.flow.ID),
			zap.String("src", src),
			zap.String("dst", dst),
			zap.String("upstream", upstream),
			zap.String("sni", info.SNI),
			zap.String("version", info.Version),
			zap.Int64("bytes_up", sum.BytesUp),
			zap.Int64("bytes_down", sum.BytesDown),
			zap.Duration("duration", sum.Duration),
			zap.String("verdict", d.Verdict.String()),
			zap.String("rule", d.Rule),
			zap.String("reason", d.Reason),
		)
	}
	if rec := p.cfg.Records; rec != nil {
		err := rec.Connection(&output.Connection{
			Time:      time.Now(),
			Flow:      output.FlowRef{ID: c.flow.ID, Src: src, Dst: dst, SNI: info.SNI},
			BytesUp:   sum.BytesUp,
			BytesDown: sum.BytesDown,
			Duration:  sum.Duration.Seconds(),
			Verdict:   d.Verdict.String(),
			Reason:    d.Reason,
			Rule:      d.Rule,
			Version:   info.Version,
			ALPN:      info.ALPN,
			JA3:       info.JA3,
			JA4:       info.JA4,
		})
		if err != nil {
			p.log.Error("writing connection record", zap.Uint64("id", c.flow.ID), zap.Error(err))
		}
	}
}

// closeInspector reads Info and calls Close, containing a panic in either.
func (c *conn) closeInspector(sum inspect.Summary) (info inspect.Info) {
	if c.insp == nil {
		return info
	}
	defer func() {
		if r := recover(); r != nil {
			c.p.metrics.panicked()
			c.p.log.Error("panic while closing the inspector",
				zap.Uint64("id", c.flow.ID), zap.String("panic", fmt.Sprint(r)), zap.StackSkip("stack", 1))
		}
	}()
	info = c.insp.Info()
	c.insp.Close(sum)
	return info
}
