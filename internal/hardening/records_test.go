package hardening

import (
	"crypto/sha256"
	"io"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
	"github.com/hakaproxy/haka-proxy/proxy"
)

// tinyRecords is n application_data records of one byte each.
func tinyRecords(n int) []byte {
	out := make([]byte, 0, 6*n)
	for i := range n {
		out = appRecord(out, []byte{byte(i)})
	}
	return out
}

// echoRun sends stream after the recorded handshake through the proxy at
// addr to the echo backend, and checks that every byte comes back.
func echoRun(t *testing.T, addr string, f *loadgen.Flight, stream []byte) time.Duration {
	t.Helper()
	c, err := dialFrom(srcBackground, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * waitFor))
	if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go func() {
		c.Write(stream)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	took := time.Since(start)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(stream) {
		t.Fatalf("%d of %d bytes came back (%v), first difference at %d", len(got), len(stream), err, firstDiff(got, stream))
	}
	return took
}

// 100,000 one-byte records each way through the inspector: every byte
// comes back in order; the time grows linearly with the number of records
// (not as its square); the proxy allocates no object per record and runs
// no goroutine per record — measured in the haka-proxy process itself
// from its Go runtime metrics.
func TestOneByteRecords(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	h := startHaka(t, "--upstream", be.addr, "--alerts", "/dev/null")
	mallocs := func() float64 { return h.scrape()["go_memstats_mallocs_total"] }
	// What a scrape allocates itself, to take out of the counts: the
	// least of a few, once the first has set the handler up.
	mallocs()
	scrapeCost := math.Inf(1)
	for range 3 {
		m := mallocs()
		scrapeCost = min(scrapeCost, mallocs()-m)
	}

	// The fastest of three runs: the machine is shared.
	measure := func(n int) (time.Duration, float64) {
		stream := tinyRecords(n)
		best, allocs := time.Duration(math.MaxInt64), math.Inf(1)
		for range 3 {
			before := mallocs()
			took := echoRun(t, h.addr, f, stream)
			eventually(t, "the connection closed", func() bool { return h.scrape()["haka_proxy_connections_active"] == 0 })
			best = min(best, took)
			// Two scrapes more than the connection: the one
			// above and the one that reads the count.
			allocs = min(allocs, mallocs()-before-2*scrapeCost)
		}
		return best, allocs
	}
	measure(1000) // warm up: buffers, pools, the rules' states
	t25k, a25k := measure(25_000)
	t100k, a100k := measure(100_000)
	perRecord := (a100k - a25k) / (2 * 75_000)
	t.Logf("25,000 records each way: %v, %.0f allocations; 100,000: %v, %.0f allocations; %.4f allocations per added record",
		t25k, a25k, t100k, a100k, perRecord)
	if ratio := float64(t100k) / float64(t25k); ratio > 8 {
		t.Errorf("four times the records took %.1f times as long: worse than linear", ratio)
	}
	// The allocations of a connection do not grow with its records (the
	// pump reads into pooled buffers and the inspector frames in place);
	// what remains is noise of the runtime and the HTTP scrape.
	if perRecord > 0.05 {
		t.Errorf("%.4f allocations per record", perRecord)
	}

	// While the records stream, the proxy runs the same goroutines as
	// with one idle connection.
	base := int(h.scrape()["go_goroutines"])
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if g := int64(h.scrape()["go_goroutines"]); g > peak.Load() {
				peak.Store(g)
			}
		}
	}()
	echoRun(t, h.addr, f, tinyRecords(100_000))
	close(done)
	wg.Wait()
	t.Logf("goroutines: %d idle, at most %d while 100,000 records streamed each way", base, peak.Load())
	// Two pumps for the connection, one for the scrape being served.
	if p := int(peak.Load()); p > base+3 {
		t.Errorf("%d goroutines while records streamed, %d idle", p, base)
	}
}

// The same one-byte records inside a handshake message: a Certificate
// of 100,000 bytes whose records carry one byte each (600,000 bytes on the
// wire) is held until it is complete, within --max-held-bytes 1MiB, then
// judged and forwarded whole; ten times the records take about ten times
// as long.
func TestOneByteHandshakeRecords(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	r := newRig(t, be.addr, rigConfig{Limits: proxy.Limits{MaxHeldBytes: 1 << 20}})
	timeFor := func(src netip.Addr, size int) time.Duration {
		server, _ := serverFlightWith(t, bulkyCertificate(t, size), 1)
		fault := startBackend(t, playServer(f, server))
		r.route(src, fault.addr)
		c := r.connect(src)
		defer c.Close()
		start := time.Now()
		playClient(t, c, f, server)
		took := time.Since(start)
		rec := r.waitRecords("record", 1, fromAddr(src))[0]
		if rec.Verdict != "pass" {
			t.Errorf("record %+v", rec)
		}
		return took
	}
	t10k := timeFor(srcFault, 10_000)
	t100k := timeFor(srcFault2, 100_000)
	t.Logf("a Certificate in 1-byte records: 10,000 records %v, 100,000 records %v", t10k, t100k)
	if ratio := float64(t100k) / float64(t10k); ratio > 30 {
		t.Errorf("ten times the records took %.1f times as long: worse than linear", ratio)
	}
}
