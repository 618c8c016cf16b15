package dissect

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// helloStreamResult is what a client stream holding a ClientHello gives:
// every unit, in a form that does not depend on where the reads ended, and
// the hello parsed from the message unit, with its fingerprints.
type helloStreamResult struct {
	units []string
	hello *ClientHello
	ja3   string
	ja3h  string
	ja4   string
	ja4r  string
}

// helloStream feeds stream to a new Conn as the up direction in two reads,
// the first ending at cut, as a client whose hello the network split
// would.
func helloStream(t *testing.T, stream []byte, cut int) helloStreamResult {
	t.Helper()
	c := NewConn(Limits{})
	first, rest, err := recUnits(t, c, Up, stream[:cut])
	if err != nil {
		t.Fatalf("cut at %d, first read: %v", cut, err)
	}
	// A new buffer, as the pump's: the unconsumed bytes and the next read.
	second, left, err := recUnits(t, c, Up, append(slices.Clone(rest), stream[cut:]...))
	if err != nil || len(left) != 0 {
		t.Fatalf("cut at %d, second read: %v, %d bytes left", cut, err, len(left))
	}
	var r helloStreamResult
	for _, u := range append(first, second...) {
		line := fmt.Sprintf("%s %s %s len=%d @%d raw=%x frag=%x anomalies=%v",
			u.Kind, u.Header.Type, VersionName(u.Header.Version), u.Header.Length, u.Start, u.Raw, u.Fragment, u.Anomalies)
		if u.Kind == UnitMessage {
			line += fmt.Sprintf(" msg=%d len=%d reassembled=%v raw=%x", u.Msg.Type, u.Msg.Length, u.Msg.Reassembled, u.Msg.Raw)
			if HandshakeType(u.Msg.Type) == MsgClientHello {
				if r.hello != nil {
					t.Fatalf("cut at %d: two ClientHellos", cut)
				}
				if r.hello, err = ParseClientHello(u.Msg.Body); err != nil {
					t.Fatalf("cut at %d: %v", cut, err)
				}
			}
		}
		r.units = append(r.units, line)
	}
	if r.hello == nil {
		t.Fatalf("cut at %d: no ClientHello in %q", cut, r.units)
	}
	r.ja3, r.ja3h = r.hello.JA3()
	r.ja4, r.ja4r = r.hello.JA4(), r.hello.JA4R()
	return r
}

// recordsOf cuts a handshake message into records of the given fragment
// sizes (the last takes the rest), as a client that fragments its hello
// sends it.
func recordsOf(version uint16, msg []byte, sizes ...int) []byte {
	var out []byte
	for _, n := range sizes {
		out = append(out, recRecord(TypeHandshake, version, msg[:n])...)
		msg = msg[n:]
	}
	return append(out, recRecord(TypeHandshake, version, msg)...)
}

// A real ClientHello split at every position into two reads gives exactly
// what it gives in one read: the same records at the same offsets, the
// same message, the same parsed fields and the same JA3 and JA4. The
// framer must never return a record, nor the reassembler a message, from
// a prefix.
func TestRealClientHelloEverySplit(t *testing.T) {
	type helloCase struct {
		name   string
		stream func(t *testing.T) []byte
		// records the hello spans.
		records int
	}
	// The recorded crypto/tls hello, with a ~1.2 KB post-quantum key share.
	recorded := func(t *testing.T) []byte {
		m, ok := findMsg(readRecording(t, "go-tls13-x25519mlkem768").up, MsgClientHello)
		if !ok {
			t.Fatal("no ClientHello in the recording")
		}
		return m.wire()
	}
	cases := []helloCase{
		// In one record with the TLS 1.0 record version, as crypto/tls
		// sends its first flight.
		{"crypto/tls, one record", func(t *testing.T) []byte { return recRecord(TypeHandshake, VersionTLS10, recorded(t)) }, 1},
		// In three records, the first cutting the message header: the
		// reassembler's every state meets the split.
		{"crypto/tls, three records", func(t *testing.T) []byte { return recordsOf(VersionTLS10, recorded(t), 2, 700) }, 3},
		// Chrome's, as the capture has it, record headers and all: the
		// client stream up to the end of the record that completes the
		// hello.
		{"chrome capture", func(t *testing.T) []byte {
			stream := pcapStreams(t, "zeek/chrome-1250-tls-x25519-kyber.pcap")[0].Payload(true)
			body := chromeKyberHello(t)
			end, hs := 0, 0
			for hs < 4+len(body) {
				if end+5 > len(stream) || stream[end] != byte(TypeHandshake) {
					t.Fatalf("the hello does not end in the handshake records at the start of the stream")
				}
				n := int(stream[end+3])<<8 | int(stream[end+4])
				end, hs = end+5+n, hs+n
			}
			return stream[:end]
		}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stream := tc.stream(t)
			whole := helloStream(t, stream, len(stream))
			// The whole is right to begin with: the hello is the one the
			// stream carries, parsed as the parser parses it alone.
			msgs, _ := cleartextMessages(t, stream)
			if len(msgs) != 1 || msgs[0].typ != MsgClientHello {
				t.Fatalf("the stream holds %v", msgs)
			}
			alone, err := ParseClientHello(msgs[0].body)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(whole.hello, alone) {
				t.Fatalf("hello from the Conn differs from the hello parsed alone:\n%+v\n%+v", whole.hello, alone)
			}
			if !bytes.Equal(whole.hello.Raw, msgs[0].body) || whole.ja4 == "" || len(whole.hello.KeyShares) == 0 {
				t.Fatalf("whole stream: %+v", whole)
			}
			// The records, then the message (reassembled when it spans
			// records) right after the last.
			last := whole.units[len(whole.units)-1]
			if len(whole.units) != tc.records+1 || !strings.Contains(last, fmt.Sprintf("reassembled=%v", tc.records > 1)) {
				t.Fatalf("whole stream gave %q, want %d records and the message", whole.units, tc.records)
			}
			for cut := range len(stream) {
				got := helloStream(t, stream, cut)
				if !slices.Equal(got.units, whole.units) {
					t.Fatalf("cut at %d: units\n%q\nwant\n%q", cut, got.units, whole.units)
				}
				if !reflect.DeepEqual(got.hello, whole.hello) {
					t.Fatalf("cut at %d: hello\n%+v\nwant\n%+v", cut, got.hello, whole.hello)
				}
				if got.ja3 != whole.ja3 || got.ja3h != whole.ja3h || got.ja4 != whole.ja4 || got.ja4r != whole.ja4r {
					t.Fatalf("cut at %d: fingerprints %s %s %s, want %s %s %s", cut, got.ja3h, got.ja4, got.ja4r, whole.ja3h, whole.ja4, whole.ja4r)
				}
			}
		})
	}
}
