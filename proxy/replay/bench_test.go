package replay

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The benchmark capture is made by the benchmark: TLS sessions run once
// with crypto/tls over loopback, recorded write by write, then replicated
// with new addresses, ports and sequence numbers until the capture has
// the size asked for.
var benchSize = flag.String("replay.bench-size", "", "size of the generated benchmark capture (e.g. 64M, 1G; default 32M, or $HAKA_REPLAY_BENCH_SIZE)")

const defaultBenchSize = 32 << 20

func benchBytes(b *testing.B) int64 {
	s := *benchSize
	if s == "" {
		s = os.Getenv("HAKA_REPLAY_BENCH_SIZE")
	}
	if s == "" {
		return defaultBenchSize
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("bad benchmark size %q", s)
	}
	return n * mult
}

// chunk is one Write of a recorded session.
type chunk struct {
	side int // 0 client, 1 server
	data []byte
}

// recordingConn records what is written on a connection into a log
// shared by both ends, in the order the writes happen.
type recordingConn struct {
	net.Conn
	side int
	log  *sessionLog
}

type sessionLog struct {
	mu     sync.Mutex
	chunks []chunk
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.log.mu.Lock()
	c.log.chunks = append(c.log.chunks, chunk{c.side, append([]byte(nil), p...)})
	n, err := c.Conn.Write(p)
	c.log.mu.Unlock()
	return n, err
}

// sessionShape is a kind of session: a request, and a response written
// in pieces of a given size (which sets the TLS record sizes).
type sessionShape struct {
	request, response, write int
}

// shapes mix an API call, a page, an HTTP/2-framed object and a download.
var shapes = []sessionShape{
	{request: 350, response: 1200, write: 1200},
	{request: 520, response: 18000, write: 16384},
	{request: 420, response: 120000, write: 4096},
	{request: 380, response: 1500000, write: 16384},
}

// recordSessions runs one TLS session of each shape over loopback.
func recordSessions(tb testing.TB) [][]chunk {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench.test"},
		DNSNames: []string{"bench.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(der)
	pool.AddCert(leaf)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	var out [][]chunk
	for _, sh := range shapes {
		log := &sessionLog{}
		srvErr := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				srvErr <- err
				return
			}
			defer c.Close()
			tc := tls.Server(&recordingConn{Conn: c, side: 1, log: log}, &tls.Config{Certificates: []tls.Certificate{cert}})
			req := make([]byte, sh.request)
			if _, err := io.ReadFull(tc, req); err != nil {
				srvErr <- err
				return
			}
			body := make([]byte, sh.response)
			for off := 0; off < len(body); off += sh.write {
				if _, err := tc.Write(body[off:min(off+sh.write, len(body))]); err != nil {
					srvErr <- err
					return
				}
			}
			// The client's close_notify, then ours.
			io.Copy(io.Discard, tc)
			srvErr <- tc.Close()
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		tc := tls.Client(&recordingConn{Conn: c, side: 0, log: log}, &tls.Config{RootCAs: pool, ServerName: "bench.test"})
		if _, err := tc.Write(make([]byte, sh.request)); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(tc, make([]byte, sh.response)); err != nil {
			tb.Fatal(err)
		}
		tc.CloseWrite()
		if err := <-srvErr; err != nil {
			tb.Fatal(err)
		}
		tc.Close()
		out = append(out, log.chunks)
	}
	return out
}

// tmplSeg is a segment of a session template, its sequence numbers
// relative to the ISNs.
type tmplSeg struct {
	side     int
	flags    uint8
	seq, ack uint32
	payload  []byte
}

// segmentSession turns a recorded session into TCP segments: handshake,
// each write cut at the MSS, an ACK for every second segment (delayed
// ACK), and the FIN exchange.
func segmentSession(chunks []chunk) []tmplSeg {
	const mss = 1448
	var next [2]uint32
	var segs []tmplSeg
	emit := func(side int, flags uint8, p []byte) {
		segs = append(segs, tmplSeg{side, flags, next[side], next[1-side], p})
		next[side] += uint32(len(p))
		if flags&(flagSYN|flagFIN) != 0 {
			next[side]++
		}
	}
	emit(0, flagSYN, nil)
	emit(1, flagSYN|flagACK, nil)
	emit(0, flagACK, nil)
	unacked := [2]int{}
	for _, c := range chunks {
		for p := c.data; len(p) > 0; {
			n := min(len(p), mss)
			fl := uint8(flagACK)
			if n == len(p) {
				fl |= flagPSH
			}
			emit(c.side, fl, p[:n])
			p = p[n:]
			if unacked[c.side]++; unacked[c.side] == 2 {
				emit(1-c.side, flagACK, nil)
				unacked[c.side] = 0
			}
		}
	}
	emit(0, flagFIN|flagACK, nil)
	emit(1, flagFIN|flagACK, nil)
	emit(0, flagACK, nil)
	return segs
}

// countRecords counts the TLS records in a template, both ways.
func countRecords(segs []tmplSeg) int64 {
	var streams [2][]byte
	for _, s := range segs {
		streams[s.side] = append(streams[s.side], s.payload...)
	}
	var n int64
	for _, b := range streams {
		for off := 0; off+5 <= len(b); off += 5 + (int(b[off+3])<<8 | int(b[off+4])) {
			n++
		}
	}
	return n
}

// benchCapture is a generated capture.
type benchCapture struct {
	path    string
	size    int64
	records int64
	streams int64
}

var (
	benchOnce sync.Once
	benchCap  benchCapture
	benchErr  error
	benchDir  string
)

// generate writes about size bytes of capture: benchConcurrent sessions
// at a time, their packets interleaved, 5 µs apart.
func generate(tb testing.TB, path string, size int64) benchCapture {
	const concurrent = 32
	var tmpls [][]tmplSeg
	var tmplRecords []int64
	for _, chunks := range recordSessions(tb) {
		segs := segmentSession(chunks)
		tmpls = append(tmpls, segs)
		tmplRecords = append(tmplRecords, countRecords(segs))
	}
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	pw := pcapgo.NewWriterNanos(bw)
	if err := pw.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		tb.Fatal(err)
	}
	type live struct {
		tmpl []tmplSeg
		i    int
		ends [2]netip.AddrPort
		isn  [2]uint32
	}
	rng := mrand.New(mrand.NewPCG(7, 7))
	server := netip.MustParseAddrPort("198.51.100.10:443")
	var written, sessions, records int64
	ts := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var buf []byte
	start := func() *live {
		k := int(sessions % int64(len(tmpls)))
		sessions++
		records += tmplRecords[k]
		ip := [4]byte{10, byte(sessions >> 16), byte(sessions >> 8), byte(sessions)}
		port := uint16(1024 + sessions%60000)
		return &live{tmpl: tmpls[k], ends: [2]netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4(ip), port), server},
			isn: [2]uint32{rng.Uint32(), rng.Uint32()}}
	}
	var active []*live
	for len(active) < concurrent {
		active = append(active, start())
	}
	for len(active) > 0 {
		for i := 0; i < len(active); i++ {
			l := active[i]
			s := l.tmpl[l.i]
			l.i++
			seg := segment{src: l.ends[s.side], dst: l.ends[1-s.side], seq: l.isn[s.side] + s.seq, flags: s.flags, payload: s.payload}
			if s.flags&flagACK != 0 {
				seg.ack = l.isn[1-s.side] + s.ack
			}
			buf = encEthernet.frame(buf[:0], seg)
			if err := pw.WritePacket(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(buf), Length: len(buf)}, buf); err != nil {
				tb.Fatal(err)
			}
			written += pcapRecordHeader + int64(len(buf))
			ts = ts.Add(5 * time.Microsecond)
			if l.i == len(l.tmpl) {
				if written < size {
					active[i] = start()
				} else {
					active = append(active[:i], active[i+1:]...)
					i--
				}
			}
		}
	}
	if err := bw.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return benchCapture{path: path, size: written + pcapFileHeader, records: records, streams: sessions}
}

func benchmarkCapture(b *testing.B) benchCapture {
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp("", "haka-replay-bench")
		if benchErr != nil {
			return
		}
		t0 := time.Now()
		benchCap = generate(b, filepath.Join(benchDir, "bench.pcap"), benchBytes(b))
		fmt.Fprintf(os.Stderr, "generated %s: %d bytes, %d TLS sessions, %d records in %v\n",
			benchCap.path, benchCap.size, benchCap.streams, benchCap.records, time.Since(t0).Round(time.Millisecond))
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchCap
}

// TestMain removes the generated benchmark capture.
func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" && os.Getenv("HAKA_REPLAY_BENCH_KEEP") == "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// stockInspection is the inspection of `haka-proxy replay`: the TLS
// machine (tlssm) running the stock rules, without timers; alerts go to
// alerts, rule logs nowhere.
func stockInspection(tb testing.TB, alerts *output.Writer) (inspect.Factory, func()) {
	tb.Helper()
	// The rules' deadline is wall-clock time, which a loaded machine
	// stretches (a 1 GB replay evaluates tens of thousands of events):
	// what is measured here is throughput, not the deadline.
	engine, err := rules.New(rules.Options{Alerts: alerts, Deadline: time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	f, err := tlssm.NewFactory(tlssm.Options{NewHandler: engine.NewTLSHandler, NoTimers: true})
	if err != nil {
		engine.Close()
		tb.Fatal(err)
	}
	return f, engine.Close
}

// lineCounter counts the records written to it that contain each of
// its patterns.
type lineCounter struct {
	patterns [][]byte
	counts   []int64
}

func (c *lineCounter) Write(p []byte) (int, error) {
	for i, pat := range c.patterns {
		c.counts[i] += int64(bytes.Count(p, pat))
	}
	return len(p), nil
}

// BenchmarkReplay replays the generated capture as `haka-proxy replay`
// does: the TLS machine with the stock rules judges every stream, and
// the alert and connection lines are written (to nowhere). Every session
// must pass, inspected to its end: a TLS 1.3 connection line each, no
// alert, every byte forwarded.
func BenchmarkReplay(b *testing.B) {
	c := benchmarkCapture(b)
	b.SetBytes(c.size)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime(b)
	for range b.N {
		lines := &lineCounter{patterns: [][]byte{[]byte(`"type":"alert"`), []byte(`"version":"TLS1.3"`)}, counts: make([]int64, 2)}
		w := output.NewWriter(lines, output.JSON)
		f, done := stockInspection(b, w)
		var streams, bad int64
		var firstBad *StreamStats
		r, err := New(Options{Factory: f, Output: w, OnStream: func(s *StreamStats) {
			streams++
			if s.Decision.Verdict != inspect.Pass || s.Forwarded != s.Stream || s.Gaps != [2]int64{} || s.ContractViolations != 0 {
				if bad++; firstBad == nil {
					firstBad = s
				}
			}
		}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReplayFile(c.path); err != nil {
			b.Fatal(err)
		}
		done()
		if streams != c.streams || bad != 0 || lines.counts[0] != 0 || lines.counts[1] != c.streams {
			b.Fatalf("%d streams (%d not passed whole, the first %+v), %d alerts, %d TLS 1.3 lines; the capture has %d sessions",
				streams, bad, firstBad, lines.counts[0], lines.counts[1], c.streams)
		}
	}
	b.ReportMetric(float64(c.records*int64(b.N))/b.Elapsed().Seconds(), "records/s")
	reportCPU(b, cpu, c.size)
}

// cpuTime returns the processor time the process has used so far, user
// and system, all threads.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the processor time per gigabyte of capture since
// start: on a machine shared with other work, it says what the replay
// costs where its wall-clock time says mostly how busy the machine was.
func reportCPU(b *testing.B, start time.Duration, size int64) {
	used := cpuTime(b) - start
	b.ReportMetric(used.Seconds()/float64(b.N)/(float64(size)/(1<<30)), "cpu-s/GB")
}

// BenchmarkReplayWalker replays the generated capture through inspectors
// that only walk the TLS record headers (held until complete, bodies
// passed unseen): the cost of reading, decoding and reassembling, without
// the TLS machine and the rules.
func BenchmarkReplayWalker(b *testing.B) {
	c := benchmarkCapture(b)
	b.SetBytes(c.size)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime(b)
	var records int64
	for range b.N {
		w := &recordWalker{}
		var streams int64
		r, err := New(Options{Factory: w, OnStream: func(*StreamStats) { streams++ }})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReplayFile(c.path); err != nil {
			b.Fatal(err)
		}
		got := w.records[0] + w.records[1]
		if got != c.records || w.bad != [2]int64{} || streams != c.streams {
			b.Fatalf("walked %d records (%v bad) in %d streams, the capture has %d in %d", got, w.bad, streams, c.records, c.streams)
		}
		records += got
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
	reportCPU(b, cpu, c.size)
}

// BenchmarkTshark times `tshark -r FILE -Y tls -q` on the same capture,
// for comparison.
func BenchmarkTshark(b *testing.B) {
	if _, err := exec.LookPath("tshark"); err != nil {
		b.Skip("tshark not installed")
	}
	c := benchmarkCapture(b)
	b.SetBytes(c.size)
	b.ResetTimer()
	for range b.N {
		out, err := exec.Command("tshark", "-r", c.path, "-Y", "tls", "-q").CombinedOutput()
		if err != nil {
			b.Fatalf("tshark: %v: %s", err, out)
		}
	}
	b.ReportMetric(float64(c.records*int64(b.N))/b.Elapsed().Seconds(), "records/s")
}
