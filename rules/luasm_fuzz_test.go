package rules

import (
	"crypto/tls"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// encodeChunks writes chunks as the fuzzer's input: a byte whose low bit
// is the direction and whose other bits are a length (up to 127), then
// that many bytes.
func encodeChunks(chunks []chunk) []byte {
	var b []byte
	for _, c := range chunks {
		for data := c.data; len(data) > 0; {
			n := min(len(data), 127)
			b = append(b, byte(n<<1)|byte(c.dir))
			b = append(b, data[:n]...)
			data = data[n:]
		}
	}
	return b
}

func decodeChunks(b []byte) []chunk {
	var out []chunk
	for len(b) > 0 {
		d, n := dissect.Direction(b[0]&1), int(b[0]>>1)
		b = b[1:]
		n = min(n, len(b))
		out = append(out, chunk{d, b[:n]})
		b = b[n:]
	}
	return out
}

// The example machine beside the built-in one on arbitrary streams: no
// panic, no error in its functions, and it only ever adds drops of its
// own to the built-in machine's verdicts.
func FuzzExampleMachine(f *testing.F) {
	t12 := tlsTranscript(f, tls.VersionTLS12)
	f.Add(encodeChunks(t12))
	f.Add(encodeChunks(tlsTranscript(f, tls.VersionTLS13)))
	hb := tlspeer.AppendRecord(nil, tlspeer.TypeHeartbeat, 0x0303, []byte{1, 0x40, 0x00})
	f.Add(encodeChunks(append(append([]chunk(nil), t12[:3]...), chunk{dissect.Up, hb})))
	f.Add(encodeChunks([]chunk{{dissect.Up, tlspeer.ClientHello12("fuzz.test", true)}, {dissect.Down, hb}}))

	h := newHarness(f, nil, Options{Dir: exampleDir(f), PoolSize: 1})
	withLua := benchFactory(f, h)
	alone := benchFactory(f, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		chunks := decodeChunks(data)
		d := feedConn(withLua, chunks)
		base := feedConn(alone, chunks)
		switch {
		case base.Verdict.Kills() && d != base && !strings.HasPrefix(d.Rule, "ssl_state_machine.lua:"):
			t.Errorf("built-in %+v, with the Lua machine %+v", base, d)
		case !base.Verdict.Kills() && d.Verdict.Kills() && !strings.HasPrefix(d.Rule, "ssl_state_machine.lua:"):
			t.Errorf("a drop not by the machine: %+v", d)
		case d.Verdict == inspect.Bypass:
			t.Errorf("bypass: %+v", d)
		}
		if errs := messages(h.logs, zapcore.ErrorLevel); len(errs) > 0 {
			t.Fatalf("errors: %v", errs)
		}
	})
}
