package output

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// strs are strings that exercise every escape of appendString.
var strs = []string{
	"", "plain", `quote " and \ backslash`, "ctl \x00\x01\x1f\x7f", "\b\f\n\r\t",
	"<script>&amp;</script>", "é ü 漢字 🙂", "bad \xff\xfe utf8 \xc3", "line\u2028sep\u2029",
	"heartbleed.lua:12", "10.0.0.1:443", "[::1]:8443", "tls1.3", "h2", "t13d1516h2_8daaf6152771_e5627efa2ab1",
}

var floats = []float64{0, 1, 0.5, 1e-7, 1.5e-9, 1e-6, 123.456789, 1e20, 1e21, 3.2e22, -2.5, 7.000001e-5, 1234567.125}

var times = []time.Time{
	time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC),
	time.Date(2026, 12, 4, 10, 0, 0, 123456789, time.UTC),
	time.Date(1970, 1, 1, 0, 0, 0, 1000, time.FixedZone("X", 3600+1800)),
	time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("Y", -7*3600)),
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randomConnection(r *rand.Rand) *Connection {
	c := &Connection{
		Type:      pick(r, strs),
		Time:      pick(r, times),
		Flow:      FlowRef{ID: r.Uint64(), Src: pick(r, strs), Dst: pick(r, strs), SNI: pick(r, strs)},
		BytesUp:   r.Int64() - r.Int64(),
		BytesDown: r.Int64N(1 << 40),
		Duration:  pick(r, floats) * (r.Float64() + 0.5),
		Verdict:   pick(r, strs),
		Reason:    pick(r, strs),
		Rule:      pick(r, strs),
		Version:   pick(r, strs),
		ALPN:      pick(r, strs),
		JA3:       pick(r, strs),
		JA4:       pick(r, strs),
	}
	switch r.IntN(3) {
	case 1:
		c.Anomalies = []string{}
	case 2:
		for range r.IntN(4) + 1 {
			c.Anomalies = append(c.Anomalies, pick(r, strs))
		}
	}
	return c
}

func randomAlert(r *rand.Rand) *Alert {
	a := &Alert{
		Type:        pick(r, strs),
		Time:        pick(r, times),
		Description: pick(r, strs),
		Severity:    pick(r, strs),
		Confidence:  pick(r, strs),
		Event:       pick(r, strs),
		Rule:        pick(r, strs),
		Action:      pick(r, strs),
		Flow:        FlowRef{ID: r.Uint64(), Src: pick(r, strs), Dst: pick(r, strs), SNI: pick(r, strs)},
	}
	if r.IntN(2) == 0 {
		a.Method = &Method{Description: pick(r, strs), Ref: pick(r, strs)}
	}
	switch r.IntN(3) {
	case 1:
		a.Ref = []string{}
	case 2:
		a.Ref = []string{pick(r, strs), pick(r, strs)}
	}
	return a
}

// TestJSONMatchesMarshal holds the hand-written encoders to the bytes
// json.Marshal writes for the same records.
func TestJSONMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		c := randomConnection(r)
		got, err := appendConnection(nil, c)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		want, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("connection %d: json.Marshal: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("connection %d:\n got %s\nwant %s", i, got, want)
		}
		a := randomAlert(r)
		if got, err = appendAlert(nil, a); err != nil {
			t.Fatalf("alert %d: %v", i, err)
		}
		if want, err = json.Marshal(a); err != nil {
			t.Fatalf("alert %d: json.Marshal: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("alert %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// TestJSONRefusesWhatMarshalRefuses: a duration json cannot write, or a
// year outside 0-9999, is an error, not a line that does not parse.
func TestJSONRefusesWhatMarshalRefuses(t *testing.T) {
	for _, c := range []*Connection{
		{Duration: math.NaN()},
		{Duration: math.Inf(1)},
		{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if _, err := json.Marshal(c); err == nil {
			t.Fatalf("json.Marshal accepts %+v", c)
		}
		if _, err := appendConnection(nil, c); err == nil {
			t.Errorf("appendConnection accepts %+v", c)
		}
		var buf bytes.Buffer
		if err := NewWriter(&buf, JSON).Connection(c); err == nil || buf.Len() != 0 {
			t.Errorf("Writer.Connection(%+v): err %v, wrote %q", c, err, buf.String())
		}
	}
}

func FuzzJSONMatchesMarshal(f *testing.F) {
	f.Add("heartbleed", "10.0.0.1:443", "<&>\u2028", 0.25, int64(7))
	f.Add("\xff\x00", "", "\"\\", 1e-9, int64(-1))
	f.Fuzz(func(t *testing.T, s1, s2, s3 string, d float64, n int64) {
		c := &Connection{Type: "connection", Time: time.Unix(n%(1<<35), n%1e9).UTC(),
			Flow: FlowRef{ID: uint64(n), Src: s1, Dst: s2, SNI: s3}, BytesUp: n, Duration: d,
			Verdict: s1, Reason: s2, Rule: s3, JA4: s1, Anomalies: []string{s2, s3}}
		a := &Alert{Type: "alert", Time: c.Time, Description: s1, Severity: s2, Method: &Method{Ref: s3},
			Ref: []string{s1}, Event: s2, Rule: s3, Action: s1, Flow: c.Flow}
		for _, v := range []any{c, a} {
			want, werr := json.Marshal(v)
			var got []byte
			var err error
			switch v := v.(type) {
			case *Connection:
				got, err = appendConnection(nil, v)
			case *Alert:
				got, err = appendAlert(nil, v)
			}
			if (err != nil) != (werr != nil) {
				t.Fatalf("%T: error %v, json.Marshal's %v", v, err, werr)
			}
			if err == nil && !bytes.Equal(got, want) {
				t.Fatalf("%T:\n got %s\nwant %s", v, got, want)
			}
		}
	})
}

// TestHoldWritesOnce: records written while held reach the output in
// one write, at the last Release; unheld, each record is written (and
// visible) at once.
func TestHoldWritesOnce(t *testing.T) {
	var out countingWriter
	w := NewWriter(&out, JSON)
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	if err := w.Connection(&Connection{Time: now, Verdict: "pass"}); err != nil {
		t.Fatal(err)
	}
	if out.writes != 1 {
		t.Fatalf("unheld record: %d writes, want 1", out.writes)
	}
	w.Hold()
	w.Hold()
	for range 5 {
		if err := w.Connection(&Connection{Time: now, Verdict: "pass"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Alert(&Alert{Time: now, Description: "held too"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Release(); err != nil || out.writes != 1 {
		t.Fatalf("after the inner Release: err %v, %d writes, want 1", err, out.writes)
	}
	if err := w.Release(); err != nil || out.writes != 2 {
		t.Fatalf("after the last Release: err %v, %d writes, want 2", err, out.writes)
	}
	lines := strings.Split(strings.TrimSuffix(out.buf.String(), "\n"), "\n")
	if len(lines) != 7 {
		t.Fatalf("%d lines, want 7:\n%s", len(lines), out.buf.String())
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not JSON: %s", l)
		}
	}
	if w.Release() != nil || out.writes != 2 {
		t.Fatalf("an unmatched Release wrote or failed: %d writes", out.writes)
	}
}

type countingWriter struct {
	buf    bytes.Buffer
	writes int
	chunks [][]byte
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	c.chunks = append(c.chunks, bytes.Clone(p))
	return c.buf.Write(p)
}

func BenchmarkConnectionRecord(b *testing.B) {
	c := &Connection{Time: time.Now(), Flow: FlowRef{ID: 12345, Src: "127.0.0.1:45678", Dst: "127.0.0.1:8443", SNI: "bench.example"},
		BytesUp: 657, BytesDown: 1030, Duration: 0.000412, Verdict: "pass", Version: "TLS 1.2",
		JA3: "771,49195-49199,0-23-65281-10-11-35-16-5-13,29-23-24,0", JA4: "t12d1909h2_d83cc789557e_7af1ed941c26"}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendConnection(buf[:0], c)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(c)
		}
	})
}

// TestReleaseReportsTheFailedFlush: a held record that cannot be written
// fails at Release, once; the writes after it return the error.
func TestReleaseReportsTheFailedFlush(t *testing.T) {
	w := NewWriter(failingWriter{}, JSON)
	w.Hold()
	if err := w.Connection(&Connection{Verdict: "pass"}); err != nil {
		t.Fatalf("held write: %v (nothing was written yet)", err)
	}
	if err := w.Release(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Release: %v, want the write's error", err)
	}
	if err := w.Connection(&Connection{Verdict: "pass"}); err == nil {
		t.Fatal("a write after the failure succeeded")
	}
	w.Hold()
	if err := w.Release(); err != nil {
		t.Fatalf("a Release with nothing to flush reported %v again", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestHeldWritesAreWholeLines: records held beyond the buffer's size go
// out in several writes, each of whole lines.
func TestHeldWritesAreWholeLines(t *testing.T) {
	var out countingWriter
	w := NewWriter(&out, JSON)
	w.Hold()
	const n = 200
	for i := range n {
		c := &Connection{Verdict: "pass", Reason: strings.Repeat("x", i*7), Flow: FlowRef{ID: uint64(i)}}
		if err := w.Connection(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Release(); err != nil {
		t.Fatal(err)
	}
	if out.writes < 2 {
		t.Fatalf("%d writes for %d bytes: the test needs records beyond one buffer", out.writes, out.buf.Len())
	}
	for i, chunk := range out.chunks {
		if !bytes.HasSuffix(chunk, []byte("\n")) {
			t.Fatalf("write %d ends mid-line: ...%q", i, chunk[max(0, len(chunk)-40):])
		}
	}
	if got := strings.Count(out.buf.String(), "\n"); got != n {
		t.Fatalf("%d lines, want %d", got, n)
	}
}
