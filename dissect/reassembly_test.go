package dissect

import (
	"bytes"
	"slices"
	"testing"
	"unsafe"
)

// recUnits runs Next on dir with buf until NeedMore or an error and
// returns the units; it returns the bytes not consumed. The bodies of
// reassembled messages are cloned (the Conn reuses its buffer).
func recUnits(t *testing.T, c *Conn, dir Direction, buf []byte) ([]Unit, []byte, error) {
	t.Helper()
	var out []Unit
	for {
		u, n, err := c.Next(dir, buf)
		if err != nil || u.Kind == NeedMore {
			return out, buf, err
		}
		if u.Kind == UnitMessage && u.Msg.Reassembled {
			u.Msg.Raw = slices.Clone(u.Msg.Raw)
			u.Msg.Body = u.Msg.Raw[4:]
		}
		u.Anomalies = slices.Clone(u.Anomalies)
		out = append(out, u)
		buf = buf[n:]
	}
}

func recMessages(units []Unit) []Message {
	var out []Message
	for _, u := range units {
		if u.Kind == UnitMessage {
			out = append(out, u.Msg)
		}
	}
	return out
}

func recAnomalyNames(units []Unit) []string {
	var out []string
	for _, u := range units {
		for _, a := range u.Anomalies {
			out = append(out, a.Name)
		}
	}
	return out
}

func TestReassemblySeveralMessagesInOneRecord(t *testing.T) {
	m1, m2, m3 := recMsg(2, recBytes(70, 1)), recMsg(11, recBytes(900, 2)), recMsg(14, nil)
	rec := recRecord(TypeHandshake, VersionTLS12, slices.Concat(m1, m2, m3))
	c := NewConn(Limits{})
	units, rest, err := recUnits(t, c, Down, rec)
	if err != nil || len(rest) != 0 {
		t.Fatal(err, len(rest))
	}
	if len(units) != 4 || units[0].Kind != UnitRecord {
		t.Fatalf("%d units", len(units))
	}
	off := HeaderLen
	for i, want := range [][]byte{m1, m2, m3} {
		m := units[i+1].Msg
		if units[i+1].Kind != UnitMessage || m.Reassembled || !bytes.Equal(m.Raw, want) || m.Type != want[0] || m.Length != len(want)-4 {
			t.Fatalf("message %d: %+v", i, m)
		}
		// In place, not copied.
		if unsafe.SliceData(m.Raw) != &rec[off] || cap(m.Raw) != len(m.Raw) {
			t.Fatalf("message %d was copied", i)
		}
		off += len(want)
		if units[i+1].Start != 0 {
			t.Fatalf("message %d starts at %d", i, units[i+1].Start)
		}
	}
	if _, inc := c.Incomplete(Down); inc {
		t.Fatal("incomplete after whole messages")
	}
}

// A message spread over records, cut everywhere (in its header and in its
// body), is reassembled to the same bytes; Incomplete tells where it
// began until its last byte.
func TestReassemblyAcrossRecords(t *testing.T) {
	first := recMsg(2, recBytes(40, 5))
	big := recMsg(11, recBytes(3000, 7))
	payload := append(slices.Clone(first), big...)
	for _, size := range []int{1, 2, 3, 5, 41, 44, 45, 46, 1000, 3003, len(payload)} {
		c := NewConn(Limits{})
		var msgs []Unit
		var starts []int64
		var off int64
		for p := 0; p < len(payload); p += size {
			rec := recRecord(TypeHandshake, VersionTLS12, payload[p:min(p+size, len(payload))])
			starts = append(starts, off)
			off += int64(len(rec))
			units, rest, err := recUnits(t, c, Down, rec)
			if err != nil || len(rest) != 0 || units[0].Kind != UnitRecord {
				t.Fatalf("size %d: %v, %d left", size, err, len(rest))
			}
			for _, u := range units[1:] {
				msgs = append(msgs, u)
			}
			seen := min(p+size, len(payload))
			start, inc := c.Incomplete(Down)
			if want := seen != len(first) && seen != len(payload); inc != want {
				t.Fatalf("size %d after %d bytes: incomplete %v", size, seen, inc)
			}
			if want := starts[0]; inc && seen > len(first) {
				want = starts[len(first)/size]
				if start != want {
					t.Fatalf("size %d after %d bytes: incomplete from %d, want %d", size, seen, start, want)
				}
			} else if inc && start != want {
				t.Fatalf("size %d after %d bytes: incomplete from %d, want %d", size, seen, start, want)
			}
		}
		if len(msgs) != 2 || !bytes.Equal(msgs[0].Msg.Raw, first) || !bytes.Equal(msgs[1].Msg.Raw, big) {
			t.Fatalf("size %d: %d messages", size, len(msgs))
		}
		spans := len(first)/size != (len(payload)-1)/size
		if msgs[1].Msg.Reassembled != spans {
			t.Fatalf("size %d: reassembled %v", size, msgs[1].Msg.Reassembled)
		}
		if want := starts[len(first)/size]; msgs[1].Start != want {
			t.Fatalf("size %d: big message from %d, want %d", size, msgs[1].Start, want)
		}
	}
}

func TestReassemblyIncomplete(t *testing.T) {
	msg := recMsg(11, recBytes(100, 1))
	r1 := recRecord(TypeHandshake, VersionTLS12, append(recMsg(2, recBytes(10, 0)), msg[:50]...))
	r2 := recRecord(TypeHandshake, VersionTLS12, msg[50:])
	c := NewConn(Limits{})
	units, _, _ := recUnits(t, c, Down, r1)
	if len(recMessages(units)) != 1 {
		t.Fatalf("%d messages from the first record", len(recMessages(units)))
	}
	if start, inc := c.Incomplete(Down); !inc || start != 0 {
		t.Fatalf("after the first record: %d %v", start, inc)
	}
	units, _, _ = recUnits(t, c, Down, r2)
	if m := recMessages(units); len(m) != 1 || !bytes.Equal(m[0].Raw, msg) || !m[0].Reassembled || units[1].Start != 0 {
		t.Fatalf("second record: %+v", m)
	}
	if _, inc := c.Incomplete(Down); inc {
		t.Fatal("still incomplete")
	}
}

func TestReassemblyCaps(t *testing.T) {
	l := Limits{MaxClientHello: 100, MaxMessage: 200}
	hello := recMsg(1, recBytes(101, 1)) // one over the ClientHello cap
	cert := recMsg(11, recBytes(200, 2)) // at the cap of other messages
	big := recMsg(11, recBytes(201, 3))  // over it
	after := recMsg(20, recBytes(12, 4))

	t.Run("client hello over its cap", func(t *testing.T) {
		c := NewConn(l)
		stream := slices.Concat(
			recRecord(TypeHandshake, VersionTLS10, hello[:60]),
			recRecord(TypeHandshake, VersionTLS10, slices.Concat(hello[60:], after)))
		units, rest, err := recUnits(t, c, Up, stream)
		if err != nil || len(rest) != 0 {
			t.Fatal(err)
		}
		msgs := recMessages(units)
		if len(msgs) != 2 || !msgs[0].TooLarge || msgs[0].Type != 1 || msgs[0].Length != 101 || msgs[0].Body != nil {
			t.Fatalf("%+v", msgs)
		}
		if !bytes.Equal(msgs[1].Raw, after) {
			t.Fatal("the message after the skipped one is wrong")
		}
		if got := recAnomalyNames(units); !slices.Equal(got, []string{AnomalyHandshakeMessageTooLarge}) {
			t.Fatalf("anomalies %q", got)
		}
		// The too-large message is reported with its first record and
		// never held.
		if units[1].Kind != UnitMessage || !units[1].Msg.TooLarge {
			t.Fatalf("second unit %s", units[1].Kind)
		}
	})
	t.Run("other messages", func(t *testing.T) {
		c := NewConn(l)
		stream := slices.Concat(
			recRecord(TypeHandshake, VersionTLS12, cert[:100]),
			recRecord(TypeHandshake, VersionTLS12, slices.Concat(cert[100:], big[:10])),
			recRecord(TypeHandshake, VersionTLS12, slices.Concat(big[10:], after)))
		units, _, _ := recUnits(t, c, Down, stream)
		msgs := recMessages(units)
		if len(msgs) != 3 || msgs[0].TooLarge || !bytes.Equal(msgs[0].Raw, cert) || !msgs[1].TooLarge || !bytes.Equal(msgs[2].Raw, after) {
			t.Fatalf("%+v", msgs)
		}
		// Memory: the buffer never outgrew the message at the cap.
		if cap(c.dirs[Down].r.buf) > 4+l.MaxMessage {
			t.Fatalf("reassembly buffer of %d bytes", cap(c.dirs[Down].r.buf))
		}
	})
	t.Run("a header alone allocates nothing large", func(t *testing.T) {
		c := NewConn(Limits{})
		// A Certificate header declaring 256 KiB, then 10 bytes.
		hdr := []byte{11, 0x04, 0x00, 0x00}
		units, _, _ := recUnits(t, c, Down, recRecord(TypeHandshake, VersionTLS12, append(hdr, recBytes(10, 0)...)))
		if len(recMessages(units)) != 0 {
			t.Fatal("message from a header")
		}
		if n := cap(c.dirs[Down].r.buf); n > 1024 {
			t.Fatalf("%d bytes allocated for 14 received", n)
		}
	})
}

// A record of another type inside a message, and the end of the stream
// inside one, are handshake_length_mismatch; the message is dropped.
func TestReassemblyInterrupted(t *testing.T) {
	msg := recMsg(11, recBytes(100, 1))
	next := recMsg(12, recBytes(20, 2))
	for _, other := range [][]byte{
		recRecord(TypeAlert, VersionTLS12, []byte{2, 40}),
		recRecord(TypeChangeCipherSpec, VersionTLS12, []byte{1}),
		recRecord(TypeHeartbeat, VersionTLS12, slices.Concat([]byte{1, 0, 1, 0}, recBytes(16, 0))),
		recRecord(TypeApplicationData, VersionTLS12, recBytes(10, 0)),
	} {
		c := NewConn(Limits{})
		stream := slices.Concat(
			recRecord(TypeHandshake, VersionTLS12, msg[:30]),
			other,
			recRecord(TypeHandshake, VersionTLS12, next))
		units, _, err := recUnits(t, c, Down, stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := recAnomalyNames(units); !slices.Equal(got, []string{AnomalyHandshakeLengthMismatch}) {
			t.Fatalf("%s: anomalies %q", ContentType(other[0]), got)
		}
		if units[1].Header.Type != ContentType(other[0]) || len(units[1].Anomalies) != 1 {
			t.Fatalf("%s: the anomaly is not on the interrupting record", ContentType(other[0]))
		}
		if ContentType(other[0]) == TypeChangeCipherSpec {
			continue // the rest is encrypted
		}
		if m := recMessages(units); len(m) != 1 || !bytes.Equal(m[0].Raw, next) {
			t.Fatalf("%s: messages %+v", ContentType(other[0]), m)
		}
	}
	// A split message header counts too.
	c := NewConn(Limits{})
	units, _, _ := recUnits(t, c, Down, slices.Concat(recRecord(TypeHandshake, VersionTLS12, msg[:2]), recRecord(TypeAlert, VersionTLS12, []byte{1, 0})))
	if got := recAnomalyNames(units); !slices.Equal(got, []string{AnomalyHandshakeLengthMismatch}) {
		t.Fatalf("split header: %q", got)
	}
}

func TestReassemblyEOF(t *testing.T) {
	msg := recMsg(11, recBytes(100, 1))
	c := NewConn(Limits{})
	units, rest, _ := recUnits(t, c, Down, recRecord(TypeHandshake, VersionTLS12, msg[:60]))
	if len(recMessages(units)) != 0 {
		t.Fatal("message")
	}
	got := c.EOF(Down, rest)
	if len(got) != 1 || got[0].Name != AnomalyHandshakeLengthMismatch || got[0].Direction != Down {
		t.Fatalf("EOF: %v", got)
	}
	// A record cut short.
	c = NewConn(Limits{})
	stream := recRecord(TypeHandshake, VersionTLS12, msg)
	_, rest, _ = recUnits(t, c, Up, stream[:50])
	if got := c.EOF(Up, rest); len(got) != 1 || got[0].Name != AnomalyTruncatedRecord {
		t.Fatalf("EOF in a record: %v", got)
	}
	// An application_data record cut short.
	c = NewConn(Limits{})
	_, rest, _ = recUnits(t, c, Up, recRecord(TypeApplicationData, VersionTLS12, recBytes(100, 0))[:50])
	if got := c.EOF(Up, rest); len(got) != 1 || got[0].Name != AnomalyTruncatedRecord {
		t.Fatalf("EOF in application data: %v", got)
	}
	// A clean end.
	c = NewConn(Limits{})
	_, rest, _ = recUnits(t, c, Up, stream)
	if got := c.EOF(Up, rest); len(got) != 0 {
		t.Fatalf("clean EOF: %v", got)
	}
}

func TestZeroLengthHandshakeFragment(t *testing.T) {
	c := NewConn(Limits{})
	msg := recMsg(1, recBytes(50, 0))
	stream := slices.Concat(recRecord(TypeHandshake, VersionTLS10, msg[:20]), recRecord(TypeHandshake, VersionTLS10, nil), recRecord(TypeHandshake, VersionTLS10, msg[20:]))
	units, _, _ := recUnits(t, c, Up, stream)
	if got := recAnomalyNames(units); !slices.Equal(got, []string{AnomalyZeroLengthHandshake}) {
		t.Fatalf("anomalies %q", got)
	}
	// It does not break the message around it.
	if m := recMessages(units); len(m) != 1 || !bytes.Equal(m[0].Raw, msg) {
		t.Fatalf("%+v", m)
	}
}
