package loadgen

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// The request a TLS client sends once the handshake is done: one op byte
// and a 64-bit big-endian count.
const (
	// OpStream asks for count bytes of application data, then a close.
	OpStream = 'S'
	// OpStreamUntilClose asks for application data until the client goes
	// away (count is ignored).
	OpStreamUntilClose = 'U'
	// OpEcho sends count bytes that the server sends back before closing.
	OpEcho = 'E'

	requestLen = 9
	// maxEcho bounds an echo request: the handshake test sends 100 bytes.
	maxEcho = 64 << 10
	// streamChunk is what the server hands crypto/tls per Write: four
	// full records, so the per-call overhead stays out of the numbers.
	streamChunk = 64 << 10
	// handshakeTimeout bounds a connection until its request is read,
	// and an echo or a flight replay as a whole.
	handshakeTimeout = 10 * time.Second
	// streamTimeout bounds a streaming connection: 2 GiB at 1 Gbit/s
	// takes 17 s; half an hour is far beyond any measurement.
	streamTimeout = 30 * time.Minute
	// acceptBackoffMax caps the pause after a failed Accept (EMFILE while
	// an idle test holds every descriptor): retry, as net/http does.
	acceptBackoffMax = time.Second
)

// Server is the far end of the measurements. ServeTLS answers the stream
// and echo requests over TLS 1.3 with the material's certificate;
// ServeFlight replays the server's side of the material's flight. One
// Server may serve several listeners; Close stops all of them and every
// connection they accepted.
type Server struct {
	tlsConfig *tls.Config
	flight    *Flight
	pattern   []byte // the streamed bytes, shared read-only

	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]struct{}
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewServer returns a server for m, which must carry the private key
// (Prepare).
func NewServer(m *Material) *Server {
	p := make([]byte, streamChunk)
	for i := range p {
		p[i] = byte(i * 7)
	}
	return &Server{
		tlsConfig: &tls.Config{
			Certificates: []tls.Certificate{m.Cert},
			MinVersion:   tls.VersionTLS13,
			// Every handshake must be a full one.
			SessionTicketsDisabled: true,
		},
		flight:  m.Flight,
		pattern: p,
		lns:     make(map[net.Listener]struct{}),
		conns:   make(map[net.Conn]struct{}),
	}
}

// ErrServerClosed is returned by the Serve methods after Close.
var ErrServerClosed = errors.New("loadgen: server closed")

// ServeTLS accepts TLS connections on ln until Close.
func (s *Server) ServeTLS(ln net.Listener) error {
	return s.serve(ln, s.handleTLS)
}

// ServeFlight accepts connections on ln and replays the server's side of
// the flight on each. Without hold the server closes right after its last
// turn (it closes first, so TIME_WAIT stays off the client's ephemeral
// ports); with hold it keeps the connection until the client closes it.
func (s *Server) ServeFlight(ln net.Listener, hold bool) error {
	return s.serve(ln, func(c net.Conn) { s.handleFlight(c, hold) })
}

func (s *Server) serve(ln net.Listener, handle func(net.Conn)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), acceptBackoffMax)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.add(c) {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.remove(c)
			handle(c)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) remove(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Close stops every listener and connection and waits for their handlers.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) handleTLS(raw net.Conn) {
	c := tls.Server(raw, s.tlsConfig)
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	var req [requestLen]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	n := binary.BigEndian.Uint64(req[1:])
	switch req[0] {
	case OpStream, OpStreamUntilClose:
		c.SetDeadline(time.Now().Add(streamTimeout))
		until := req[0] == OpStreamUntilClose
		for until || n > 0 {
			k := uint64(len(s.pattern))
			if !until {
				k = min(k, n)
				n -= k
			}
			if _, err := c.Write(s.pattern[:k]); err != nil {
				return
			}
		}
		c.Close() // close_notify, then FIN
	case OpEcho:
		if n > maxEcho {
			return
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
		c.Close()
	}
}

func (s *Server) handleFlight(c net.Conn, hold bool) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	buf := make([]byte, s.flight.MaxTurn())
	if err := s.flight.PlayServer(c, buf); err != nil || !hold {
		return
	}
	c.SetDeadline(time.Time{})
	// Held until the client closes, or Close. The replay buffer serves:
	// io.Copy would allocate 32 KiB for each of thousands of held
	// connections.
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}
