package dissect

import (
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// The -update flag regenerates the recorded handshakes in testdata. The
// record layer's tests live in this package too, so the flag is registered
// only once, by whichever file gets there first.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "regenerate the recorded handshakes in testdata")
	}
}

func updateRecordings() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// hsMsg is one handshake message: its type and body.
type hsMsg struct {
	typ  HandshakeType
	body []byte
}

// wire returns the message with its 4-byte header.
func (m hsMsg) wire() []byte {
	n := len(m.body)
	return append([]byte{byte(m.typ), byte(n >> 16), byte(n >> 8), byte(n)}, m.body...)
}

// cleartextMessages walks the TLS records of one direction of a stream and
// returns the handshake messages sent before that direction's
// ChangeCipherSpec (or before its first non-handshake record), reassembled
// across records. It is the few lines of framing the tests need; the
// package's own record layer does this for real. sslv2 returns the body of
// an SSLv2-format CLIENT-HELLO when the stream opens with one.
func cleartextMessages(t testing.TB, stream []byte) (msgs []hsMsg, sslv2 []byte) {
	t.Helper()
	var hs []byte
	off := 0
	if len(stream) > 3 && stream[0]&0x80 != 0 && stream[2] == 1 {
		n := int(stream[0]&0x7f)<<8 | int(stream[1])
		if 2+n > len(stream) {
			t.Fatalf("SSLv2 record of %d bytes overruns the stream (%d)", n, len(stream))
		}
		sslv2 = stream[3 : 2+n]
		off = 2 + n
	}
	for off+5 <= len(stream) {
		typ := stream[off]
		n := int(stream[off+3])<<8 | int(stream[off+4])
		if off+5+n > len(stream) {
			break
		}
		if typ != 22 {
			break
		}
		hs = append(hs, stream[off+5:off+5+n]...)
		off += 5 + n
	}
	return splitHandshakeMsgs(t, hs), sslv2
}

// splitMessages splits concatenated handshake messages; a truncated last
// message (the capture ended) is dropped.
func splitHandshakeMsgs(t testing.TB, hs []byte) []hsMsg {
	var msgs []hsMsg
	for len(hs) >= 4 {
		n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if 4+n > len(hs) {
			break
		}
		msgs = append(msgs, hsMsg{HandshakeType(hs[0]), hs[4 : 4+n]})
		hs = hs[4+n:]
	}
	return msgs
}

// captureStreams reads a capture of the shared set, skipping the test when
// the set is not there.
func pcapStreams(t testing.TB, name string) []*pcaptest.Stream {
	t.Helper()
	p, err := pcaptest.Path(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("shared capture %s not available: %v", name, err)
	}
	streams, err := pcaptest.Read(p)
	if err != nil && len(streams) == 0 {
		t.Fatal(err)
	}
	return streams
}

// captureMessages returns the cleartext handshake messages of one
// direction of one stream of a capture.
func pcapHandshakeMsgs(t testing.TB, name string, stream int, up bool) ([]hsMsg, []byte) {
	t.Helper()
	streams := pcapStreams(t, name)
	if stream >= len(streams) {
		t.Fatalf("%s has %d streams, want stream %d", name, len(streams), stream)
	}
	return cleartextMessages(t, streams[stream].Payload(up))
}

func findMsg(msgs []hsMsg, typ HandshakeType) (hsMsg, bool) {
	for _, m := range msgs {
		if m.typ == typ {
			return m, true
		}
	}
	return hsMsg{}, false
}

// recording is a handshake recorded from a real implementation and kept in
// testdata as hex: one line per cleartext handshake message,
// "up|down <hex of the message with its header>".
type recording struct {
	name string
	up   []hsMsg
	down []hsMsg
}

func recordingPath(name string) string { return filepath.Join("testdata", "handshakes", name+".hex") }

func writeRecording(t testing.TB, r recording, comment string) {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(comment), "\n") {
		b.WriteString("# " + line + "\n")
	}
	for _, m := range r.up {
		b.WriteString("up " + hex.EncodeToString(m.wire()) + "\n")
	}
	for _, m := range r.down {
		b.WriteString("down " + hex.EncodeToString(m.wire()) + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(recordingPath(r.name)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recordingPath(r.name), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readRecording(t testing.TB, name string) recording {
	t.Helper()
	data, err := os.ReadFile(recordingPath(name))
	if err != nil {
		t.Fatalf("%v (regenerate with go test -run TestRecord -update ./dissect/)", err)
	}
	r := recording{name: name}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		dir, hx, ok := strings.Cut(line, " ")
		b, err := hex.DecodeString(hx)
		if !ok || err != nil || len(b) < 4 {
			t.Fatalf("%s:%d: bad line", recordingPath(name), i+1)
		}
		msgs := splitHandshakeMsgs(t, b)
		if len(msgs) != 1 {
			t.Fatalf("%s:%d: want one handshake message", recordingPath(name), i+1)
		}
		switch dir {
		case "up":
			r.up = append(r.up, msgs[0])
		case "down":
			r.down = append(r.down, msgs[0])
		default:
			t.Fatalf("%s:%d: direction %q", recordingPath(name), i+1, dir)
		}
	}
	return r
}

// recordedHandshakes returns every recording in testdata/handshakes.
func recordedHandshakes(t testing.TB) []recording {
	names, _ := filepath.Glob(filepath.Join("testdata", "handshakes", "*.hex"))
	var out []recording
	for _, n := range names {
		base := filepath.Base(n)
		out = append(out, readRecording(t, base[:len(base)-len(".hex")]))
	}
	return out
}
