package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/proxytest"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// waitFor bounds every wait of a test on the proxy: far above what any
// step takes, so that only a real hang trips it.
const waitFor = 20 * time.Second

// harness is a proxy running on 127.0.0.1:0 with its records and logs
// captured.
type harness struct {
	t       *testing.T
	p       *proxy.Proxy
	addr    string
	records chan output.Connection
	logs    *observer.ObservedLogs
	metrics *proxy.Metrics
}

// recordSink turns each record line written by output.Writer (which
// flushes once per record) into a value on a channel.
type recordSink struct{ ch chan output.Connection }

func (s recordSink) Write(b []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var c output.Connection
		if err := json.Unmarshal(line, &c); err != nil {
			return 0, err
		}
		s.ch <- c
	}
	return len(b), nil
}

// startProxy runs a proxy in front of upstream with cfg (Upstream,
// Records, Logger and Metrics are filled in).
func startProxy(t *testing.T, upstream string, cfg proxy.Config) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{t: t, records: make(chan output.Connection, 1024), logs: logs}
	if cfg.Upstream == "" && cfg.Dial == nil {
		cfg.Upstream = upstream
	}
	cfg.Logger = zap.New(core)
	cfg.Records = output.NewWriter(recordSink{h.records}, output.JSON)
	if cfg.Metrics == nil {
		cfg.Metrics = proxy.NewMetrics()
	}
	h.metrics = cfg.Metrics
	h.p, h.addr = proxytest.Start(t, cfg)
	return h
}

// record waits for the next connection record.
func (h *harness) record() output.Connection {
	h.t.Helper()
	select {
	case c := <-h.records:
		return c
	case <-time.After(waitFor):
		h.t.Fatal("no connection record")
	}
	return output.Connection{}
}

func (h *harness) dial() *net.TCPConn {
	h.t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// expectReset dials the proxy and checks that the connection is reset.
// On loopback the proxy can accept, decide and reset before the client's
// connect has returned, so the reset may surface from Dial itself.
func (h *harness) expectReset() {
	h.t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			h.t.Fatalf("dial: %v", err)
		}
		return
	}
	defer c.Close()
	if _, err := readAll(h.t, c); !errors.Is(err, syscall.ECONNRESET) {
		h.t.Fatalf("client read: %v, want ECONNRESET", err)
	}
}

// backend is a real TCP server on 127.0.0.1:0 running handle for each
// connection.
type backend struct {
	ln    net.Listener
	addr  string
	conns chan *net.TCPConn // every accepted connection, if wanted
	wg    sync.WaitGroup
}

func startBackend(t *testing.T, handle func(*net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: ln.Addr().String()}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(b.stop)
	return b
}

// stop closes the listener and waits for every handler to return.
func (b *backend) stop() {
	b.ln.Close()
	b.wg.Wait()
}

// echo copies the connection back to itself and half-closes at EOF.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// readAll reads c to EOF or error, bounded by waitFor.
func readAll(t *testing.T, c net.Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitFor))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read hung: %v", err)
	}
	return b, err
}

// --- TLS material -------------------------------------------------------

type tlsFiles struct {
	cert     tls.Certificate
	pool     *x509.CertPool
	certFile string
	keyFile  string
}

// newTLSFiles makes a self-signed ECDSA certificate for localhost and
// 127.0.0.1, and writes it to files for openssl and curl.
func newTLSFiles(t *testing.T) *tlsFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &tlsFiles{
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
		pool:     x509.NewCertPool(),
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(f.certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if f.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	f.pool.AppendCertsFromPEM(certPEM)
	return f
}

// --- test inspectors ----------------------------------------------------

// factoryFunc adapts a function to inspect.Factory.
type factoryFunc func(f *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision)

func (ff factoryFunc) New(f *inspect.Flow, kill func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return ff(f, kill)
}

// lineInspector judges each direction line by line: a line is held until
// its '\n' has arrived, then judge says what happens to it. Lines before
// a killing verdict are forwarded; the judged line never is.
type lineInspector struct {
	judge func(dir dissect.Direction, line []byte) inspect.Decision
	// fed, if set, receives the direction of every Feed call.
	fed chan dissect.Direction

	mu        sync.Mutex
	feeds     [2]int // Feed calls per direction
	afterByp  int    // Feed calls after a bypass
	bypassed  bool
	closed    bool
	summary   inspect.Summary
	maxSeen   [2]int // the largest pending seen per direction
	helloDone bool
}

func (li *lineInspector) Feed(dir dissect.Direction, p []byte, _ time.Time) inspect.Result {
	li.mu.Lock()
	li.feeds[dir]++
	if li.bypassed {
		li.afterByp++
	}
	li.maxSeen[dir] = max(li.maxSeen[dir], len(p))
	li.mu.Unlock()
	if li.fed != nil {
		li.fed <- dir
	}
	var res inspect.Result
	for {
		i := bytes.IndexByte(p[res.Forward:], '\n')
		if i < 0 {
			break
		}
		line := p[res.Forward : res.Forward+i+1]
		d := inspect.Decision{}
		if li.judge != nil {
			d = li.judge(dir, line)
		}
		if d.Verdict == inspect.Bypass {
			li.mu.Lock()
			li.bypassed = true
			li.mu.Unlock()
			res.Forward += len(line)
			res.Decision = d
			return res
		}
		if d.Verdict.Kills() {
			res.Decision = d
			return res
		}
		res.Forward += len(line)
		if dir == dissect.Up {
			res.HelloDone = true
		}
	}
	return res
}

func (li *lineInspector) EOF(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	// An unterminated last line goes through.
	return inspect.Result{Forward: len(p)}
}

func (li *lineInspector) Info() inspect.Info { return inspect.Info{SNI: "line.test"} }

func (li *lineInspector) Close(s inspect.Summary) {
	li.mu.Lock()
	li.closed = true
	li.summary = s
	li.mu.Unlock()
}

// onLine returns a factory of line inspectors whose verdict is given by
// the first word of the line ("DROP", "RESET", "BYPASS", "PANIC"); the
// inspectors made are sent on made.
func onLine(made chan<- *lineInspector) inspect.Factory {
	return factoryFunc(func(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
		li := &lineInspector{fed: make(chan dissect.Direction, 1024), judge: func(_ dissect.Direction, line []byte) inspect.Decision {
			switch {
			case bytes.HasPrefix(line, []byte("DROP")):
				return inspect.Decision{Verdict: inspect.Drop, Reason: "line says drop", Rule: "test.lua:1"}
			case bytes.HasPrefix(line, []byte("RESET")):
				return inspect.Decision{Verdict: inspect.Reset, Reason: "line says reset", Rule: "test.lua:2"}
			case bytes.HasPrefix(line, []byte("BYPASS")):
				return inspect.Decision{Verdict: inspect.Bypass, Reason: "line says bypass", Rule: "test.lua:3"}
			case bytes.HasPrefix(line, []byte("PANIC")):
				panic("line says panic")
			}
			return inspect.Decision{}
		}}
		if made != nil {
			made <- li
		}
		return li, inspect.Decision{}
	})
}

// recordInspector frames each direction as TLS records and holds every
// record until it is complete, as the TLS inspection does; a byte stream
// that is not TLS ends in a parse error.
type recordInspector struct{}

func (recordInspector) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return &recordInspector{}, inspect.Decision{}
}

func (*recordInspector) Feed(dir dissect.Direction, p []byte, _ time.Time) inspect.Result {
	var res inspect.Result
	for len(p)-res.Forward >= 5 {
		h := p[res.Forward:]
		typ, major, n := h[0], h[1], int(h[3])<<8|int(h[4])
		if typ < 20 || typ > 24 || major != 3 || n > 1<<14+2048 {
			res.Decision = inspect.Decision{
				Verdict: inspect.Drop,
				Reason:  "parse error: not a TLS record header: " + strings.TrimSpace(string(h[:5])),
				Rule:    "builtin:fail",
			}
			return res
		}
		if len(h) < 5+n {
			break
		}
		res.Forward += 5 + n
		if dir == dissect.Up {
			res.HelloDone = true
		}
	}
	return res
}

func (*recordInspector) EOF(dissect.Direction, []byte, time.Time) inspect.Result {
	return inspect.Result{} // a truncated record is not forwarded
}
func (*recordInspector) Info() inspect.Info    { return inspect.Info{} }
func (*recordInspector) Close(inspect.Summary) {}

// scanLines reads c line by line into a channel, closed at EOF.
func scanLines(c net.Conn) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		s := bufio.NewScanner(c)
		for s.Scan() {
			ch <- s.Text()
		}
	}()
	return ch
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
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
	panic("not a counter or gauge")
}
