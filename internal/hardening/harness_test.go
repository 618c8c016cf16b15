package hardening

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/proxytest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// waitFor bounds every wait on the proxy: far above what any step takes,
// so that only a hang trips it.
const waitFor = 20 * time.Second

// TLS record content types and the record version of the recorded
// TLS 1.2 conversation.
const (
	typeAlert     = 21
	typeHandshake = 22
	typeAppData   = 23
	typeHeartbeat = 24
	tls12         = 0x0303
	// maxPlaintext is the largest record payload a TLS 1.2 peer sends
	// (2^14); the record layer accepts up to 2^14 + 2048.
	maxPlaintext = 1 << 14
)

// material is what every test shares: a certificate and a TLS 1.2
// conversation recorded once from crypto/tls (loadgen.Flight), which both
// ends replay byte for byte. The inspector sees a real handshake — hello,
// certificate, key exchange, ChangeCipherSpec, Finished — and real
// application-data records, and neither end spends a CPU on cryptography,
// so that thousands of connections cost what the proxy costs.
var material = sync.OnceValues(func() (*testMaterial, error) {
	cert, roots, err := tlspeer.NewCert("localhost")
	if err != nil {
		return nil, err
	}
	f, err := loadgen.RecordFlight(cert, roots)
	if err != nil {
		return nil, err
	}
	return &testMaterial{cert: cert, roots: roots, flight: f}, nil
})

type testMaterial struct {
	cert   tls.Certificate
	roots  *x509.CertPool
	flight *loadgen.Flight
}

func flight(t testing.TB) *loadgen.Flight {
	t.Helper()
	m, err := material()
	if err != nil {
		t.Fatalf("recording the TLS flight: %v", err)
	}
	return m.flight
}

// appRecord appends an application_data record carrying body.
func appRecord(b []byte, body []byte) []byte {
	return tlspeer.AppendRecord(b, typeAppData, tls12, body)
}

// randomRecords returns application_data records of random lengths from
// 1 to maxLen whose payloads total n bytes, drawn from rng.
func randomRecords(rng *rand.Rand, n, maxLen int) []byte {
	out := make([]byte, 0, n+n/max(maxLen/2, 1)*5+5)
	for n > 0 {
		k := min(n, 1+rng.IntN(maxLen))
		body := make([]byte, k)
		fillRandom(rng, body)
		out = appRecord(out, body)
		n -= k
	}
	return out
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// lines collects what a logger or a record writer writes, one JSON
// object per line, and lets a test wait for a line.
type lines struct {
	mu      sync.Mutex
	partial []byte
	all     []map[string]any
	raw     []string
	more    chan struct{} // closed at the next line
}

func newLines() *lines { return &lines{more: make(chan struct{})} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			m = map[string]any{"msg": "not JSON: " + line}
		}
		l.all = append(l.all, m)
		l.raw = append(l.raw, line)
	}
	close(l.more)
	l.more = make(chan struct{})
	return len(p), nil
}

func (l *lines) Sync() error { return nil }

// match returns the lines for which f is true.
func (l *lines) match(f func(map[string]any) bool) []map[string]any {
	return l.matchFrom(0, f)
}

// matchFrom returns the lines after the first from for which f is true.
func (l *lines) matchFrom(from int, f func(map[string]any) bool) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.all[min(from, len(l.all)):] {
		if f(m) {
			out = append(out, m)
		}
	}
	return out
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	const show = 15
	raw := l.raw
	if len(raw) > show {
		raw = raw[len(raw)-show:]
	}
	return strings.Join(raw, "\n")
}

// wait waits until n lines match f and returns them.
func (l *lines) wait(t testing.TB, what string, n int, f func(map[string]any) bool) []map[string]any {
	t.Helper()
	return l.waitFrom(t, what, 0, n, f)
}

// waitFrom waits until n lines after the first from match f.
func (l *lines) waitFrom(t testing.TB, what string, from, n int, f func(map[string]any) bool) []map[string]any {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		more := l.more
		l.mu.Unlock()
		if got := l.matchFrom(from, f); len(got) >= n {
			return got
		}
		select {
		case <-more:
		case <-deadline.C:
			t.Fatalf("waited %v for %d %s, got %d; last lines:\n%s", waitFor, n, what, len(l.matchFrom(from, f)), l)
		}
	}
}

func isMsg(msg string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == msg }
}

// record is a connection record as the proxy writes it.
type record struct {
	ID        uint64
	Src       string
	SNI       string
	BytesUp   int64
	BytesDown int64
	Verdict   string
	Reason    string
	Rule      string
	Version   string
	JA3       string
}

func toRecord(m map[string]any) record {
	var r record
	flow, _ := m["flow"].(map[string]any)
	if id, ok := flow["id"].(float64); ok {
		r.ID = uint64(id)
	}
	r.Src, _ = flow["src"].(string)
	r.SNI, _ = flow["sni"].(string)
	up, _ := m["bytes_up"].(float64)
	down, _ := m["bytes_down"].(float64)
	r.BytesUp, r.BytesDown = int64(up), int64(down)
	r.Verdict, _ = m["verdict"].(string)
	r.Reason, _ = m["reason"].(string)
	r.Rule, _ = m["rule"].(string)
	r.Version, _ = m["version"].(string)
	r.JA3, _ = m["ja3"].(string)
	return r
}

func isConnection(m map[string]any) bool { return m["type"] == "connection" }

// rigConfig says what a rig runs.
type rigConfig struct {
	// Rules is the rule set; nil runs the stock rules.
	Rules fs.FS
	// Policy is --rule-error-policy.
	Policy rules.ErrorPolicy
	// Deadline bounds one event's rules; zero is the default.
	Deadline time.Duration
	// Limits are the proxy's limits (zero fields take the defaults).
	Limits proxy.Limits
	// Wrap, when set, wraps each connection's rule handler: the test's
	// way into the inspector's path.
	Wrap func(f *inspect.Flow, h tlssm.Handler) tlssm.Handler
	// TLSLimits cap the reassembly of handshake messages.
	TLSLimits dissect.Limits
	// WrapFactory, when set, wraps the inspector factory.
	WrapFactory func(inspect.Factory) inspect.Factory
	// MachineTimeout is the TLS machine's handshake timeout per state;
	// zero is its default.
	MachineTimeout time.Duration
	// OnSession, when set, is given each connection's Session.
	OnSession func(*tlssm.Session)
	// Discard throws the logs and records away instead of keeping them:
	// for measurements of the heap.
	Discard bool
}

// rig is a proxy as haka-proxy runs it — the TLS state machine with the
// rules on every connection — on 127.0.0.1:0, through package proxy's
// public API. Connections go to the default upstream, or to the one
// routed for their client's address: a fault aimed at one client leaves
// the others on a healthy backend.
type rig struct {
	t       testing.TB
	p       *proxy.Proxy
	addr    string
	metrics *proxy.Metrics
	engine  *rules.Engine
	logs    *lines
	recs    *lines

	mu       sync.Mutex
	upstream string
	routes   map[netip.Addr]string
}

func newRig(t testing.TB, upstream string, cfg rigConfig) *rig {
	t.Helper()
	r := &rig{t: t, upstream: upstream, routes: map[netip.Addr]string{}, logs: newLines(), recs: newLines()}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "time"
	var logOut, recOut io.Writer = r.logs, r.recs
	if cfg.Discard {
		logOut, recOut = io.Discard, io.Discard
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(logOut), zapcore.DebugLevel))
	records := output.NewWriter(recOut, output.JSON)
	r.metrics = proxy.NewMetrics()
	engine, err := rules.New(rules.Options{
		FS:          cfg.Rules,
		Logger:      log,
		Alerts:      records,
		ErrorPolicy: cfg.Policy,
		Deadline:    cfg.Deadline,
		ObserveEval: func(_ string, d time.Duration) { r.metrics.ObserveRuleEval(d) },
	})
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	r.engine = engine
	newHandler := func(f *inspect.Flow, s *tlssm.Session) tlssm.Handler {
		if cfg.OnSession != nil {
			cfg.OnSession(s)
		}
		h := engine.NewTLSHandler(f, s)
		if cfg.Wrap != nil {
			h = cfg.Wrap(f, h)
		}
		return h
	}
	factory, err := tlssm.NewFactory(tlssm.Options{
		NewHandler: newHandler,
		Limits:     cfg.TLSLimits,
		Machine:    tlssm.MachineOptions{HandshakeTimeout: cfg.MachineTimeout},
	})
	if err != nil {
		t.Fatal(err)
	}
	var pf inspect.Factory = factory
	if cfg.WrapFactory != nil {
		pf = cfg.WrapFactory(factory)
	}
	t.Cleanup(engine.Close) // after the proxy's shutdown, registered below
	r.p, r.addr = proxytest.Start(t, proxy.Config{
		Dial:    r.dial,
		Factory: pf,
		Logger:  log,
		Records: records,
		Metrics: r.metrics,
		Limits:  cfg.Limits,
	})
	return r
}

// route sends the connections of clients on src to upstream.
func (r *rig) route(src netip.Addr, upstream string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[src] = upstream
}

func (r *rig) dial(ctx context.Context, f *inspect.Flow) (*net.TCPConn, error) {
	r.mu.Lock()
	to, ok := r.routes[f.Src.Addr()]
	if !ok {
		to = r.upstream
	}
	r.mu.Unlock()
	var d net.Dialer
	d.KeepAlive = -1
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// connect dials the proxy from src (127.0.0.1 when invalid).
func (r *rig) connect(src netip.Addr) *net.TCPConn {
	r.t.Helper()
	c, err := dialFrom(src, r.addr)
	if err != nil {
		r.t.Fatalf("dial the proxy: %v", err)
	}
	return c
}

func dialFrom(src netip.Addr, addr string) (*net.TCPConn, error) {
	d := net.Dialer{KeepAlive: -1, Timeout: waitFor}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(waitFor))
	return tc, nil
}

// records returns the connection records written so far, and waitRecords
// waits until there are n matching f.
func (r *rig) records(f func(record) bool) []record {
	var out []record
	for _, m := range r.recs.match(isConnection) {
		if rec := toRecord(m); f == nil || f(rec) {
			out = append(out, rec)
		}
	}
	return out
}

func (r *rig) waitRecords(what string, n int, f func(record) bool) []record {
	r.t.Helper()
	ms := r.recs.wait(r.t, what, n, func(m map[string]any) bool {
		return isConnection(m) && (f == nil || f(toRecord(m)))
	})
	out := make([]record, len(ms))
	for i, m := range ms {
		out[i] = toRecord(m)
	}
	return out
}

// fromAddr matches the records of clients on src.
func fromAddr(src netip.Addr) func(record) bool {
	return func(r record) bool {
		ap, err := netip.ParseAddrPort(r.Src)
		return err == nil && ap.Addr() == src
	}
}

// Client source addresses: the background client talks from the first,
// a case's hostile client from the others, so that routes and rules can
// tell them apart.
var (
	srcBackground = netip.MustParseAddr("127.0.0.1")
	srcFault      = netip.MustParseAddr("127.0.0.2")
	srcFault2     = netip.MustParseAddr("127.0.0.3")
)

// metric reads a counter or a gauge.
func metric(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	panic("not a counter or a gauge")
}

// backend is a TCP server on 127.0.0.1:0 that runs handle on each
// connection and closes it afterwards.
type backend struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

func startBackend(t testing.TB, handle func(c *net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: ln.Addr().String(), open: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.open[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer func() {
					b.mu.Lock()
					delete(b.open, c)
					b.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(2 * waitFor))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.open {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// tlsEcho is the backend of the recorded conversation: it plays the
// server's side of the handshake, then echoes every byte until the
// client's end of stream, and half-closes.
func tlsEcho(f *loadgen.Flight) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		if err := f.PlayServer(c, make([]byte, f.MaxTurn())); err != nil {
			return
		}
		io.Copy(c, c)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// exchange is one whole connection of the background client: the
// recorded handshake, then records of random sizes echoed by tlsEcho,
// half-close, and every byte checked.
func exchange(addr string, src netip.Addr, f *loadgen.Flight, rng *rand.Rand) error {
	c, err := dialFrom(src, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := f.PlayClient(c, make([]byte, f.MaxTurn())); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	sent := randomRecords(rng, 1+rng.IntN(8<<10), 2<<10)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(sent)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err != nil {
		return fmt.Errorf("read after %d of %d bytes: %w", len(got), len(sent), err)
	}
	if sha256.Sum256(got) != sha256.Sum256(sent) {
		return fmt.Errorf("echo differs: %d bytes sent, %d back, first difference at %d", len(sent), len(got), firstDiff(got, sent))
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// background is a client that completes exchanges through the proxy, one
// after the other, for as long as a case runs: the proof that the proxy
// kept serving everyone else while one connection was attacked.
type background struct {
	ok     atomic.Int64
	mu     sync.Mutex
	errs   []error
	stop   chan struct{}
	done   chan struct{}
	change chan struct{} // closed at each completed exchange
}

func startBackground(t testing.TB, addr string) *background {
	t.Helper()
	f := flight(t)
	b := &background{stop: make(chan struct{}), done: make(chan struct{}), change: make(chan struct{})}
	go func() {
		defer close(b.done)
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-b.stop:
				return
			default:
			}
			if err := exchange(addr, srcBackground, f, rng); err != nil {
				b.mu.Lock()
				b.errs = append(b.errs, err)
				b.mu.Unlock()
				continue
			}
			b.ok.Add(1)
			b.mu.Lock()
			close(b.change)
			b.change = make(chan struct{})
			b.mu.Unlock()
			// A steady trickle, not a flood: the case under test
			// keeps the CPU.
			select {
			case <-b.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(b.halt)
	return b
}

func (b *background) halt() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

// progress waits until at least n exchanges completed after mark (a
// value of ok read before), and fails if any exchange failed.
func (b *background) progress(t testing.TB, mark int64, n int64) {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		errs, change := b.errs, b.change
		b.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("the background client failed %d exchange(s) during the case; first: %v", len(errs), errs[0])
		}
		if b.ok.Load() >= mark+n {
			return
		}
		select {
		case <-change:
		case <-deadline.C:
			t.Fatalf("the background client completed %d exchanges in %v, want %d", b.ok.Load()-mark, waitFor, n)
		}
	}
}

// during runs a case with the background client running, and checks that
// exchanges completed both while it ran and after it.
func during(t *testing.T, r *rig, fn func()) {
	t.Helper()
	bg := startBackground(t, r.addr)
	bg.progress(t, 0, 1)
	mark := bg.ok.Load()
	fn()
	// Exchanges that began during the case and after it complete.
	bg.progress(t, mark, 3)
	bg.halt()
	bg.progress(t, 0, 0)
}

// expectClosed reads c to its end and reports how it ended: EOF, a reset,
// or the bytes read before. It fails on a timeout.
func expectClosed(t testing.TB, c net.Conn) (got []byte, reset bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitFor))
	got, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case err == nil:
		return got, false
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the connection was not closed within %v (%d bytes read)", waitFor, len(got))
	case isReset(err):
		return got, true
	default:
		t.Fatalf("reading: %v", err)
	}
	return got, false
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset by peer") || strings.Contains(err.Error(), "broken pipe"))
}

// ownGoroutines counts the goroutines running code of the proxy, the
// inspector or the rules (not of this test package): the connections'.
func ownGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		var frames []string
		for _, l := range strings.Split(g, "\n") {
			if !strings.HasPrefix(l, "created by") {
				frames = append(frames, l)
			}
		}
		s := strings.Join(frames, "\n")
		if strings.Contains(s, "internal/hardening") {
			continue
		}
		for _, pkg := range []string{"haka-proxy/proxy.", "haka-proxy/dissect", "haka-proxy/rules.", "haka-proxy/sm."} {
			if strings.Contains(s, pkg) {
				count++
				break
			}
		}
	}
	return count
}

// eventually polls cond until it holds, for at most waitFor: for what the
// OS or the runtime gives no event for (a goroutine exiting, a count
// going down).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v", what, waitFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
