package replay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// record is what a reader gave for one pcap record.
type readRecord struct {
	ts         time.Time
	wire       int
	data       string
	atOffset   int64
	afterError bool
}

// readAll reads a classic pcap with the replay's reader, into buffers of
// bufSize bytes (a batch's, shrunk to put records across its ends), and
// returns the records and the error at the end (nil for a clean end) with
// the offset it names.
func readWithReplay(t testing.TB, r io.Reader, bufSize int) ([]readRecord, error, int64) {
	t.Helper()
	p, err := newPcapReader(r)
	if err != nil {
		return nil, err, 0
	}
	var recs []readRecord
	buf := make([]byte, 0, bufSize)
	for range 1 << 20 {
		var off int64
		buf, off, err = p.fill(buf[:0], func(rec pcapRecord) bool {
			recs = append(recs, readRecord{ts: rec.ts, wire: rec.wireLength, data: string(rec.data)})
			return true
		})
		if err == io.EOF {
			return recs, nil, off
		}
		if err != nil {
			return recs, err, off
		}
	}
	t.Fatal("the reader does not end")
	return nil, nil, 0
}

// readWithPcapgo reads the same with pcapgo, the reference. pcapgo
// reports a record cut right after its header as a clean end, which the
// replay knows for a cut: that is mapped to io.ErrUnexpectedEOF.
func readWithPcapgo(b []byte) ([]readRecord, error, int64) {
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err, 0
	}
	var recs []readRecord
	off := int64(pcapFileHeader)
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF && off != int64(len(b)) {
			err = io.ErrUnexpectedEOF
		}
		if err == io.EOF {
			return recs, nil, off
		}
		if err != nil {
			return recs, err, off
		}
		recs = append(recs, readRecord{ts: ci.Timestamp, wire: ci.Length, data: string(data)})
		off += pcapRecordHeader + int64(ci.CaptureLength)
	}
}

// sameReading compares the replay's reading of b with pcapgo's.
func sameReading(t *testing.T, what string, b []byte, bufSize int, r io.Reader) {
	t.Helper()
	want, wantErr, wantOff := readWithPcapgo(b)
	got, gotErr, gotOff := readWithReplay(t, r, bufSize)
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, pcapgo %d (errors %v, %v)", what, len(got), len(want), gotErr, wantErr)
	}
	for i := range got {
		if !got[i].ts.Equal(want[i].ts) || got[i].wire != want[i].wire || got[i].data != want[i].data {
			t.Fatalf("%s: record %d differs from pcapgo's: %v/%d/%d bytes, want %v/%d/%d", what, i,
				got[i].ts, got[i].wire, len(got[i].data), want[i].ts, want[i].wire, len(want[i].data))
		}
	}
	switch {
	case (gotErr == nil) != (wantErr == nil):
		t.Fatalf("%s: error %v, pcapgo %v", what, gotErr, wantErr)
	case gotErr != nil && gotOff != wantOff:
		t.Fatalf("%s: error %v at %d, pcapgo %v at %d", what, gotErr, gotOff, wantErr, wantOff)
	case gotErr != nil && errors.Is(wantErr, io.ErrUnexpectedEOF) != errors.Is(gotErr, io.ErrUnexpectedEOF):
		t.Fatalf("%s: error %v, pcapgo %v", what, gotErr, wantErr)
	case gotErr != nil && !errors.Is(wantErr, io.ErrUnexpectedEOF) && gotErr.Error() != wantErr.Error():
		t.Fatalf("%s: error %q, pcapgo %q", what, gotErr, wantErr)
	}
}

// pcapFiles returns the classic pcap files of testdata/pcaps.
func pcapFiles(t *testing.T) map[string][]byte {
	t.Helper()
	root, names := captures(t)
	files := map[string][]byte{}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if isPcapMagic(b[:4]) {
			files[name] = b
		}
	}
	return files
}

// TestPcapReaderMatchesPcapgo: every classic pcap of testdata/pcaps,
// whole and cut anywhere, reads as pcapgo reads it, whatever the size of
// the buffers and however the bytes come.
func TestPcapReaderMatchesPcapgo(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	files := pcapFiles(t)
	if len(files) < 25 {
		t.Fatalf("%d classic pcap files", len(files))
	}
	for name, b := range files {
		for _, size := range []int{batchBytes, 100, 1600, 3000} {
			sameReading(t, fmt.Sprintf("%s, buffers of %d", name, size), b, size, bytes.NewReader(b))
		}
		sameReading(t, name+", one byte at a time", b, 700, iotest.OneByteReader(bytes.NewReader(b)))
		sameReading(t, name+", half reads", b, 2000, iotest.HalfReader(bytes.NewReader(b)))
		sameReading(t, name+", EOF with the data", b, 1000, iotest.DataErrReader(bytes.NewReader(b)))
		for range 20 {
			cut := pcapFileHeader + rng.IntN(len(b)-pcapFileHeader)
			sameReading(t, fmt.Sprintf("%s cut at %d", name, cut), b[:cut], 64+rng.IntN(4000), iotest.HalfReader(bytes.NewReader(b[:cut])))
		}
	}
}

// bigFrameCapture is a pcap whose snap length lets a record be larger
// than a batch, between ordinary ones.
func bigFrameCapture(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	if err := w.WriteFileHeader(1<<20, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{60, batchBytes + 5000, 1514, 3 * batchBytes, 60} {
		data := payloadOf(n, byte(i))
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(time.Duration(i) * time.Second), CaptureLength: n, Length: n}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// TestPcapReaderLargeRecords: records larger than a batch are read
// whole, cut ones reported as cut.
func TestPcapReaderLargeRecords(t *testing.T) {
	b := bigFrameCapture(t)
	for _, size := range []int{batchBytes, 1000} {
		sameReading(t, fmt.Sprintf("buffers of %d", size), b, size, bytes.NewReader(b))
		sameReading(t, fmt.Sprintf("half reads, buffers of %d", size), b, size, iotest.HalfReader(bytes.NewReader(b)))
	}
	offs := pcapRecords(b)
	for _, cut := range []int{offs[1] + 20, offs[1] + batchBytes, offs[3] + 2*batchBytes, offs[3] + 10} {
		sameReading(t, fmt.Sprintf("cut at %d", cut), b[:cut], batchBytes, bytes.NewReader(b[:cut]))
	}
}

// FuzzPcapReader: on any bytes after a valid file header, the replay's
// reader gives pcapgo's records and stops where pcapgo stops.
func FuzzPcapReader(f *testing.F) {
	hdr := func(order binary.ByteOrder, magic uint32, snap uint32) []byte {
		h := make([]byte, pcapFileHeader)
		order.PutUint32(h[0:], magic)
		order.PutUint16(h[4:], 2)
		order.PutUint16(h[6:], 4)
		order.PutUint32(h[16:], snap)
		order.PutUint32(h[20:], 1)
		return h
	}
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().send(0, payloadOf(300, 1)).close()
	good := pcapBytes(f, layers.LinkTypeEthernet, s.pkts)
	f.Add(uint8(0), uint16(0), good[pcapFileHeader:])
	f.Add(uint8(1), uint16(100), []byte{})
	f.Add(uint8(3), uint16(7), good[pcapFileHeader:200])
	f.Fuzz(func(t *testing.T, kind uint8, bufSize uint16, body []byte) {
		orders := []binary.ByteOrder{binary.LittleEndian, binary.BigEndian}
		magics := []uint32{0xa1b2c3d4, 0xa1b23c4d}
		b := append(hdr(orders[kind&1], magics[kind>>1&1], uint32(kind)<<12), body...)
		sameReading(t, "fuzz", b, 32+int(bufSize), iotest.HalfReader(bytes.NewReader(b)))
	})
}

// TestManyBatches replays a capture of many batches, its records across
// every batch's end, frame sizes of all kinds: the reassembled bytes are
// those sent, from a file, a gzip stream and a reader that hands out a
// few bytes at a time.
func TestManyBatches(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(3, 3))
	var sessions []*session
	var sent [][2][]byte
	for i := range 12 {
		s := newSession(encEthernet, ap(fmt.Sprintf("10.0.%d.1:4%04d", i, i)), ap("10.0.0.2:443"), t0.Add(time.Duration(i)*time.Millisecond))
		s.mss = 200 + rng.IntN(1300)
		up, down := payloadOf(1000+rng.IntN(60000), byte(i)), payloadOf(50000+rng.IntN(400000), byte(100+i))
		s.handshake().send(0, up).send(1, down).close()
		sessions = append(sessions, s)
		sent = append(sent, [2][]byte{up, down})
	}
	capture := sessionCapture(t, layers.LinkTypeEthernet, sessions...)
	if len(capture) < 8*batchBytes {
		t.Fatalf("the capture is only %d bytes", len(capture))
	}
	for _, tc := range []struct {
		name string
		r    io.Reader
	}{
		{"plain", bytes.NewReader(capture)},
		{"gzip", bytes.NewReader(gzipped(t, capture))},
		{"a few bytes at a time", iotest.HalfReader(iotest.HalfReader(bytes.NewReader(capture)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{keep: -1}
			var streams []*StreamStats
			r, err := New(Options{Factory: rec, OnStream: func(s *StreamStats) { streams = append(streams, s) }})
			if err != nil {
				t.Fatal(err)
			}
			st, err := r.Replay(tc.r)
			if err != nil {
				t.Fatal(err)
			}
			if st.Packets != int64(len(pcapRecords(capture))) || st.Bytes != int64(len(capture)-pcapFileHeader-pcapRecordHeader*len(pcapRecords(capture))) || st.Malformed != 0 {
				t.Fatalf("stats %+v", st)
			}
			if len(rec.conns) != len(sent) {
				t.Fatalf("%d connections", len(rec.conns))
			}
			for i, c := range rec.conns {
				if !bytes.Equal(c.seen[dissect.Up], sent[i][0]) || !bytes.Equal(c.seen[dissect.Down], sent[i][1]) {
					t.Errorf("connection %d: %d/%d bytes up, %d/%d down", i, len(c.seen[dissect.Up]), len(sent[i][0]), len(c.seen[dissect.Down]), len(sent[i][1]))
				}
			}
		})
	}
}

// blockingReader hands out a capture, then blocks until released, as a
// pipe from a live capture would.
type blockingReader struct {
	r       io.Reader
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		<-b.release
	}
	return n, err
}

// TestOutputErrorStopsTheReader: when the output fails, the replay
// returns at once even though its reader is blocked in a read, and the
// reader ends once the read returns.
func TestOutputErrorStopsTheReader(t *testing.T) {
	raw, err := os.ReadFile(sharedCapture(t, "suricata-verify/ssl_version_negated/input.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	src := &blockingReader{r: bytes.NewReader(raw), release: make(chan struct{})}
	r, _ := New(Options{Factory: inspect.PassThrough{}, Output: output.NewWriter(failingWriter{}, output.JSON)})
	if _, err := r.Replay(src); !errors.Is(err, ErrOutput) || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("err = %v", err)
	}
	close(src.release)
	// The reader's goroutine ends once its read returns; there is no
	// event to wait on but the count of goroutines.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the replay", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}
