package dissect

import (
	"bytes"
	"errors"
	"testing"
)

// recSSLv2ClientHello is the data of an SSLv2 CLIENT-HELLO record: message
// type, version, the three lengths, cipher specs, challenge.
func recSSLv2ClientHello(version uint16) []byte {
	specs := []byte{0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f}
	challenge := recBytes(16, 0x40)
	b := []byte{SSLv2ClientHello, byte(version >> 8), byte(version), 0, byte(len(specs)), 0, 0, 0, byte(len(challenge))}
	return append(append(b, specs...), challenge...)
}

// recSSLv2Record wraps data in a 2-byte header, or a 3-byte one when
// padding >= 0.
func recSSLv2Record(data []byte, padding int) []byte {
	if padding < 0 {
		return append([]byte{0x80 | byte(len(data)>>8), byte(len(data))}, data...)
	}
	return append([]byte{byte(len(data) >> 8 & 0x3f), byte(len(data)), byte(padding)}, data...)
}

func TestSSLv2ClientHelloRecord(t *testing.T) {
	data := recSSLv2ClientHello(VersionTLS10)
	rec := recSSLv2Record(data, -1)
	f := NewFramer(Up)
	// Not complete before its last byte.
	for p := range len(rec) {
		g := *f
		if u, n, err := g.Next(rec[:p]); u.Kind != NeedMore || n != 0 || err != nil {
			t.Fatalf("prefix %d: %s %d %v", p, u.Kind, n, err)
		}
	}
	u, n, err := f.Next(rec)
	if err != nil || u.Kind != UnitSSLv2 || n != len(rec) {
		t.Fatalf("%s %d %v", u.Kind, n, err)
	}
	if u.SSLv2.HeaderLen != 2 || u.SSLv2.MsgType != SSLv2ClientHello || u.Header.Version != VersionSSL20 || u.Header.Length != len(data) {
		t.Fatalf("header %+v %+v", u.SSLv2, u.Header)
	}
	// Body is what ParseSSLv2ClientHello reads: after the message type.
	if !bytes.Equal(u.SSLv2.Body, data[1:]) || !bytes.Equal(u.Fragment, data) || !bytes.Equal(u.Raw, rec) {
		t.Fatal("body, fragment or raw differ from the record")
	}
}

func TestSSLv2ThreeByteHeader(t *testing.T) {
	// An opening 3-byte header without padding is accepted.
	data := recSSLv2ClientHello(VersionSSL20)
	f := NewFramer(Up)
	u, n, err := f.Next(recSSLv2Record(data, 0))
	if err != nil || u.Kind != UnitSSLv2 || u.SSLv2.HeaderLen != 3 || n != len(data)+3 || u.SSLv2.MsgType != SSLv2ClientHello {
		t.Fatalf("%s %d %v %+v", u.Kind, n, err, u.SSLv2)
	}
	// Later records may be padded (block ciphers) and escaped.
	enc := recBytes(40, 3)
	rec := recSSLv2Record(enc, 7)
	rec[0] |= 0x40
	u, n, err = f.Next(rec)
	if err != nil || u.Kind != UnitSSLv2 || u.SSLv2.Padding != 7 || !u.SSLv2.Escape || n != 43 || len(u.SSLv2.Body) != 40-1-7 {
		t.Fatalf("padded record: %s %d %v %+v", u.Kind, n, err, u.SSLv2)
	}
}

func TestSSLv2InvalidHeaders(t *testing.T) {
	hello := recSSLv2ClientHello(VersionTLS10)
	tests := []struct {
		name   string
		dir    Direction
		stream []byte
		want   string
	}{
		{"empty record", Up, []byte{0x80, 0x00, 0x01}, AnomalyInvalidSSLv2Header},
		{"server hello from the client", Up, recSSLv2Record(append([]byte{SSLv2ServerHello}, recBytes(20, 0)...), -1), AnomalyInvalidSSLv2Header},
		{"client hello from the server", Down, recSSLv2Record(hello, -1), AnomalyInvalidSSLv2Header},
		{"unknown message type", Up, recSSLv2Record(append([]byte{9}, recBytes(20, 0)...), -1), AnomalyInvalidSSLv2Header},
		{"client hello too short", Up, recSSLv2Record([]byte{SSLv2ClientHello, 0, 2, 0, 3}, -1), AnomalyInvalidSSLv2Header},
		{"error of the wrong size", Down, recSSLv2Record([]byte{SSLv2Error, 0, 1, 0}, -1), AnomalyInvalidSSLv2Header},
		// Bytes that only look like a 3-byte header are not SSLv2 at all.
		{"ssh", Up, []byte("SSH-2.0-OpenSSH_9.2\r\n"), AnomalyInvalidRecordType},
		{"http", Up, []byte("GET / HTTP/1.1\r\n"), AnomalyInvalidRecordType},
		{"stray newline", Up, append([]byte("\n"), recRecord(TypeHandshake, VersionSSL30, nil)...), AnomalyInvalidRecordType},
		{"zeros", Down, []byte{0, 0, 0, 0, 2, 0, 40}, AnomalyInvalidRecordType},
		{"padded opening", Up, recSSLv2Record(hello, 1), AnomalyInvalidRecordType},
	}
	for _, tt := range tests {
		f := NewFramer(tt.dir)
		_, _, err := f.Next(tt.stream)
		var re *RecordError
		if !errors.As(err, &re) || re.Anomaly.Name != tt.want || re.Anomaly.Direction != tt.dir {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.want)
		}
	}
	// Inside an SSLv2 stream, padding that eats the record is rejected.
	f := NewFramer(Up)
	f.mode = modeSSLv2
	if _, _, err := f.Next([]byte{0x00, 0x10, 0x10}); err == nil {
		t.Error("padding of 16 in a record of 16 accepted")
	}
}

// An SSLv2-compatible ClientHello is followed by TLS records.
func TestSSLv2CompatibleHelloThenTLS(t *testing.T) {
	stream := recSSLv2Record(recSSLv2ClientHello(VersionTLS10), -1)
	stream = append(stream, recRecord(TypeHandshake, VersionTLS10, recMsg(16, recBytes(130, 1)))...)
	stream = append(stream, recRecord(TypeChangeCipherSpec, VersionTLS10, []byte{1})...)
	got := recFrame(t, Up, stream, nil)
	want := []string{
		"sslv2 unknown(0) SSL2.0 len=31 @0 msg=1",
		"record handshake TLS1.0 len=134 @33 msg=0",
		"record change_cipher_spec TLS1.0 len=1 @172 msg=0",
	}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("unit %d: %q, want %q", i, got[i], want[i])
		}
	}
	recCheckSplits(t, Up, stream, true)
}

// zeek/ssl-v2.pcap is a pure SSLv2 session: both directions frame to the
// last byte, with the cleartext messages of the SSLv2 handshake.
func TestSSLv2PureSession(t *testing.T) {
	s := recStreams(t, "zeek/ssl-v2.pcap")[0]
	for _, dir := range []Direction{Up, Down} {
		stream := s.Payload(dir == Up)
		lines := recFrame(t, dir, stream, nil)
		for _, l := range lines {
			if bytes.HasPrefix([]byte(l), []byte("error")) {
				t.Fatalf("%s: %s", dir, l)
			}
		}
		// Every byte was framed.
		f := NewFramer(dir)
		buf := stream
		for len(buf) > 0 {
			u, n, err := f.Next(buf)
			if err != nil || u.Kind != UnitSSLv2 {
				t.Fatalf("%s at %d: %s %v", dir, f.Offset(), u.Kind, err)
			}
			buf = buf[n:]
		}
		recCheckSplits(t, dir, stream, true)
	}
	p := newRecPump(Limits{})
	for _, ch := range s.Chunks {
		dir := Down
		if ch.Up {
			dir = Up
		}
		p.feed(t, dir, ch.Data)
	}
	if len(p.found) != 0 {
		t.Fatalf("anomalies %q", p.found)
	}
	var cleartext []string
	for _, l := range p.lines {
		if i := bytes.Index([]byte(l), []byte("msg=")); i >= 0 {
			cleartext = append(cleartext, l[:2]+" "+string(bytes.Fields([]byte(l[i+4:]))[0]))
		}
	}
	want := []string{"up client_hello", "do server_hello", "up client_master_key"}
	if len(cleartext) != len(want) {
		t.Fatalf("cleartext messages %q, want %q", cleartext, want)
	}
	for i := range want {
		if cleartext[i] != want[i] {
			t.Fatalf("cleartext messages %q, want %q", cleartext, want)
		}
	}
	if !p.c.Encrypted(Up) || !p.c.Encrypted(Down) || p.c.Version() != VersionSSL20 {
		t.Fatalf("encrypted up %v down %v version %s", p.c.Encrypted(Up), p.c.Encrypted(Down), VersionName(p.c.Version()))
	}
}

func TestSSLv2MessageName(t *testing.T) {
	if SSLv2MessageName(SSLv2ClientMasterKey) != "client_master_key" || SSLv2MessageName(9) != "unknown(9)" {
		t.Fatal(SSLv2MessageName(SSLv2ClientMasterKey), SSLv2MessageName(9))
	}
}
