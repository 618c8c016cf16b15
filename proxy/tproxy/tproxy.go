// Package tproxy owns the socket side of the transparent gateway: a TCP
// listener that accepts connections the kernel's TPROXY hands it, the
// original destination of such a connection, and a dialer that reaches that
// destination, optionally from the client's own address.
//
//	ln, err := tproxy.Listen(ctx, ":15001", tproxy.ListenOptions{})
//	c, err := ln.Accept()
//	dst, err := tproxy.OriginalDst(c)   // where the client meant to go
//	src, err := tproxy.ClientAddr(c)
//	up, err := (&tproxy.Dialer{Spoof: true}).Dial(ctx, src, dst)
//
// The packets reach the listener because of rules this package does not
// install: an nftables `tproxy to :PORT` rule that assigns each new
// connection to the listening socket, and a policy route that delivers the
// marked packets locally (package proxy/nft, or configs/nftables-haka.nft).
//
// Privileges: IP_TRANSPARENT and IPV6_TRANSPARENT need CAP_NET_RAW or
// CAP_NET_ADMIN in the network namespace's user namespace; without either
// the kernel answers EPERM, reported as ErrPermission with the fix.
package tproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// ErrPermission is wrapped by the errors of Listen and Dialer.Dial when the
// process lacks the capability a transparent socket needs.
var ErrPermission = errors.New("transparent sockets need CAP_NET_RAW or CAP_NET_ADMIN " +
	"(run as root, or grant the capability: systemd AmbientCapabilities=CAP_NET_ADMIN, " +
	"Kubernetes securityContext.capabilities.add: [NET_ADMIN])")

// ListenOptions tune the transparent listener.
type ListenOptions struct {
	// ReusePort sets SO_REUSEPORT so that several listeners (one per
	// worker or process) share the port and the kernel spreads the
	// connections among them. Without it a second listener on the same
	// port fails with "address already in use".
	ReusePort bool
	// KeepAlive is the accepted connections' TCP keep-alive period, as
	// net.ListenConfig takes it: zero is the net package's default (on),
	// negative turns the probes off.
	KeepAlive time.Duration
}

// ListenConfig returns a net.ListenConfig whose sockets are transparent:
// they accept connections addressed to any destination that TPROXY
// assigns to them.
func ListenConfig(o ListenOptions) *net.ListenConfig {
	return &net.ListenConfig{
		KeepAlive: o.KeepAlive,
		Control: func(network, address string, c syscall.RawConn) error {
			if err := Control(network, address, c); err != nil {
				return err
			}
			// Set before the socket listens, every socket it accepts
			// inherits it: no setsockopt per connection.
			if err := setsockopt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, "TCP_NODELAY"); err != nil {
				return err
			}
			if o.ReusePort {
				return setsockopt(c, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT")
			}
			return nil
		},
	}
}

// Listen opens a transparent TCP listener on addr ("host:port"). The host
// should be empty or a wildcard address: a `tproxy to :PORT` rule hands the
// connection to a listener on the address of the interface the packet came
// in on, which a wildcard listener covers and a loopback one does not. An
// empty host listens on both IPv4 and IPv6 (one dual-stack socket).
//
// A port that is already taken fails with an error that says so and how to
// find the owner; a missing capability fails with ErrPermission.
func Listen(ctx context.Context, addr string, o ListenOptions) (*net.TCPListener, error) {
	ln, err := ListenConfig(o).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, explainListenError(addr, err)
	}
	return ln.(*net.TCPListener), nil
}

func explainListenError(addr string, err error) error {
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		_, port, _ := net.SplitHostPort(addr)
		return fmt.Errorf("transparent listener on %s: port %s is already in use by another socket "+
			"(find it with `ss -ltnp 'sport = :%s'`); stop it or choose another --listen port: %w",
			addr, port, port, err)
	case errors.Is(err, unix.EACCES) && isPrivilegedPort(addr):
		return fmt.Errorf("transparent listener on %s: ports below 1024 need CAP_NET_BIND_SERVICE: %w", addr, err)
	}
	return fmt.Errorf("transparent listener on %s: %w", addr, err)
}

func isPrivilegedPort(addr string) bool {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(p)
	// 1024 is the kernel's default net.ipv4.ip_unprivileged_port_start.
	return err == nil && n > 0 && n < 1024
}

// Control makes the socket transparent; it is a net.ListenConfig.Control
// or net.Dialer.Control function. network is the socket's own family as the
// net package reports it: "tcp4" for an AF_INET socket, "tcp6" for an
// AF_INET6 one (including a dual-stack listener, which also accepts IPv4).
func Control(network, _ string, c syscall.RawConn) error {
	switch network {
	case "tcp4", "udp4":
		// Lets the socket accept connections to, and bind to, addresses
		// that are not local: the TPROXY-assigned connection to the
		// original destination, or a spoofed source.
		return setsockopt(c, unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT")
	case "tcp6", "udp6":
		// The same for IPv6 destinations and sources.
		if err := setsockopt(c, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"); err != nil {
			return err
		}
		// A dual-stack socket also receives IPv4 connections (as
		// v4-mapped addresses); the IPv4 flag covers those. The kernel
		// keeps both in one bit today, but setting both is what it
		// documents and does not rely on that.
		return setsockopt(c, unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT")
	}
	return fmt.Errorf("transparent socket: unsupported network %q", network)
}

// setsockopt sets an int option to 1, naming the option in the error.
func setsockopt(c syscall.RawConn, level, opt int, name string) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return fmt.Errorf("setsockopt %s: %w", name, err)
	}
	if serr != nil {
		if errors.Is(serr, unix.EPERM) {
			return fmt.Errorf("setsockopt %s: %w: %w", name, ErrPermission, serr)
		}
		return fmt.Errorf("setsockopt %s: %w", name, serr)
	}
	return nil
}

// OriginalDst returns the address the client connected to.
//
// Under TPROXY it is the accepted socket's local address. TPROXY does not
// rewrite the packet (unlike REDIRECT or DNAT, which need SO_ORIGINAL_DST
// and conntrack to undo the rewrite): it only assigns the SYN, still
// addressed to the real server, to the transparent listener. The kernel
// then creates the connection's socket from that SYN, so its local address
// is the server's address and port, and the reply packets it sends carry
// them as their source. Without TPROXY (a plain listener) the same call
// returns the listener's own address, which is what a proxy with a fixed
// upstream expects.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	return addrPort(c.LocalAddr())
}

// ClientAddr returns the client's address of an accepted connection, with
// a v4-mapped IPv6 address (from a dual-stack listener) turned back into
// IPv4.
func ClientAddr(c net.Conn) (netip.AddrPort, error) {
	return addrPort(c.RemoteAddr())
}

func addrPort(a net.Addr) (netip.AddrPort, error) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}, fmt.Errorf("not a TCP address: %v", a)
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// DefaultDialTimeout bounds the upstream connect when Dialer.Timeout is
// zero: long enough for a SYN retransmit or two on a lossy path (the first
// retry is at 1 s, the second at 3 s), short enough that a dead server does
// not hold the client for the kernel's ~2 minute default.
const DefaultDialTimeout = 10 * time.Second

// Dialer connects to the upstream of a transparent connection.
type Dialer struct {
	// Spoof dials from the client's own IP address, so the server sees the
	// client and not the gateway (--spoof-source). The source port is
	// chosen by the kernel, not copied from the client; see Dial.
	//
	// The server's replies are addressed to the client, so on the gateway
	// they need the `socket transparent 1 ... meta mark set` rule and the
	// policy route that proxy/nft installs, or they are forwarded to the
	// client instead of being delivered to this socket.
	Spoof bool
	// Timeout bounds the connect; zero means DefaultDialTimeout.
	Timeout time.Duration
	// KeepAlive is passed to net.Dialer (zero: the net package's default,
	// negative: off).
	KeepAlive time.Duration
	// Control, if set, runs after the dialer's own socket options (for
	// SO_MARK, a VRF's SO_BINDTODEVICE, ...).
	Control func(network, address string, c syscall.RawConn) error
}

// Dial connects to dst. With Spoof it binds the socket to client's IP
// first.
//
// The source port is left to the kernel (client ip:0) rather than copied
// from the client, for three reasons:
//   - the client's own connection and the proxy's upstream connection would
//     otherwise have the same 5-tuple; connection tracking on the gateway
//     and on any firewall behind it would merge two TCP sessions with
//     different sequence numbers into one entry and mark the packets of one
//     of them INVALID, which the usual `ct state invalid drop` then drops;
//   - the bind fails with EADDRINUSE whenever a local socket already holds
//     that port on a wildcard address (the proxy's own listener, for one);
//   - a client may use one source port towards two servers at once, which
//     a bind to ip:port cannot express.
//
// IP_BIND_ADDRESS_NO_PORT makes the kernel pick the port at connect time
// for the whole 4-tuple, so many upstream connections from one client
// address do not exhaust the ephemeral range.
func (d *Dialer) Dial(ctx context.Context, client, dst netip.AddrPort) (*net.TCPConn, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	network := "tcp6"
	if dst.Addr().Is4() {
		network = "tcp4"
	}
	nd := net.Dialer{Timeout: d.Timeout, KeepAlive: d.KeepAlive}
	if nd.Timeout == 0 {
		nd.Timeout = DefaultDialTimeout
	}
	if d.Spoof {
		src := client.Addr().Unmap()
		if src.Is4() != dst.Addr().Is4() {
			return nil, fmt.Errorf("spoofed dial to %s from %s: the client and the destination are of different address families", dst, src)
		}
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	nd.Control = func(network, address string, c syscall.RawConn) error {
		if d.Spoof {
			if err := Control(network, address, c); err != nil {
				return err
			}
			if err := setsockopt(c, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"); err != nil {
				return err
			}
		}
		if d.Control != nil {
			return d.Control(network, address, c)
		}
		return nil
	}
	c, err := nd.DialContext(ctx, network, dst.String())
	if err != nil {
		if d.Spoof {
			return nil, fmt.Errorf("dial %s from %s: %w", dst, client.Addr(), err)
		}
		return nil, fmt.Errorf("dial %s: %w", dst, err)
	}
	return c.(*net.TCPConn), nil
}

// DialFlow is Dial for a connection the proxy accepted: from the flow's
// client address (when spoofing) to its original destination. Its method
// value has the shape of the proxy's dial function.
func (d *Dialer) DialFlow(ctx context.Context, f *inspect.Flow) (*net.TCPConn, error) {
	return d.Dial(ctx, f.Src, f.Dst)
}
