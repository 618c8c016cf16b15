package proxy

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// sock is one side of a connection. The pumps use its descriptor
// directly; fd stays open until finish closes the socket, once both
// pumps have ended.
//
// A socket comes either as a *net.TCPConn (from a net.Listener, or from
// a DialFunc), which owns the descriptor and has it registered with the
// runtime's poller, or raw (accept4, or the proxy's own non-blocking
// connect), which the runtime does not know: no registration and no
// address lookups to pay for. A raw socket is made known to the runtime
// (wrapped in an *os.File) only when a pump must wait on it on a
// goroutine (a hot pump, a full socket); the file then owns it.
type sock struct {
	fd int
	tc *net.TCPConn
	// w is what the runtime waits on, for the waits of hot pumps and the
	// deadlines that end them: tc, or the file a raw socket was wrapped
	// in (set once, under the connection's mu).
	w atomic.Pointer[waitable]
}

// waitable is a socket known to the runtime's poller.
type waitable struct {
	raw syscall.RawConn
	dl  interface {
		SetDeadline(time.Time) error
		SetReadDeadline(time.Time) error
	}
	f *os.File // the wrapper of a raw socket, which owns it
}

// setTCP makes s the sock of a *net.TCPConn.
func (s *sock) setTCP(tc *net.TCPConn) error {
	raw, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	if err := raw.Control(func(d uintptr) { fd = int(d) }); err != nil {
		return err
	}
	s.fd, s.tc = fd, tc
	s.w.Store(&waitable{raw: raw, dl: tc})
	return nil
}

// waiter returns the socket's RawConn for waits in the runtime's poller,
// wrapping a raw socket the first time. c.mu serialises the wrapping:
// both pumps may want the same socket.
func (s *sock) waiter(c *conn) (syscall.RawConn, error) {
	if w := s.w.Load(); w != nil {
		return w.raw, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if w := s.w.Load(); w != nil {
		return w.raw, nil
	}
	f := os.NewFile(uintptr(s.fd), "socket")
	raw, err := f.SyscallConn()
	if err != nil {
		// f owns the descriptor now: keep it, so that close goes through
		// it, even though the runtime cannot wait on it.
		s.w.Store(&waitable{f: f, dl: f})
		return nil, err
	}
	s.w.Store(&waitable{raw: raw, dl: f, f: f})
	return raw, nil
}

// setDeadline sets both deadlines of a socket the runtime knows; a raw
// socket nobody waits on needs none.
func (s *sock) setDeadline(t time.Time) {
	if w := s.w.Load(); w != nil {
		w.dl.SetDeadline(t)
	}
}

func (s *sock) setReadDeadline(t time.Time) {
	if w := s.w.Load(); w != nil {
		w.dl.SetReadDeadline(t)
	}
}

// resetOnClose makes the close send RST (SO_LINGER 0).
func (s *sock) resetOnClose() {
	sysLingerZero(s.fd)
}

// close closes the socket through whatever owns its descriptor.
func (s *sock) close() {
	switch w := s.w.Load(); {
	case s.tc != nil:
		s.tc.Close()
	case w != nil && w.f != nil:
		w.f.Close()
	case s.fd >= 0:
		sysClose(s.fd)
	}
	s.fd = -1
}

// valid reports whether the sock holds a socket.
func (s *sock) valid() bool { return s.fd >= 0 }
