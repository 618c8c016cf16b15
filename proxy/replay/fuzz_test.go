package replay

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// fuzzInvariants replays capture and checks what must hold for any
// input: no panic, every reassembled byte forwarded or dropped, one
// connection line per stream reporting what was forwarded.
func fuzzInvariants(t *testing.T, capture []byte, f inspect.Factory) {
	var out bytes.Buffer
	var streams []*StreamStats
	r, err := New(Options{Factory: f, Output: output.NewWriter(&out, output.JSON), ReorderWindow: time.Second, IdleTimeout: 3 * time.Second,
		OnStream: func(s *StreamStats) { streams = append(streams, s) }})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := r.Replay(bytes.NewReader(capture))
	if st.Streams != int64(len(streams)) {
		t.Fatalf("%d streams counted, %d reported", st.Streams, len(streams))
	}
	lines := 0
	if out.Len() > 0 {
		lines = bytes.Count(out.Bytes(), []byte("\n"))
	}
	if lines != len(streams) {
		t.Fatalf("%d lines for %d streams", lines, len(streams))
	}
	for _, s := range streams {
		for d := range 2 {
			if s.Stream[d] != s.Forwarded[d]+s.Dropped[d] || s.Forwarded[d] < 0 || s.Dropped[d] < 0 {
				t.Fatalf("stream %d dir %d: %d bytes, %d forwarded, %d dropped", s.ID, d, s.Stream[d], s.Forwarded[d], s.Dropped[d])
			}
		}
	}
}

// FuzzCapture feeds arbitrary bytes as a capture file.
func FuzzCapture(f *testing.F) {
	s := newSession(encEthernet, ap("10.0.0.1:40000"), ap("10.0.0.2:443"), t0).handshake().
		send(0, payloadOf(300, 1)).send(1, payloadOf(200, 2)).close()
	f.Add(pcapBytes(f, layers.LinkTypeEthernet, s.pkts))
	f.Add(gzipped(f, pcapBytes(f, layers.LinkTypeEthernet, s.pkts[:4])))
	f.Add(ngCapture(f))
	for _, name := range []string{"zeek/tls-1.2-handshake-failure.pcap", "suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap"} {
		b, err := os.ReadFile(capturePath(f, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, capture []byte) {
		fuzzInvariants(t, capture, &dropper{pattern: []byte{0x16, 3}, verdict: inspect.Drop})
	})
}

// FuzzSegments builds a session from arbitrary segments: each 4 input
// bytes give the sender, the flags, a sequence offset from the sender's
// next byte (so holes, overlaps and retransmissions) and a payload
// length. It exercises reassembly, gaps, FIN/RST and the pump's
// accounting with inspectors that hold bytes and handle gaps.
func FuzzSegments(f *testing.F) {
	f.Add([]byte{0, flagSYN, 0, 0, 1, flagSYN | flagACK, 0, 0, 0, flagACK, 0, 100, 1, flagACK, 0, 200, 0, flagFIN | flagACK, 0, 0})
	f.Add([]byte{0, flagACK, 0, 100, 0, flagACK, 50, 100, 0, flagACK, 0xf0, 100, 1, flagRST, 0, 0})
	f.Add([]byte{1, flagACK | flagPSH, 0, 255, 0, flagSYN, 0, 0, 0, flagSYN, 7, 0, 1, flagFIN, 0, 3})
	f.Fuzz(func(t *testing.T, ops []byte) {
		ends := [2]segment{{src: ap("10.0.0.1:40000"), dst: ap("10.0.0.2:443")}, {src: ap("10.0.0.2:443"), dst: ap("10.0.0.1:40000")}}
		next := [2]uint32{1000, 90000}
		var pkts []pkt
		ts := t0
		for len(ops) >= 4 {
			side := int(ops[0] & 1)
			seg := ends[side]
			seg.flags = ops[1] & (flagFIN | flagSYN | flagRST | flagPSH | flagACK)
			seg.seq = next[side] + uint32(int32(int8(ops[2]))*13)
			seg.ack = next[1-side]
			seg.payload = payloadOf(int(ops[3]), ops[2])
			pkts = append(pkts, pkt{ts: ts, data: encEthernet.frame(nil, seg)})
			if e := seg.seq + uint32(len(seg.payload)); int32(e-next[side]) > 0 {
				next[side] = e
			}
			// Now and then a long pause, for the sweeps.
			ts = ts.Add(time.Duration(ops[0]>>1) * 20 * time.Millisecond)
			ops = ops[4:]
		}
		capture := pcapBytes(t, layers.LinkTypeEthernet, pkts)
		fuzzInvariants(t, capture, &recorder{gapHandler: len(pkts)%2 == 0, hold: len(pkts) % 5})
		fuzzInvariants(t, capture, &recordWalker{})
	})
}
