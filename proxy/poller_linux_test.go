package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Tests of the poller, the sweeper and the splicing of Pass runs, from
// inside the package: they look at the pumps' states and the pipe pool.

const pollWait = 20 * time.Second // bounds every wait: only a hang trips it

// startIn runs a proxy on 127.0.0.1:0 (a listener from Listen) in front
// of upstream; setup, if given, sees it before it serves.
func startIn(t testing.TB, upstream string, cfg Config, setup ...func(*Proxy)) (*Proxy, string) {
	t.Helper()
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, upstream, cfg, setup...)
}

// startOn is startIn on a given listener.
func startOn(t testing.TB, ln *net.TCPListener, upstream string, cfg Config, setup ...func(*Proxy)) (*Proxy, string) {
	t.Helper()
	if cfg.Upstream == "" && cfg.Dial == nil {
		cfg.Upstream = upstream
	}
	p, err := New(cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	for _, f := range setup {
		f(p)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), pollWait)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, ln.Addr().String()
}

// serveTCP runs handle for every connection to a listener on
// 127.0.0.1:0, each on its own goroutine; the listener closes with the
// test, and the test waits for the handlers.
func serveTCP(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func echoTCP(c *net.TCPConn) {
	defer c.Close()
	io.Copy(c, c)
	c.CloseWrite()
}

// eventually polls cond, with a bound: goroutines ending and pumps
// parking give no event to wait on.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(pollWait)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: still not so after %s\n%s", what, pollWait, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// conns returns the proxy's open connections.
func (p *Proxy) openConns() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

// allParked reports whether every open connection has both pumps parked
// in a poller.
func (p *Proxy) allParked() bool {
	cs := p.openConns()
	for _, c := range cs {
		if !c.pumping.Load() || c.up.state.Load() != stParked || c.down.state.Load() != stParked {
			return false
		}
	}
	return true
}

func exchange(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(pollWait))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v", got, err)
	}
	c.SetDeadline(time.Time{})
}

// Thousands of idle connections hold no goroutine and no buffer: every
// pump is parked in a poller.
func TestIdleConnectionsHoldNoGoroutines(t *testing.T) {
	if !pollerSupported {
		t.Skip("no poller on this system")
	}
	n := 2000
	if testing.Short() {
		n = 200
	}
	var mu sync.Mutex
	held := make(map[string]net.Conn)
	// The backend answers once, then holds the socket with no goroutine,
	// under the client's first message.
	upstream := serveTCP(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(buf)
		}
		mu.Lock()
		held[string(buf)] = c
		mu.Unlock()
	})
	p, addr := startIn(t, upstream, Config{})
	// Runs before the proxy's Shutdown: the connections end.
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	warm, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close()
	exchange(t, warm, "hello")
	eventually(t, "the warm-up connection parked", p.allParked)
	base := runtime.NumGoroutine()

	clients := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		exchange(t, c, fmt.Sprintf("%05d", i))
	}
	eventually(t, "every pump parked", func() bool { return len(p.openConns()) == n+1 && p.allParked() })
	// The backend's handlers return after answering; nothing else may
	// be left.
	eventually(t, "goroutines back to the count with one connection", func() bool { return runtime.NumGoroutine() <= base })
	if n := p.bufs.lent.Load(); n != 0 {
		t.Fatalf("%d buffers lent to idle connections", n)
	}
	// And they still carry bytes, both ways.
	for i := 0; i < n; i += 97 {
		mu.Lock()
		be := held[fmt.Sprintf("%05d", i)]
		mu.Unlock()
		c := clients[i]
		c.SetDeadline(time.Now().Add(pollWait))
		be.SetDeadline(time.Now().Add(pollWait))
		buf := make([]byte, 4)
		if _, err := be.Write([]byte("down")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "down" {
			t.Fatalf("connection %d down: %q, %v", i, buf, err)
		}
		if _, err := c.Write([]byte("up!!")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(be, buf); err != nil || string(buf) != "up!!" {
			t.Fatalf("connection %d up: %q, %v", i, buf, err)
		}
	}
}

// A connection that was idle long enough to park gets its bytes at
// once, every time; its end too.
func TestParkedConnectionWakesPromptly(t *testing.T) {
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var worst time.Duration
	for i := range 50 {
		exchange(t, c, "ping")
		eventually(t, "both pumps parked", p.allParked)
		if i%10 == 0 {
			time.Sleep(50 * time.Millisecond) // idle a while longer
		}
		start := time.Now()
		exchange(t, c, "pong")
		worst = max(worst, time.Since(start))
	}
	t.Logf("slowest round trip after parking: %s", worst)
	// A lost wake-up waits for the idle timeout (minutes); a loaded
	// machine takes milliseconds.
	if worst > 5*time.Second {
		t.Fatalf("a parked connection took %s to answer", worst)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(pollWait))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after the half-close: %q, %v; want EOF", b, err)
	}
}

// Bytes and the end arriving together (one segment with FIN) are both
// seen, whichever way, over many connections: a pump that parks after a
// short read must not miss an end already reported.
func TestBytesThenEndTogether(t *testing.T) {
	const conns, par = 300, 30
	for _, name := range []string{"server ends", "client ends"} {
		t.Run(name, func(t *testing.T) {
			upstream := serveTCP(t, func(c *net.TCPConn) {
				defer c.Close()
				if name == "server ends" {
					c.Write([]byte("last words"))
					c.CloseWrite()
					io.Copy(io.Discard, c)
					return
				}
				b, _ := io.ReadAll(c)
				c.Write(b)
				c.CloseWrite()
			})
			_, addr := startIn(t, upstream, Config{})
			sem := make(chan struct{}, par)
			errs := make(chan error, conns)
			for range conns {
				sem <- struct{}{}
				go func() {
					defer func() { <-sem }()
					c, err := net.Dial("tcp", addr)
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(pollWait))
					if name == "client ends" {
						c.Write([]byte("last words"))
						c.(*net.TCPConn).CloseWrite()
					}
					b, err := io.ReadAll(c)
					if err == nil && string(b) != "last words" {
						err = errors.New("got " + string(b))
					}
					errs <- err
				}()
			}
			for range conns {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// Half-close and reset reach a connection whose pumps are parked.
func TestHalfCloseAndResetWhileParked(t *testing.T) {
	t.Run("half-close", func(t *testing.T) {
		upstream := serveTCP(t, func(c *net.TCPConn) {
			defer c.Close()
			buf := make([]byte, 4)
			io.ReadFull(c, buf)
			c.Write(buf)
			rest, _ := io.ReadAll(c) // until the client's half-close
			c.Write(append([]byte("bye:"), rest...))
			c.CloseWrite()
		})
		p, addr := startIn(t, upstream, Config{})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, "ping")
		eventually(t, "both pumps parked", p.allParked)
		c.Write([]byte("tail"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(pollWait))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "bye:tail" {
			t.Fatalf("got %q, %v", b, err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		parked := make(chan struct{})
		upstream := serveTCP(t, func(c *net.TCPConn) {
			buf := make([]byte, 4)
			io.ReadFull(c, buf)
			c.Write(buf)
			<-parked
			c.SetLinger(0)
			c.Close()
		})
		p, addr := startIn(t, upstream, Config{})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, "ping")
		eventually(t, "both pumps parked", p.allParked)
		close(parked)
		c.SetReadDeadline(time.Now().Add(pollWait))
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client read: %v, want ECONNRESET", err)
		}
	})
}

// A kill from another goroutine ends a connection whose pumps are
// parked, at once, and leaves no goroutine behind.
func TestKillWhileParked(t *testing.T) {
	kills := make(chan func(inspect.Decision), 1)
	f := factoryOf(func(kill func(inspect.Decision)) inspect.Inspector {
		kills <- kill
		return passAll{}
	})
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: f})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kill := <-kills
	exchange(t, c, "ping")
	eventually(t, "both pumps parked", p.allParked)
	base := runtime.NumGoroutine()
	start := time.Now()
	kill(inspect.Decision{Verdict: inspect.Reset, Reason: "state timeout", Rule: "builtin:timeout"})
	c.SetReadDeadline(time.Now().Add(pollWait))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want ECONNRESET", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the kill took %s", d)
	}
	eventually(t, "the connection gone", func() bool { return len(p.openConns()) == 0 })
	eventually(t, "no goroutine left by the kill", func() bool { return runtime.NumGoroutine() <= base })
}

// The handshake and idle timeouts fire for parked connections, within a
// few sweeps of being due, and a connection that trickles bytes is not
// taken for idle.
func TestTimeoutsWhileParked(t *testing.T) {
	const limit = 150 * time.Millisecond
	for _, tc := range []struct {
		name  string
		lim   Limits
		hello bool
		rule  string
	}{
		{"handshake", Limits{HandshakeTimeout: limit}, false, RuleHandshakeTimeout},
		{"idle", Limits{IdleTimeout: limit}, true, RuleIdleTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan inspect.Summary, 1)
			f := factoryOf(func(func(inspect.Decision)) inspect.Inspector {
				return &closeNotify{passAll: passAll{hello: tc.hello}, ended: ended}
			})
			p, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: f, Limits: tc.lim})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			exchange(t, c, "x")
			eventually(t, "both pumps parked", p.allParked)
			var s inspect.Summary
			select {
			case s = <-ended:
			case <-time.After(pollWait):
				t.Fatal("no timeout")
			}
			took := time.Since(start)
			if s.Decision.Rule != tc.rule {
				t.Fatalf("ended with %+v, want rule %s", s.Decision, tc.rule)
			}
			if took < limit {
				t.Fatalf("timed out after %s, before %s", took, limit)
			}
			t.Logf("%s timeout of %s fired after %s (sweep every %s)", tc.name, limit, took, sweepPeriod(p.lim))
		})
	}
}

// A bulk transfer makes its pump hot (a goroutine of its own, waiting
// in the runtime's poller); once the connection is idle the pump parks
// in its poller again and the goroutine is gone.
func TestHotPumpCoolsDown(t *testing.T) {
	if !pollerSupported {
		t.Skip("no poller on this system")
	}
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{})
	p.coolAfter.Store(int64(50 * time.Millisecond))
	warm, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, warm, "warm")
	eventually(t, "parked", p.allParked)
	base := runtime.NumGoroutine()
	warm.Close()
	eventually(t, "the warm-up connection gone", func() bool { return len(p.openConns()) == 0 })

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(pollWait))
	// Read slowly at first: the echo backs up, writes block, the pumps
	// get hot.
	time.Sleep(100 * time.Millisecond)
	hot := false
	for _, cc := range p.openConns() {
		hot = hot || cc.up.hot.Load() || cc.down.hot.Load()
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of 4 MiB: %v", err)
	}
	if !hot {
		t.Log("no pump got hot: the machine kept up; the cool-down is not exercised")
	}
	eventually(t, "both pumps parked again", p.allParked)
	eventually(t, "no goroutine left by the hot pumps", func() bool { return runtime.NumGoroutine() <= base })
	exchange(t, c, "still there")
}

// tlsPass frames both directions as TLS records: application data (23)
// is cleared as soon as its header is complete and its payload passed
// (Result.Pass), as the TLS inspection does; any other record is held
// until complete. It counts the bytes it was shown.
type tlsPass struct {
	mu  sync.Mutex
	fed int64
}

func (tp *tlsPass) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return tp, inspect.Decision{}
}

func (tp *tlsPass) Feed(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	tp.mu.Lock()
	tp.fed += int64(len(p))
	tp.mu.Unlock()
	res := inspect.Result{HelloDone: true}
	for len(p)-res.Forward >= 5 {
		h := p[res.Forward:]
		n := int(binary.BigEndian.Uint16(h[3:5]))
		if h[0] == 23 && len(h)-5 < n {
			return inspect.Result{Forward: len(p), Pass: int64(n - (len(h) - 5)), HelloDone: true}
		}
		if len(h)-5 < n {
			break
		}
		res.Forward += 5 + n
	}
	return res
}

func (tp *tlsPass) EOF(dissect.Direction, []byte, time.Time) inspect.Result { return inspect.Result{} }
func (tp *tlsPass) Info() inspect.Info                                      { return inspect.Info{} }
func (tp *tlsPass) Close(inspect.Summary)                                   {}

// records writes count TLS-framed records of random types (one in 32 is
// not application data: after a TLS 1.3 handshake every record is) and
// sizes (0 to 2^14+256) with random payloads, and returns how many
// payload bytes were application data.
func records(w io.Writer, rng *rand.Rand, count int) (appData int64, err error) {
	buf := make([]byte, 5+1<<14+256)
	for range count {
		typ := byte(23)
		if rng.IntN(32) == 0 {
			typ = byte(20 + rng.IntN(3)) // ccs, alert, handshake
		}
		n := rng.IntN(1<<14 + 257)
		buf[0], buf[1], buf[2] = typ, 3, 3
		binary.BigEndian.PutUint16(buf[3:5], uint16(n))
		for i := 5; i < 5+n; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:min(i+8, len(buf))], rng.Uint64())
		}
		if typ == 23 {
			appData += int64(n)
		}
		if _, err := w.Write(buf[:5+n]); err != nil {
			return appData, err
		}
	}
	return appData, nil
}

// Payloads passed by the inspector go through the kernel (splice) and
// arrive exactly: the SHA-256 of both streams is compared at both ends,
// for records of random sizes; no pipe stays lent once the connection
// is idle.
func TestPassSplicedExactly(t *testing.T) {
	if !spliceSupported {
		t.Skip("no splice on this system")
	}
	const count = 600
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	type result struct {
		sum [32]byte
		n   int64
	}
	upSeen := make(chan result, 1)
	downSent := make(chan result, 1) // n: application data bytes
	upstream := serveTCP(t, func(c *net.TCPConn) {
		defer c.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h := sha256.New()
			n, _ := io.Copy(h, c)
			var r result
			copy(r.sum[:], h.Sum(nil))
			r.n = n
			upSeen <- r
		}()
		h := sha256.New()
		var r result
		r.n, _ = records(io.MultiWriter(c, h), rand.New(rand.NewPCG(seed, 2)), count)
		copy(r.sum[:], h.Sum(nil))
		downSent <- r
		c.CloseWrite()
		<-done
	})
	tp := &tlsPass{}
	p, addr := startIn(t, upstream, Config{Factory: tp})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(pollWait))
	sentSum := sha256.New()
	wrote := make(chan int64, 1)
	go func() {
		app, _ := records(io.MultiWriter(c, sentSum), rand.New(rand.NewPCG(seed, 1)), count)
		wrote <- app
	}()
	got := sha256.New()
	if _, err := io.Copy(got, c); err != nil {
		t.Fatal(err)
	}
	upApp := <-wrote
	down := <-downSent
	downApp := down.n
	if !bytes.Equal(got.Sum(nil), down.sum[:]) {
		t.Fatal("the stream down differs")
	}
	c.(*net.TCPConn).CloseWrite()
	var up result
	select {
	case up = <-upSeen:
	case <-time.After(pollWait):
		t.Fatal("the backend never saw the end")
	}
	if !bytes.Equal(up.sum[:], sentSum.Sum(nil)) {
		t.Fatal("the stream up differs")
	}
	spliced := p.pipes.spliced.Load()
	tp.mu.Lock()
	fed := tp.fed
	tp.mu.Unlock()
	t.Logf("application data %d bytes, spliced %d, shown to the inspector %d", upApp+downApp, spliced, fed)
	// Records shorter than minSplicePass, and the start of a payload
	// read along with its header, are copied; the rest is spliced.
	if spliced < (upApp+downApp)/2 {
		t.Fatalf("only %d of %d bytes of application data spliced", spliced, upApp+downApp)
	}
	eventually(t, "the connection gone", func() bool { return len(p.openConns()) == 0 })
	p.pipes.mu.Lock()
	lent := p.pipes.lent
	p.pipes.mu.Unlock()
	if lent != 0 {
		t.Fatalf("%d pipes lent after the connection ended", lent)
	}
}

// No pipe stays lent to a connection that is idle between two spliced
// transfers.
func TestNoPipeLentWhileIdle(t *testing.T) {
	if !spliceSupported {
		t.Skip("no splice on this system")
	}
	tp := &tlsPass{}
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: tp})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3 {
		var sent bytes.Buffer
		if _, err := records(&sent, rng, 20); err != nil {
			t.Fatal(err)
		}
		go c.Write(sent.Bytes())
		got := make([]byte, sent.Len())
		c.SetReadDeadline(time.Now().Add(pollWait))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, sent.Bytes()) {
			t.Fatalf("echo: %v", err)
		}
		eventually(t, "both pumps parked", p.allParked)
		p.pipes.mu.Lock()
		lent := p.pipes.lent
		p.pipes.mu.Unlock()
		if lent != 0 {
			t.Fatalf("%d pipes lent to an idle connection", lent)
		}
	}
	if p.pipes.spliced.Load() == 0 {
		t.Fatal("nothing was spliced")
	}
}

// passAll clears everything; hello says whether it lifts the handshake
// timeout.
type passAll struct{ hello bool }

func (pa passAll) Feed(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(p), HelloDone: pa.hello}
}
func (passAll) EOF(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(p)}
}
func (passAll) Info() inspect.Info    { return inspect.Info{} }
func (passAll) Close(inspect.Summary) {}

// closeNotify tells when the inspection ends, with its summary.
type closeNotify struct {
	passAll
	ended chan<- inspect.Summary
}

func (cn *closeNotify) Close(s inspect.Summary) { cn.ended <- s }

type factoryOf func(kill func(inspect.Decision)) inspect.Inspector

func (f factoryOf) New(_ *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return f(kill), inspect.Decision{}
}

// Without a poller (no epoll set could be made), every pump keeps a
// goroutine and the connections still work: bytes both ways, Pass runs,
// bypass, a kill, the timeouts.
func TestWithoutPoller(t *testing.T) {
	noPoller := func(p *Proxy) { p.noPoller = true }
	t.Run("echo", func(t *testing.T) {
		p, addr := startIn(t, serveTCP(t, echoTCP), Config{}, noPoller)
		if len(p.pollers) != 0 {
			t.Fatal("pollers made")
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := bytes.Repeat([]byte("abcdefgh"), 1<<17)
		go func() {
			c.Write(msg)
			c.(*net.TCPConn).CloseWrite()
		}()
		c.SetReadDeadline(time.Now().Add(pollWait))
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
	})
	for _, tc := range []struct {
		name string
		f    inspect.Factory
	}{{"records", &tlsPass{}}, {"bypass", bypassFactory{}}} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: tc.f}, noPoller)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var sent bytes.Buffer
			records(&sent, rand.New(rand.NewPCG(3, 4)), 100)
			go func() {
				c.Write(sent.Bytes())
				c.(*net.TCPConn).CloseWrite()
			}()
			c.SetReadDeadline(time.Now().Add(pollWait))
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, sent.Bytes()) {
				t.Fatalf("echo: %d of %d bytes, %v", len(got), sent.Len(), err)
			}
		})
	}
	t.Run("kill and idle timeout", func(t *testing.T) {
		ended := make(chan inspect.Summary, 2)
		kills := make(chan func(inspect.Decision), 2)
		f := factoryOf(func(kill func(inspect.Decision)) inspect.Inspector {
			kills <- kill
			return &closeNotify{passAll: passAll{hello: true}, ended: ended}
		})
		_, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: f, Limits: Limits{IdleTimeout: 100 * time.Millisecond}}, noPoller)
		a, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		exchange(t, a, "a")
		kill := <-kills
		kill(inspect.Decision{Verdict: inspect.Reset, Reason: "test", Rule: "test"})
		if s := <-ended; s.Decision.Reason != "test" {
			t.Fatalf("killed with %+v", s.Decision)
		}
		b, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		exchange(t, b, "b")
		select {
		case s := <-ended:
			if s.Decision.Rule != RuleIdleTimeout {
				t.Fatalf("ended with %+v", s.Decision)
			}
		case <-time.After(pollWait):
			t.Fatal("no idle timeout")
		}
	})
}

// sleepy is an inspector whose every Feed takes a while, as a rule that
// computes.
type sleepy struct{ passAll }

func (sleepy) Feed(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	time.Sleep(2 * slowFeed)
	return inspect.Result{Forward: len(p), HelloDone: true}
}

// A connection whose inspection is slow is run off the poller from then
// on, so that it cannot hold up the poller's other connections; it
// still parks there when idle, with no goroutine.
func TestSlowInspectionLeavesThePoller(t *testing.T) {
	f := factoryOf(func(func(inspect.Decision)) inspect.Inspector { return sleepy{} })
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: f})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, "first")
	eventually(t, "parked", p.allParked)
	base := runtime.NumGoroutine()
	cs := p.openConns()
	if len(cs) != 1 || !cs[0].slow.Load() {
		t.Fatal("the slow inspection was not noticed")
	}
	for i := range 5 {
		exchange(t, c, fmt.Sprintf("again %d", i))
	}
	eventually(t, "parked again", p.allParked)
	eventually(t, "no goroutine left", func() bool { return runtime.NumGoroutine() <= base })
}

// blocking is an inspector whose first Feed up is slow and whose second
// blocks until released.
type blocking struct {
	passAll
	mu      sync.Mutex
	n       int
	release chan struct{}
}

func (b *blocking) Feed(d dissect.Direction, p []byte, _ time.Time) inspect.Result {
	b.mu.Lock()
	if d == dissect.Up {
		b.n++
	}
	n := b.n
	b.mu.Unlock()
	switch {
	case d != dissect.Up:
	case n == 1:
		time.Sleep(2 * slowFeed)
	case n == 2:
		<-b.release
	}
	return inspect.Result{Forward: len(p), HelloDone: true}
}

// While a connection known to be slow is being inspected, the other
// connections of its poller go on.
func TestSlowInspectionDoesNotHoldUpThePoller(t *testing.T) {
	if !pollerSupported {
		t.Skip("no poller on this system")
	}
	release := make(chan struct{})
	first := true
	var mu sync.Mutex
	f := factoryOf(func(func(inspect.Decision)) inspect.Inspector {
		mu.Lock()
		defer mu.Unlock()
		if first {
			first = false
			return &blocking{release: release}
		}
		return passAll{hello: true}
	})
	p, addr := startIn(t, serveTCP(t, echoTCP), Config{Factory: f})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the proxy's Shutdown, which waits for the pump
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	exchange(t, slow, "one")
	eventually(t, "parked", p.allParked)
	pl := p.openConns()[0].pl
	// A connection served by the same poller.
	var other net.Conn
	for other == nil {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, "x")
		for _, cc := range p.openConns() {
			// pumping orders the read of pl after its write.
			if cc.pumping.Load() && cc.pl == pl && cc.flow.Src.String() == c.LocalAddr().String() {
				other = c
			}
		}
	}
	slow.Write([]byte("two")) // its Feed blocks until released
	done := make(chan struct{})
	go func() {
		defer close(done)
		other.SetDeadline(time.Now().Add(pollWait))
		other.Write([]byte("not held up"))
		io.ReadFull(other, make([]byte, len("not held up")))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		unblock()
		t.Fatal("the poller waited for the slow inspection")
	}
	unblock()
	got := make([]byte, 3)
	slow.SetReadDeadline(time.Now().Add(pollWait))
	if _, err := io.ReadFull(slow, got); err != nil || string(got) != "two" {
		t.Fatalf("slow connection: %q, %v", got, err)
	}
}

// gated is an inspector whose first Feed up is slow (the connection's
// pumps leave the poller) and whose second blocks until released,
// telling when it started.
type gated struct {
	passAll
	mu      sync.Mutex
	n       int
	entered chan struct{}
	release chan struct{}
}

func (g *gated) Feed(d dissect.Direction, p []byte, _ time.Time) inspect.Result {
	g.mu.Lock()
	if d == dissect.Up {
		g.n++
	}
	n := g.n
	g.mu.Unlock()
	switch {
	case d != dissect.Up:
	case n == 1:
		time.Sleep(2 * slowFeed)
	case n == 2:
		close(g.entered)
		<-g.release
	}
	return inspect.Result{Forward: len(p), HelloDone: true}
}

// The end of a stream that the poller reports while the pump runs on a
// goroutine of its own (a slow connection) is not lost: the pump, told
// to look again, must read on to the end, not park after a short read.
// The level-triggered registration reports a socket still readable
// again only at the poller's next wake-up, and the end of the stream
// brings none.
//
// The pump reads "two" (a short read) and blocks in its Feed; "three"
// and the client's FIN arrive in one segment meanwhile and the poller,
// finding the pump running, only marks it woken. Released, the pump
// looks again, reads "three" (short: the FIN is left queued) and must
// not park before it has read the end. Nothing else happens on the
// poller afterwards: the upstream only reads, so no later event of
// another socket hides a lost wake-up.
func TestEndReportedWhileRunningElsewhere(t *testing.T) {
	if !pollerSupported {
		t.Skip("no poller on this system")
	}
	g := &gated{entered: make(chan struct{}), release: make(chan struct{})}
	var once sync.Once
	unblock := func() { once.Do(func() { close(g.release) }) }
	t.Cleanup(unblock) // before the proxy's Shutdown, which waits for the pump
	got := make(chan []byte, 1)
	upstream := serveTCP(t, func(c *net.TCPConn) {
		defer c.Close()
		b, _ := io.ReadAll(c) // until the proxy passes the client's half-close on
		got <- b
	})
	p, addr := startIn(t, upstream, Config{Factory: factoryOf(func(func(inspect.Decision)) inspect.Inspector { return g })})
	c, err := net.DialTCP("tcp", nil, mustResolve(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(pollWait))
	c.Write([]byte("one"))
	eventually(t, "slow and parked", func() bool {
		cs := p.openConns()
		return len(cs) == 1 && cs[0].slow.Load() && p.allParked()
	})
	up := &p.openConns()[0].up
	c.Write([]byte("two"))
	select {
	case <-g.entered:
	case <-time.After(pollWait):
		t.Fatal("the second Feed never came")
	}
	// Corked, the bytes and the FIN leave in one segment: the poller
	// reports both at once, while the pump is blocked in its Feed.
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, 1) })
	c.Write([]byte("three"))
	c.CloseWrite()
	eventually(t, "the pump marked woken", func() bool { return up.state.Load() == stWoken })
	unblock()
	select {
	case b := <-got:
		if string(b) != "onetwothree" {
			t.Fatalf("upstream got %q", b)
		}
	case <-time.After(pollWait):
		t.Fatal("the client's end never reached the upstream")
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client after the upstream closed: %q, %v; want EOF", b, err)
	}
}

func mustResolve(t testing.TB, addr string) *net.TCPAddr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Accepted sockets have TCP_NODELAY (small records must not wait for a
// delayed ACK), set once on the listener and inherited, and so does the
// socket to the upstream.
func TestSocketsHaveNoDelay(t *testing.T) {
	upstream := serveTCP(t, echoTCP)
	// Listen's listener has TCP_NODELAY from before it listens: the
	// accepted sockets inherit it.
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := ln.SyscallConn()
	raw.Control(func(fd uintptr) {
		if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
			t.Errorf("Listen's listener: TCP_NODELAY %d, %v", v, err)
		}
	})
	t.Run("Listen", func(t *testing.T) {
		p, addr := startOn(t, ln, upstream, Config{})
		checkNoDelay(t, p, addr)
	})
	// A listener of the caller's own, without it: the proxy sets it on
	// each accepted socket.
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("net.Listen", func(t *testing.T) {
		p, addr := startOn(t, nl.(*net.TCPListener), upstream, Config{})
		checkNoDelay(t, p, addr)
	})
}

func checkNoDelay(t *testing.T, p *Proxy, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	cs := p.openConns()
	if len(cs) != 1 {
		t.Fatalf("%d open connections, want 1", len(cs))
	}
	cn := cs[0]
	// Under the connection's lock: finish takes it before closing them.
	cn.mu.Lock()
	fds := map[string]int{"client": cn.client.fd, "upstream": cn.server.fd}
	cn.mu.Unlock()
	for name, fd := range fds {
		if fd < 0 {
			t.Fatalf("%s socket not raw (fd %d): the fast path was not taken", name, fd)
		}
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if err != nil || v == 0 {
			t.Errorf("%s socket: TCP_NODELAY %d, %v", name, v, err)
		}
	}
}

// An upstream that resets the connection while the pump waits for the
// next record header (peeking at it, after passed payloads) resets the
// client too: the peek takes the socket's error, which must not leave
// the next read to see a clean end.
func TestResetWhileProbing(t *testing.T) {
	if !spliceSupported {
		t.Skip("no splice on this system")
	}
	sent := make(chan struct{})
	release := make(chan struct{})
	upstream := serveTCP(t, func(c *net.TCPConn) {
		defer c.Close()
		// Records whose payloads the inspector passes: after each, the
		// pump peeks at the header of the next one.
		rec := make([]byte, 5+8<<10)
		rec[0], rec[1], rec[2], rec[3], rec[4] = 23, 3, 3, byte((8<<10)>>8), 0
		for range 4 {
			if _, err := c.Write(rec); err != nil {
				return
			}
		}
		close(sent)
		<-release
		c.SetLinger(0) // close with a reset
	})
	tp := &tlsPass{}
	_, addr := startIn(t, upstream, Config{Factory: tp})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := 4 * (5 + 8<<10)
	if _, err := io.ReadFull(c, make([]byte, want)); err != nil {
		t.Fatal(err)
	}
	<-sent
	close(release)
	c.SetReadDeadline(time.Now().Add(pollWait))
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the upstream's reset the client read %d bytes and %v, want a reset", n, err)
	}
}

// lockingListener takes the proxy's lock in Close, as a poller's accept
// does: it runs on the listener's descriptor (RawControl), which Close
// waits for, and takes the lock to register what it accepted.
type lockingListener struct {
	net.Listener
	p      *Proxy
	locked chan bool // whether Close could take the lock
}

func (l *lockingListener) Close() error {
	got := make(chan struct{})
	go func() {
		l.p.mu.Lock()
		l.p.mu.Unlock()
		close(got)
	}()
	select {
	case <-got:
		l.locked <- true
	case <-time.After(pollWait):
		l.locked <- false
	}
	return l.Listener.Close()
}

// Shutdown closes the listeners without holding the proxy's lock: a
// poller accepting on one of them at that moment waits for the lock
// inside the listener's descriptor, and Close waits for that call to
// end. Under load, SIGTERM could leave haka-proxy stuck there for good.
func TestShutdownClosesListenersUnlocked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var l *lockingListener
	served := serveThenShutdown(t, ln, func(p *Proxy) net.Listener {
		l = &lockingListener{Listener: ln, p: p, locked: make(chan bool, 1)}
		return l
	})
	if !<-l.locked {
		t.Fatalf("the listener's Close could not take the proxy's lock within %v: Shutdown holds it while closing", pollWait)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// A Shutdown that comes while Serve is still setting its listener up
// (SIGTERM during the start) waits for Serve before it stops the
// pollers: Serve picks one for its listener, and must not find them
// gone, nor race with their removal.
func TestShutdownDuringServe(t *testing.T) {
	for range 200 {
		ln, err := Listen(context.Background(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := serveThenShutdown(t, ln, func(*Proxy) net.Listener { return ln })
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
	}
}

// serveThenShutdown makes a proxy, serves the listener wrap gives it
// (made from ln), and calls Shutdown as soon as Serve has registered the
// listener, before it is set up. It returns Serve's result.
func serveThenShutdown(t *testing.T, ln net.Listener, wrap func(*Proxy) net.Listener) <-chan error {
	t.Helper()
	p, err := New(Config{Upstream: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	l := wrap(p)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	for p.mu.Lock(); len(p.listeners) == 0; p.mu.Lock() {
		p.mu.Unlock()
		runtime.Gosched()
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), pollWait)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	return served
}
