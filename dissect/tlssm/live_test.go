package tlssm

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/proxytest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The Session in the real proxy, between real TLS peers on 127.0.0.1.

// liveWait bounds every wait on the network: far above what a step takes
// on a loaded machine, so only a real hang trips it.
const liveWait = 20 * time.Second

// liveProxy is a proxy in front of upstream with a tlssm Factory whose
// connections are judged by verdict (nil: no rules).
type liveProxy struct {
	addr    string
	records chan output.Connection
	mu      sync.Mutex
	events  []string
}

type recordSink chan output.Connection

func (s recordSink) Write(b []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var c output.Connection
		if err := json.Unmarshal(line, &c); err != nil {
			return 0, err
		}
		s <- c
	}
	return len(b), nil
}

func startLiveProxy(t *testing.T, upstream string, verdict func(*Event) inspect.Decision) *liveProxy {
	t.Helper()
	lp := &liveProxy{records: make(chan output.Connection, 64)}
	opts := Options{}
	if verdict != nil {
		opts.NewHandler = func(_ *inspect.Flow, s *Session) Handler {
			return &liveHandler{lp: lp, verdict: verdict}
		}
	}
	f, err := NewFactory(opts)
	if err != nil {
		t.Fatal(err)
	}
	_, lp.addr = proxytest.Start(t, proxy.Config{Upstream: upstream, Factory: f, Records: output.NewWriter(recordSink(lp.records), output.JSON)})
	return lp
}

// record returns the next connection line.
func (lp *liveProxy) record(t *testing.T) output.Connection {
	t.Helper()
	select {
	case r := <-lp.records:
		return r
	case <-time.After(liveWait):
		t.Fatal("no connection line")
	}
	return output.Connection{}
}

func (lp *liveProxy) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", lp.addr, liveWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// liveHandler hooks every event, notes it and answers with verdict.
type liveHandler struct {
	lp      *liveProxy
	verdict func(*Event) inspect.Decision
}

func (h *liveHandler) Hooked(id EventID) bool { return id != EvRecord }
func (h *liveHandler) Event(ev *Event) inspect.Decision {
	h.lp.mu.Lock()
	h.lp.events = append(h.lp.events, formatEvent(ev))
	h.lp.mu.Unlock()
	return h.verdict(ev)
}
func (h *liveHandler) Close() {}

func (lp *liveProxy) eventLog() string {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return strings.Join(lp.events, "\n")
}

func passAll(*Event) inspect.Decision { return inspect.Decision{} }

// startVulnerable runs the Heartbleed-vulnerable echo backend.
func startVulnerable(t *testing.T) (*tlspeer.Backend, *tls.Config) {
	t.Helper()
	cert, pool, err := tlspeer.NewCert("backend.test")
	if err != nil {
		t.Fatal(err)
	}
	b := &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{cert}}, LeakSize: 16000}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, &tls.Config{RootCAs: pool, ServerName: "backend.test"}
}

// The classic attack: with the stock rule's decisions, the 3-byte request
// never reaches the backend; without rules, the machine only reports it
// and the backend leaks (which shows the attack is real).
func TestLiveHeartbleedCleartext(t *testing.T) {
	b, _ := startVulnerable(t)
	lp := startLiveProxy(t, b.Addr(), heartbleedRule)
	o := tlspeer.CleartextHeartbleed(lp.dial(t), liveWait)
	if o.Leaked != 0 || !o.Closed {
		t.Errorf("attacker: %+v, want no leak and a closed connection", o)
	}
	rec := lp.record(t)
	if got := b.Heartbeats.Load(); got != 0 {
		t.Errorf("the backend received %d heartbeats", got)
	}
	if rec.Verdict != "drop" || !strings.HasPrefix(rec.Reason, "heartbleed") || rec.Rule != "test:heartbleed" {
		t.Errorf("connection line %+v", rec)
	}

	open := startLiveProxy(t, b.Addr(), nil)
	c := open.dial(t)
	o = tlspeer.CleartextHeartbleed(c, liveWait)
	c.Close()
	if o.Leaked < 16384 || b.Heartbeats.Load() != 1 {
		t.Errorf("without rules: %+v and %d heartbeats, want the leak through", o, b.Heartbeats.Load())
	}
	if rec := open.record(t); rec.Verdict != "pass" {
		t.Errorf("without rules: %+v", rec)
	}
}

// The encrypted attack: the request is well formed and reaches the
// backend; its answer, far longer, is held and dropped, and not one of its
// bytes reaches the attacker.
func TestLiveHeartbleedEncrypted(t *testing.T) {
	b, cfg := startVulnerable(t)
	lp := startLiveProxy(t, b.Addr(), heartbleedRule)
	o := tlspeer.EncryptedHeartbleed(lp.dial(t), cfg, 64, liveWait)
	if o.Leaked != 0 || !o.Closed {
		t.Errorf("attacker: %+v, want no leak and a closed connection", o)
	}
	rec := lp.record(t)
	if got := b.Heartbeats.Load(); got != 1 {
		t.Errorf("the backend received %d heartbeats, want the request", got)
	}
	if rec.Verdict != "drop" || rec.Reason != "heartbleed" || rec.Flow.SNI != "backend.test" || rec.Version != "TLS1.2" {
		t.Errorf("connection line %+v", rec)
	}
	if log := lp.eventLog(); !strings.Contains(log, "down heartbeat record_length=16000 encrypted leak") {
		t.Errorf("no leak event:\n%s", log)
	}

	// A request too short for AES-GCM is stopped on its way in.
	lp = startLiveProxy(t, b.Addr(), heartbleedRule)
	o = tlspeer.EncryptedHeartbleed(lp.dial(t), cfg, 20, liveWait)
	rec = lp.record(t)
	if o.Leaked != 0 || b.Heartbeats.Load() != 1 || !strings.Contains(rec.Reason, AnomalyHeartbeatRequestTooShort) {
		t.Errorf("short request: %+v, %d heartbeats, %+v", o, b.Heartbeats.Load(), rec)
	}

	open := startLiveProxy(t, b.Addr(), nil)
	c := open.dial(t)
	o = tlspeer.EncryptedHeartbleed(c, cfg, 64, liveWait)
	c.Close()
	if o.Leaked != 5+16000 {
		t.Errorf("without rules: %+v, want the leak through", o)
	}
	open.record(t)
}

// crypto/tls clients and servers, TLS 1.2 and 1.3, through the proxy
// with the TLS inspector and no rules: untouched.
func TestLiveCryptoTLS(t *testing.T) {
	b, cfg := startVulnerable(t) // an echo server, as long as nobody sends heartbeats
	for _, rules := range []bool{false, true} {
		var verdict func(*Event) inspect.Decision
		if rules {
			verdict = heartbleedRule
		}
		lp := startLiveProxy(t, b.Addr(), verdict)
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(fmt.Sprintf("rules=%v/%s", rules, tls.VersionName(v)), func(t *testing.T) {
				cfg := cfg.Clone()
				cfg.MinVersion, cfg.MaxVersion = v, v
				cfg.NextProtos = []string{"h2", "http/1.1"}
				tc := tls.Client(lp.dial(t), cfg)
				tc.SetDeadline(time.Now().Add(liveWait))
				if err := tc.Handshake(); err != nil {
					t.Fatalf("handshake: %v", err)
				}
				msg := bytes.Repeat([]byte("through the inspector "), 4000) // several records
				go tc.Write(msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(tc, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo: %v", err)
				}
				tc.Close()
				rec := lp.record(t)
				want := map[uint16]string{tls.VersionTLS12: "TLS1.2", tls.VersionTLS13: "TLS1.3"}[v]
				if rec.Verdict != "pass" || rec.Flow.SNI != "backend.test" || rec.Version != want || rec.JA4 == "" || len(rec.Anomalies) != 0 {
					t.Errorf("connection line %+v", rec)
				}
			})
		}
	}
}

// openssl s_client against s_server, curl against s_server and against a
// Go HTTPS server, TLS 1.2 and 1.3, through the inspector without rules.
func TestLiveOpenSSLAndCurl(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install openssl curl)", tool)
		}
	}
	certFile, keyFile := tlspeer.PEMFiles(t, "localhost")
	lp := startLiveProxy(t, tlspeer.StartSServer(t, certFile, keyFile, liveWait), nil)
	_, port, _ := net.SplitHostPort(lp.addr)
	for _, v := range []string{"1_2", "1_3"} {
		t.Run("s_client tls"+v, func(t *testing.T) {
			cmd := exec.Command("openssl", "s_client", "-connect", lp.addr, "-servername", "localhost",
				"-CAfile", certFile, "-verify_return_error", "-tls"+v)
			cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("Verify return code: 0 (ok)")) {
				t.Fatalf("s_client: %v\n%s", err, out)
			}
			if rec := lp.record(t); rec.Verdict != "pass" || rec.Flow.SNI != "localhost" || rec.Version != "TLS"+strings.ReplaceAll(v, "_", ".") {
				t.Errorf("connection line %+v", rec)
			}
		})
		t.Run("curl s_server tls"+v, func(t *testing.T) {
			dotted := strings.ReplaceAll(v, "_", ".")
			out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", certFile, "--tlsv"+dotted, "--tls-max", dotted,
				"https://localhost:"+port+"/").CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("s_server")) {
				t.Fatalf("curl: %v\n%s", err, out)
			}
			if rec := lp.record(t); rec.Verdict != "pass" || rec.ALPN == "" {
				t.Errorf("connection line %+v", rec)
			}
		})
	}
	t.Run("curl Go HTTPS", func(t *testing.T) {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s over %s", r.URL.Path, tls.VersionName(r.TLS.Version))
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		defer srv.Close()
		lp := startLiveProxy(t, srv.Listener.Addr().String(), nil)
		_, port, _ := net.SplitHostPort(lp.addr)
		for _, v := range []string{"1.2", "1.3"} {
			out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", certFile, "--tlsv"+v, "--tls-max", v,
				"https://localhost:"+port+"/x").CombinedOutput()
			if want := "hello /x over TLS " + v; err != nil || string(out) != want {
				t.Fatalf("curl %s: %v: got %q, want %q", v, err, out, want)
			}
			if rec := lp.record(t); rec.Verdict != "pass" || rec.Version != "TLS"+v {
				t.Errorf("connection line %+v", rec)
			}
		}
	})
}
