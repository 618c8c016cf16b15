package hardening

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
)

// The load test: HAKA_LOAD=1 go test -run TestLoad -timeout 30m ./internal/hardening/
//
// Three processes, so that each fits in the descriptor limit (20,000 per
// process here, which CAP_SYS_RESOURCE alone could raise): the clients in
// the test process, the backend in a child process (this test binary,
// run in the backend role), and haka-proxy in its own, which holds two
// descriptors per connection and so is what bounds the count.
const (
	// roleEnv, when set, makes the test binary a helper process of the
	// load test instead of running tests.
	roleEnv = "HAKA_HARDENING_ROLE"
	// flightEnv names the file of the recorded conversation both ends
	// replay.
	flightEnv = "HAKA_HARDENING_FLIGHT"

	// loadFDMargin is what the proxy keeps of its descriptor limit for
	// itself beyond the connections: standard streams, the listeners, the
	// poller, a metrics scrape, the bypass pipe pool.
	loadFDMargin = 200
	// maxStreamBytes bounds the payload of one direction of one load
	// connection; each draws its size from 1 byte to this.
	maxStreamBytes = 128 << 10
	// dialConcurrency bounds the connections being opened at once: more
	// only overflows the accept queues and waits for SYN retransmits.
	dialConcurrency = 256
	// settleWithin bounds the wait for the proxy to give back what the
	// load took, once every connection is closed: the Go runtime returns
	// freed memory to the system in the background, in minutes.
	settleWithin = 5 * time.Minute
	// rssTolerance is how far above its resident memory before the load
	// the proxy may stay once settled: memory the Go runtime keeps
	// (freed heap spans it has not returned yet, the descriptors of
	// the ~20,000 goroutines it ran, which it never frees) and the pools'
	// warm buffers. Measured: 45-50 MiB after 9,900 connections.
	rssTolerance = 64 << 20
	// heapTolerance is how far above its live heap before the load the
	// proxy's may stay once a collection has run after it: the Go runtime
	// keeps the descriptor of every goroutine it ran at once (about 450
	// bytes each, 9 MiB for 19,800) for reuse, and maps keep the buckets
	// they grew to.
	heapTolerance = 16 << 20
	// idlePipeFDs is what the proxy's pool of splice pipes may keep open
	// once the load is over: 64 empty pipes (proxy's maxIdlePipes), two
	// descriptors each, for the next transfers.
	idlePipeFDs = 2 * 64
	// waveLeak is how much the live heap may grow from one wave of
	// connections to the next: a leak of 200 bytes per connection.
	waveLeak = 2 << 20
)

func runRole(role string) int {
	switch role {
	case "backend":
		if err := runLoadBackend(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "load backend:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

// recStream is one direction of a load connection: application_data
// records of random sizes whose payloads total a random length, all drawn
// from a seed, so that both ends can produce it and check it without
// keeping it.
type recStream struct {
	rng  *rand.Rand
	left int
	buf  []byte
}

func newRecStream(seed uint64, dir uint64) *recStream {
	rng := rand.New(rand.NewPCG(seed, dir))
	return &recStream{rng: rng, left: 1 + rng.IntN(maxStreamBytes), buf: make([]byte, 5+maxPlaintext)}
}

// next returns the next record, valid until the following call, or nil
// at the end.
func (s *recStream) next() []byte {
	if s.left == 0 {
		return nil
	}
	k := min(s.left, 1+s.rng.IntN(maxPlaintext))
	s.left -= k
	r := append(s.buf[:0], typeAppData, 3, 3, byte(k>>8), byte(k))
	r = r[:5+k]
	fillRandom(s.rng, r[5:])
	return r
}

// size is the stream's length on the wire.
func streamSize(seed, dir uint64) int64 {
	s := newRecStream(seed, dir)
	var n int64
	for r := s.next(); r != nil; r = s.next() {
		n += int64(len(r))
	}
	return n
}

// sendStream writes the stream and half-closes.
func sendStream(c *net.TCPConn, s *recStream) error {
	for r := s.next(); r != nil; r = s.next() {
		if _, err := c.Write(r); err != nil {
			return err
		}
	}
	return c.CloseWrite()
}

// checkStream reads c to its end and checks, byte by byte and by SHA-256,
// that it is exactly the stream: nothing lost, reordered or duplicated.
func checkStream(c *net.TCPConn, want *recStream) (int64, error) {
	buf := make([]byte, 16<<10)
	var exp []byte
	var n int64
	got, wantSum := sha256.New(), sha256.New()
	for {
		k, err := c.Read(buf)
		b := buf[:k]
		got.Write(b)
		for len(b) > 0 {
			if len(exp) == 0 {
				if exp = want.next(); exp == nil {
					return n, fmt.Errorf("%d bytes past the end of the stream (%d bytes)", len(b), n)
				}
				wantSum.Write(exp)
			}
			m := min(len(b), len(exp))
			if !bytes.Equal(b[:m], exp[:m]) {
				return n, fmt.Errorf("byte %d differs from the stream", n+int64(firstDiff(b[:m], exp[:m])))
			}
			b, exp, n = b[m:], exp[m:], n+int64(m)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("after %d bytes: %w", n, err)
		}
	}
	if len(exp) > 0 || want.left > 0 {
		return n, fmt.Errorf("the stream ended after %d bytes, short of its end", n)
	}
	if !bytes.Equal(got.Sum(nil), hashSum(wantSum)) {
		return n, errors.New("SHA-256 differs")
	}
	return n, nil
}

func hashSum(h hash.Hash) []byte { return h.Sum(nil) }

// exchangeBoth runs both directions of a load connection at once.
func exchangeBoth(c *net.TCPConn, seed uint64, out, in uint64) (int64, error) {
	werr := make(chan error, 1)
	go func() { werr <- sendStream(c, newRecStream(seed, out)) }()
	n, err := checkStream(c, newRecStream(seed, in))
	if e := <-werr; err == nil && e != nil {
		err = fmt.Errorf("writing: %w", e)
	}
	return n, err
}

const (
	dirUp   = 1
	dirDown = 2
)

// loadSummary is what the backend reports when its stdin closes.
type loadSummary struct {
	Served   int64  `json:"served"`
	OK       int64  `json:"ok"`
	Failed   int64  `json:"failed"`
	Bytes    int64  `json:"bytes"`
	FirstErr string `json:"first_error,omitempty"`
}

// runLoadBackend serves load connections on 127.0.0.1:0 (its address is
// the first line written to out) until in closes, then writes its
// summary.
func runLoadBackend(in io.Reader, out io.Writer) error {
	raw, err := os.ReadFile(os.Getenv(flightEnv))
	if err != nil {
		return err
	}
	var f loadgen.Flight
	if err := f.UnmarshalBinary(raw); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, ln.Addr())
	var sum loadSummary
	var mu sync.Mutex
	var wg sync.WaitGroup
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		sum.Failed++
		if sum.FirstErr == "" {
			sum.FirstErr = err.Error()
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				atomic.AddInt64(&sum.Served, 1)
				tc := c.(*net.TCPConn)
				if err := f.PlayServer(tc, make([]byte, f.MaxTurn())); err != nil {
					fail(fmt.Errorf("handshake: %w", err))
					return
				}
				hdr := make([]byte, 5+8)
				if _, err := io.ReadFull(tc, hdr); err != nil {
					fail(fmt.Errorf("reading the seed: %w", err))
					return
				}
				seed := binary.BigEndian.Uint64(hdr[5:])
				n, err := exchangeBoth(tc, seed, dirDown, dirUp)
				if err != nil {
					fail(fmt.Errorf("connection %d: up: %w", seed, err))
					return
				}
				atomic.AddInt64(&sum.OK, 1)
				atomic.AddInt64(&sum.Bytes, n)
			}()
		}
	}()
	io.Copy(io.Discard, in)
	ln.Close()
	wg.Wait()
	return json.NewEncoder(out).Encode(&sum)
}

// loadBackend is the backend process.
type loadBackend struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	addr  string
}

func startLoadBackend(t *testing.T, f *loadgen.Flight) *loadBackend {
	t.Helper()
	raw, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "flight")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	b := &loadBackend{cmd: exec.Command(os.Args[0])}
	b.cmd.Env = append(os.Environ(), roleEnv+"=backend", flightEnv+"="+path)
	b.cmd.Stderr = os.Stderr
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if b.stdin, err = b.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.cmd.Process.Kill(); b.cmd.Wait() })
	b.out = bufio.NewReader(stdout)
	line, err := b.out.ReadString('\n')
	if err != nil {
		t.Fatalf("the load backend did not start: %v", err)
	}
	b.addr = strings.TrimSpace(line)
	return b
}

func (b *loadBackend) finish(t *testing.T) loadSummary {
	t.Helper()
	b.stdin.Close()
	var s loadSummary
	if err := json.NewDecoder(b.out).Decode(&s); err != nil {
		t.Fatalf("the load backend's summary: %v", err)
	}
	b.cmd.Wait()
	return s
}

// loadConns is how many connections the load test holds at once: the
// largest count whose two descriptors each fit in the proxy's limit, or
// HAKA_LOAD_CONNS.
func loadConns(t *testing.T) int {
	if s := os.Getenv("HAKA_LOAD_CONNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("HAKA_LOAD_CONNS=%q", s)
		}
		return n
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	return min(10_000, (int(lim.Cur)-loadFDMargin)/2)
}

// sampler records the proxy's peak usage while a phase runs.
type sampler struct {
	h    *haka
	mu   sync.Mutex
	peak usage
	stop chan struct{}
	done chan struct{}
}

func sample(h *haka) *sampler {
	s := &sampler{h: h, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			u := h.usage()
			s.mu.Lock()
			s.peak.RSSKiB = max(s.peak.RSSKiB, u.RSSKiB)
			s.peak.FDs = max(s.peak.FDs, u.FDs)
			s.peak.Goroutines = max(s.peak.Goroutines, u.Goroutines)
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// endedBadly describes the connections the proxy ended other than with a
// pass, for a failure's message.
func endedBadly(h *haka) string {
	var b strings.Builder
	n := 0
	for _, r := range h.records() {
		if r.Verdict != "pass" || r.Reason != "" {
			if n < 5 {
				fmt.Fprintf(&b, "\n  %+v", r)
			}
			n++
		}
	}
	for _, m := range h.logs.match(func(m map[string]any) bool { return m["level"] == "warn" || m["level"] == "error" }) {
		if n < 10 {
			fmt.Fprintf(&b, "\n  log: %v", m)
		}
		n++
	}
	if n == 0 {
		return "none"
	}
	return b.String()
}

func (s *sampler) end() usage {
	close(s.stop)
	<-s.done
	return s.peak
}

// TestLoad holds about 10,000 connections through haka-proxy (the binary,
// with the TLS inspector and the stock rules) at once, each a recorded
// TLS 1.2 handshake followed by application_data records of random sizes
// both ways at the same time, checked byte by byte and by SHA-256 at both
// ends; it samples the proxy's memory, descriptors and goroutines during
// and after, and requires them back where they were. It does it twice:
// what the second wave leaves must be what the first left.
func TestLoad(t *testing.T) {
	if os.Getenv("HAKA_LOAD") == "" {
		t.Skip("the load test runs with HAKA_LOAD=1 (see README, Operating under load)")
	}
	n := loadConns(t)
	f := flight(t)
	be := startLoadBackend(t, f)
	h := startHaka(t, "--upstream", be.addr, "--max-conns", strconv.Itoa(n+loadFDMargin/4))
	base := h.usage()
	baseHeap := liveHeap(h.scrape())
	t.Logf("%d connections; the proxy before: %v, live heap %.1f MiB", n, base, baseHeap/(1<<20))

	var heaps [2]float64
	for wave := range 2 {
		t.Logf("wave %d", wave+1)
		loadWave(t, h, f, n, uint64(wave*n), base)
		_, heaps[wave] = settle(t, h, base, baseHeap)
	}
	if heaps[1] > heaps[0]+waveLeak {
		t.Errorf("the live heap grew from %.1f MiB after the first wave to %.1f MiB after the second: %.0f bytes per connection",
			heaps[0]/(1<<20), heaps[1]/(1<<20), (heaps[1]-heaps[0])/float64(n))
	}
	sum := be.finish(t)
	if sum.Failed > 0 || sum.OK != int64(2*n) {
		t.Errorf("backend: %d served, %d ok, %d failed (first: %s)", sum.Served, sum.OK, sum.Failed, sum.FirstErr)
	}
}

// loadWave opens n connections, holds them, streams both ways on all of
// them at once, and checks every byte and every connection record.
func loadWave(t *testing.T, h *haka, f *loadgen.Flight, n int, seeds uint64, before usage) {
	t.Helper()
	records := len(h.records())

	// Open every connection and complete its handshake; hold them all.
	start := time.Now()
	conns := make([]*net.TCPConn, n)
	var opened sync.WaitGroup
	var openErr atomic.Pointer[error]
	sem := make(chan struct{}, dialConcurrency)
	d := net.Dialer{KeepAlive: -1, Timeout: time.Minute}
	for i := range n {
		sem <- struct{}{}
		opened.Add(1)
		go func() {
			defer opened.Done()
			defer func() { <-sem }()
			c, err := d.DialContext(context.Background(), "tcp", h.addr)
			if err == nil {
				conns[i] = c.(*net.TCPConn)
				err = f.PlayClient(c, make([]byte, f.MaxTurn()))
			}
			if err != nil {
				err = fmt.Errorf("connection %d: %w", i, err)
				openErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	opened.Wait()
	if err := openErr.Load(); err != nil {
		t.Fatalf("%v; the proxy's ended connections so far: %s", *err, endedBadly(h))
	}
	openTook := time.Since(start)
	held := h.usage()
	t.Logf("opened %d connections (a recorded TLS 1.2 handshake each) in %v (%.0f/s); the proxy holding them idle: %v, %.1f KiB RSS per connection",
		n, openTook, float64(n)/openTook.Seconds(), held, float64(held.RSSKiB-before.RSSKiB)/float64(n))
	if held.FDs < before.FDs+2*n {
		t.Errorf("the proxy holds %d descriptors for %d connections", held.FDs, n)
	}

	// All of them stream both ways at once.
	s := sample(h)
	cpu0 := h.scrape()["process_cpu_seconds_total"]
	start = time.Now()
	var done sync.WaitGroup
	var bytesMoved atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	wantUp, wantDown := make([]int64, n), make([]int64, n)
	for i, c := range conns {
		done.Add(1)
		go func() {
			defer done.Done()
			defer c.Close()
			seed := seeds + uint64(i) + 1
			// The seed goes first, in a record of its own, so that the
			// backend knows what to send and what to expect.
			hdr := appRecord(nil, binary.BigEndian.AppendUint64(nil, seed))
			wantUp[i] = int64(len(f.Turns[0])+len(f.Turns[2])+len(hdr)) + streamSize(seed, dirUp)
			wantDown[i] = int64(len(f.Turns[1])+len(f.Turns[3])) + streamSize(seed, dirDown)
			c.SetDeadline(time.Now().Add(10 * time.Minute))
			_, err := c.Write(hdr)
			var got int64
			if err == nil {
				got, err = exchangeBoth(c, seed, dirUp, dirDown)
			}
			if err != nil {
				failed.Add(1)
				err = fmt.Errorf("connection %d: down: %w", i, err)
				firstErr.CompareAndSwap(nil, &err)
				return
			}
			bytesMoved.Add(got + streamSize(seed, dirUp))
		}()
	}
	done.Wait()
	streamTook := time.Since(start)
	cpu := h.scrape()["process_cpu_seconds_total"] - cpu0
	peak := s.end()
	if failed.Load() > 0 {
		t.Fatalf("%d connections failed (first: %v); the proxy: %s", failed.Load(), *firstErr.Load(), endedBadly(h))
	}
	total := float64(bytesMoved.Load()) / (1 << 20)
	t.Logf("streamed %.1f MiB of records (%.1f MiB each way) in %v: %.0f MiB/s through the proxy, which used %.1f s of CPU (%.0f MiB per CPU second); its peak: %v",
		total, total/2, streamTook, total/streamTook.Seconds(), cpu, total/cpu, peak)

	// Every connection was inspected and passed with its bytes.
	eventually(t, "the proxy closed every connection", func() bool { return h.scrape()["haka_proxy_connections_active"] == 0 })
	h.recs.wait(t, "the connection records", records+n, isConnection)
	want := map[[2]int64]int{}
	for i := range n {
		want[[2]int64{wantUp[i], wantDown[i]}]++
	}
	var inspected int
	for _, r := range h.records()[records:] {
		k := [2]int64{r.BytesUp, r.BytesDown}
		if r.Verdict != "pass" || r.Reason != "" || want[k] == 0 {
			t.Errorf("record %+v", r)
		}
		want[k]--
		if r.Version == "TLS1.2" && r.JA3 != "" && r.SNI == "localhost" {
			inspected++
		}
	}
	if inspected != n {
		t.Errorf("%d of %d connections were seen through the TLS machine (version, SNI, JA3 in their records)", inspected, n)
	}
	if v := h.scrape()[`haka_proxy_connections_refused_total{reason="max_conns"}`]; v != 0 {
		t.Errorf("%v connections refused for max-conns", v)
	}
}

// liveHeap estimates the heap the last collection found live, from the
// goal it set for the next one (GOGC=100: twice the live heap, plus the
// stacks and globals, at least 4 MiB): the heap in use at any other time
// counts garbage not yet collected.
func liveHeap(m map[string]float64) float64 { return m["go_memstats_next_gc_bytes"] / 2 }

// settle waits for the proxy to give back what the load took: its
// descriptors and goroutines exactly, its live heap (once a collection
// ran after the load) and its resident memory within the tolerances. It
// returns what it holds then and its live heap.
func settle(t *testing.T, h *haka, base usage, baseHeap float64) (usage, float64) {
	t.Helper()
	start := time.Now()
	ended := float64(start.UnixNano()) / 1e9
	var after usage
	var heap float64
	var m map[string]float64
	for {
		after = h.usage()
		m = h.scrape()
		heap = liveHeap(m)
		collected := m["go_memstats_last_gc_time_seconds"] > ended
		if after.FDs >= base.FDs && after.FDs <= base.FDs+idlePipeFDs && after.Goroutines == base.Goroutines && collected &&
			after.RSSKiB <= base.RSSKiB+rssTolerance>>10 && heap <= baseHeap+heapTolerance {
			break
		}
		if time.Since(start) > settleWithin {
			t.Errorf("%v and %.1f MiB of live heap (collected since: %v) after the load, %v and %.1f MiB before: not back within %v (tolerance %d MiB of RSS, %d MiB of heap)",
				after, heap/(1<<20), collected, base, baseHeap/(1<<20), settleWithin, rssTolerance>>20, heapTolerance>>20)
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("the proxy %v after the load: %v, live heap %.1f MiB (before: %v, %.1f MiB); runtime: heap in use %.1f MiB, idle %.1f MiB, released %.1f MiB, stacks %.1f MiB, sys %.1f MiB",
		time.Since(start).Round(time.Second), after, heap/(1<<20), base, baseHeap/(1<<20),
		m["go_memstats_heap_inuse_bytes"]/(1<<20), m["go_memstats_heap_idle_bytes"]/(1<<20), m["go_memstats_heap_released_bytes"]/(1<<20),
		m["go_memstats_stack_inuse_bytes"]/(1<<20), m["go_memstats_sys_bytes"]/(1<<20))
	return after, heap
}
