package dissect

import "testing"

// The framer sits on every byte the proxy forwards, so it must cost no
// garbage per record: a unit is a value of sub-slices of the caller's
// buffer. The benchmarks report allocations; this test fails when one
// creeps in.
func TestFramerDoesNotAllocate(t *testing.T) {
	var stream []byte
	for _, size := range []int{0, 1, 1 << 10, 16 << 10, MaxRecordLength} {
		stream = append(stream, recRecord(TypeApplicationData, VersionTLS12, recBytes(size, byte(size)))...)
	}
	// The records rules judge are returned whole, by the same path.
	stream = append(stream, recRecord(TypeAlert, VersionTLS12, []byte{1, 0})...)

	// feed frames the whole stream presented in reads of at most read
	// bytes, as the pump does, and returns the records framed. It
	// presents sub-slices of stream so that the test itself allocates
	// nothing either. With skip, payloads are spliced (Skip) instead of
	// returned as chunks.
	feed := func(f *Framer, read int, skip bool) int {
		records, pos, end := 0, 0, 0
		for pos < len(stream) {
			end = min(end+read, len(stream))
			for {
				if skip && f.PayloadLeft() > 0 {
					k := min(f.PayloadLeft(), end-pos)
					if k == 0 {
						break
					}
					if err := f.Skip(k); err != nil {
						panic(err)
					}
					pos += k
					continue
				}
				u, n, err := f.Next(stream[pos:end])
				if err != nil {
					panic(err) // AllocsPerRun's function cannot fail the test
				}
				if u.Kind == NeedMore {
					break
				}
				pos += n
				switch {
				case u.Kind == UnitChunk && skip:
					panic("a chunk of a payload being skipped")
				case u.Kind != UnitChunk:
					records++
				}
			}
		}
		return records
	}

	for _, tc := range []struct {
		name string
		read int
		skip bool
	}{
		{"whole stream", len(stream), false},
		{"4KiB reads", 4 << 10, false},
		{"1000-byte reads", 1000, false},
		{"1000-byte reads, payload skipped", 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFramer(Down)
			// A first pass outside the measure checks that the stream
			// frames as meant; the framer then carries on with the next
			// copy of the stream, as a connection carries on.
			if got := feed(f, tc.read, tc.skip); got != 6 {
				t.Fatalf("%d records framed, want 6", got)
			}
			if n := testing.AllocsPerRun(100, func() { feed(f, tc.read, tc.skip) }); n != 0 {
				t.Errorf("%v allocations per pass over 6 records, want 0", n)
			}
			if want := int64(len(stream)) * 102; f.Offset() != want {
				t.Errorf("offset %d after 102 passes, want %d", f.Offset(), want)
			}
		})
	}
}
