// Package proxy is haka-proxy's data path: listeners, upstream dialling,
// the per-connection pump, verdict enforcement, limits and metrics.
//
//	p, err := proxy.New(proxy.Config{
//		Upstream: "127.0.0.1:443",
//		Factory:  inspect.PassThrough{}, // or the TLS state machine with the rules
//		Logger:   log,
//		Metrics:  proxy.NewMetrics(),
//	})
//	ln, err := proxy.Listen(ctx, ":8443")
//	go p.Serve(ln)
//	...
//	p.Shutdown(ctx) // stop accepting, drain, then close what is left
//
// Each accepted connection gets an inspector from the Factory (before the
// upstream is dialled, so that it may refuse the connection), then two
// pumps, one per direction. A pump reads into a pooled buffer, feeds the
// inspector every byte read and not yet forwarded, writes on only the
// head the inspector cleared, and gives the buffer back as soon as
// nothing is pending. Verdicts are enforced here: drop closes both sides,
// reset closes them with RST, bypass forwards what is pending and splices
// the rest in the kernel through pipes borrowed from a pool. Payloads the
// inspector passes unseen (Result.Pass: application data whose record
// header was judged) are spliced too, and once such a run ends the next
// header is peeked at, so that a stream of records never enters user
// space but for its headers.
//
// No goroutine waits for an idle connection. A pump keeps all its state
// in its dir; when its source has nothing to read it parks in a poller,
// an epoll set (one per processor, level-triggered, registered at the
// first park: parking costs no system call), and the poller's goroutine
// runs it when the socket has bytes again. A pump that would block on a
// full destination, or keeps its poller busy (a bulk transfer), goes on
// on a goroutine of its own ("hot"), waiting in the runtime's poller, and
// parks again once its connection has been idle for a second. One
// sweeper goroutine enforces the handshake, idle and dial timeouts of
// every connection: no timer per connection, none re-armed per read.
// Connections that end on a poller are reported (inspector's end, log
// line, record, metrics) by a reporter goroutine, so that a slow log
// cannot hold up the pumps, or by the poller itself when the outputs
// cannot block (Config.ReportOnPoller).
//
// When the upstream is an IP address and no PROXY header is read, the
// accepting goroutine starts a non-blocking connect itself and the
// poller finishes it: no goroutine is started per connection, and the
// upstream socket never enters the runtime's poller. A hostname, a
// DialFunc or a PROXY header goes through a goroutine per connection
// setup and the net package, then the same pumps.
//
// Costs (BenchmarkIdleConnections, haka-bench idle, strace): an idle
// connection holds two descriptors, no goroutine, no buffer and no
// pipe, and about 1 KiB of heap (4.3 KiB of resident memory in all,
// against 15 KiB with a goroutine per pump). A new connection with a
// two-round-trip TLS-framed exchange costs 27 system calls on the fast
// path (HAProxy: 22), none of them handing its processor over: the
// pumps' non-blocking calls go through RawSyscall (see sys_linux.go).
// Limits of the design: an inspector's Feed (and so a Lua rule) runs on
// the poller, so a slow rule delays the other connections of that
// poller by as long as it runs (its deadline bounds that); the sockets
// of the general path stay registered with the runtime's poller too,
// which costs two epoll_ctl calls per socket.
//
// The package owns no global state: two Proxies in one process (as in
// tests) share nothing.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Proxy forwards TCP connections through inspectors. Make one with New.
type Proxy struct {
	cfg     Config
	lim     Limits
	log     *zap.Logger
	metrics *Metrics
	dial    DialFunc
	dialer  net.Dialer

	factory atomic.Pointer[factoryBox]
	bufs    bufPool
	pipes   *pipePool

	// Started by the first Serve, stopped by Shutdown (under mu).
	started bool
	pollers []*poller
	sweeper *sweeper
	reports *reporter

	// upstream is Config.Upstream when the fast path can connect to it
	// (see fastPath).
	upstream netip.AddrPort
	// coolAfter is the idle time after which hot pumps park (coolAfter;
	// tests shorten it).
	coolAfter atomic.Int64
	// noPoller makes start make no poller, as on a system without epoll
	// (tests).
	noPoller bool

	nextID      atomic.Uint64
	active      atomic.Int64 // client connections counted against MaxConns
	limitWarned atomic.Int64 // when max-conns was last warned about (Unix ns)

	// quit is closed by Shutdown: Serve returns.
	quit     chan struct{}
	quitOnce sync.Once

	mu        sync.Mutex
	conns     map[*conn]struct{}
	listeners map[net.Listener]struct{}
	draining  bool
	wg        sync.WaitGroup // one per connection goroutine
	// serving counts the Serve calls that registered a listener:
	// Shutdown waits for them before it stops the pollers they use.
	serving sync.WaitGroup
}

type factoryBox struct{ f inspect.Factory }

// New checks cfg and returns a Proxy ready to Serve.
func New(cfg Config) (*Proxy, error) {
	lim := cfg.Limits.withDefaults()
	if err := lim.validate(); err != nil {
		return nil, err
	}
	if err := cfg.ProxyProtocol.validate(); err != nil {
		return nil, err
	}
	if cfg.ProxyProtocol.Timeout == 0 {
		cfg.ProxyProtocol.Timeout = DefaultProxyProtocolTimeout
	}
	if cfg.Dial == nil {
		if cfg.Upstream == "" {
			return nil, errors.New("no upstream: set Upstream (host:port) or Dial")
		}
		if _, _, err := net.SplitHostPort(cfg.Upstream); err != nil {
			return nil, fmt.Errorf("upstream %q: %w", cfg.Upstream, err)
		}
	}
	p := &Proxy{
		cfg:       cfg,
		lim:       lim,
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		dial:      cfg.Dial,
		pipes:     newPipePool(),
		conns:     make(map[*conn]struct{}),
		quit:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	p.upstream = upstreamAddr(&p.cfg)
	p.coolAfter.Store(int64(coolAfter))
	// Keep-alive probes are off on the upstream side (as on the client
	// side, see Listen): an idle connection is reaped by IdleTimeout, and
	// Go's default keep-alive costs three setsockopt calls per socket.
	p.dialer = net.Dialer{Timeout: lim.DialTimeout, KeepAlive: -1}
	if p.dial == nil {
		p.dial = p.dialUpstream
	}
	f := cfg.Factory
	if f == nil {
		f = inspect.PassThrough{}
	}
	p.factory.Store(&factoryBox{f})
	return p, nil
}

// SetFactory replaces the inspector factory; connections accepted from
// now on use f, open ones keep theirs. It is the hook of a rules reload.
func (p *Proxy) SetFactory(f inspect.Factory) {
	if f == nil {
		f = inspect.PassThrough{}
	}
	p.factory.Store(&factoryBox{f})
}

// Metrics returns the metrics the proxy records into (nil if none).
func (p *Proxy) Metrics() *Metrics { return p.metrics }

// Limits returns the limits in force, defaults filled in.
func (p *Proxy) Limits() Limits { return p.lim }

func (p *Proxy) dialUpstream(ctx context.Context, _ *inspect.Flow) (*net.TCPConn, error) {
	c, err := p.dialer.DialContext(ctx, "tcp", p.cfg.Upstream)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Listen opens a TCP listener for Serve, with keep-alive probes off: the
// idle timeout reaps dead peers, and Go's default keep-alive costs three
// setsockopt calls per accepted connection. TCP_NODELAY is set before it
// listens: every socket it accepts inherits it, which saves a setsockopt
// per connection (see acceptor.nodelay).
func Listen(ctx context.Context, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: noDelayControl}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// noDelayControl sets TCP_NODELAY on a listening socket before it
// listens; a net.ListenConfig.Control function.
func noDelayControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt TCP_NODELAY", serr)
	}
	return nil
}

// ErrShutdown is returned by Serve when it is called after Shutdown.
var ErrShutdown = errors.New("proxy: shut down")

// Accept errors other than a closed listener (EMFILE, ENOBUFS, ...) are
// retried after a pause that doubles from acceptBackoffMin up to
// acceptBackoffMax, as net/http does: a full descriptor table frees up
// as connections close, and spinning on it would only burn the CPU.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Serve accepts connections on ln until ln is closed or Shutdown is
// called, and proxies each. ln must yield *net.TCPConn. It returns nil
// after Shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return ErrShutdown
	}
	if !p.started {
		p.start()
	}
	p.listeners[ln] = struct{}{}
	p.serving.Add(1)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
		p.serving.Done()
	}()
	if tl, ok := p.rawListener(ln); ok {
		return p.serveRaw(tl)
	}

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if p.isDraining() || errors.Is(err, net.ErrClosed) {
				if p.isDraining() {
					return nil
				}
				return err
			}
			if backoff == 0 {
				backoff = acceptBackoffMin
			} else {
				backoff = min(2*backoff, acceptBackoffMax)
			}
			p.log.Error("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
			t := time.NewTimer(backoff)
			<-t.C
			continue
		}
		backoff = 0
		tc, ok := nc.(*net.TCPConn)
		if !ok {
			p.log.Error("listener returned a non-TCP connection; closing it", zap.String("type", fmt.Sprintf("%T", nc)))
			nc.Close()
			continue
		}
		if p.metrics != nil {
			p.metrics.ConnectionsTotal.Inc()
		}
		if p.active.Add(1) > int64(p.lim.MaxConns) {
			p.active.Add(-1)
			p.refuse(tc, RefusedMaxConns)
			continue
		}
		c := p.newConn(addrPort(tc.RemoteAddr()), addrPort(tc.LocalAddr()))
		if err := c.client.setTCP(tc); err != nil {
			p.active.Add(-1)
			p.log.Error("accepted connection unusable; closing it", zap.Error(err))
			tc.Close()
			continue
		}
		// Registering under mu orders this Add before Shutdown's Wait:
		// once draining is set, no connection joins the group.
		p.mu.Lock()
		if p.draining {
			p.mu.Unlock()
			p.active.Add(-1)
			p.refuse(tc, RefusedDraining)
			continue
		}
		p.wg.Add(1)
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		if p.metrics != nil {
			p.metrics.ConnectionsActive.Inc()
		}
		if !p.fastPath() {
			go p.handle(c)
		} else if !c.startRaw() {
			c.finish(false)
		}
	}
}

// maxPollers bounds the pollers of a proxy: one per processor lets every
// core run pumps; past a handful the pollers are never the bottleneck,
// and each costs a goroutine and a descriptor.
const maxPollers = 8

// start starts the pollers, the sweeper and the reporter; p.mu is held.
// Without epoll (or when an epoll set cannot be made) every pump keeps
// a goroutine of its own, as net.Conn users do.
func (p *Proxy) start() {
	p.started = true
	p.reports = startReporter(p.cfg.Records, p.log)
	if pollerSupported && !p.noPoller {
		n := min(max(runtime.GOMAXPROCS(0), 1), maxPollers)
		for range n {
			pl, err := newPoller(p.reports, p.cfg.ReportOnPoller)
			if err != nil {
				p.log.Warn("no poller: every connection keeps two goroutines", zap.Error(err))
				for _, pl := range p.pollers {
					pl.close()
				}
				p.pollers = nil
				break
			}
			p.pollers = append(p.pollers, pl)
		}
	}
	p.sweeper = p.startSweeper()
}

// stop stops what start started, once no connection is left.
func (p *Proxy) stop() {
	p.mu.Lock()
	pollers, sw, rep := p.pollers, p.sweeper, p.reports
	p.pollers, p.sweeper, p.reports = nil, nil, nil
	p.mu.Unlock()
	for _, pl := range pollers {
		pl.close()
	}
	if sw != nil {
		sw.stop()
	}
	if rep != nil {
		rep.stop()
	}
}

// pollerFor returns the poller of a new connection, round robin. No
// lock: the pollers are set before the first connection is accepted and
// cleared after the last one is gone.
func (p *Proxy) pollerFor(id uint64) *poller {
	if len(p.pollers) == 0 {
		return nil
	}
	return p.pollers[id%uint64(len(p.pollers))]
}

// refuse resets a connection that will not be proxied. RST rather than
// FIN: the client learns at once, and no TIME_WAIT is left on our side.
func (p *Proxy) refuse(tc *net.TCPConn, reason string) {
	tc.SetLinger(0)
	p.refused(tc.RemoteAddr().String(), reason)
	tc.Close()
}

// refused counts and logs a refusal, before the reset, which the client
// may act on at once.
func (p *Proxy) refused(src, reason string) {
	p.metrics.refused(reason)
	if ce := p.log.Check(zap.DebugLevel, "connection refused"); ce != nil {
		ce.Write(zap.String("src", src), zap.String("reason", reason))
	}
	if reason != RefusedMaxConns {
		return
	}
	// Say it at warn level too, but at most every limitWarnEvery: a
	// flood of refusals must not become a flood of log lines.
	now := time.Now().UnixNano()
	last := p.limitWarned.Load()
	if now-last >= int64(limitWarnEvery) && p.limitWarned.CompareAndSwap(last, now) {
		p.log.Warn("max-conns reached: refusing new connections", zap.Int("max_conns", p.lim.MaxConns))
	}
}

// limitWarnEvery spaces the warnings about refused connections.
const limitWarnEvery = 10 * time.Second

func (p *Proxy) isDraining() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.draining
}

func (p *Proxy) untrack(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Active returns the number of client connections being proxied.
func (p *Proxy) Active() int { return int(p.active.Load()) }

// Shutdown stops accepting (it closes every listener given to Serve),
// lets open connections finish until ctx is done — or, when ctx has no
// deadline, for Limits.DrainTimeout — then drops the remaining ones with
// the reason "shutdown" and waits for them to be gone. It returns nil
// when every connection finished by itself, and the context's error when
// some had to be dropped.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	listeners := make([]net.Listener, 0, len(p.listeners))
	for ln := range p.listeners {
		listeners = append(listeners, ln)
	}
	p.quitOnce.Do(func() { close(p.quit) })
	open := len(p.conns)
	p.mu.Unlock()
	// Closed without mu: closing a listener waits for the calls running
	// on its descriptor, and a poller's accept runs on it (RawControl)
	// and takes mu to register what it accepted. Once draining is set,
	// what is accepted meanwhile is refused.
	for _, ln := range listeners {
		ln.Close()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.lim.DrainTimeout)
		defer cancel()
	}
	if open > 0 {
		p.log.Info("draining connections", zap.Int("open", open))
	}

	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		p.mu.Lock()
		left := make([]*conn, 0, len(p.conns))
		for c := range p.conns {
			left = append(left, c)
		}
		p.mu.Unlock()
		p.log.Warn("drain timeout: dropping the remaining connections", zap.Int("open", len(left)))
		for _, c := range left {
			c.kill(inspect.Decision{Verdict: inspect.Drop, Reason: "shutdown: drain timeout", Rule: RuleShutdown})
		}
		<-done
	}
	// Serve returns once quit is closed or its listener is; one still
	// setting its listener up reads the pollers.
	p.serving.Wait()
	p.stop()
	p.pipes.close()
	return err
}
