package dissect

import (
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// Framing an application_data record costs its header, whatever its size:
// the payload is handed back as one sub-slice, never read.
func BenchmarkFramerApplicationData(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			rec := recRecord(TypeApplicationData, VersionTLS12, make([]byte, size))
			f := NewFramer(Down)
			b.ReportAllocs()
			b.SetBytes(int64(len(rec)))
			for b.Loop() {
				_, n, _ := f.Next(rec)
				_, k, _ := f.Next(rec[n:])
				if n+k != len(rec) {
					b.Fatalf("consumed %d+%d of %d", n, k, len(rec))
				}
			}
		})
	}
}

// The same through Conn, in an encrypted session, with the payload
// spliced (Skip) as the proxy does once the header is judged.
func BenchmarkConnApplicationData(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10} {
		for _, skip := range []bool{false, true} {
			name := fmt.Sprintf("%dKiB", size>>10)
			if skip {
				name += "/skip"
			}
			b.Run(name, func(b *testing.B) {
				rec := recRecord(TypeApplicationData, VersionTLS12, make([]byte, size))
				c := NewConn(Limits{})
				c.dirs[Down].encrypted = true
				b.ReportAllocs()
				b.SetBytes(int64(len(rec)))
				for b.Loop() {
					u, n, _ := c.Next(Down, rec)
					if u.Kind != UnitHeader || !u.Encrypted {
						b.Fatalf("%s", u.Kind)
					}
					if skip {
						if err := c.Skip(Down, c.PayloadLeft(Down)); err != nil {
							b.Fatal(err)
						}
						continue
					}
					if _, k, _ := c.Next(Down, rec[n:]); n+k != len(rec) {
						b.Fatalf("consumed %d+%d of %d", n, k, len(rec))
					}
				}
			})
		}
	}
}

// recDrive feeds recorded chunks through a new Conn, as the pump does with
// reads, and returns the number of units.
func recDrive(b *testing.B, chunks []pcaptest.Chunk, l Limits) int {
	c := NewConn(l)
	var pending [2][]byte
	units := 0
	for _, ch := range chunks {
		dir := Down
		if ch.Up {
			dir = Up
		}
		buf := ch.Data
		if len(pending[dir]) > 0 {
			pending[dir] = append(pending[dir], ch.Data...)
			buf = pending[dir]
		}
		for {
			u, n, err := c.Next(dir, buf)
			if err != nil {
				b.Fatal(err)
			}
			if u.Kind == NeedMore {
				break
			}
			units++
			buf = buf[n:]
		}
		pending[dir] = append(pending[dir][:0], buf...)
	}
	return units
}

// A whole TLS session recorded from crypto/tls peers: handshake flights,
// one exchange, close_notify.
func BenchmarkHandshakeFlight(b *testing.B) {
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		b.Run(v.name, func(b *testing.B) {
			server, client := recTLSConfigs(b, v.version)
			chunks := recTLSSession(b, server, client)
			total := 0
			for _, ch := range chunks {
				total += len(ch.Data)
			}
			b.ReportAllocs()
			b.SetBytes(int64(total))
			for b.Loop() {
				recDrive(b, chunks, Limits{})
			}
		})
	}
}

// The 340 KB Certificate of zeek/tls-fragmented-handshake.pcap.gz,
// reassembled from 21 records (cap raised) or skipped (default cap).
func BenchmarkReassembleFragmentedCertificate(b *testing.B) {
	streams := recStreams(b, "zeek/tls-fragmented-handshake.pcap.gz")
	// Whole records per read, to measure reassembly rather than the
	// pump's buffering of a 400-segment stream.
	chunks := []pcaptest.Chunk{{Up: true, Data: streams[0].Payload(true)}, {Up: false, Data: streams[0].Payload(false)}}
	for _, raised := range []bool{false, true} {
		name, l := "skip", Limits{}
		if raised {
			name, l = "reassemble", Limits{MaxMessage: 512 << 10}
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(chunks[1].Data)))
			for b.Loop() {
				recDrive(b, chunks, l)
			}
		})
	}
}
