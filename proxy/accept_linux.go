package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The fast path of a connection: the inspector from the factory and a
// non-blocking connect to the upstream, on the accepting goroutine; the
// poller finishes the connect and runs the pumps. No goroutine is
// started per connection, and the upstream socket never enters the
// runtime's poller (no registration, no address lookups), unless a pump
// gets hot. It is taken when the proxy has pollers, no PROXY header is
// read from clients, and the upstream is a fixed IP address (a hostname
// needs the resolver, a DialFunc is the caller's code: both go through
// handle on a goroutine of their own).
//
// Accepting stays with net.Listener.Accept: a listener's RawConn cannot
// wait for readability, and waiting on a duplicate of its descriptor
// would keep the port open after the caller closes the listener.

// fastPath reports whether new connections take the fast path.
func (p *Proxy) fastPath() bool {
	return len(p.pollers) > 0 && p.upstream.IsValid() && !p.cfg.ProxyProtocol.In
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
