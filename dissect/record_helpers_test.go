package dissect

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

func init() {
	// Tolerate another test file of the package defining the same flag.
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite the golden files under testdata")
	}
}

func recUpdate() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// recCaptureRoot returns the directory of the captures: $HAKA_PCAPS when
// set, pcaptest.Root otherwise (the repository's testdata/pcaps).
func recCaptureRoot(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("HAKA_PCAPS"); dir != "" {
		return dir
	}
	root, err := pcaptest.Root()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// recStreams reads the TCP streams of a capture named relative to the root.
func recStreams(t testing.TB, name string) []*pcaptest.Stream {
	t.Helper()
	path := filepath.Join(recCaptureRoot(t), name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("capture missing (set HAKA_PCAPS to the shared pcaps directory): %v", err)
	}
	streams, err := pcaptest.Read(path)
	if err != nil && len(streams) == 0 {
		t.Fatal(err)
	}
	return streams
}

// recPump plays the proxy's pump for one Conn: per direction it keeps the
// bytes not consumed yet, presents them with every new chunk, and records
// each unit in a canonical form that does not depend on how the stream was
// split (application_data chunks are folded into their header's line).
type recPump struct {
	c       *Conn
	pending [2][]byte
	lines   []string
	// found lists the anomaly names in order; "error:" marks that of a
	// framing error, "eof:" one reported at the end of the stream.
	found []string
	errs  [2]error
	// last application_data header line of each direction, and the
	// payload bytes seen for it.
	appLine [2]int
	appSeen [2]int
	// hook, when set, sees every unit.
	hook func(dir Direction, u Unit)
}

func newRecPump(l Limits) *recPump {
	return &recPump{c: NewConn(l), appLine: [2]int{-1, -1}}
}

func (p *recPump) feed(t testing.TB, dir Direction, data []byte) {
	t.Helper()
	if p.errs[dir] != nil {
		return
	}
	p.pending[dir] = append(p.pending[dir], data...)
	for {
		u, n, err := p.c.Next(dir, p.pending[dir])
		if err != nil {
			p.errs[dir] = err
			var re *RecordError
			if !errors.As(err, &re) {
				t.Fatalf("%s: error %v is not a *RecordError", dir, err)
			}
			p.found = append(p.found, "error:"+re.Anomaly.Name)
			p.lines = append(p.lines, fmt.Sprintf("%s error: %v", dir, err))
			return
		}
		if u.Kind == NeedMore {
			if n != 0 {
				t.Fatalf("%s: NeedMore consumed %d bytes", dir, n)
			}
			return
		}
		if n < 0 || n > len(p.pending[dir]) {
			t.Fatalf("%s: unit %s consumed %d of %d bytes", dir, u.Kind, n, len(p.pending[dir]))
		}
		if p.hook != nil {
			p.hook(dir, u)
		}
		p.record(t, dir, u)
		p.pending[dir] = p.pending[dir][n:]
	}
}

func (p *recPump) eof(dir Direction) {
	for _, a := range p.c.EOF(dir, p.pending[dir]) {
		p.lines = append(p.lines, fmt.Sprintf("%s eof ! %s: %s", dir, a.Name, a.Detail))
		p.found = append(p.found, "eof:"+a.Name)
	}
}

func (p *recPump) record(t testing.TB, dir Direction, u Unit) {
	t.Helper()
	enc := ""
	if u.Encrypted {
		enc = " enc"
	}
	var line string
	switch u.Kind {
	case UnitRecord:
		line = fmt.Sprintf("%s @%d %s %s len=%d%s", dir, u.Start, u.Header.Type, VersionName(u.Header.Version), u.Header.Length, enc)
		if len(u.Raw) != HeaderLen+u.Header.Length || len(u.Fragment) != u.Header.Length {
			t.Fatalf("%s: record of %d bytes has raw %d, fragment %d", dir, u.Header.Length, len(u.Raw), len(u.Fragment))
		}
		if u.Header.Type == TypeHeartbeat && !u.Encrypted {
			line += fmt.Sprintf(" hb=%s payload=%d padding=%d", u.Heartbeat.TypeName(), u.Heartbeat.PayloadLength, u.Heartbeat.PaddingLength)
		}
		for _, a := range u.Alerts {
			line += " alert=" + a.LevelName() + "/" + a.DescriptionName()
		}
	case UnitHeader:
		line = fmt.Sprintf("%s @%d %s %s len=%d%s", dir, u.Start, u.Header.Type, VersionName(u.Header.Version), u.Header.Length, enc)
		p.appLine[dir], p.appSeen[dir] = len(p.lines), 0
	case UnitChunk:
		if p.appLine[dir] < 0 || u.Offset != p.appSeen[dir] {
			t.Fatalf("%s: chunk at payload offset %d, want %d", dir, u.Offset, p.appSeen[dir])
		}
		p.appSeen[dir] += len(u.Fragment)
		if p.appSeen[dir] > u.Header.Length {
			t.Fatalf("%s: chunks total %d bytes in a record of %d", dir, p.appSeen[dir], u.Header.Length)
		}
		// Chunks depend on the split; they leave no line of their own.
	case UnitSSLv2:
		line = fmt.Sprintf("%s @%d sslv2 len=%d hdr=%d", dir, u.Start, u.Header.Length, u.SSLv2.HeaderLen)
		if u.Encrypted {
			line += enc
		} else {
			line += " msg=" + SSLv2MessageName(u.SSLv2.MsgType) + fmt.Sprintf(" body=%d", len(u.SSLv2.Body))
		}
	case UnitMessage:
		m := u.Msg
		line = fmt.Sprintf("%s   msg type=%d len=%d from=@%d", dir, m.Type, m.Length, u.Start)
		if m.Reassembled {
			line += " reassembled"
		}
		if m.TooLarge {
			line += " too_large"
		} else if len(m.Body) != m.Length || len(m.Raw) != m.Length+4 || m.Raw[0] != m.Type {
			t.Fatalf("%s: message type %d of %d bytes has body %d, raw %d", dir, m.Type, m.Length, len(m.Body), len(m.Raw))
		}
	default:
		t.Fatalf("%s: unexpected unit kind %s", dir, u.Kind)
	}
	if line != "" {
		p.lines = append(p.lines, line)
	}
	for _, a := range u.Anomalies {
		if a.Direction != dir && !(u.Kind == UnitMessage && a.Name == AnomalyHandshakeLengthMismatch) {
			t.Fatalf("%s unit carries an anomaly of %s: %v", dir, a.Direction, a)
		}
		p.lines = append(p.lines, fmt.Sprintf("%s   ! %s: %s", a.Direction, a.Name, a.Detail))
		p.found = append(p.found, a.Name)
	}
}
