// Package democmd is `haka-proxy demo`: the proxy, with the stock rules,
// in front of a TLS server that acts like a Heartbleed-vulnerable
// OpenSSL, and four clients — two normal ones and two Heartbleed
// attackers — all on 127.0.0.1, then a report of what each got.
//
//	root.AddCommand(democmd.New(os.Stdout, os.Stderr, demoFactory))
//
// It needs no network, no privilege and no file, finishes in about a
// second, and fails (a non-nil error, exit status 1) when the proxy does
// not do what the report says it does: a normal client broken, an
// attack not stopped, a leaked byte through.
package democmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// BuildFactory makes the inspection of the demo's proxy: the proxy's own,
// with the stock rules, its alerts written to alerts and its rule errors
// logged to log.
type BuildFactory func(alerts *output.Writer, log *zap.Logger) (inspect.Factory, error)

// Options are the demo's settings.
type Options struct {
	// Out receives the report; Log the proxy's warnings and errors.
	Out, Log io.Writer
	// Build makes the proxy's inspection.
	Build BuildFactory
	// Wait bounds each step (zero: DefaultWait).
	Wait time.Duration
}

// DefaultWait bounds each step of the demo. A step takes milliseconds;
// only a hang, which is a failure, comes near it.
const DefaultWait = 10 * time.Second

// leakSize is what the vulnerable backend sends back to an encrypted
// heartbeat request: a record of 16000 bytes of "memory", where a
// well-behaved server would answer with as many bytes as it was sent.
const leakSize = 16000

// heartbeatRequest is the size of the encrypted attacker's heartbeat
// request record: well-formed (longer than AES-GCM's nonce, header,
// padding and tag need), so that it passes and reaches the backend.
const heartbeatRequest = 64

// New returns the demo command.
func New(stdout, stderr io.Writer, build BuildFactory) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Show haka-proxy stopping Heartbleed, on 127.0.0.1",
		Long: `Demo starts, on 127.0.0.1, a TLS echo server that acts like a
Heartbleed-vulnerable OpenSSL (it answers every heartbeat request with far
more bytes than were asked for) and haka-proxy in front of it with the
stock rules. Then, through the proxy:

  1. a TLS 1.3 client and a TLS 1.2 client exchange a message;
  2. a cleartext Heartbleed attacker sends, during the handshake, a
     heartbeat request declaring a 16 KiB payload in a 3-byte record;
  3. an encrypted Heartbleed attacker completes a normal TLS 1.2 session
     and sends a small, valid heartbeat request: it passes, and the server
     answers with a 16000-byte record — the leak — which the proxy holds
     and drops.

The same two attacks are then run against the server directly, to measure
what leaks without the proxy. The report says what each client got, which
rule dropped which connection and why, how many leaked bytes reached an
attacker and how many heartbeats reached the server, and lists the alert
and connection records as --alerts writes them.

It needs no network and no privilege. The exit status is 1 when an
expectation fails: a normal client broken, an attack let through.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Run(cmd.Context(), Options{Out: stdout, Log: stderr, Build: build})
		},
	}
}

// Run runs the demo and writes its report to o.Out. The error lists the
// expectations that failed.
func Run(ctx context.Context, o Options) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	if o.Build == nil {
		return errors.New("demo: no inspection to run")
	}
	d, err := start(ctx, o)
	if err != nil {
		return err
	}
	defer d.stop()
	steps := []*step{
		d.exchange("TLS 1.3 client", tls.VersionTLS13),
		d.exchange("TLS 1.2 client", tls.VersionTLS12),
		d.cleartextAttack(),
		d.encryptedAttack(),
	}
	direct := d.direct()
	d.report(o.Out, steps, direct)
	var failed []string
	for _, s := range steps {
		failed = append(failed, s.failed...)
	}
	failed = append(failed, direct.failed...)
	if len(failed) > 0 {
		return fmt.Errorf("demo: %d expectation(s) failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

// demo is the backend, the proxy in front of it and what it wrote.
type demo struct {
	wait    time.Duration
	backend *tlspeer.Backend
	client  *tls.Config
	factory inspect.Factory
	proxy   *proxy.Proxy
	addr    string
	served  chan error
	records *records
}

func start(ctx context.Context, o Options) (*demo, error) {
	cert, pool, err := tlspeer.NewCert("backend.demo")
	if err != nil {
		return nil, fmt.Errorf("demo: certificate: %w", err)
	}
	d := &demo{
		wait:    o.Wait,
		backend: &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{cert}}, LeakSize: leakSize},
		client:  &tls.Config{RootCAs: pool, ServerName: "backend.demo"},
		records: newRecords(),
	}
	if err := d.backend.Start(); err != nil {
		return nil, fmt.Errorf("demo: backend: %w", err)
	}
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.Lock(zapcore.AddSync(o.Log)), zapcore.WarnLevel))
	w := output.NewWriter(d.records, output.JSON)
	if d.factory, err = o.Build(w, log); err != nil {
		d.backend.Close()
		return nil, fmt.Errorf("demo: %w", err)
	}
	d.proxy, err = proxy.New(proxy.Config{Upstream: d.backend.Addr(), Factory: d.factory, Logger: log, Records: w})
	if err == nil {
		var ln net.Listener
		if ln, err = proxy.Listen(ctx, "127.0.0.1:0"); err == nil {
			d.addr = ln.Addr().String()
			d.served = make(chan error, 1)
			go func() { d.served <- d.proxy.Serve(ln) }()
		}
	}
	if err != nil {
		d.closeFactory()
		d.backend.Close()
		return nil, fmt.Errorf("demo: proxy: %w", err)
	}
	return d, nil
}

func (d *demo) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), d.wait)
	defer cancel()
	d.proxy.Shutdown(ctx)
	<-d.served
	d.closeFactory()
	d.backend.Close()
}

func (d *demo) closeFactory() {
	if c, ok := d.factory.(interface{ Close() }); ok {
		c.Close()
	}
}

// step is one client through the proxy and what came of it.
type step struct {
	name string
	// got is what the client got, in a few words.
	got string
	// conn is the proxy's record of the connection; alerts are those
	// raised on it.
	conn   *record
	alerts []*record
	// leaked counts the bytes of heartbeat records that reached the
	// attacker; heartbeats those that reached the backend.
	attack     bool
	leaked     int
	heartbeats int64
	// note follows the count of heartbeats that reached the server.
	note   string
	failed []string
}

func (s *step) fail(format string, args ...any) {
	s.failed = append(s.failed, s.name+": "+fmt.Sprintf(format, args...))
}

func (d *demo) dial() (net.Conn, error) {
	c, err := net.DialTimeout("tcp", d.addr, d.wait)
	if err != nil {
		return nil, fmt.Errorf("connecting to the proxy: %w", err)
	}
	return c, nil
}

// finish closes the client's connection and collects the proxy's records
// of it.
func (d *demo) finish(s *step, c net.Conn) {
	src := c.LocalAddr().String()
	c.Close()
	rec, ok := d.records.connection(src, d.wait)
	if !ok {
		s.fail("the proxy wrote no connection record")
		return
	}
	s.conn = rec
	s.alerts = d.records.alerts(rec.Flow.ID)
}

// exchange is a normal client of TLS version v: a handshake and a
// message echoed back.
func (d *demo) exchange(name string, v uint16) *step {
	s := &step{name: name}
	c, err := d.dial()
	if err != nil {
		s.got = "could not connect"
		s.fail("%v", err)
		return s
	}
	cfg := d.client.Clone()
	cfg.MinVersion, cfg.MaxVersion = v, v
	msg := []byte("hello through haka-proxy")
	err = func() error {
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(d.wait))
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		if _, err := tc.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(tc, got); err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo: got %q", got)
		}
		// An orderly close: close_notify, then the server's.
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tc); err != nil {
			return fmt.Errorf("closing: %w", err)
		}
		return nil
	}()
	d.finish(s, c)
	switch {
	case err != nil:
		s.got = "broken: " + err.Error()
		s.fail("%v", err)
	case s.conn == nil:
	case s.conn.Verdict != "pass":
		s.got = "exchange ok, but the connection ended with " + s.conn.Verdict
		s.fail("verdict %s (%s)", s.conn.Verdict, s.conn.Reason)
	default:
		s.got = fmt.Sprintf("exchange ok: %s, %d bytes echoed", s.conn.Version, len(msg))
	}
	if len(s.alerts) > 0 {
		s.fail("%d alert(s) on a normal connection", len(s.alerts))
	}
	return s
}

// attacked fills in what an attack got and checks it was stopped: the
// connection dropped by a rule, no leaked byte through, and the
// heartbeats that reached the backend as expected.
func (d *demo) attacked(s *step, o tlspeer.Outcome, heartbeats, wantHeartbeats int64) {
	s.attack, s.leaked, s.heartbeats = true, o.Leaked, heartbeats
	switch {
	case o.Leaked > 0:
		s.got = fmt.Sprintf("LEAKED %d bytes", o.Leaked)
		s.fail("%d leaked bytes reached the attacker", o.Leaked)
	case o.Closed && s.conn != nil && s.conn.Verdict == "reset":
		s.got = "connection reset"
	case o.Closed:
		s.got = "connection dropped"
	default:
		s.got = "no answer, connection left open"
		s.fail("the connection was not closed: %v", o.Err)
	}
	if heartbeats != wantHeartbeats {
		s.fail("%d heartbeat(s) reached the backend, want %d", heartbeats, wantHeartbeats)
	}
	if s.conn != nil && (s.conn.Verdict != "drop" && s.conn.Verdict != "reset" || s.conn.Rule == "") {
		s.fail("the connection ended with %q by %q, want a rule's drop", s.conn.Verdict, s.conn.Rule)
	}
	if s.conn != nil && len(s.alerts) == 0 {
		s.fail("no alert")
	}
}

// cleartextAttack is the classic Heartbleed: a heartbeat request in
// place of the ClientKeyExchange, declaring 16384 bytes in a 3-byte
// record.
func (d *demo) cleartextAttack() *step {
	s := &step{name: "cleartext Heartbleed"}
	c, err := d.dial()
	if err != nil {
		s.fail("%v", err)
		return s
	}
	before := d.backend.Heartbeats.Load()
	o := tlspeer.CleartextHeartbleed(c, d.wait)
	d.finish(s, c)
	d.attacked(s, o, d.backend.Heartbeats.Load()-before, 0)
	s.note = ": the request was stopped on its way in"
	return s
}

// encryptedAttack is a normal TLS 1.2 session, then a valid encrypted
// heartbeat request, which the vulnerable backend answers with
// leakSize bytes.
func (d *demo) encryptedAttack() *step {
	s := &step{name: "encrypted Heartbleed"}
	c, err := d.dial()
	if err != nil {
		s.fail("%v", err)
		return s
	}
	before := d.backend.Heartbeats.Load()
	o := tlspeer.EncryptedHeartbleed(c, d.client, heartbeatRequest, d.wait)
	d.finish(s, c)
	d.attacked(s, o, d.backend.Heartbeats.Load()-before, 1)
	s.note = fmt.Sprintf(": the request, valid (%d bytes), passed; the %d-byte answer was held and dropped", heartbeatRequest, leakSize)
	return s
}

// directResult is what the attacks get from the backend without the
// proxy.
type directResult struct {
	cleartext, encrypted int
	failed               []string
}

// direct runs both attacks against the backend itself: the leak the
// proxy stopped is real.
func (d *demo) direct() directResult {
	var r directResult
	attack := func(name string, run func(net.Conn) tlspeer.Outcome) int {
		c, err := net.DialTimeout("tcp", d.backend.Addr(), d.wait)
		if err != nil {
			r.failed = append(r.failed, "without haka-proxy: "+err.Error())
			return 0
		}
		defer c.Close()
		o := run(c)
		if o.Leaked == 0 {
			r.failed = append(r.failed, fmt.Sprintf("without haka-proxy, the %s attack leaked nothing (%v): the backend is not vulnerable, the demo shows nothing", name, o.Err))
		}
		return o.Leaked
	}
	r.cleartext = attack("cleartext", func(c net.Conn) tlspeer.Outcome { return tlspeer.CleartextHeartbleed(c, d.wait) })
	r.encrypted = attack("encrypted", func(c net.Conn) tlspeer.Outcome {
		return tlspeer.EncryptedHeartbleed(c, d.client, heartbeatRequest, d.wait)
	})
	return r
}

// report writes what happened, for people.
func (d *demo) report(w io.Writer, steps []*step, direct directResult) {
	fmt.Fprintf(w, "haka-proxy demo: Heartbleed against a vulnerable TLS server, with and without haka-proxy\n\n")
	fmt.Fprintf(w, "  server   %s  TLS echo server that answers heartbeats like a Heartbleed-vulnerable OpenSSL\n", d.backend.Addr())
	fmt.Fprintf(w, "  proxy    %s  haka-proxy in front of it, %s\n\n", d.addr, describe(d.factory))
	width := 0
	for _, s := range steps {
		width = max(width, len(s.name))
	}
	indent := strings.Repeat(" ", width+4)
	for _, s := range steps {
		fmt.Fprintf(w, "  %-*s  %s\n", width, s.name, s.got)
		if s.attack {
			if s.conn != nil && s.conn.Rule != "" {
				fmt.Fprintf(w, "%srule    %s\n", indent, s.conn.Rule)
			}
			for _, a := range s.alerts {
				fmt.Fprintf(w, "%salert   %s (%s, on the %s event)\n", indent, a.Description, a.Severity, a.Event)
			}
			if len(s.alerts) == 0 && s.conn != nil && s.conn.Reason != "" {
				fmt.Fprintf(w, "%sreason  %s\n", indent, s.conn.Reason)
			}
			fmt.Fprintf(w, "%sleak    %d bytes reached the attacker\n", indent, s.leaked)
			fmt.Fprintf(w, "%sserver  %d heartbeat(s) reached it%s\n", indent, s.heartbeats, s.note)
		}
		for _, f := range s.failed {
			fmt.Fprintf(w, "%sFAILED  %s\n", indent, strings.TrimPrefix(f, s.name+": "))
		}
	}
	fmt.Fprintf(w, "\nWithout haka-proxy, the same attacks against the server leak %d bytes (cleartext) and %d bytes (encrypted).\n",
		direct.cleartext, direct.encrypted)
	for _, f := range direct.failed {
		fmt.Fprintf(w, "  FAILED: %s\n", f)
	}
	fmt.Fprintf(w, "\nAlerts and connection records, as --alerts writes them (one JSON object per line):\n\n")
	for _, l := range d.records.all() {
		fmt.Fprintf(w, "%s\n", l)
	}
	failed := len(direct.failed)
	for _, s := range steps {
		failed += len(s.failed)
	}
	if failed == 0 {
		fmt.Fprintf(w, "\nOK: the normal clients completed their exchanges; both attacks were dropped, and no leaked byte reached an attacker.\n")
	} else {
		fmt.Fprintf(w, "\nFAILED: %d expectation(s) not met (see above).\n", failed)
	}
}

func verdictWord(v string) string {
	switch v {
	case "drop":
		return "dropped"
	case "reset":
		return "reset"
	}
	return v
}

func describe(f inspect.Factory) string {
	switch f := f.(type) {
	case fmt.Stringer:
		return f.String()
	case inspect.PassThrough:
		return "no inspection (pass-through)"
	}
	return fmt.Sprintf("%T", f)
}

// record is an alert or connection line, as written.
type record struct {
	Type        string `json:"type"`
	Description string `json:"description"`
	Severity    string `json:"severity"`
	Event       string `json:"event"`
	Rule        string `json:"rule"`
	Action      string `json:"action"`
	Verdict     string `json:"verdict"`
	Reason      string `json:"reason"`
	Version     string `json:"version"`
	Flow        struct {
		ID  uint64 `json:"id"`
		Src string `json:"src"`
	} `json:"flow"`
}

// records is the demo's --alerts: it keeps every line and tells a
// waiter when one is added.
type records struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	parsed  []*record
	added   chan struct{} // closed and replaced at each new line
}

func newRecords() *records { return &records{added: make(chan struct{})} }

// Write implements io.Writer; a line may arrive in several writes.
func (r *records) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partial = append(r.partial, p...)
	for {
		i := bytes.IndexByte(r.partial, '\n')
		if i < 0 {
			break
		}
		line := string(r.partial[:i])
		r.partial = r.partial[i+1:]
		rec := &record{}
		if err := json.Unmarshal([]byte(line), rec); err != nil {
			return len(p), fmt.Errorf("demo: a record that is not JSON: %q: %w", line, err)
		}
		r.lines = append(r.lines, line)
		r.parsed = append(r.parsed, rec)
		close(r.added)
		r.added = make(chan struct{})
	}
	return len(p), nil
}

// connection waits up to wait for the connection record of the client
// whose address is src.
func (r *records) connection(src string, wait time.Duration) (*record, bool) {
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		for _, rec := range r.parsed {
			if rec.Type == "connection" && rec.Flow.Src == src {
				r.mu.Unlock()
				return rec, true
			}
		}
		added := r.added
		r.mu.Unlock()
		select {
		case <-added:
		case <-timeout.C:
			return nil, false
		}
	}
}

// alerts returns the alerts raised on connection id.
func (r *records) alerts(id uint64) []*record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*record
	for _, rec := range r.parsed {
		if rec.Type == "alert" && rec.Flow.ID == id {
			out = append(out, rec)
		}
	}
	return out
}

func (r *records) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}
