package dissect

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// recServerHello builds a ServerHello message. selected, when not 0, is
// put in a supported_versions extension.
func recServerHello(legacy uint16, random []byte, selected uint16) []byte {
	b := []byte{byte(legacy >> 8), byte(legacy)}
	b = append(b, random...)
	b = append(b, 32)
	b = append(b, recBytes(32, 0x55)...)
	b = append(b, 0x13, 0x01, 0)
	var exts []byte
	if bytes.Equal(random, helloRetryRequestRandom) {
		exts = append(exts, 0, 51, 0, 2, 0, 29) // key_share: the group asked for
	} else {
		exts = append(exts, 0, 51, 0, 6, 0, 29, 0, 2, 0xaa, 0xbb) // key_share, abridged
	}
	if selected != 0 {
		exts = append(exts, 0, 43, 0, 2, byte(selected>>8), byte(selected))
	}
	b = append(b, byte(len(exts)>>8), byte(len(exts)))
	b = append(b, exts...)
	return recMsg(2, b)
}

type recStep struct {
	dir Direction
	rec []byte
	// want: the record's Encrypted flag, and the handshake message types
	// it yields.
	encrypted bool
	msgs      []uint8
}

func recRunSteps(t *testing.T, steps []recStep) *Conn {
	t.Helper()
	c := NewConn(Limits{})
	for i, s := range steps {
		units, rest, err := recUnits(t, c, s.dir, s.rec)
		if err != nil || len(rest) != 0 {
			t.Fatalf("step %d: %v, %d bytes left", i, err, len(rest))
		}
		if units[0].Encrypted != s.encrypted {
			t.Fatalf("step %d (%s %s): encrypted %v, want %v", i, s.dir, units[0].Header.Type, units[0].Encrypted, s.encrypted)
		}
		var msgs []uint8
		for _, m := range recMessages(units) {
			msgs = append(msgs, m.Type)
		}
		if !slices.Equal(msgs, s.msgs) {
			t.Fatalf("step %d (%s %s): messages %v, want %v", i, s.dir, units[0].Header.Type, msgs, s.msgs)
		}
		if a := recAnomalyNames(units); len(a) != 0 {
			t.Fatalf("step %d: anomalies %q", i, a)
		}
	}
	return c
}

var (
	recCCS      = recRecord(TypeChangeCipherSpec, VersionTLS12, []byte{1})
	recRandom   = recBytes(32, 0x21)
	recGarbage  = recBytes(40, 0xe0)
	recCH       = recRecord(TypeHandshake, VersionTLS10, recMsg(1, recBytes(200, 1)))
	recAppData  = recRecord(TypeApplicationData, VersionTLS12, recBytes(60, 3))
	recEncAlert = recRecord(TypeAlert, VersionTLS12, recBytes(26, 4))
)

func TestConnTLS12Switch(t *testing.T) {
	flight := slices.Concat(recServerHello(VersionTLS12, recRandom, 0), recMsg(11, recBytes(500, 2)), recMsg(14, nil))
	c := recRunSteps(t, []recStep{
		{Up, recCH, false, []uint8{1}},
		// A CCS before any ServerHello switches nothing.
		{Up, recCCS, false, nil},
		{Down, recRecord(TypeHandshake, VersionTLS12, flight), false, []uint8{2, 11, 14}},
		{Up, recRecord(TypeHandshake, VersionTLS12, recMsg(16, recBytes(66, 3))), false, []uint8{16}},
		{Up, recCCS, false, nil},
		// Finished, encrypted: opaque, even though it reads as garbage.
		{Up, recRecord(TypeHandshake, VersionTLS12, recGarbage), true, nil},
		// The server has not switched yet.
		{Down, recRecord(TypeHandshake, VersionTLS12, recMsg(4, recBytes(100, 6))), false, []uint8{4}},
		{Down, recCCS, false, nil},
		{Down, recRecord(TypeHandshake, VersionTLS12, recGarbage), true, nil},
		{Up, recAppData, true, nil},
		{Up, recRecord(TypeHeartbeat, VersionTLS12, recBytes(86, 9)), true, nil},
		{Down, recEncAlert, true, nil},
		// Renegotiation is encrypted too.
		{Up, recRecord(TypeHandshake, VersionTLS12, recBytes(300, 7)), true, nil},
	})
	if c.Version() != VersionTLS12 || !c.Encrypted(Up) || !c.Encrypted(Down) {
		t.Fatalf("version %s, up %v, down %v", VersionName(c.Version()), c.Encrypted(Up), c.Encrypted(Down))
	}
}

func TestConnTLS13Switch(t *testing.T) {
	c := recRunSteps(t, []recStep{
		{Up, recCH, false, []uint8{1}},
		{Down, recRecord(TypeHandshake, VersionTLS12, recServerHello(VersionTLS12, recRandom, VersionTLS13)), false, []uint8{2}},
		// The compatibility CCS is cleartext in either direction and
		// switches nothing.
		{Down, recCCS, false, nil},
		{Down, recAppData, true, nil},
		{Up, recCCS, false, nil},
		{Up, recAppData, true, nil},
		{Up, recRecord(TypeHandshake, VersionTLS12, recGarbage), true, nil},
		{Down, recCCS, false, nil},
		{Down, recRecord(TypeHeartbeat, VersionTLS12, recBytes(40, 1)), true, nil},
	})
	if c.Version() != VersionTLS13 {
		t.Fatalf("version %s", VersionName(c.Version()))
	}
}

func TestConnHelloRetryRequest(t *testing.T) {
	hrr := recServerHello(VersionTLS12, helloRetryRequestRandom, VersionTLS13)
	c := recRunSteps(t, []recStep{
		{Up, recCH, false, []uint8{1}},
		{Down, recRecord(TypeHandshake, VersionTLS12, hrr), false, []uint8{2}},
		{Down, recCCS, false, nil},
		{Up, recCCS, false, nil},
		// The second ClientHello is cleartext.
		{Up, recRecord(TypeHandshake, VersionTLS12, recMsg(1, recBytes(220, 8))), false, []uint8{1}},
		{Down, recRecord(TypeHandshake, VersionTLS12, recServerHello(VersionTLS12, recRandom, VersionTLS13)), false, []uint8{2}},
		{Down, recAppData, true, nil},
		{Up, recAppData, true, nil},
	})
	if c.Version() != VersionTLS13 {
		t.Fatalf("version %s", VersionName(c.Version()))
	}
}

// A TLS 1.3 ServerHello must end its record: what follows it was encrypted
// with the new keys.
func TestConnTLS13ServerHelloNotAligned(t *testing.T) {
	c := NewConn(Limits{})
	rec := recRecord(TypeHandshake, VersionTLS12, slices.Concat(recServerHello(VersionTLS12, recRandom, VersionTLS13), recMsg(8, recBytes(10, 0))))
	units, _, _ := recUnits(t, c, Down, rec)
	if m := recMessages(units); len(m) != 1 || m[0].Type != 2 {
		t.Fatalf("messages %+v", m)
	}
	if got := recAnomalyNames(units); !slices.Equal(got, []string{AnomalyRecordSpansKeyChange}) {
		t.Fatalf("anomalies %q", got)
	}
}

// Real sessions between crypto/tls peers over loopback TCP, recorded as
// each side wrote them.

var recCert = sync.OnceValues(func() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
})

type recLog struct {
	mu     sync.Mutex
	chunks []pcaptest.Chunk
}

type recWriter struct {
	net.Conn
	log *recLog
	up  bool
}

// Write logs before sending: a peer acts only on bytes it has read, so the
// log keeps the causal order of the two directions.
func (w recWriter) Write(p []byte) (int, error) {
	w.log.mu.Lock()
	w.log.chunks = append(w.log.chunks, pcaptest.Chunk{Up: w.up, Data: slices.Clone(p)})
	w.log.mu.Unlock()
	return w.Conn.Write(p)
}

// recTLSSession runs one TLS session on 127.0.0.1: handshake, "ping" from
// the client, "pong" back, close_notify both ways.
func recTLSSession(t testing.TB, server, client *tls.Config) []pcaptest.Chunk {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := &recLog{}
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(recWriter{c, log, false}, server)
		buf := make([]byte, 4)
		if _, err := io.ReadFull(s, buf); err != nil {
			done <- err
			return
		}
		if _, err := s.Write([]byte("pong")); err != nil {
			done <- err
			return
		}
		done <- s.Close()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(recWriter{c, log, true}, client)
	if _, err := tc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(tc)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v", got, err)
	}
	tc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	return log.chunks
}

type recSessionResult struct {
	msgs      [2][]uint8
	ccs       [2]int
	encrypted [2]int // records seen encrypted
	c         *Conn
}

// recReplay feeds a recorded session through a Conn and checks that it
// frames to the last byte without an anomaly.
func recReplay(t *testing.T, chunks []pcaptest.Chunk) recSessionResult {
	t.Helper()
	var r recSessionResult
	p := newRecPump(Limits{})
	p.hook = func(dir Direction, u Unit) {
		switch {
		case u.Kind == UnitMessage:
			r.msgs[dir] = append(r.msgs[dir], u.Msg.Type)
		case u.Kind == UnitRecord && u.Header.Type == TypeChangeCipherSpec:
			r.ccs[dir]++
			if u.Encrypted {
				t.Errorf("%s: encrypted CCS", dir)
			}
		}
		if u.Encrypted && u.Kind != UnitChunk {
			r.encrypted[dir]++
		}
	}
	for _, ch := range chunks {
		dir := Down
		if ch.Up {
			dir = Up
		}
		p.feed(t, dir, ch.Data)
	}
	p.eof(Up)
	p.eof(Down)
	if len(p.found) != 0 {
		t.Fatalf("anomalies %q\n%q", p.found, p.lines)
	}
	for _, d := range []Direction{Up, Down} {
		if len(p.pending[d]) != 0 || !p.c.Encrypted(d) {
			t.Fatalf("%s: %d bytes left, encrypted %v", d, len(p.pending[d]), p.c.Encrypted(d))
		}
	}
	r.c = p.c
	return r
}

func recTLSConfigs(t testing.TB, version uint16) (*tls.Config, *tls.Config) {
	cert, err := recCert()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: version, MaxVersion: version},
		&tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: version, MaxVersion: version}
}

func TestConnRealTLS12(t *testing.T) {
	server, client := recTLSConfigs(t, tls.VersionTLS12)
	client.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	r := recReplay(t, recTLSSession(t, server, client))
	// ClientHello, ClientKeyExchange; ServerHello, Certificate,
	// ServerKeyExchange, ServerHelloDone, NewSessionTicket.
	if !slices.Equal(r.msgs[Up], []uint8{1, 16}) || !slices.Equal(r.msgs[Down], []uint8{2, 11, 12, 14, 4}) {
		t.Fatalf("messages %v", r.msgs)
	}
	if r.c.Version() != VersionTLS12 || r.ccs != [2]int{1, 1} {
		t.Fatalf("version %s, ccs %v", VersionName(r.c.Version()), r.ccs)
	}
	// Resumed: the server switches first, right after its ServerHello.
	r = recReplay(t, recTLSSession(t, server, client))
	if !slices.Equal(r.msgs[Up], []uint8{1}) || r.msgs[Down][0] != 2 || slices.Contains(r.msgs[Down], 11) {
		t.Fatalf("resumption messages %v", r.msgs)
	}
}

func TestConnRealTLS13(t *testing.T) {
	server, client := recTLSConfigs(t, tls.VersionTLS13)
	r := recReplay(t, recTLSSession(t, server, client))
	// Everything after the ServerHello is encrypted; the compatibility
	// CCS of each side (crypto/tls sends them) is not.
	if !slices.Equal(r.msgs[Up], []uint8{1}) || !slices.Equal(r.msgs[Down], []uint8{2}) {
		t.Fatalf("messages %v", r.msgs)
	}
	if r.c.Version() != VersionTLS13 || r.encrypted[Up] == 0 || r.encrypted[Down] == 0 {
		t.Fatalf("version %s, encrypted records %v", VersionName(r.c.Version()), r.encrypted)
	}
}

func TestConnRealHelloRetryRequest(t *testing.T) {
	server, client := recTLSConfigs(t, tls.VersionTLS13)
	// The client's key share is X25519, the server takes only P-256.
	server.CurvePreferences = []tls.CurveID{tls.CurveP256}
	client.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	r := recReplay(t, recTLSSession(t, server, client))
	// Two ClientHellos, both cleartext; a HelloRetryRequest, then the
	// ServerHello.
	if !slices.Equal(r.msgs[Up], []uint8{1, 1}) || !slices.Equal(r.msgs[Down], []uint8{2, 2}) {
		t.Fatalf("messages %v", r.msgs)
	}
}
