package proxy

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// BenchmarkRecordStream streams full-size TLS application-data records
// (16 KiB + 256 bytes of payload, as a cipher's output) one way through
// the proxy, on one connection, with:
//
//   - pass: the pass-through inspector, every byte read and written in
//     user space;
//   - records: a record-walking inspector that judges each header and
//     passes its payload (Result.Pass), as the TLS inspection does: the
//     payloads are spliced, headers are peeked at;
//   - bypass: the connection bypassed at accept, everything spliced.
//
// Sender, proxy and receiver share the process, so the throughput is
// what the three leave each other; compare the sub-benchmarks with each
// other. Profile one with
//
//	go test -run '^$' -bench 'RecordStream/records' -benchtime 2s -cpuprofile /tmp/cpu.out ./proxy/
//	go tool pprof -top /tmp/cpu.out
func BenchmarkRecordStream(b *testing.B) {
	for _, bc := range []struct {
		name string
		f    inspect.Factory
	}{
		{"pass", inspect.PassThrough{}},
		{"records", &tlsPass{}},
		{"bypass", bypassFactory{}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			benchStream(b, bc.f)
		})
	}
}

// benchRecord is the payload size of the streamed records.
const benchRecord = 1<<14 + 256

func benchStream(b *testing.B, f inspect.Factory) {
	received := make(chan int64, 1)
	upstream := serveTCP(b, func(c *net.TCPConn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, readerOnly{c})
		received <- n
	})
	p, addr := startIn(b, upstream, Config{Factory: f})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// 64 records in one buffer: a few large writes, as a TLS stack
	// writing ahead does.
	rec := make([]byte, 5+benchRecord)
	rec[0], rec[1], rec[2] = 23, 3, 3
	binary.BigEndian.PutUint16(rec[3:5], benchRecord)
	for i := 5; i < len(rec); i++ {
		rec[i] = byte(i * 31)
	}
	var chunk []byte
	for range 64 {
		chunk = append(chunk, rec...)
	}
	b.SetBytes(int64(len(rec)))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		n := min(64, b.N-i)
		if _, err := c.Write(chunk[:n*len(rec)]); err != nil {
			b.Fatal(err)
		}
		i += n
	}
	c.(*net.TCPConn).CloseWrite()
	var got int64
	select {
	case got = <-received:
	case <-time.After(time.Minute):
		b.Fatal("the receiver never saw the end")
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if want := int64(b.N) * int64(len(rec)); got != want {
		b.Fatalf("received %d bytes, sent %d", got, want)
	}
	b.ReportMetric(float64(got)*8/elapsed.Seconds()/1e9, "Gbit/s")
	b.ReportMetric(float64(p.pipes.spliced.Load())/float64(got), "spliced/byte")
}

// readerOnly hides io.WriterTo/ReaderFrom, so that io.Copy reads into a
// user buffer instead of splicing: the receiver costs the same whatever
// the proxy does.
type readerOnly struct{ io.Reader }

// bypassFactory bypasses every connection at accept.
type bypassFactory struct{}

func (bypassFactory) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return passAll{}, inspect.Decision{Verdict: inspect.Bypass, Reason: "benchmark"}
}
