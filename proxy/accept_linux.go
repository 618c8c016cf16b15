package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The fast path of a connection: accept4 on the listener's descriptor
// and a non-blocking connect to the upstream, run by a poller; the
// poller finishes the connect and runs the pumps. No goroutine is
// started per connection, and the sockets never enter the runtime's
// poller (no registration, no address look-ups), unless a pump gets hot.
//
// Accepting is raw when the listener is a *net.TCPListener, the proxy
// has pollers and no PROXY header is read from clients (reading one
// needs a net.Conn). The listener is registered in one poller (in all
// of them, each new connection would wake each, all but one to find
// nothing); accept4 runs inside the listener's RawConn.Control, which
// holds the descriptor against a concurrent Close. Connecting is raw
// when the upstream is a fixed IP address: a hostname needs the
// resolver, a DialFunc is the caller's code, and both go through handle
// on a goroutine of their own.

// fastPath reports whether new connections connect with connect.
func (p *Proxy) fastPath() bool {
	return len(p.pollers) > 0 && p.upstream.IsValid() && !p.cfg.ProxyProtocol.In
}

const (
	// acceptBatch bounds the connections one poller accepts and sets up
	// per wake-up: the listener, level-triggered, is reported again if
	// more wait, and the pumps of the poller are not held up meanwhile.
	acceptBatch = 64
	// listenerCheck is how often Serve looks whether its listener was
	// closed by its owner (Shutdown tells it at once): a closed socket
	// leaves the epoll sets without an event.
	listenerCheck = time.Second
	// listenerKey marks the registration keys of listeners in a poller;
	// pump keys (connection ID and direction) never reach it.
	listenerKey = 1 << 63
)

// acceptor is a listener served by the pollers.
type acceptor struct {
	p   *Proxy
	pl  *poller // the poller the listener is registered in
	key uint64
	raw syscall.RawConn
	// dst is the address clients connect to when it is the listener's
	// own (a specific address, not transparent); otherwise each
	// connection asks its socket (getsockname).
	dst netip.AddrPort
	// nodelay: the listener had TCP_NODELAY when Serve started, and
	// every socket it accepts inherits it (Linux clones the listener's
	// options into each new connection): no setsockopt per connection.
	// Listen and tproxy.Listen set it before listening; a connection
	// queued before a listener got it later would not have it, so
	// Serve only looks and never sets it.
	nodelay bool

	mu      sync.Mutex
	paused  bool          // out of the epoll sets after an accept error
	backoff time.Duration // the pause, doubled at each error in a row
}

// rawListener reports whether connections from ln are accepted by the
// pollers.
func (p *Proxy) rawListener(ln net.Listener) (*net.TCPListener, bool) {
	tl, ok := ln.(*net.TCPListener)
	return tl, ok && len(p.pollers) > 0 && !p.cfg.ProxyProtocol.In
}

// serveRaw is Serve for a listener the pollers accept from: it waits
// for Shutdown or for the listener to be closed.
func (p *Proxy) serveRaw(ln *net.TCPListener) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	a := &acceptor{p: p, raw: raw, dst: listenerDst(ln, raw)}
	raw.Control(func(fd uintptr) {
		v, err := sysGetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
		a.nodelay = err == nil && v != 0
	})
	a.key = listenerKey | p.nextID.Add(1)
	a.pl = p.pollerFor(a.key)
	a.pl.addAcceptor(a)
	defer a.pl.removeAcceptor(a)
	if err := a.register(); err != nil {
		if p.isDraining() {
			return nil // closed by Shutdown while being set up
		}
		return fmt.Errorf("listener: %w", err)
	}
	t := time.NewTicker(listenerCheck)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return nil
		case <-t.C:
			if err := raw.Control(func(uintptr) {}); err != nil {
				if p.isDraining() {
					return nil
				}
				return err // closed by its owner
			}
		}
	}
}

// register puts the listener in its poller's epoll set.
func (a *acceptor) register() error {
	var err error
	if cerr := a.raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN}
		setEventKey(&ev, a.key)
		if e := sysEpollCtl(a.pl.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); e != nil && e != unix.EEXIST {
			err = fmt.Errorf("epoll_ctl: %w", e)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// accept takes the waiting connections, on the poller that was woken.
func (a *acceptor) accept() {
	var aerr error
	if err := a.raw.Control(func(fd uintptr) { aerr = a.acceptLoop(int(fd)) }); err != nil {
		return // closed: it left the epoll sets with its descriptor
	}
	if aerr == nil {
		a.mu.Lock()
		a.backoff = 0
		a.mu.Unlock()
		return
	}
	// EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so it
	// leaves the epoll set for a pause that doubles, as net/http does.
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.paused {
		return
	}
	a.paused = true
	a.backoff = min(max(2*a.backoff, acceptBackoffMin), acceptBackoffMax)
	a.p.log.Error("accept failed; retrying", zap.Error(os.NewSyscallError("accept4", aerr)), zap.Duration("backoff", a.backoff))
	a.raw.Control(func(fd uintptr) {
		sysEpollCtl(a.pl.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	time.AfterFunc(a.backoff, func() {
		a.mu.Lock()
		a.paused = false
		a.mu.Unlock()
		a.register()
	})
}

// acceptLoop accepts up to acceptBatch connections from the listener fd.
func (a *acceptor) acceptLoop(fd int) error {
	for range acceptBatch {
		nfd, src, err := sysAccept(fd)
		switch err {
		case nil:
		case unix.EAGAIN:
			return nil
		case unix.EINTR, unix.ECONNABORTED:
			continue
		default:
			return err
		}
		a.p.acceptedRaw(nfd, src, a.dst, a.nodelay)
	}
	return nil
}

// listenerDst returns the listener's address when every connection it
// accepts has it as destination, else the zero AddrPort.
func listenerDst(ln *net.TCPListener, raw syscall.RawConn) netip.AddrPort {
	ta, ok := ln.Addr().(*net.TCPAddr)
	if !ok || ta.IP.IsUnspecified() {
		return netip.AddrPort{}
	}
	// A transparent listener (TPROXY) takes connections to any address.
	transparent := true
	raw.Control(func(fd uintptr) {
		v4, err4 := sysGetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT)
		v6, err6 := sysGetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
		transparent = (err4 == nil && v4 != 0) || (err6 == nil && v6 != 0) || (err4 != nil && err6 != nil)
	})
	if transparent {
		return netip.AddrPort{}
	}
	return addrPort(ta)
}

// acceptedRaw takes one accepted socket in: the same checks as Serve's
// loop, then the fast connect, or handle for the general one. nodelay:
// the socket has TCP_NODELAY already (from its listener).
func (p *Proxy) acceptedRaw(fd int, src, dst netip.AddrPort, nodelay bool) {
	if p.metrics != nil {
		p.metrics.ConnectionsTotal.Inc()
	}
	if p.active.Add(1) > int64(p.lim.MaxConns) {
		p.active.Add(-1)
		p.refuseRaw(fd, src, RefusedMaxConns)
		return
	}
	// Small records must not wait for the peer's delayed ACK (Nagle);
	// the listener's setting, when it has one, was inherited.
	if !nodelay {
		if err := sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			p.active.Add(-1)
			p.log.Debug("accepted connection unusable; closing it", zap.Error(os.NewSyscallError("setsockopt TCP_NODELAY", err)))
			sysClose(fd)
			return
		}
	}
	if !dst.IsValid() {
		dst, _ = sysGetsockname(fd)
	}
	c := p.newConn(src, dst)
	c.client.fd = fd
	// Registering under mu orders this Add before Shutdown's Wait.
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		p.active.Add(-1)
		p.refuseRaw(fd, src, RefusedDraining)
		return
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

// refuseRaw resets a raw socket that will not be proxied.
func (p *Proxy) refuseRaw(fd int, src netip.AddrPort, reason string) {
	p.refused(src.String(), reason)
	sysLingerZero(fd)
	sysClose(fd)
}

// startRaw gets the inspector and starts the connect; it reports false
// when the connection ended before the pumps were set up.
func (c *conn) startRaw() (started bool) {
	defer c.recoverSetup()
	return c.inspect() && c.connect()
}

// connect starts the non-blocking connect to the upstream. Both pumps
// wait for it: the down one in the poller for the socket's writability
// (one-shot), the up one unregistered. The poller finishes it
// (connected); the sweeper enforces the dial timeout.
func (c *conn) connect() bool {
	p := c.p
	ap := p.upstream
	c.mu.Lock()
	c.upstream = p.cfg.Upstream
	c.mu.Unlock()
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := sysSocket(family)
	if err != nil {
		c.dialFailed(c.dialError("socket", err))
		return false
	}
	c.setServer(&sock{fd: fd})
	// Small records must not wait for the peer's delayed ACK (Nagle).
	if err := sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		c.dialFailed(c.dialError("setsockopt", err))
		return false
	}
	if err := sysConnect(fd, ap); err != nil && err != unix.EINPROGRESS {
		c.dialFailed(c.dialError("connect", err))
		return false
	}
	c.connecting.Store(true)
	c.down.armed = true // by the registration below, made before the poller may see the pump
	c.startPumps()
	// Parked before the registration, so that the poller can claim the
	// down pump as soon as it fires. A stop meanwhile found them running
	// (its wake-up was only a mark): it is looked at below.
	c.up.state.Store(stParked)
	c.down.state.Store(stParked)
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT}
	setEventKey(&ev, c.down.key)
	if err := sysEpollCtl(c.pl.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// The stop below wakes both pumps, which end.
		c.abort(fmt.Sprintf("upstream: epoll_ctl: %v", err), true)
	}
	if c.stopped.Load() {
		c.up.wake()
		c.down.wake()
	}
	return true
}

// connected finishes the connect, on the poller that reported the
// upstream socket writable (or failed): the pumps start. The down pump
// is owned by the caller.
func (c *conn) connected(events uint32) {
	d := &c.down
	if c.stopped.Load() {
		d.resume(true) // ends it; the stop woke the up pump
		return
	}
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 || events&unix.EPOLLOUT == 0 {
		errno, err := sysGetsockoptInt(c.server.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil {
			err = syscall.Errno(errno)
			if errno == 0 {
				err = unix.ECONNREFUSED // hung up without saying why
			}
		}
		c.dialFailed(c.dialError("connect", err))
		d.resume(true)
		return
	}
	c.connecting.Store(false)
	if v := c.p.cfg.ProxyProtocol.Out; v != 0 {
		if err := c.writeProxyHeader(v); err != nil {
			c.abort(fmt.Sprintf("upstream: writing PROXY header: %v", err), true)
			d.resume(true)
			return
		}
	}
	// From now on the upstream socket reports reads, level-triggered.
	ev := unix.EpollEvent{Events: pollEvents}
	setEventKey(&ev, d.key)
	if err := sysEpollCtl(c.pl.epfd, unix.EPOLL_CTL_MOD, d.srcFD, &ev); err != nil {
		c.abort(fmt.Sprintf("upstream: epoll_ctl: %v", err), true)
		d.resume(true)
		return
	}
	d.skipRead = true
	d.resume(true)
	// The client's first bytes are most likely waiting. If a wake-up
	// holds the up pump, its goroutine sees connecting cleared and runs
	// it.
	if c.up.claim() {
		c.up.resume(true)
	}
}

// dialError is the error of a failed step of connect, worded as the Go
// dialer's.
func (c *conn) dialError(step string, err error) error {
	if err != os.ErrDeadlineExceeded {
		err = os.NewSyscallError(step, err)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(c.p.upstream), Err: err}
}

// upstreamAddr returns the upstream when it is a fixed IP address the
// fast path can connect to without a resolver.
func upstreamAddr(cfg *Config) netip.AddrPort {
	if cfg.Dial != nil {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(cfg.Upstream)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
