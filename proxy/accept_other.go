//go:build !linux

package proxy

import (
	"net"
	"net/netip"
)

// Without epoll there is no fast path: every connection is dialled with
// the net package (see handle).

func (p *Proxy) fastPath() bool { return false }

func (p *Proxy) rawListener(net.Listener) (*net.TCPListener, bool) { return nil, false }

func (p *Proxy) serveRaw(*net.TCPListener) error { panic("proxy: no fast path on this system") }

func (c *conn) startRaw() bool { panic("proxy: no fast path on this system") }

func (c *conn) connected(uint32) { panic("proxy: no fast path on this system") }

func (c *conn) dialError(step string, err error) error { return err }

func upstreamAddr(*Config) netip.AddrPort { return netip.AddrPort{} }
