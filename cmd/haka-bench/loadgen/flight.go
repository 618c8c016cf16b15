package loadgen

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Flight is a TLS 1.2 connection recorded once from crypto/tls and cut into
// turns: Turns[0], Turns[2], ... are what the client sends, Turns[1],
// Turns[3], ... what the server answers. Both ends replay it byte for byte
// and check what they receive against it, so a proxy in the path must
// forward every byte exactly, and a TLS inspector sees a real handshake
// (ClientHello, certificate flight, ChangeCipherSpec, Finished) and real
// application-data records without either end doing any cryptography.
//
// A recorded Flight has two round trips:
//
//	client: ClientHello
//	server: ServerHello, Certificate, ServerKeyExchange, ServerHelloDone
//	client: ClientKeyExchange, ChangeCipherSpec, Finished, application data (100 B)
//	server: ChangeCipherSpec, Finished, application data (100 B)
//
// The client's request rides with its Finished, as a TLS 1.2 client doing
// False Start (RFC 7918) sends it, so the conversation costs one round trip
// more than a plain 100-byte request/response and not two.
type Flight struct {
	Turns [][]byte
}

const (
	// FlightPayload is the application data each side sends in the
	// recorded connection: the 100-byte request and response of the
	// connection-rate anchors.
	FlightPayload = 100

	flightMagic = "haka-bench flight v1\n"
	// maxFlightTurns bounds a flight file: a recording has four turns;
	// sixteen leaves room for longer hand-made conversations.
	maxFlightTurns = 16
	// maxTurnLen bounds one turn: the largest, the server's certificate
	// flight, is about 1 KB with a P-256 certificate; 64 KiB admits a
	// chain of real certificates and still rejects a corrupt length.
	maxTurnLen = 64 << 10
	// recordHeaderLen and maxRecordLen are the TLS record layer's header
	// size and its largest TLSCiphertext (2^14 + 2048, RFC 5246 6.2.3).
	recordHeaderLen = 5
	maxRecordLen    = 1<<14 + 2048
	// recordTimeout bounds the in-memory recording.
	recordTimeout = 10 * time.Second
)

// TLS record content types and handshake message types a flight is checked
// against.
const (
	typeChangeCipherSpec = 20
	typeApplicationData  = 23
	typeHandshake        = 22
	msgClientHello       = 1
	msgServerHello       = 2
)

// RecordFlight runs one TLS 1.2 handshake (ECDHE-ECDSA-AES128-GCM-SHA256,
// X25519, no session tickets) between crypto/tls endpoints over an
// in-memory pipe, with cert as the server's certificate and roots to verify
// it, exchanges FlightPayload bytes each way and returns what each side
// wrote, cut into the turns described at Flight.
func RecordFlight(cert tls.Certificate, roots *x509.CertPool) (*Flight, error) {
	cEnd, sEnd := net.Pipe()
	defer cEnd.Close()
	defer sEnd.Close()
	deadline := time.Now().Add(recordTimeout)
	cEnd.SetDeadline(deadline)
	sEnd.SetDeadline(deadline)

	var tr transcript
	client := tls.Client(&tapConn{Conn: cEnd, client: true, tr: &tr}, &tls.Config{
		RootCAs:                roots,
		ServerName:             "localhost",
		MinVersion:             tls.VersionTLS12,
		MaxVersion:             tls.VersionTLS12,
		CipherSuites:           []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
	})
	server := tls.Server(&tapConn{Conn: sEnd, tr: &tr}, &tls.Config{
		Certificates:           []tls.Certificate{cert},
		MinVersion:             tls.VersionTLS12,
		MaxVersion:             tls.VersionTLS12,
		CipherSuites:           []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
	})

	request := bytes.Repeat([]byte{'q'}, FlightPayload)
	serverErr := make(chan error, 1)
	go func() {
		buf := make([]byte, FlightPayload)
		if _, err := io.ReadFull(server, buf); err != nil {
			serverErr <- fmt.Errorf("server: %w", err)
			return
		}
		_, err := server.Write(bytes.Repeat([]byte{'r'}, FlightPayload))
		serverErr <- err
	}()
	if err := client.Handshake(); err != nil {
		return nil, fmt.Errorf("recording a flight: client handshake: %w", err)
	}
	if _, err := client.Write(request); err != nil {
		return nil, fmt.Errorf("recording a flight: client request: %w", err)
	}
	resp := make([]byte, FlightPayload)
	if _, err := io.ReadFull(client, resp); err != nil {
		return nil, fmt.Errorf("recording a flight: client response: %w", err)
	}
	if err := <-serverErr; err != nil {
		return nil, fmt.Errorf("recording a flight: %w", err)
	}

	// crypto/tls takes turns strictly: ClientHello, server flight,
	// client Finished, server Finished, request, response.
	turns := tr.turns()
	if len(turns) != 6 {
		return nil, fmt.Errorf("recording a flight: %d turns, want 6 (crypto/tls changed its TLS 1.2 handshake?)", len(turns))
	}
	f := &Flight{Turns: [][]byte{
		turns[0],
		turns[1],
		append(turns[2], turns[4]...),
		append(turns[3], turns[5]...),
	}}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("recording a flight: %w", err)
	}
	return f, nil
}

// transcript collects what both ends of the recording write, merging
// consecutive writes of one side into one turn.
type transcript struct {
	mu     sync.Mutex
	chunks []chunk
}

type chunk struct {
	client bool
	b      []byte
}

func (t *transcript) add(client bool, p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.chunks); n > 0 && t.chunks[n-1].client == client {
		t.chunks[n-1].b = append(t.chunks[n-1].b, p...)
		return
	}
	t.chunks = append(t.chunks, chunk{client: client, b: append([]byte(nil), p...)})
}

func (t *transcript) turns() [][]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([][]byte, 0, len(t.chunks))
	for i, c := range t.chunks {
		if c.client != (i%2 == 0) {
			return nil
		}
		out = append(out, c.b)
	}
	return out
}

// tapConn records every write before passing it on. net.Pipe blocks a
// write until the peer reads it, so the order of the records is the order
// of the conversation.
type tapConn struct {
	net.Conn
	client bool
	tr     *transcript
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.tr.add(c.client, p)
	return c.Conn.Write(p)
}

// Validate checks the shape a replay relies on: an even number of turns
// (client first, server last), each a whole number of TLS records with sane
// headers, the first opening with a ClientHello and the second with a
// ServerHello.
func (f *Flight) Validate() error {
	if n := len(f.Turns); n < 2 || n%2 != 0 || n > maxFlightTurns {
		return fmt.Errorf("flight: %d turns, want an even number from 2 to %d", n, maxFlightTurns)
	}
	for i, t := range f.Turns {
		if len(t) == 0 || len(t) > maxTurnLen {
			return fmt.Errorf("flight: turn %d is %d bytes, want 1 to %d", i, len(t), maxTurnLen)
		}
		if err := checkRecords(t); err != nil {
			return fmt.Errorf("flight: turn %d: %w", i, err)
		}
	}
	if !startsWithHandshake(f.Turns[0], msgClientHello) {
		return errors.New("flight: the client's first turn does not open with a ClientHello record")
	}
	if !startsWithHandshake(f.Turns[1], msgServerHello) {
		return errors.New("flight: the server's first turn does not open with a ServerHello record")
	}
	return nil
}

// checkRecords walks b as TLS records and fails unless it ends exactly at
// a record boundary.
func checkRecords(b []byte) error {
	for off := 0; off < len(b); {
		if len(b)-off < recordHeaderLen {
			return fmt.Errorf("record at offset %d: %d bytes left, shorter than a record header", off, len(b)-off)
		}
		typ, major := b[off], b[off+1]
		n := int(b[off+3])<<8 | int(b[off+4])
		if typ < typeChangeCipherSpec || typ > typeApplicationData || major != 3 {
			return fmt.Errorf("record at offset %d: type %d version %d.%d is not a TLS record", off, typ, major, b[off+2])
		}
		if n > maxRecordLen {
			return fmt.Errorf("record at offset %d: length %d exceeds %d", off, n, maxRecordLen)
		}
		if off+recordHeaderLen+n > len(b) {
			return fmt.Errorf("record at offset %d: length %d runs past the end of the turn", off, n)
		}
		off += recordHeaderLen + n
	}
	return nil
}

func startsWithHandshake(b []byte, msg byte) bool {
	return len(b) > recordHeaderLen && b[0] == typeHandshake && b[recordHeaderLen] == msg
}

// MaxTurn returns the length of the longest turn: the buffer a replay
// needs.
func (f *Flight) MaxTurn() int {
	m := 0
	for _, t := range f.Turns {
		m = max(m, len(t))
	}
	return m
}

// MarshalBinary encodes the flight for a flight file: a text magic line,
// the number of turns, then each turn with a 24-bit length.
func (f *Flight) MarshalBinary() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(flightMagic))
	b.AddUint8(uint8(len(f.Turns)))
	for _, t := range f.Turns {
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(t) })
	}
	return b.Bytes()
}

// UnmarshalBinary decodes what MarshalBinary wrote and validates it. The
// turns are copies: data may be reused afterwards.
func (f *Flight) UnmarshalBinary(data []byte) error {
	if !bytes.HasPrefix(data, []byte(flightMagic)) {
		return errors.New("flight: not a haka-bench flight file (bad magic)")
	}
	s := cryptobyte.String(data[len(flightMagic):])
	var n uint8
	if !s.ReadUint8(&n) || n > maxFlightTurns {
		return errors.New("flight: missing or impossible turn count")
	}
	turns := make([][]byte, 0, n)
	for i := 0; i < int(n); i++ {
		var t cryptobyte.String
		if !s.ReadUint24LengthPrefixed(&t) {
			return fmt.Errorf("flight: turn %d truncated", i)
		}
		turns = append(turns, bytes.Clone(t))
	}
	if !s.Empty() {
		return fmt.Errorf("flight: %d bytes after the last turn", len(s))
	}
	g := Flight{Turns: turns}
	if err := g.Validate(); err != nil {
		return err
	}
	*f = g
	return nil
}

// PlayClient plays the client's side over c: it writes the client's turns
// and reads each server turn in full, failing on the first byte that is
// not the recorded one. buf is scratch space of at least MaxTurn bytes.
func (f *Flight) PlayClient(c net.Conn, buf []byte) error {
	return f.play(c, buf, true)
}

// PlayServer plays the server's side over c, checking the client's turns.
func (f *Flight) PlayServer(c net.Conn, buf []byte) error {
	return f.play(c, buf, false)
}

func (f *Flight) play(c net.Conn, buf []byte, client bool) error {
	for i, t := range f.Turns {
		if (i%2 == 0) == client {
			if _, err := c.Write(t); err != nil {
				return fmt.Errorf("writing turn %d: %w", i, err)
			}
			continue
		}
		got := buf[:len(t)]
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("reading turn %d (%d bytes): %w", i, len(t), err)
		}
		if !bytes.Equal(got, t) {
			return fmt.Errorf("turn %d: byte %d differs from the recording", i, firstDiff(got, t))
		}
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
