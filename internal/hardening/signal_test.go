package hardening

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/rules"
)

// load is clients running exchanges through a proxy in a loop until
// stopped, each exchange checked byte by byte.
type load struct {
	ok      atomic.Int64
	mu      sync.Mutex
	failed  []error
	refused int // exchanges that could not start: connect refused or reset before any byte
	stop    chan struct{}
	wg      sync.WaitGroup
}

// startLoad runs k clients; pace spreads each exchange's records over
// that long, so that connections are in flight at any moment.
func startLoad(t *testing.T, addr string, f *loadgen.Flight, k int, pace time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	for i := range k {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				started, err := pacedExchange(addr, f, rng, pace)
				l.mu.Lock()
				switch {
				case err == nil:
					l.ok.Add(1)
				case !started:
					l.refused++
				default:
					l.failed = append(l.failed, err)
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failed) > 0 {
		t.Errorf("%d exchanges broken half-way (%d completed); first: %v", len(l.failed), l.ok.Load(), l.failed[0])
	}
}

// pacedExchange is exchange with its records sent over pace. started
// reports whether the exchange got past the handshake: a proxy that stops
// accepting refuses a connection outright or resets it before it carried
// a byte of application data, and that is not a broken exchange.
func pacedExchange(addr string, f *loadgen.Flight, rng *rand.Rand, pace time.Duration) (started bool, err error) {
	c, err := dialFrom(netip.Addr{}, addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
		return false, err
	}
	const pieces = 8
	var sent []byte
	werr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(pace / pieces)
		defer tick.Stop()
		for range pieces {
			rec := randomRecords(rng, 1+rng.IntN(2<<10), 1<<10)
			sent = append(sent, rec...)
			if _, err := c.Write(rec); err != nil {
				werr <- err
				return
			}
			<-tick.C
		}
		werr <- c.CloseWrite()
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return true, fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return true, fmt.Errorf("read after %d of %d bytes: %w", len(got), len(sent), rerr)
	}
	if sha256.Sum256(got) != sha256.Sum256(sent) {
		return true, fmt.Errorf("echo differs at byte %d of %d", firstDiff(got, sent), len(sent))
	}
	return true, nil
}

// copyStock writes the stock rules into dir, plus extra files.
func copyStock(t *testing.T, dir string, extra map[string]string) {
	t.Helper()
	err := fs.WalkDir(rules.Stock(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(rules.Stock(), path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, src := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func marker(v int) string {
	return fmt.Sprintf("haka.rule { on = tls.events.client_hello, eval = function(flow) flow:log(\"marker v%d\") end }\n", v)
}

// waitMarkers waits for n log lines of marker v after the first from
// lines.
func (h *haka) waitMarkers(t *testing.T, v, from, n int) {
	t.Helper()
	msg := fmt.Sprintf("marker v%d", v)
	h.logs.waitFrom(t, msg, from, n, isMsg(msg))
}

func (h *haka) logCount() int { return len(h.logs.match(func(map[string]any) bool { return true })) }

// A rule directory broken while the proxy runs under load, then reloaded
// with SIGHUP: the set is refused with its mistake at its file and line,
// the running rules stay (and keep judging new connections), and no
// connection is lost; once the directory is mended, SIGHUP loads it.
func TestReloadBrokenRulesUnderLoad(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	dir := t.TempDir()
	copyStock(t, dir, map[string]string{"marker.lua": marker(1)})
	h := startHaka(t, "--upstream", be.addr, "--rules", dir, "--alerts", "/dev/null")
	l := startLoad(t, h.addr, f, 8, 100*time.Millisecond)

	waitMarkers := func(v, from int) { t.Helper(); h.waitMarkers(t, v, from, 5) }
	waitMarkers(1, 0)

	if err := os.WriteFile(filepath.Join(dir, "broken.lua"), []byte("haka.rule { on = tls.events.client_hello,\n  eval = function(flow) if then end end }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.signal(syscall.SIGHUP)
	h.logs.wait(t, "the refused reload", 1, isMsg("reload failed; keeping the running rules"))
	refused := h.logs.match(isMsg("rules reload refused; the running rules stay"))
	if len(refused) != 1 || !strings.Contains(fmt.Sprint(refused[0]["error"]), "broken.lua:2") {
		t.Errorf("the refusal does not name the mistake at its line: %v", refused)
	}
	// The running set still judges the connections accepted after it.
	waitMarkers(1, h.logCount())

	os.Remove(filepath.Join(dir, "broken.lua"))
	os.WriteFile(filepath.Join(dir, "marker.lua"), []byte(marker(2)), 0o644)
	h.signal(syscall.SIGHUP)
	h.logs.wait(t, "the reload", 1, isMsg("rules reloaded"))
	waitMarkers(2, h.logCount())

	l.halt()
	l.check(t)
	if l.refused > 0 {
		t.Errorf("%d exchanges refused", l.refused)
	}
	for _, r := range h.records() {
		if r.Verdict != "pass" || r.Reason != "" {
			t.Errorf("record %+v", r)
		}
	}
	t.Logf("%d exchanges completed through two reloads", l.ok.Load())
}

// SIGTERM under load: the proxy stops accepting at once, every exchange
// in flight completes byte for byte, a connection that would never end
// is dropped when --drain-timeout runs out, and the process exits 0.
func TestSIGTERMUnderLoad(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	const drain = 3 * time.Second
	h := startHaka(t, "--upstream", be.addr, "--drain-timeout", drain.String())
	// A connection that never ends by itself.
	idle := r0(t, h.addr)
	if err := f.PlayClient(idle, make([]byte, f.MaxTurn())); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, h.addr, f, 16, 400*time.Millisecond)
	for l.ok.Load() < 20 {
		select {
		case <-h.exited:
			t.Fatal("haka-proxy exited")
		case <-time.After(10 * time.Millisecond):
		}
	}
	signalled := time.Now()
	h.signal(syscall.SIGTERM)
	h.logs.wait(t, "the drain", 1, isMsg("shutting down: no new connections; open ones may finish"))
	code := h.exitCode(drain + waitFor)
	took := time.Since(signalled)
	l.halt()
	l.check(t)
	if code != 0 {
		t.Errorf("exit status %d", code)
	}
	if took < drain || took > drain+5*time.Second {
		t.Errorf("exited %v after SIGTERM, want the drain timeout of %v", took, drain)
	}
	if _, reset := expectClosed(t, idle); reset {
		t.Error("the idle connection was reset, not dropped")
	}
	var dropped int
	for _, r := range h.records() {
		switch {
		case r.Rule == proxy.RuleShutdown:
			dropped++
		case r.Verdict != "pass":
			t.Errorf("record %+v", r)
		}
	}
	if dropped != 1 {
		t.Errorf("%d connections dropped by the drain timeout, want the idle one", dropped)
	}
	// After the drain began, connecting is refused.
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connecting after the exit: %v", err)
	}
	t.Logf("%d exchanges completed, %d could not start once the drain began; exit after %v", l.ok.Load(), l.refused, took)
}

func r0(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := dialFrom(netip.Addr{}, addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// At --max-conns, new clients are refused at once and counted, and the
// connections already open are untouched: each completes its exchange;
// once they close, clients are served again.
func TestConnectionLimit(t *testing.T) {
	f := flight(t)
	be := startBackend(t, tlsEcho(f))
	const max = 20
	r := newRig(t, be.addr, rigConfig{Limits: proxy.Limits{MaxConns: max}})
	open := make([]*net.TCPConn, max)
	for i := range open {
		open[i] = r.connect(srcBackground)
		if err := f.PlayClient(open[i], make([]byte, f.MaxTurn())); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		start := time.Now()
		c, err := dialFrom(srcFault, r.addr)
		if err == nil {
			// The reset may arrive before the write: the write then
			// takes the error, and the read after it sees an end.
			_, werr := c.Write(f.Turns[0])
			if werr != nil && !isReset(werr) && !errors.Is(werr, syscall.EPIPE) {
				t.Fatal(werr)
			}
			if _, reset := expectClosed(t, c); !reset && werr == nil {
				t.Error("a client over the limit was not reset")
			}
			c.Close()
		} else if !isReset(err) {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a client over the limit waited %v", d)
		}
	}
	if v := metric(r.metrics.Refused.WithLabelValues(proxy.RefusedMaxConns)); v != 10 {
		t.Errorf("refused for max-conns: %v", v)
	}
	// The open ones go on, byte for byte.
	var wg sync.WaitGroup
	for i, c := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			sent := randomRecords(rand.New(rand.NewPCG(uint64(i), 1)), 32<<10, 4<<10)
			go func() { c.Write(sent); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || sha256.Sum256(got) != sha256.Sum256(sent) {
				t.Errorf("open connection %d: %d of %d bytes back, %v", i, len(got), len(sent), err)
			}
		}()
	}
	wg.Wait()
	r.waitRecords("the open connections' records", max, fromAddr(srcBackground))
	eventually(t, "every connection closed", func() bool { return r.p.Active() == 0 })
	if err := exchange(r.addr, srcFault, f, rand.New(rand.NewPCG(9, 9))); err != nil {
		t.Errorf("below the limit again: %v", err)
	}
}
