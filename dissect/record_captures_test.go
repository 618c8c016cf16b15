package dissect

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// recCapture is a capture fed through a Conn and what must come out of it.
type recCapture struct {
	name   string
	limits Limits
	// connect strips an HTTP CONNECT request and its answer from the
	// start of the streams: TLS begins after them.
	connect bool
	// want is every anomaly of the capture, in order (see recPump.found);
	// empty for a capture that must frame without any.
	want []string
}

var recCaptures = []recCapture{
	{name: "zeek/heartbleed.pcap", want: []string{AnomalyHeartbeatOverflow}},
	{name: "zeek/heartbleed-success.pcap", want: []string{AnomalyHeartbeatOverflow}},
	{name: "zeek/heartbleed-encrypted.pcap"},
	{name: "zeek/ssl-v2.pcap"},
	{name: "zeek/tls1_1.pcap"},
	{name: "zeek/tls1.2.pcap"},
	{name: "zeek/tls13_wolfssl.pcap"},
	{name: "zeek/hrr.pcap"},
	{name: "zeek/chrome-1250-tls-x25519-kyber.pcap"},
	{name: "zeek/tls13-ech.pcap"},
	{name: "zeek/tls-fragmented-handshake.pcap.gz", want: []string{AnomalyHandshakeMessageTooLarge}},
	{name: "zeek/tls-fragmented-handshake.pcap.gz", limits: Limits{MaxMessage: 512 << 10}},
	{name: "zeek/tls-1.2-protocol-error.pcap", want: []string{"error:" + AnomalyInvalidRecordType}},
	{name: "zeek/tls-1.2-handshake-failure.pcap"},
	// The Certificate message declares 256 bytes where its record holds
	// 3823: the rest reads as a message header of 3 MB, cut by the CCS.
	{name: "zeek/tls1.2-protocol-violation.pcap", want: []string{AnomalyHandshakeMessageTooLarge, AnomalyHandshakeLengthMismatch}},
	{name: "zeek/signed_certificate_timestamp_tls1_0.pcap"},
	{name: "suricata-verify/tls/tls-client-hello-frag-01/dump_mtu300.pcap"},
	{name: "suricata-verify/sslv2-tls-upgrade-01/ssl-v2-s1.pcap"},
	// After the CONNECT exchange: 16 03 00 00 00, then zeros.
	{name: "suricata-verify/http-connect/http-connect-tls/input.pcap", connect: true,
		want: []string{AnomalyZeroLengthHandshake, "error:" + AnomalyInvalidRecordType}},
	// A crafted Certificate: after 15 bytes of it, a header of type 132
	// and length 2^24-1 that the stream never fills.
	{name: "suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap",
		want: []string{AnomalyHandshakeMessageTooLarge, "eof:" + AnomalyHandshakeLengthMismatch}},
	{name: "suricata-verify/tls-duplicate-hello/input.pcap"},
	{name: "suricata-verify/tls/tls13-draft14/tls13_draft14.pcap"},
	{name: "suricata-verify/ssl_version_negated/input.pcap"},
	// SSH on port 443: both banners fail on their first byte.
	{name: "suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap",
		want: []string{"error:" + AnomalyInvalidRecordType, "error:" + AnomalyInvalidRecordType}},
	{name: "suricata-verify/bug-7264-tcp-3whs-ack-data-tls-01/input.pcap"},
	{name: "arkime/openssl-ssl3.pcap"},
	{name: "arkime/openssl-tls1.pcap"},
	{name: "arkime/openssl-tls1_2-tls1.pcap"},
	{name: "arkime/tls-split-client-hello.pcap"},
	{name: "arkime/curl-enabled-tls13.pcap"},
	{name: "arkime/https2-301-get.pcap"},
	{name: "arkime/badcurveball.pcap"},
}

func (c recCapture) title() string {
	s := c.name
	if c.limits != (Limits{}) {
		s += fmt.Sprintf(" (MaxClientHello=%d MaxMessage=%d)", c.limits.MaxClientHello, c.limits.MaxMessage)
	}
	return s
}

// recStripConnect removes an HTTP/1 CONNECT exchange from the head of
// each direction.
func recStripConnect(s *pcaptest.Stream) {
	var skip [2]int
	for d, up := range []bool{true, false} {
		p := s.Payload(up)
		if i := bytes.Index(p, []byte("\r\n\r\n")); i >= 0 && (bytes.HasPrefix(p, []byte("CONNECT ")) || bytes.HasPrefix(p, []byte("HTTP/1."))) {
			skip[d] = i + 4
			// Some clients end the request with a stray newline.
			for skip[d] < len(p) && (p[skip[d]] == '\r' || p[skip[d]] == '\n') {
				skip[d]++
			}
		}
	}
	var out []pcaptest.Chunk
	for _, c := range s.Chunks {
		d := 1
		if c.Up {
			d = 0
		}
		k := min(skip[d], len(c.Data))
		skip[d] -= k
		if len(c.Data) > k {
			out = append(out, pcaptest.Chunk{Up: c.Up, Data: c.Data[k:], Time: c.Time})
		}
	}
	s.Chunks = out
}

// recRunCapture feeds every stream of a capture through its own Conn, in
// capture order, and returns the golden text, the anomalies found and the
// pump of each stream with payload.
func recRunCapture(t *testing.T, c recCapture, hook func(stream int, p *recPump)) (string, []string, []*recPump) {
	t.Helper()
	streams := recStreams(t, c.name)
	if c.connect {
		for _, s := range streams {
			recStripConnect(s)
		}
	}
	return recRunStreams(t, c, streams, hook)
}

func recRunStreams(t *testing.T, c recCapture, streams []*pcaptest.Stream, hook func(stream int, p *recPump)) (string, []string, []*recPump) {
	t.Helper()
	var b strings.Builder
	var found []string
	var pumps []*recPump
	fmt.Fprintf(&b, "== %s\n", c.title())
	for i, s := range streams {
		if len(s.Chunks) == 0 {
			fmt.Fprintf(&b, "stream %d: no payload\n", i)
			continue
		}
		p := newRecPump(c.limits)
		if hook != nil {
			hook(i, p)
		}
		for _, ch := range s.Chunks {
			dir := Down
			if ch.Up {
				dir = Up
			}
			p.feed(t, dir, ch.Data)
		}
		p.eof(Up)
		p.eof(Down)
		fmt.Fprintf(&b, "stream %d: up %d bytes, down %d bytes, gaps %d\n", i, len(s.Payload(true)), len(s.Payload(false)), s.Gaps)
		for _, l := range p.lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "encrypted: up=%v down=%v version=%s\n", p.c.Encrypted(Up), p.c.Encrypted(Down), VersionName(p.c.Version()))
		found = append(found, p.found...)
		pumps = append(pumps, p)
	}
	return b.String(), found, pumps
}

// TestRecordCapturesGolden feeds every shared capture through Conn and compares
// the unit sequence with testdata/record_captures.golden (rewritten with
// -update), then checks the anomalies each capture must give.
func TestRecordCapturesGolden(t *testing.T) {
	var all strings.Builder
	for _, c := range recCaptures {
		text, found, _ := recRunCapture(t, c, nil)
		all.WriteString(text)
		if !slices.Equal(found, c.want) {
			t.Errorf("%s: anomalies %q, want %q", c.title(), found, c.want)
		}
	}
	golden := filepath.Join("testdata", "record_captures.golden")
	if recUpdate() {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(all.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got := all.String(); got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("differs from %s at line %d:\n got: %s\nwant: %s", golden, i+1, g, w)
			}
		}
	}
}

// zeek/tls-fragmented-handshake.pcap.gz: the server's Certificate of
// 339,629 bytes in 21 records. With the default caps it is reported and
// skipped; with a raised cap it is reassembled to the bytes of the records,
// and incomplete from the first of them until the last.
func TestRecordCaptureFragmentedCertificate(t *testing.T) {
	const name = "zeek/tls-fragmented-handshake.pcap.gz"
	down := recStreams(t, name)[0].Payload(false)
	// The records, walked independently of the framer.
	var frags [][]byte
	var starts []int64
	for off := 0; off+HeaderLen <= len(down); {
		n := int(down[off+3])<<8 | int(down[off+4])
		frags = append(frags, down[off+HeaderLen:off+HeaderLen+n])
		starts = append(starts, int64(off))
		off += HeaderLen + n
	}
	if len(frags) != 24 {
		t.Fatalf("%d server records, want 24", len(frags))
	}
	certificate := bytes.Join(frags[1:22], nil)

	for _, raised := range []bool{false, true} {
		c := recCapture{name: name}
		if raised {
			c.limits.MaxMessage = 512 << 10
		}
		var msgs []Message
		records, maxBuf := 0, 0
		_, found, _ := recRunCapture(t, c, func(_ int, p *recPump) {
			p.hook = func(dir Direction, u Unit) {
				if dir != Down {
					return
				}
				maxBuf = max(maxBuf, cap(p.c.dirs[Down].r.buf))
				switch u.Kind {
				case UnitMessage:
					u.Msg.Raw = bytes.Clone(u.Msg.Raw)
					msgs = append(msgs, u.Msg)
				case UnitRecord:
					// Messages of a record come before the next record:
					// here the previous record is fully processed.
					start, inc := p.c.Incomplete(Down)
					wantInc := raised && records >= 2 && records <= 21
					if inc != wantInc || (inc && start != starts[1]) {
						t.Errorf("raised %v, record %d: incomplete %v from %d", raised, records, inc, start)
					}
					records++
				}
			}
		})
		var types []uint8
		for _, m := range msgs {
			types = append(types, m.Type)
		}
		if !slices.Equal(types, []uint8{2, 11, 12, 14}) {
			t.Fatalf("raised %v: messages %v", raised, types)
		}
		cert := msgs[1]
		if cert.Length != 339629 || cert.Length != len(certificate)-4 {
			t.Fatalf("certificate of %d bytes, the records hold %d", cert.Length, len(certificate)-4)
		}
		if !raised {
			if !slices.Equal(found, []string{AnomalyHandshakeMessageTooLarge}) || !cert.TooLarge || cert.Raw != nil {
				t.Fatalf("default caps: anomalies %q, too large %v", found, cert.TooLarge)
			}
			if maxBuf > 1024 {
				t.Fatalf("default caps: %d bytes buffered for a skipped message", maxBuf)
			}
			continue
		}
		if len(found) != 0 || cert.TooLarge || !cert.Reassembled || !bytes.Equal(cert.Raw, certificate) {
			t.Fatalf("raised cap: anomalies %q, too large %v, reassembled %v, same bytes %v", found, cert.TooLarge, cert.Reassembled, bytes.Equal(cert.Raw, certificate))
		}
		if maxBuf > 4+cert.Length {
			t.Fatalf("buffer of %d bytes for a message of %d", maxBuf, 4+cert.Length)
		}
	}
}

// Bytes that are not a record header stop the framing with an error, not
// a crash: a server answering 00 00 00 00 02 00 28, SSH on port 443, and
// the zeros after a zero-length handshake record.
func TestRecordCaptureFramingErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		connect bool
		want    [2]string // anomaly of the error of up and down
		offsets [2]int64
	}{
		{"zeek/tls-1.2-protocol-error.pcap", false, [2]string{"", AnomalyInvalidRecordType}, [2]int64{0, 0}},
		{"suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap", false, [2]string{AnomalyInvalidRecordType, AnomalyInvalidRecordType}, [2]int64{0, 0}},
		{"suricata-verify/http-connect/http-connect-tls/input.pcap", true, [2]string{AnomalyInvalidRecordType, ""}, [2]int64{5, 0}},
	} {
		_, _, pumps := recRunCapture(t, recCapture{name: c.name, connect: c.connect}, nil)
		if len(pumps) != 1 {
			t.Fatalf("%s: %d streams", c.name, len(pumps))
		}
		for d, want := range c.want {
			err := pumps[0].errs[d]
			var re *RecordError
			if want == "" {
				if err != nil {
					t.Errorf("%s %s: %v", c.name, Direction(d), err)
				}
				continue
			}
			if !errors.As(err, &re) || re.Anomaly.Name != want || re.Offset != c.offsets[d] || re.Anomaly.Direction != Direction(d) {
				t.Errorf("%s %s: %v, want %s at %d", c.name, Direction(d), err, want, c.offsets[d])
			}
		}
	}
}

// The unit sequence of every capture does not depend on how its segments
// are cut: each segment fed one byte at a time, or cut at random, gives the
// lines of the capture fed segment by segment.
func TestRecordCapturesSplits(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for _, c := range recCaptures {
		want, _, _ := recRunCapture(t, c, nil)
		for _, mode := range []string{"one byte", "random"} {
			streams := recStreams(t, c.name)
			for _, s := range streams {
				if c.connect {
					recStripConnect(s)
				}
				var chunks []pcaptest.Chunk
				for _, ch := range s.Chunks {
					for p := 0; p < len(ch.Data); {
						n := 1
						if mode == "random" {
							n = 1 + r.IntN(len(ch.Data)-p)
						}
						chunks = append(chunks, pcaptest.Chunk{Up: ch.Up, Data: ch.Data[p : p+n]})
						p += n
					}
				}
				s.Chunks = chunks
			}
			if got, _, _ := recRunStreams(t, c, streams, nil); got != want {
				t.Errorf("%s fed %s at a time differs", c.title(), mode)
			}
		}
	}
}
