package dissect

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"
)

// recFrame feeds stream to a new Framer of dir in pieces that end at cuts
// (increasing positions inside stream), as the pump does: the unconsumed
// bytes plus each new piece. It checks that every unit's bytes are the
// stream's bytes at the unit's offsets and returns the units in a form that
// does not depend on the split: application_data chunks are folded into one
// line per record, written when the payload is complete.
func recFrame(t testing.TB, dir Direction, stream []byte, cuts []int) []string {
	t.Helper()
	f := NewFramer(dir)
	var lines []string
	var pending []byte
	fed := 0
	payload := 0 // application_data payload bytes seen of the current record
	failed := false
	feed := func(end int) {
		if failed {
			return
		}
		pending = append(pending, stream[fed:end]...)
		fed = end
		for {
			before := f.Offset()
			u, n, err := f.Next(pending)
			if err != nil {
				lines = append(lines, "error "+err.Error())
				failed = true
				return
			}
			if u.Kind == NeedMore {
				return
			}
			if f.Offset() != before+int64(n) {
				t.Fatalf("offset went from %d to %d after consuming %d", before, f.Offset(), n)
			}
			switch u.Kind {
			case UnitRecord, UnitSSLv2, UnitHeader:
				if !bytes.Equal(u.Raw, stream[u.Start:u.Start+int64(len(u.Raw))]) || len(u.Raw) != n || u.Start != before {
					t.Fatalf("%s unit at %d: raw of %d bytes does not match the stream (consumed %d)", u.Kind, u.Start, len(u.Raw), n)
				}
				if u.Kind != UnitHeader {
					lines = append(lines, fmt.Sprintf("%s %s %s len=%d @%d msg=%d", u.Kind, u.Header.Type, VersionName(u.Header.Version), u.Header.Length, u.Start, u.SSLv2.MsgType))
				} else if payload = 0; u.Header.Length == 0 {
					lines = append(lines, fmt.Sprintf("appdata len=0 @%d", u.Start))
				}
			case UnitChunk:
				at := u.Start + HeaderLen + int64(u.Offset)
				if u.Offset != payload || !bytes.Equal(u.Fragment, stream[at:at+int64(len(u.Fragment))]) || len(u.Fragment) != n {
					t.Fatalf("chunk at payload offset %d (want %d) does not match the stream", u.Offset, payload)
				}
				payload += n
				if payload == u.Header.Length {
					lines = append(lines, fmt.Sprintf("appdata len=%d @%d", u.Header.Length, u.Start))
				}
			default:
				t.Fatalf("framer returned a %s unit", u.Kind)
			}
			pending = pending[n:]
		}
	}
	for _, c := range cuts {
		feed(c)
	}
	feed(len(stream))
	return lines
}

// recRandomRecords returns n records of random types, versions and lengths,
// with some at the length cap.
func recRandomRecords(r *rand.Rand, n int, maxLen int) []byte {
	var b []byte
	for range n {
		t := ContentType(20 + r.IntN(5))
		v := VersionSSL30 + uint16(r.IntN(4))
		var length int
		switch r.IntN(6) {
		case 0:
			length = 0
		case 1:
			length = 1 + r.IntN(4)
		case 2:
			length = maxLen
		default:
			length = r.IntN(maxLen + 1)
		}
		if t == TypeHandshake && length == 0 {
			length = 4
		}
		b = append(b, recRecord(t, v, recBytes(length, byte(r.IntN(256))))...)
	}
	return b
}

func recRandomCuts(r *rand.Rand, n, pieces int) []int {
	cuts := make([]int, 0, pieces)
	for range pieces {
		cuts = append(cuts, r.IntN(n+1))
	}
	slices.Sort(cuts)
	return cuts
}

func recOneByteCuts(n int) []int {
	cuts := make([]int, n)
	for i := range cuts {
		cuts[i] = i
	}
	return cuts
}

func recCheckSplits(t *testing.T, dir Direction, stream []byte, allTwoWay bool) {
	t.Helper()
	want := recFrame(t, dir, stream, nil)
	if len(want) == 0 {
		t.Fatal("the stream gave no unit")
	}
	if got := recFrame(t, dir, stream, recOneByteCuts(len(stream))); !slices.Equal(got, want) {
		t.Fatalf("one byte at a time:\n%q\nwant\n%q", got, want)
	}
	r := rand.New(rand.NewPCG(1, uint64(len(stream))))
	for i := range 300 {
		cuts := recRandomCuts(r, len(stream), 1+r.IntN(40))
		if got := recFrame(t, dir, stream, cuts); !slices.Equal(got, want) {
			t.Fatalf("random split %d at %v:\n%q\nwant\n%q", i, cuts, got, want)
		}
	}
	if allTwoWay {
		for c := 0; c <= len(stream); c++ {
			if got := recFrame(t, dir, stream, []int{c}); !slices.Equal(got, want) {
				t.Fatalf("split at %d:\n%q\nwant\n%q", c, got, want)
			}
		}
	}
}

func TestFramerSplits(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	t.Run("small records, every two-way split", func(t *testing.T) {
		recCheckSplits(t, Up, recRandomRecords(r, 60, 40), true)
	})
	t.Run("records up to the cap", func(t *testing.T) {
		recCheckSplits(t, Down, recRandomRecords(r, 12, MaxRecordLength), false)
	})
	t.Run("ends with an error", func(t *testing.T) {
		s := append(recRandomRecords(r, 20, 300), 22, 3, 3, 0x48, 0x01)
		want := recFrame(t, Up, s, nil)
		if last := want[len(want)-1]; !bytes.Contains([]byte(last), []byte(AnomalyInvalidRecordLength)) {
			t.Fatalf("last unit %q, want an invalid_record_length error", last)
		}
		recCheckSplits(t, Up, s, true)
	})
}

func TestFramerManyRecordsInOneBuffer(t *testing.T) {
	var stream []byte
	for i := range 1000 {
		stream = append(stream, recRecord(TypeAlert, VersionTLS12, []byte{1, byte(i)})...)
	}
	f := NewFramer(Up)
	buf := stream
	for i := range 1000 {
		u, n, err := f.Next(buf)
		if err != nil || u.Kind != UnitRecord || n != 7 || u.Fragment[1] != byte(i) || u.Start != int64(7*i) {
			t.Fatalf("record %d: %+v, %d, %v", i, u, n, err)
		}
		buf = buf[n:]
	}
	if u, n, err := f.Next(buf); u.Kind != NeedMore || n != 0 || err != nil {
		t.Fatalf("after the last record: %s %d %v", u.Kind, n, err)
	}
}

// No strict prefix of a record that rules judge is returned as complete;
// an application_data record gives its header at 5 bytes and nothing else.
func TestFramerNoStrictPrefixIsComplete(t *testing.T) {
	records := [][]byte{
		recRecord(TypeHandshake, VersionTLS10, recMsg(1, recBytes(300, 1))),
		recRecord(TypeAlert, VersionTLS12, []byte{2, 40}),
		recRecord(TypeChangeCipherSpec, VersionTLS12, []byte{1}),
		recRecord(TypeHeartbeat, VersionTLS12, recBytes(16368, 3)),
		recRecord(TypeApplicationData, VersionTLS12, recBytes(1000, 4)),
		recRecord(TypeHandshake, VersionTLS12, nil),
	}
	for _, rec := range records {
		for p := range len(rec) {
			f := NewFramer(Up)
			f.mode = modeTLS
			u, n, err := f.Next(rec[:p])
			if err != nil {
				t.Fatalf("%s prefix %d: %v", ContentType(rec[0]), p, err)
			}
			if ContentType(rec[0]) == TypeApplicationData && p >= HeaderLen {
				if u.Kind != UnitHeader || n != HeaderLen {
					t.Fatalf("application_data prefix %d: %s consumed %d", p, u.Kind, n)
				}
				continue
			}
			if u.Kind != NeedMore || n != 0 {
				t.Fatalf("%s prefix %d of %d: %s consumed %d", ContentType(rec[0]), p, len(rec), u.Kind, n)
			}
		}
		f := NewFramer(Up)
		if u, n, _ := f.Next(rec); u.Kind == NeedMore || (n != len(rec) && u.Kind != UnitHeader) {
			t.Fatalf("%s whole record: %s consumed %d of %d", ContentType(rec[0]), u.Kind, n, len(rec))
		}
	}
}

func TestFramerApplicationDataStreams(t *testing.T) {
	rec := recRecord(TypeApplicationData, VersionTLS12, recBytes(16384, 9))
	f := NewFramer(Down)
	// The header alone is enough.
	u, n, err := f.Next(rec[:HeaderLen])
	if err != nil || u.Kind != UnitHeader || n != HeaderLen || u.Header.Length != 16384 || len(u.Raw) != HeaderLen || u.Fragment != nil {
		t.Fatalf("header: %+v %d %v", u.Kind, n, err)
	}
	if f.PayloadLeft() != 16384 {
		t.Fatalf("PayloadLeft %d", f.PayloadLeft())
	}
	if u, n, _ := f.Next(nil); u.Kind != NeedMore || n != 0 {
		t.Fatalf("no bytes: %s %d", u.Kind, n)
	}
	// A chunk of whatever is there.
	u, n, _ = f.Next(rec[HeaderLen : HeaderLen+1000])
	if u.Kind != UnitChunk || n != 1000 || u.Offset != 0 || u.Start != 0 || u.Header.Type != TypeApplicationData {
		t.Fatalf("first chunk: %s %d offset %d", u.Kind, n, u.Offset)
	}
	// The proxy splices 10,000 bytes without showing them.
	if err := f.Skip(10000); err != nil {
		t.Fatal(err)
	}
	if err := f.Skip(5385); !errors.Is(err, ErrSkipTooFar) {
		t.Fatalf("skip past the record: %v", err)
	}
	if err := f.Skip(-1); !errors.Is(err, ErrSkipTooFar) {
		t.Fatalf("negative skip: %v", err)
	}
	// The rest comes with the next record behind it: the chunk stops at
	// the record's end.
	next := recRecord(TypeAlert, VersionTLS12, []byte{1, 0})
	buf := append(slices.Clone(rec[HeaderLen+11000:]), next...)
	u, n, _ = f.Next(buf)
	if u.Kind != UnitChunk || n != 5384 || u.Offset != 11000 || f.PayloadLeft() != 0 {
		t.Fatalf("last chunk: %s %d offset %d left %d", u.Kind, n, u.Offset, f.PayloadLeft())
	}
	u, n, _ = f.Next(buf[n:])
	if u.Kind != UnitRecord || u.Header.Type != TypeAlert || n != len(next) || u.Start != int64(len(rec)) {
		t.Fatalf("record after: %s %d start %d", u.Kind, n, u.Start)
	}
	if f.Offset() != int64(len(rec)+len(next)) {
		t.Fatalf("offset %d", f.Offset())
	}
}

func TestFramerEmptyApplicationData(t *testing.T) {
	s := append(recRecord(TypeApplicationData, VersionTLS12, nil), recRecord(TypeAlert, VersionTLS12, []byte{1, 0})...)
	f := NewFramer(Up)
	u, n, _ := f.Next(s)
	if u.Kind != UnitHeader || n != HeaderLen || f.PayloadLeft() != 0 {
		t.Fatalf("%s %d", u.Kind, n)
	}
	if u, _, _ := f.Next(s[n:]); u.Kind != UnitRecord {
		t.Fatalf("then %s", u.Kind)
	}
}

// Units alias the caller's buffer and cannot be appended to over it.
func TestFramerZeroCopy(t *testing.T) {
	buf := append(recRecord(TypeHandshake, VersionTLS12, recMsg(2, recBytes(50, 1))), recRecord(TypeApplicationData, VersionTLS12, recBytes(70, 2))...)
	f := NewFramer(Down)
	u, n, _ := f.Next(buf)
	if unsafe.SliceData(u.Raw) != &buf[0] || unsafe.SliceData(u.Fragment) != &buf[HeaderLen] {
		t.Fatal("record is a copy")
	}
	if cap(u.Fragment) != len(u.Fragment) || cap(u.Raw) != len(u.Raw) {
		t.Fatal("record slices reach past the record")
	}
	h, k, _ := f.Next(buf[n:])
	c, _, _ := f.Next(buf[n+k:])
	if unsafe.SliceData(h.Raw) != &buf[n] || unsafe.SliceData(c.Fragment) != &buf[n+HeaderLen] || cap(c.Fragment) != 70 {
		t.Fatal("application data is a copy")
	}
}
