package replay

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// replayBytes replays a capture held in memory and returns the stream
// figures in flow ID order and the connection lines.
func replayBytes(t *testing.T, capture []byte, opts Options) ([]*StreamStats, []output.Connection, Stats, error) {
	t.Helper()
	var out bytes.Buffer
	opts.Output = output.NewWriter(&out, output.JSON)
	var streams []*StreamStats
	opts.OnStream = func(s *StreamStats) { streams = append(streams, s) }
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Replay(bytes.NewReader(capture))
	slices.SortFunc(streams, func(a, b *StreamStats) int { return cmpID(a.ID, b.ID) })
	return streams, parseLines(t, out.Bytes()), st, err
}

func parseLines(t *testing.T, b []byte) []output.Connection {
	t.Helper()
	var conns []output.Connection
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var c output.Connection
		if err := json.Unmarshal([]byte(line), &c); err != nil || c.Type != "connection" {
			t.Fatalf("not a connection line: %q (%v)", line, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// checkInvariants asserts what holds for every stream: each reassembled
// byte is forwarded or dropped, and the connection line reports what was
// forwarded.
func checkInvariants(t *testing.T, streams []*StreamStats, lines []output.Connection) {
	t.Helper()
	for _, s := range streams {
		for d := range 2 {
			if s.Stream[d] != s.Forwarded[d]+s.Dropped[d] {
				t.Errorf("stream %d dir %d: %d bytes = %d forwarded + %d dropped?", s.ID, d, s.Stream[d], s.Forwarded[d], s.Dropped[d])
			}
		}
	}
	if len(lines) != len(streams) {
		t.Fatalf("%d connection lines for %d streams", len(lines), len(streams))
	}
	byID := map[uint64]*StreamStats{}
	for _, s := range streams {
		byID[s.ID] = s
	}
	for _, c := range lines {
		s := byID[c.Flow.ID]
		if s == nil {
			t.Fatalf("line for unknown flow %d", c.Flow.ID)
		}
		// After a kill the line is written at once; later bytes are
		// dropped, not forwarded, so the line stays right.
		if c.BytesUp != s.Forwarded[dissect.Up] || c.BytesDown != s.Forwarded[dissect.Down] {
			t.Errorf("flow %d: line says %d/%d, forwarded %v", c.Flow.ID, c.BytesUp, c.BytesDown, s.Forwarded)
		}
		if c.Flow.Src != s.Client.String() || c.Flow.Dst != s.Server.String() {
			t.Errorf("flow %d: line %s -> %s, stream %v -> %v", c.Flow.ID, c.Flow.Src, c.Flow.Dst, s.Client, s.Server)
		}
	}
}

func sharedCapture(t *testing.T, name string) string {
	t.Helper()
	return capturePath(t, name)
}

func payloadOf(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestHRROutOfOrderServerSegments: in hrr.pcap the server's segment at
// relative seq 1468 comes before the one at 100; the pump must get them
// in order (as one read of 1368+45 bytes when the hole fills), so the
// server's records walk cleanly.
func TestHRROutOfOrderServerSegments(t *testing.T) {
	path := sharedCapture(t, "zeek/hrr.pcap")
	w := &recordWalker{}
	if _, _, err := replayFile(t, path, Options{Factory: w}); err != nil {
		t.Fatal(err)
	}
	if w.bad != [2]int64{} || w.records[dissect.Down] < 5 || w.records[dissect.Up] < 3 {
		t.Fatalf("records %v, bad headers %v", w.records, w.bad)
	}
	rec := &recorder{}
	if _, _, err := replayFile(t, path, Options{Factory: rec}); err != nil {
		t.Fatal(err)
	}
	var downFeeds []int
	for _, c := range rec.conns[0].calls {
		if c.kind == "feed" && c.dir == dissect.Down {
			downFeeds = append(downFeeds, c.pending)
		}
	}
	if want := []int{99, 1368 + 45, 522}; !slices.Equal(downFeeds, want) {
		t.Fatalf("server reads %v, want %v", downFeeds, want)
	}
}

// pcapRecords returns the offsets where the records of a pcap start, and
// the file's length.
func pcapRecords(b []byte) []int {
	order := binary.ByteOrder(binary.LittleEndian)
	if b[0] == 0xa1 {
		order = binary.BigEndian
	}
	var offs []int
	for off := pcapFileHeader; off+pcapRecordHeader <= len(b); {
		offs = append(offs, off)
		off += pcapRecordHeader + int(order.Uint32(b[off+8:]))
	}
	return offs
}

// TestTruncatedCaptures cuts captures at random bytes: the part before
// the cut is replayed and reported, the cut gives a *DamagedError that
// says where, or nothing when the cut falls between two records.
func TestTruncatedCaptures(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for _, name := range []string{"zeek/heartbleed.pcap", "suricata-verify/ssl_version_negated/input.pcap", "zeek/tls13-ech.pcap"} {
		full, err := os.ReadFile(sharedCapture(t, name))
		if err != nil {
			t.Fatal(err)
		}
		whole, _, _, err := replayBytes(t, full, Options{Factory: inspect.PassThrough{}})
		if err != nil {
			t.Fatal(err)
		}
		offs := pcapRecords(full)
		for range 15 {
			cut := pcapFileHeader + rng.IntN(len(full)-pcapFileHeader)
			complete := 0 // records wholly before the cut
			for i := range offs {
				end := len(full)
				if i+1 < len(offs) {
					end = offs[i+1]
				}
				if end <= cut {
					complete = i + 1
				}
			}
			streams, lines, st, err := replayBytes(t, full[:cut], Options{Factory: inspect.PassThrough{}})
			if st.Packets != int64(complete) {
				t.Errorf("%s cut at %d: %d packets replayed, %d complete", name, cut, st.Packets, complete)
			}
			atBoundary := complete == len(offs) || offs[complete] == cut
			var dmg *DamagedError
			switch {
			case atBoundary && err != nil:
				t.Errorf("%s cut at record boundary %d: %v", name, cut, err)
			case !atBoundary && !errors.As(err, &dmg):
				t.Errorf("%s cut at %d: err = %v, want *DamagedError", name, cut, err)
			case !atBoundary:
				if dmg.Packets != int64(complete) || dmg.Offset != int64(offs[complete]) || !strings.Contains(err.Error(), "truncated") {
					t.Errorf("%s cut at %d: %v (record at %d)", name, cut, err, offs[complete])
				}
			}
			checkInvariants(t, streams, lines)
			// The results of the readable part are there and are a
			// prefix of the whole capture's.
			if complete > 0 && len(streams) == 0 {
				t.Errorf("%s cut at %d: no stream reported", name, cut)
			}
			for i, s := range streams {
				for d := range 2 {
					if s.Forwarded[d] > whole[i].Forwarded[d] {
						t.Errorf("%s cut at %d: stream %d forwarded more than the whole capture", name, cut, s.ID)
					}
				}
			}
		}
	}
}

// TestDamagedSharedCapture: the file is damaged after its 6th packet; the
// 6 are replayed and the damage is reported with its place.
func TestDamagedSharedCapture(t *testing.T) {
	b, err := os.ReadFile(sharedCapture(t, "suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	streams, lines, st, err := replayBytes(t, b, Options{Factory: inspect.PassThrough{}})
	var dmg *DamagedError
	if !errors.As(err, &dmg) || dmg.Packets != 6 || dmg.Offset != 5035 || !strings.Contains(err.Error(), "damaged after packet 6") {
		t.Fatalf("err = %v", err)
	}
	checkInvariants(t, streams, lines)
	if st.Packets != 6 || len(lines) != 1 || lines[0].BytesUp != 295 || lines[0].BytesDown != 4208 || lines[0].Verdict != "pass" {
		t.Fatalf("stats %+v, lines %+v", st, lines)
	}
}

func gzipped(t testing.TB, b []byte) []byte {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

// TestGzip: compressed captures are recognised by their magic, whatever
// their name; a cut compressed capture is reported as truncated.
func TestGzip(t *testing.T) {
	plain, err := os.ReadFile(sharedCapture(t, "zeek/heartbleed.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Names that lie: a compressed file without .gz, a plain one with.
	gzPath := filepath.Join(dir, "heartbleed.pcap")
	plainPath := filepath.Join(dir, "heartbleed.pcap.gz")
	if err := os.WriteFile(gzPath, gzipped(t, plain), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plainPath, plain, 0o644); err != nil {
		t.Fatal(err)
	}
	a, _, err := replayFile(t, gzPath, Options{Factory: inspect.PassThrough{}})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := replayFile(t, plainPath, Options{Factory: inspect.PassThrough{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || len(b) != 1 || a[0].Forwarded != b[0].Forwarded || a[0].Forwarded[dissect.Up] != 16640 {
		t.Fatalf("gzip %+v, plain %+v", a, b)
	}
	// The shared compressed capture.
	streams, st, err := replayFile(t, sharedCapture(t, "zeek/tls-fragmented-handshake.pcap.gz"), Options{Factory: inspect.PassThrough{}})
	if err != nil || st.Packets != 416 || len(streams) != 1 || streams[0].Forwarded[dissect.Down] != 340179 {
		t.Fatalf("%v %+v %+v", err, st, streams)
	}
	// A compressed pcapng.
	ng := ngCapture(t)
	streams, _, _, err = replayBytes(t, gzipped(t, ng), Options{Factory: inspect.PassThrough{}})
	if err != nil || len(streams) != 2 {
		t.Fatalf("gzipped pcapng: %v, %d streams", err, len(streams))
	}
	// Cut inside the compressed data.
	z := gzipped(t, plain)
	streams, lines, st, err := replayBytes(t, z[:len(z)*2/3], Options{Factory: inspect.PassThrough{}})
	var dmg *DamagedError
	if !errors.As(err, &dmg) || !errors.Is(err, io.ErrUnexpectedEOF) || st.Packets == 0 || st.Packets >= 23 {
		t.Fatalf("cut gzip: %v after %d packets", err, st.Packets)
	}
	checkInvariants(t, streams, lines)
}

// ngCapture writes a pcapng with two interfaces of different link types,
// Ethernet and raw IP, carrying one session each, interleaved.
func ngCapture(t testing.TB) []byte {
	t.Helper()
	a := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().
		send(0, payloadOf(3000, 1)).send(1, payloadOf(5000, 2)).close()
	b := newSession(encRaw, ap("[2001:db8::1]:40001"), ap("[2001:db8::2]:8443"), t0.Add(500*time.Microsecond)).handshake().
		send(0, payloadOf(700, 3)).send(1, payloadOf(9000, 4)).close()
	var buf bytes.Buffer
	w, err := pcapgo.NewNgWriterInterface(&buf, pcapgo.NgInterface{Name: "eth0", LinkType: layers.LinkTypeEthernet, TimestampResolution: 9}, pcapgo.DefaultNgWriterOptions)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := w.AddInterface(pcapgo.NgInterface{Name: "tun0", LinkType: layers.LinkTypeRaw, TimestampResolution: 9})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < max(len(a.pkts), len(b.pkts)); i++ {
		if i < len(a.pkts) {
			p := a.pkts[i]
			if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.data), Length: len(p.data), InterfaceIndex: 0}, p.data); err != nil {
				t.Fatal(err)
			}
		}
		if i < len(b.pkts) {
			p := b.pkts[i]
			if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.data), Length: len(p.data), InterfaceIndex: raw}, p.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestPcapng(t *testing.T) {
	rec := &recorder{keep: -1}
	streams, lines, st, err := replayBytes(t, ngCapture(t), Options{Factory: rec})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if len(streams) != 2 || st.Unsupported != 0 {
		t.Fatalf("%d streams, stats %+v", len(streams), st)
	}
	want := []struct {
		client, server string
		up, down       []byte
		start          time.Time
	}{
		{"10.0.0.1:40000", "10.0.0.2:443", payloadOf(3000, 1), payloadOf(5000, 2), t0},
		{"[2001:db8::1]:40001", "[2001:db8::2]:8443", payloadOf(700, 3), payloadOf(9000, 4), t0.Add(500 * time.Microsecond)},
	}
	for i, w := range want {
		c := rec.conns[i]
		if c.flow.Src.String() != w.client || c.flow.Dst.String() != w.server || !c.flow.Start.Equal(w.start) {
			t.Errorf("stream %d: flow %+v", i, c.flow)
		}
		if !bytes.Equal(c.seen[dissect.Up], w.up) || !bytes.Equal(c.seen[dissect.Down], w.down) {
			t.Errorf("stream %d: bytes differ", i)
		}
	}
}

// sessionCapture writes the sessions' packets in the order of their
// timestamps into one pcap.
func sessionCapture(t *testing.T, link layers.LinkType, ss ...*session) []byte {
	var pkts []pkt
	for _, s := range ss {
		pkts = append(pkts, s.pkts...)
	}
	slices.SortStableFunc(pkts, func(a, b pkt) int { return a.ts.Compare(b.ts) })
	return pcapBytes(t, link, pkts)
}

// TestEncapsulations replays the same session framed every supported way.
func TestEncapsulations(t *testing.T) {
	cases := []struct {
		name string
		enc  encap
		v6   bool
	}{
		{"ethernet", encEthernet, false},
		{"ethernet-ipv6", encEthernet, true},
		{"vlan", encap{link: layers.LinkTypeEthernet, vlans: []uint16{42}}, false},
		{"qinq", encap{link: layers.LinkTypeEthernet, vlans: []uint16{100, 42}}, true},
		{"sll", encap{link: layers.LinkTypeLinuxSLL}, false},
		{"sll-ipv6", encap{link: layers.LinkTypeLinuxSLL}, true},
		{"sll2", encap{link: layers.LinkTypeLinuxSLL2}, false},
		{"sll2-ipv6", encap{link: layers.LinkTypeLinuxSLL2}, true},
		{"raw", encRaw, false},
		{"raw-ipv6", encRaw, true},
		{"dlt-raw-12", encap{link: linkTypeRawDLT12}, false},
		{"linktype-ipv4", encap{link: layers.LinkTypeIPv4}, false},
		{"linktype-ipv6", encap{link: layers.LinkTypeIPv6}, true},
		{"null", encap{link: layers.LinkTypeNull}, false},
		{"null-ipv6-bsd", encap{link: layers.LinkTypeNull, loopFamilyV6: 24}, true},
		{"null-ipv6-freebsd", encap{link: layers.LinkTypeNull, loopFamilyV6: 28}, true},
		{"null-ipv6-darwin", encap{link: layers.LinkTypeNull, loopFamilyV6: 30}, true},
		{"loop", encap{link: layers.LinkTypeLoop}, false},
		{"loop-ipv6", encap{link: layers.LinkTypeLoop}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client, server := ap("192.0.2.1:51000"), ap("198.51.100.7:443")
			if c.v6 {
				client, server = ap("[2001:db8:1::1]:51000"), ap("[2001:db8:2::7]:443")
			}
			s := newSession(c.enc, client, server, t0).handshake().
				send(0, payloadOf(2000, 1)).send(1, payloadOf(4000, 2)).close()
			rec := &recorder{keep: -1}
			streams, lines, st, err := replayBytes(t, sessionCapture(t, c.enc.link, s), Options{Factory: rec})
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, streams, lines)
			if st.TCP != int64(len(s.pkts)) || st.Malformed+st.NotTCP+st.Unsupported != 0 || len(streams) != 1 {
				t.Fatalf("stats %+v, %d streams", st, len(streams))
			}
			got := rec.conns[0]
			if got.flow.Src != client || got.flow.Dst != server {
				t.Errorf("flow %v -> %v", got.flow.Src, got.flow.Dst)
			}
			if !bytes.Equal(got.seen[dissect.Up], payloadOf(2000, 1)) || !bytes.Equal(got.seen[dissect.Down], payloadOf(4000, 2)) {
				t.Errorf("bytes differ")
			}
		})
	}
}

// TestUnsupportedLinkType: the error names the link type; in a pcapng,
// the other interfaces are still replayed.
func TestUnsupportedLinkType(t *testing.T) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().send(0, payloadOf(10, 1))
	_, _, st, err := replayBytes(t, pcapBytes(t, layers.LinkTypeIEEE802_11, s.pkts), Options{Factory: inspect.PassThrough{}})
	var lte *LinkTypeError
	if !errors.As(err, &lte) || lte.LinkType != layers.LinkTypeIEEE802_11 || lte.Packets != 0 ||
		!strings.Contains(err.Error(), "link type 105") || st.Packets != 0 {
		t.Fatalf("err = %v, stats %+v", err, st)
	}

	var buf bytes.Buffer
	w, err := pcapgo.NewNgWriterInterface(&buf, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, TimestampResolution: 9}, pcapgo.DefaultNgWriterOptions)
	if err != nil {
		t.Fatal(err)
	}
	usb, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkTypeLinuxUSB, TimestampResolution: 9})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range s.pkts {
		for _, intf := range []int{0, usb} {
			if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.data), Length: len(p.data), InterfaceIndex: intf}, p.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.Flush()
	streams, _, _, err := replayBytes(t, buf.Bytes(), Options{Factory: inspect.PassThrough{}})
	if !errors.As(err, &lte) || lte.LinkType != layers.LinkTypeLinuxUSB || lte.Packets != int64(len(s.pkts)) ||
		len(streams) != 1 || streams[0].Forwarded[dissect.Up] != 10 || !strings.Contains(err.Error(), "packets skipped") {
		t.Fatalf("err = %v, streams %+v", err, streams)
	}
}

func TestNotACapture(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("GET / HTTP/1.1\r\n"), {0xd4, 0xc3}, gzipped(t, []byte("hello"))} {
		r, _ := New(Options{Factory: inspect.PassThrough{}})
		if _, err := r.Replay(bytes.NewReader(b)); err == nil {
			t.Errorf("%q: no error", b)
		}
	}
	r, _ := New(Options{Factory: inspect.PassThrough{}})
	if _, err := r.ReplayFile(filepath.Join(t.TempDir(), "missing.pcap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without a factory")
	}
}

// dropSegments removes the frames carrying payload that match.
func dropSegments(pkts []pkt, drop func(pkt) bool) []pkt {
	var out []pkt
	for _, p := range pkts {
		if !drop(p) {
			out = append(out, p)
		}
	}
	return out
}

// gapSession: the client sends three 1000-byte segments, the second of
// which the capture lost; then the server answers.
func gapSession(t *testing.T, tail time.Duration) ([]byte, []byte, []byte) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake()
	s.mss = 1000
	a, b, c := payloadOf(1000, 1), payloadOf(1000, 2), payloadOf(1000, 3)
	s.send(0, slices.Concat(a, b, c))
	s.step = tail
	s.send(1, payloadOf(3000, 9))
	s.step = time.Millisecond
	s.close()
	pkts := dropSegments(s.pkts, func(p pkt) bool { return bytes.Equal(p.seg.payload, b) })
	return pcapBytes(t, layers.LinkTypeEthernet, pkts), a, c
}

// TestGapEndsInspection: without a GapHandler the gap is the EOF of that
// direction; what follows is forwarded unseen and the line names "gap".
func TestGapEndsInspection(t *testing.T) {
	capture, a, _ := gapSession(t, time.Millisecond)
	rec := &recorder{keep: -1}
	streams, lines, st, err := replayBytes(t, capture, Options{Factory: rec})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	s := streams[0]
	if st.Gaps != 1 || s.Gaps[dissect.Up] != 1 || s.GapBytes[dissect.Up] != 1000 {
		t.Fatalf("gaps: %+v %+v", st, s)
	}
	if !bytes.Equal(rec.conns[0].seen[dissect.Up], a) {
		t.Errorf("client bytes seen: %d, want the 1000 before the gap", len(rec.conns[0].seen[dissect.Up]))
	}
	if s.Forwarded[dissect.Up] != 2000 || s.Forwarded[dissect.Down] != 3000 {
		t.Errorf("forwarded %v", s.Forwarded)
	}
	if !slices.Equal(lines[0].Anomalies, []string{"gap"}) || lines[0].Verdict != "pass" {
		t.Errorf("line %+v", lines[0])
	}
	eofs := 0
	for _, c := range rec.conns[0].calls {
		if c.kind == "eof" && c.dir == dissect.Up {
			eofs++
		}
	}
	if eofs != 1 {
		t.Errorf("%d EOFs of the client side", eofs)
	}
}

// TestGapWindow: a hole that the reorder window gives up on is declared a
// gap while the capture goes on, at the stream time of the sweep.
func TestGapWindow(t *testing.T) {
	capture, _, _ := gapSession(t, 2*time.Second)
	rec := &recorder{gapHandler: true}
	_, _, _, err := replayBytes(t, capture, Options{Factory: rec, ReorderWindow: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var gapAt, lastFeed time.Time
	for _, c := range rec.conns[0].calls {
		switch c.kind {
		case "gap":
			gapAt = c.now
		case "feed":
			lastFeed = c.now
		}
	}
	if gapAt.IsZero() || !gapAt.Before(lastFeed) {
		t.Fatalf("gap at %v, last read at %v: the window did not end the wait", gapAt, lastFeed)
	}
}

// TestGapHandler: an inspector that can go on is told the gap's size and
// fed the bytes after it.
func TestGapHandler(t *testing.T) {
	capture, a, c := gapSession(t, time.Millisecond)
	rec := &recorder{keep: -1, gapHandler: true, hold: 10}
	streams, lines, _, err := replayBytes(t, capture, Options{Factory: rec})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	got := rec.conns[0]
	if !bytes.Equal(got.seen[dissect.Up], slices.Concat(a, c)) {
		t.Errorf("client bytes seen: %d", len(got.seen[dissect.Up]))
	}
	var gaps []call
	for _, cl := range got.calls {
		if cl.kind == "gap" {
			gaps = append(gaps, cl)
		}
	}
	if len(gaps) != 1 || gaps[0].dir != dissect.Up || gaps[0].pending != 1000 {
		t.Fatalf("gap calls %+v", gaps)
	}
	// The 10 held bytes were cleared by Gap, the last 10 by EOF.
	if s := streams[0]; s.Forwarded[dissect.Up] != 2000 || s.Dropped[dissect.Up] != 0 || !slices.Contains(lines[0].Anomalies, "gap") {
		t.Errorf("forwarded %v dropped %v, line %+v", s.Forwarded, s.Dropped, lines[0])
	}
}

// TestGapInsidePassedBytes: a hole inside bytes the inspector passed
// unseen does not disturb it: the next record is framed.
func TestGapInsidePassedBytes(t *testing.T) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake()
	s.mss = 1000
	rec1 := append([]byte{23, 3, 3, 0x0b, 0xb8}, payloadOf(3000, 1)...) // 3005 bytes
	rec2 := append([]byte{23, 3, 3, 0, 100}, payloadOf(100, 2)...)
	s.send(0, slices.Concat(rec1, rec2)).close()
	lost := s.pkts[5].seg.payload // the second client segment: inside rec1's body
	capture := pcapBytes(t, layers.LinkTypeEthernet, dropSegments(s.pkts, func(p pkt) bool { return bytes.Equal(p.seg.payload, lost) }))
	w := &recordWalker{}
	var out bytes.Buffer
	streams, _, _, err := replayBytes(t, capture, Options{Factory: w})
	if err != nil {
		t.Fatal(err)
	}
	_ = out
	if w.records[dissect.Up] != 2 || w.bad[dissect.Up] != 0 || streams[0].Gaps[dissect.Up] != 1 {
		t.Fatalf("records %v bad %v gaps %v", w.records, w.bad, streams[0].Gaps)
	}
	if streams[0].Forwarded[dissect.Up] != int64(len(rec1)+len(rec2)-len(lost)) {
		t.Errorf("forwarded %v", streams[0].Forwarded)
	}
}

// TestOutOfOrderAndRetransmissions: segments shuffled within a window,
// some sent twice, some retransmitted merged with their successor: the
// inspector sees each byte once, in order.
func TestOutOfOrderAndRetransmissions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake()
	s.mss = 300
	up, down := payloadOf(20000, 1), payloadOf(30000, 2)
	s.send(0, up).send(1, down).close()
	pkts := slices.Clone(s.pkts[3 : len(s.pkts)-3])
	// Merge pairs of consecutive client segments into a retransmission
	// that covers both.
	var extra []pkt
	for i := 0; i+2 < len(pkts); i += 7 {
		a, b := pkts[i].seg, pkts[i+2].seg
		if a.src == b.src && len(a.payload) > 0 && a.seq+uint32(len(a.payload)) == b.seq {
			m := a
			m.payload = slices.Concat(a.payload, b.payload)
			extra = append(extra, pkt{data: encEthernet.frame(nil, m)})
		}
	}
	for i := range pkts {
		if i%5 == 0 {
			extra = append(extra, pkts[i])
		}
	}
	pkts = append(pkts, extra...)
	// Shuffle within windows of 6.
	for i := 0; i < len(pkts); i += 6 {
		w := pkts[i:min(i+6, len(pkts))]
		rng.Shuffle(len(w), func(a, b int) { w[a], w[b] = w[b], w[a] })
	}
	all := slices.Concat(s.pkts[:3], pkts, s.pkts[len(s.pkts)-3:])
	for i := range all {
		all[i].ts = t0.Add(time.Duration(i) * time.Millisecond)
	}
	rec := &recorder{keep: -1}
	streams, lines, st, err := replayBytes(t, pcapBytes(t, layers.LinkTypeEthernet, all), Options{Factory: rec})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if st.Gaps != 0 || !bytes.Equal(rec.conns[0].seen[dissect.Up], up) || !bytes.Equal(rec.conns[0].seen[dissect.Down], down) {
		t.Fatalf("gaps %d, bytes up %d/%d down %d/%d", st.Gaps, len(rec.conns[0].seen[0]), len(up), len(rec.conns[0].seen[1]), len(down))
	}
}

// TestMidstreamClient: without the handshake the client is found from
// the ports or the first payload, and the halves start at their first
// segment.
func TestMidstreamClient(t *testing.T) {
	cases := []struct {
		name           string
		client, server string
		firstFrom      int // who sends the first packet
		firstPayload   bool
	}{
		// A well-known port names the server, even when it speaks first.
		{"well-known-port", "10.0.0.1:51000", "10.0.0.2:443", 1, true},
		// Both ports high: the first payload's sender is the client.
		{"first-payload", "10.0.0.1:8443", "10.0.0.2:9443", 0, true},
		// No payload at all: the lower port is the server's.
		{"no-payload", "10.0.0.1:4000", "10.0.0.2:3000", 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSession(encEthernet, ap(c.client), ap(c.server), t0)
			if c.name == "first-payload" {
				s.emit(1, flagACK, nil) // a bare ACK from the server first
				s.emit(0, flagACK|flagPSH, payloadOf(500, 1))
				s.emit(1, flagACK|flagPSH, payloadOf(700, 2))
			} else if c.firstPayload {
				s.emit(c.firstFrom, flagACK|flagPSH, payloadOf(700, 2))
				s.emit(1-c.firstFrom, flagACK|flagPSH, payloadOf(500, 1))
			} else {
				s.emit(c.firstFrom, flagACK, nil)
				s.emit(1-c.firstFrom, flagACK, nil)
			}
			rec := &recorder{keep: -1}
			streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: rec, Midstream: true})
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, streams, lines)
			if len(streams) != 1 || streams[0].Client.String() != c.client || streams[0].Server.String() != c.server {
				t.Fatalf("streams %+v", streams)
			}
			if c.firstPayload && (len(rec.conns[0].seen[dissect.Up]) != 500 || len(rec.conns[0].seen[dissect.Down]) != 700) {
				t.Errorf("seen %d/%d bytes", len(rec.conns[0].seen[0]), len(rec.conns[0].seen[1]))
			}
		})
	}
}

// TestMidstream: a stream whose start was not captured is not inspected
// unless Options.Midstream says so; a SYN of either side before its first
// bytes is a captured start.
func TestMidstream(t *testing.T) {
	c, sv := ap("10.0.0.1:51000"), ap("10.0.0.2:443")
	up, down := payloadOf(700, 1), payloadOf(900, 2)
	cases := []struct {
		name      string
		build     func(*session)
		midstream bool
		inspected bool
	}{
		{"no SYN", func(s *session) {}, false, false},
		{"no SYN, Midstream", func(s *session) {}, true, true},
		{"SYN", func(s *session) { s.handshake() }, false, true},
		{"the SYN-ACK alone", func(s *session) {
			s.next[0]++ // the client's SYN, not captured
			s.emit(1, flagSYN|flagACK, nil)
			s.emit(0, flagACK, nil)
		}, false, true},
		{"an ACK before the SYN", func(s *session) {
			s.emit(0, flagACK, nil)
			s.handshake()
		}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(encEthernet, c, sv, t0)
			tc.build(s)
			s.send(0, up).send(1, down).close()
			rec := &recorder{keep: -1}
			streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: rec, Midstream: tc.midstream})
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, streams, lines)
			if len(streams) != 1 || len(lines) != 1 || len(rec.conns) != 1 {
				t.Fatalf("%d streams, %d lines, %d inspectors", len(streams), len(lines), len(rec.conns))
			}
			st, l, r := streams[0], lines[0], rec.conns[0]
			if st.Forwarded != [2]int64{700, 900} || l.Verdict != "pass" || r.closes != 1 {
				t.Fatalf("forwarded %v, verdict %s, closed %d times", st.Forwarded, l.Verdict, r.closes)
			}
			seen := [2]int{len(r.seen[dissect.Up]), len(r.seen[dissect.Down])}
			if tc.inspected {
				if seen != [2]int{700, 900} || slices.Contains(l.Anomalies, "midstream") {
					t.Errorf("seen %v, anomalies %v; want every byte inspected", seen, l.Anomalies)
				}
				return
			}
			if seen != [2]int{} || !slices.Equal(l.Anomalies, []string{"midstream"}) {
				t.Errorf("seen %v, anomalies %v; want nothing inspected and the anomaly midstream", seen, l.Anomalies)
			}
			for _, call := range r.calls {
				if call.kind != "close" {
					t.Errorf("the inspector was called: %+v", call)
				}
			}
		})
	}
}

// TestPortReuse: a new ISN on a finished 4-tuple is a new stream; a
// retransmitted SYN is not.
func TestPortReuse(t *testing.T) {
	c, sv := ap("10.0.0.1:40000"), ap("10.0.0.2:443")
	s1 := newSession(encEthernet, c, sv, t0).handshake().send(0, payloadOf(100, 1)).close()
	s1.emit(0, flagSYN, nil) // late retransmission of the first SYN...
	s1.pkts[len(s1.pkts)-1].seg.seq = 1000
	s1.pkts[len(s1.pkts)-1].data = encEthernet.frame(nil, segment{src: c, dst: sv, seq: 1000, flags: flagSYN})
	s2 := newSession(encEthernet, c, sv, t0.Add(time.Second)).handshake().send(0, payloadOf(200, 2)).reset(1)
	s2.next = [2]uint32{7777, 8888}
	s2.pkts = nil
	s2.handshake().send(0, payloadOf(200, 2)).reset(1)
	s3 := newSession(encEthernet, c, sv, t0.Add(2*time.Second))
	s3.next = [2]uint32{99999, 5}
	s3.handshake().send(0, payloadOf(300, 3)).close()
	streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s1, s2, s3), Options{Factory: inspect.PassThrough{}})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if len(streams) != 3 {
		t.Fatalf("%d streams", len(streams))
	}
	for i, n := range []int64{100, 200, 300} {
		if streams[i].Forwarded[dissect.Up] != n || streams[i].ID != uint64(i+1) {
			t.Errorf("stream %d: %+v", i, streams[i])
		}
	}
}

// TestIdleTimeout: a stream quiet for longer than the idle timeout ends;
// its later packets are a new stream.
func TestIdleTimeout(t *testing.T) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().send(0, payloadOf(100, 1))
	s.t = s.t.Add(20 * time.Minute)
	s.send(1, payloadOf(200, 2)).close()
	streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: inspect.PassThrough{}})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if len(streams) != 2 || streams[0].Forwarded != [2]int64{100, 0} || streams[1].Forwarded != [2]int64{0, 200} ||
		streams[1].Client.String() != "10.0.0.1:40000" {
		t.Fatalf("streams %+v %+v", streams[0], streams[1])
	}
	// Lines come in the order streams close: the idle one first, at the
	// stream time of its last packet.
	if lines[0].Flow.ID != 1 || !lines[0].Time.Equal(streams[0].Last) {
		t.Errorf("lines %+v", lines)
	}
	// Without an idle timeout it is one stream.
	streams, _, _, _ = replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: inspect.PassThrough{}, IdleTimeout: -1})
	if len(streams) != 1 || streams[0].Forwarded != [2]int64{100, 200} {
		t.Fatalf("no idle timeout: %+v", streams)
	}
}

// TestKillDropsLaterBytes drops heartbleed.pcap's connection on the
// heartbeat record header: the bytes before it were forwarded, the record
// and everything after (both ways) dropped, and the line says why.
func TestKillDropsLaterBytes(t *testing.T) {
	path := sharedCapture(t, "zeek/heartbleed.pcap")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := pcaptest.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	hb := []byte{24, 3, 3, 0x3f, 0xf0}
	at := bytes.Index(ref[0].Payload(true), hb)
	if at < 0 {
		t.Fatal("heartbeat header not in the client stream")
	}
	for _, v := range []inspect.Verdict{inspect.Drop, inspect.Reset} {
		streams, lines, _, err := replayBytes(t, raw, Options{Factory: &dropper{pattern: hb, verdict: v}})
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, streams, lines)
		s, l := streams[0], lines[0]
		if s.Forwarded[dissect.Up] != int64(at) || s.Dropped[dissect.Up] != 16640-int64(at) || s.Decision.Verdict != v {
			t.Errorf("%v: forwarded %v dropped %v decision %+v", v, s.Forwarded, s.Dropped, s.Decision)
		}
		if s.Stream[dissect.Down] != 3657 || s.Forwarded[dissect.Down]+s.Dropped[dissect.Down] != 3657 {
			t.Errorf("%v: server bytes %v/%v", v, s.Forwarded, s.Dropped)
		}
		if l.Verdict != v.String() || l.Reason != "pattern" || l.Rule != "test:dropper" {
			t.Errorf("line %+v", l)
		}
	}
}

// TestFactoryRefuses: a killing decision from New refuses the connection.
func TestFactoryRefuses(t *testing.T) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().send(0, payloadOf(100, 1)).close()
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		return nil, inspect.Decision{Verdict: inspect.Reset, Reason: "listed", Rule: "test:refuse"}
	})
	streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: f})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if lines[0].Verdict != "reset" || streams[0].Dropped[dissect.Up] != 100 || streams[0].Forwarded[dissect.Up] != 0 || lines[0].Duration != 0 {
		t.Fatalf("%+v %+v", lines[0], streams[0])
	}
}

type factoryFunc func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision)

func (f factoryFunc) New(fl *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return f(fl, kill)
}

// scripted is an inspector whose Feed is a function.
type scripted struct {
	feed   func(n int, dir dissect.Direction, pending []byte) inspect.Result
	feeds  int
	eofs   int
	closed *inspect.Summary
}

func (s *scripted) Feed(dir dissect.Direction, p []byte, _ time.Time) inspect.Result {
	s.feeds++
	return s.feed(s.feeds, dir, p)
}

func (s *scripted) EOF(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	s.eofs++
	return inspect.Result{Forward: len(p)}
}

func (s *scripted) Info() inspect.Info        { return inspect.Info{} }
func (s *scripted) Close(sum inspect.Summary) { s.closed = &sum }

func scriptedCapture(t *testing.T) []byte {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake()
	s.mss = 100
	s.send(0, payloadOf(1000, 1)).send(1, payloadOf(1000, 2)).close()
	return sessionCapture(t, layers.LinkTypeEthernet, s)
}

// TestKillFromAnotherGoroutine: the kill func, called outside Feed from
// another goroutine, stops the stream at the pump's next step.
func TestKillFromAnotherGoroutine(t *testing.T) {
	done := make(chan struct{})
	var insp *scripted
	f := factoryFunc(func(_ *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		insp = &scripted{feed: func(n int, _ dissect.Direction, p []byte) inspect.Result {
			switch n {
			case 1:
				go func() {
					kill(inspect.Decision{Verdict: inspect.Drop, Reason: "timeout", Rule: "builtin:timeout"})
					kill(inspect.Decision{Verdict: inspect.Reset, Reason: "second"}) // the first wins
					close(done)
				}()
			case 2:
				<-done
			}
			return inspect.Result{Forward: len(p)}
		}}
		return insp, inspect.Decision{}
	})
	streams, lines, _, err := replayBytes(t, scriptedCapture(t), Options{Factory: f})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if insp.feeds != 2 || insp.eofs != 0 || insp.closed == nil || insp.closed.Decision.Reason != "timeout" ||
		streams[0].Forwarded[dissect.Up] != 200 || lines[0].Verdict != "drop" {
		t.Fatalf("feeds %d eofs %d summary %+v forwarded %v", insp.feeds, insp.eofs, insp.closed, streams[0].Forwarded)
	}
}

// TestBypass: after a bypass the inspector sees nothing more and
// everything is forwarded.
func TestBypass(t *testing.T) {
	var insp *scripted
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		insp = &scripted{feed: func(int, dissect.Direction, []byte) inspect.Result {
			return inspect.Result{Decision: inspect.Decision{Verdict: inspect.Bypass, Reason: "trusted"}}
		}}
		return insp, inspect.Decision{}
	})
	streams, lines, _, err := replayBytes(t, scriptedCapture(t), Options{Factory: f})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if insp.feeds != 1 || insp.eofs != 0 || streams[0].Forwarded != [2]int64{1000, 1000} || lines[0].Verdict != "bypass" {
		t.Fatalf("feeds %d eofs %d forwarded %v line %+v", insp.feeds, insp.eofs, streams[0].Forwarded, lines[0])
	}
}

// TestContractViolations: a Forward beyond pending is clamped, a Pass with
// bytes still pending ignored; both are counted.
func TestContractViolations(t *testing.T) {
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		return &scripted{feed: func(n int, _ dissect.Direction, p []byte) inspect.Result {
			if n%2 == 1 {
				return inspect.Result{Forward: len(p) + 50}
			}
			return inspect.Result{Forward: len(p) - 1, Pass: 1000}
		}}, inspect.Decision{}
	})
	streams, lines, _, err := replayBytes(t, scriptedCapture(t), Options{Factory: f})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if streams[0].ContractViolations == 0 || streams[0].Forwarded != [2]int64{1000, 1000} {
		t.Fatalf("%+v", streams[0])
	}
}

// TestPendingIsKept: an inspector that holds the tail of each read is
// shown it again at the head of the next one, and EOF forwards it.
func TestPendingIsKept(t *testing.T) {
	rec := &recorder{keep: -1, hold: 7}
	streams, lines, _, err := replayBytes(t, scriptedCapture(t), Options{Factory: rec})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	c := rec.conns[0]
	if !bytes.Equal(c.seen[dissect.Up], payloadOf(1000, 1)) || streams[0].Forwarded != [2]int64{1000, 1000} {
		t.Fatalf("seen %d, forwarded %v", len(c.seen[0]), streams[0].Forwarded)
	}
	var feeds []int
	for _, cl := range c.calls {
		if cl.dir == dissect.Up && cl.kind != "close" {
			feeds = append(feeds, cl.pending)
		}
	}
	// 100 new bytes a read, 7 held from the read before; EOF gets the 7.
	want := []int{100}
	for range 9 {
		want = append(want, 107)
	}
	if want = append(want, 7); !slices.Equal(feeds, want) {
		t.Fatalf("client calls saw %v, want %v", feeds, want)
	}
}

// TestPendingLimit: an inspector that never clears is stopped before it
// holds more than a TLS handshake message.
func TestPendingLimit(t *testing.T) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake()
	s.mss = 65000
	s.send(0, make([]byte, maxPending+65000)).close()
	f := factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		return &scripted{feed: func(int, dissect.Direction, []byte) inspect.Result { return inspect.Result{} }}, inspect.Decision{}
	})
	streams, lines, _, err := replayBytes(t, sessionCapture(t, layers.LinkTypeEthernet, s), Options{Factory: f})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, streams, lines)
	if lines[0].Verdict != "drop" || lines[0].Rule != "builtin:pending-limit" || streams[0].Forwarded[dissect.Up] != 0 {
		t.Fatalf("%+v", lines[0])
	}
}

// TestDeterministicOutput replays a capture with many interleaved
// streams, gaps declared by sweeps and idle streams several times: the
// output is the same every time (the reassembly's flushes visit streams
// in map order).
func TestDeterministicOutput(t *testing.T) {
	var ss []*session
	for i := range 60 {
		c := ap(fmt.Sprintf("10.0.%d.%d:%d", i/200, i%200+1, 30000+i))
		s := newSession(encEthernet, c, ap("10.9.9.9:443"), t0.Add(time.Duration(i)*37*time.Millisecond)).handshake()
		s.step = 150 * time.Millisecond
		s.mss = 200
		s.send(0, payloadOf(1000, byte(i))).send(1, payloadOf(2000, byte(i)))
		if i%3 != 0 {
			s.close()
		}
		if i%4 == 0 {
			s.pkts = slices.Delete(s.pkts, 5, 6) // the second client segment
		}
		ss = append(ss, s)
	}
	capture := sessionCapture(t, layers.LinkTypeEthernet, ss...)
	var first []byte
	for run := range 5 {
		var out bytes.Buffer
		r, _ := New(Options{Factory: &recorder{}, Output: output.NewWriter(&out, output.JSON), ReorderWindow: time.Second, IdleTimeout: 2 * time.Second})
		st, err := r.Replay(bytes.NewReader(capture))
		if err != nil {
			t.Fatal(err)
		}
		if st.Gaps == 0 || st.Streams != 60 {
			t.Fatalf("stats %+v", st)
		}
		if run == 0 {
			first = out.Bytes()
			continue
		}
		if !bytes.Equal(first, out.Bytes()) {
			t.Fatalf("run %d differs:\n%s\nvs\n%s", run, first, out.Bytes())
		}
	}
}

// TestFlowIDsAcrossCaptures: one Replayer numbers the streams of
// successive captures on from each other.
func TestFlowIDsAcrossCaptures(t *testing.T) {
	var ids []uint64
	r, _ := New(Options{Factory: inspect.PassThrough{}, OnStream: func(s *StreamStats) { ids = append(ids, s.ID) }})
	for _, name := range []string{"zeek/tls13-ech.pcap", "suricata-verify/tls-duplicate-hello/input.pcap"} {
		if _, err := r.ReplayFile(sharedCapture(t, name)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(ids, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("ids %v", ids)
	}
}

// TestIPFragments: a segment whose datagram was fragmented (IPv4 and
// IPv6), the fragments out of order and one repeated, is rebuilt.
func TestIPFragments(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		client, server := ap("192.0.2.1:51000"), ap("198.51.100.7:443")
		if v6 {
			client, server = ap("[2001:db8:1::1]:51000"), ap("[2001:db8:2::7]:443")
		}
		s := newSession(encEthernet, client, server, t0).handshake()
		s.mss = 3000
		s.send(0, payloadOf(3000, 1)).send(1, payloadOf(500, 2)).close()
		var pkts []pkt
		fragments := 0
		for _, p := range s.pkts {
			if len(p.seg.payload) != 3000 {
				pkts = append(pkts, p)
				continue
			}
			fr := encEthernet.fragmentFrames(p.seg, 1000, 77)
			order := []int{2, 0, 1, 0, 3}
			for _, i := range order {
				pkts = append(pkts, pkt{ts: p.ts, data: fr[i]})
			}
			fragments += len(order)
		}
		rec := &recorder{keep: -1}
		streams, lines, st, err := replayBytes(t, pcapBytes(t, layers.LinkTypeEthernet, pkts), Options{Factory: rec})
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, streams, lines)
		if st.Fragments != int64(fragments) || st.Defragmented != 1 || st.Malformed != 0 {
			t.Fatalf("v6 %v: stats %+v", v6, st)
		}
		if !bytes.Equal(rec.conns[0].seen[dissect.Up], payloadOf(3000, 1)) || streams[0].Forwarded != [2]int64{3000, 500} {
			t.Fatalf("v6 %v: forwarded %v", v6, streams[0].Forwarded)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestOutputError: when the lines cannot be written the replay stops.
func TestOutputError(t *testing.T) {
	r, _ := New(Options{Factory: inspect.PassThrough{}, Output: output.NewWriter(failingWriter{}, output.JSON)})
	st, err := r.ReplayFile(sharedCapture(t, "suricata-verify/ssl_version_negated/input.pcap"))
	if !errors.Is(err, ErrOutput) || !strings.Contains(err.Error(), "broken pipe") || st.Packets >= 114 {
		t.Fatalf("err = %v after %d packets", err, st.Packets)
	}
}
