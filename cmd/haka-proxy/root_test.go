package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/nftcmd"
	"github.com/hakaproxy/haka-proxy/proxy"
)

const waitFor = 20 * time.Second

// syncBuffer is a bytes.Buffer safe for the logger's and the test's
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testDeps() (*deps, *syncBuffer, *syncBuffer) {
	out, errOut := &syncBuffer{}, &syncBuffer{}
	d := defaultDeps()
	d.Stdout, d.Stderr = out, errOut
	return d, out, errOut
}

// parse runs the root command with args and returns the options its run
// function would get.
func parse(t *testing.T, args ...string) (*rootOptions, error) {
	t.Helper()
	d, _, _ := testDeps()
	var got *rootOptions
	cmd := newCmdRoot(d, func(o *rootOptions) error { got = o; return nil })
	cmd.SetArgs(args)
	err := cmd.Execute()
	return got, err
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

func TestHelp(t *testing.T) {
	d, out, _ := testDeps()
	if code := execute([]string{"--help"}, d); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := out.String()
	for _, want := range []string{
		"Examples:", "haka-proxy --listen :8443 --upstream 127.0.0.1:443", "version",
		"--listen", "--upstream", "--rules", "--rule-error-policy", "--config", "--log-level", "--log-format", "--alerts", "--metrics",
		"--proxy-protocol-in", "--proxy-protocol-trusted", "--proxy-protocol-timeout", "--proxy-protocol-out",
		"--max-conns", "--dial-timeout", "--handshake-timeout", "--idle-timeout", "--max-held-bytes", "--drain-timeout",
		"--tproxy", "--spoof-source", "--nft", "--nft-ports", "--nft-iface", "--nft-mark", "--nft-route-table",
		"--ipv6", "--nft-fail-open", "haka-proxy run --tproxy --nft", "run ",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestVersion(t *testing.T) {
	d, out, _ := testDeps()
	if code := execute([]string{"version"}, d); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "haka-proxy ") || !strings.HasPrefix(lines[1], "commit ") ||
		!strings.HasPrefix(lines[2], runtime.Version()+" ") {
		t.Fatalf("version output:\n%s", out)
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "127.0.0.1:443", "--nope"}, "unknown flag: --nope"},
		{[]string{"--upstream", "127.0.0.1:443", "--idle-timeout", "soon"}, `invalid argument "soon" for "--idle-timeout"`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{}, "--upstream is required"},
		{[]string{"--upstream", "nohost"}, `--upstream "nohost": address nohost: missing port in address`},
		{[]string{"--upstream", "127.0.0.1:443", "--log-format", "xml"}, `--log-format "xml": want json or console`},
		{[]string{"--upstream", "127.0.0.1:443", "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"--upstream", "127.0.0.1:443", "--rules", "/nonexistent/rules"}, "--rules: stat /nonexistent/rules: no such file or directory"},
		{[]string{"--upstream", "127.0.0.1:443", "--rules", "/etc/hostname"}, "--rules: /etc/hostname is not a directory"},
		{[]string{"--upstream", "127.0.0.1:443", "--rule-error-policy", "ignore"}, `--rule-error-policy: unknown rule error policy "ignore" (want drop or pass)`},
		{[]string{"--upstream", "127.0.0.1:443", "--proxy-protocol-in"}, "--proxy-protocol-in needs --proxy-protocol-trusted"},
		{[]string{"--upstream", "127.0.0.1:443", "--proxy-protocol-in", "--proxy-protocol-trusted", "10.0.0.0/33"}, `--proxy-protocol-trusted "10.0.0.0/33": not a CIDR`},
		{[]string{"--upstream", "127.0.0.1:443", "--proxy-protocol-out", "v3"}, `--proxy-protocol-out "v3": want v1 or v2`},
		{[]string{"--upstream", "127.0.0.1:443", "--max-held-bytes", "lots"}, `"lots" is not a size in bytes`},
		{[]string{"--upstream", "127.0.0.1:443", "--pprof"}, "--pprof needs --metrics"},
	} {
		d, out, errOut := testDeps()
		code := execute(tc.args, d)
		if code != 2 || !strings.Contains(errOut.String(), tc.want) || !strings.Contains(errOut.String(), "haka-proxy --help") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
		if out.String() != "" {
			t.Errorf("%q: wrote to stdout: %q", tc.args, out)
		}
	}
}

// configs/sidecar.yaml is a working example.
func TestSidecarConfig(t *testing.T) {
	o, err := parse(t, "--config", filepath.Join(repoRoot(t), "configs", "sidecar.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Listen != ":8443" || o.Upstream != "127.0.0.1:443" || o.Metrics != "127.0.0.1:9100" ||
		o.MaxHeldBytes != 512<<10 || o.IdleTimeout != 5*time.Minute || o.LogFormat != "json" || o.Alerts != "-" {
		t.Fatalf("options %+v", o)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "haka.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every flag can be set in the file; the command line wins.
func TestConfigFileKeys(t *testing.T) {
	rules := t.TempDir()
	p := writeConfig(t, `
listen: 127.0.0.1:9443
upstream: backend:443
rules: `+rules+`
rule-error-policy: pass
log-level: debug
log-format: console
alerts: /tmp/alerts.json
metrics: 127.0.0.1:9101
proxy-protocol-in: true
proxy-protocol-trusted: [10.0.0.0/8, 192.168.1.7]
proxy-protocol-timeout: 2s
proxy-protocol-out: v1
max-conns: 50
dial-timeout: 1s
handshake-timeout: 3s
idle-timeout: 1m
max-held-bytes: 1MiB
drain-timeout: 7s
`)
	o, err := parse(t, "--config", p, "--upstream", "127.0.0.1:8443", "--max-conns", "60")
	if err != nil {
		t.Fatal(err)
	}
	want := rootOptions{
		Config: p, Listen: "127.0.0.1:9443", Upstream: "127.0.0.1:8443", Rules: rules, RuleErrorPolicy: "pass",
		LogLevel: "debug", LogFormat: "console", Alerts: "/tmp/alerts.json", Metrics: "127.0.0.1:9101",
		ProxyProtocolIn: true, ProxyProtocolTrusted: []string{"10.0.0.0/8", "192.168.1.7"},
		ProxyProtocolTimeout: 2 * time.Second, ProxyProtocolOut: "v1",
		MaxConns: 60, DialTimeout: time.Second, HandshakeTimeout: 3 * time.Second, IdleTimeout: time.Minute,
		MaxHeldBytes: 1 << 20, DrainTimeout: 7 * time.Second,
		NFTOptions: nftcmd.DefaultOptions(),
	}
	want.NFTOptions.Listen = want.Listen
	if !equalOptions(*o, want) {
		t.Fatalf("options\n got %+v\nwant %+v", *o, want)
	}
	pp, err := o.proxyProtocol()
	if err != nil || len(pp.Trusted) != 2 || pp.Trusted[1].String() != "192.168.1.7/32" || pp.Out != 1 {
		t.Fatalf("proxy protocol %+v, %v", pp, err)
	}
}

// Without a limit flag the proxy is configured with the limits the README
// documents, which are the proxy package's defaults: the literal values
// are checked too, so that a changed default shows up here and in the
// README together.
func TestDefaultLimits(t *testing.T) {
	o, err := parse(t, "--upstream", "127.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	documented := proxy.Limits{
		MaxConns:         10000,
		DialTimeout:      5 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		IdleTimeout:      5 * time.Minute,
		MaxHeldBytes:     512 << 10,
		DrainTimeout:     30 * time.Second,
	}
	if got := o.limits(); got != documented || got != proxy.DefaultLimits() {
		t.Errorf("limits %+v\nREADME  %+v\ndefault %+v", got, documented, proxy.DefaultLimits())
	}
	documentedPP := 5 * time.Second
	pp, err := o.proxyProtocol()
	if err != nil || pp.Timeout != documentedPP || pp.Timeout != proxy.DefaultProxyProtocolTimeout {
		t.Errorf("PROXY protocol timeout %v (%v), want %v, the default %v", pp.Timeout, err, documentedPP, proxy.DefaultProxyProtocolTimeout)
	}
	// The proxy built from them keeps them as they are.
	p, err := proxy.New(proxy.Config{Upstream: o.Upstream, Limits: o.limits(), ProxyProtocol: pp})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Limits(); got != documented {
		t.Errorf("the proxy's limits %+v, want %+v", got, documented)
	}
}

// equalOptions compares options, an empty list equal to none.
func equalOptions(a, b rootOptions) bool {
	for _, l := range [][2]*[]string{
		{&a.ProxyProtocolTrusted, &b.ProxyProtocolTrusted},
		{&a.nftFlagsGiven, &b.nftFlagsGiven},
		{&a.NFTOptions.Interfaces, &b.NFTOptions.Interfaces},
	} {
		if strings.Join(*l[0], ",") != strings.Join(*l[1], ",") {
			return false
		}
		*l[0], *l[1] = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope.yaml"), "config file: open " + filepath.Join(dir, "nope.yaml") + ": no such file or directory"},
		{"directory", dir, "config file: read " + dir + ": is a directory"},
		{"unknown key", writeConfig(t, "upstream: 127.0.0.1:443\nlisten: :1\nlistne: :2\n"), `line 3: unknown key "listne"`},
		{"bad value", writeConfig(t, "upstream: 127.0.0.1:443\nidle-timeout: banana\n"), `line 2: idle-timeout: time: invalid duration "banana"`},
		{"twice", writeConfig(t, "upstream: a:1\nupstream: b:2\n"), `line 2: "upstream" is set twice`},
		{"not a mapping", writeConfig(t, "- upstream\n"), "line 1: want a mapping of flag names to values"},
		{"nested", writeConfig(t, "upstream:\n  host: x\n"), "line 1: upstream: want a value or a list of values"},
		{"config in config", writeConfig(t, "config: other.yaml\n"), `unknown key "config"`},
		{"yaml syntax", writeConfig(t, "upstream: [\n"), "yaml: line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, errOut := testDeps()
			if code := execute([]string{"--config", tc.path}, d); code == 0 {
				t.Fatal("exit 0")
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("stderr %q, want %q", errOut, tc.want)
			}
		})
	}
}

// The root command runs the proxy: it serves, exposes metrics, reloads on
// SIGHUP, drains and exits 0 on SIGTERM (signals injected).
func TestRunInProcess(t *testing.T) {
	echo := echoServer(t)
	d, out, errOut := testDeps()
	logs := make(chan string, 256)
	d.Stderr = teeLines{errOut, logs}
	rules := filepath.Join(t.TempDir(), "rules")
	os.Mkdir(rules, 0o755)
	if err := os.WriteFile(filepath.Join(rules, "sni.lua"), []byte(`
haka.rule{ on = tls.events.client_hello, eval = function(flow, hello) flow:log("hello " .. tostring(hello.sni)) end }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 2)
	d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return sigs, func() {} }
	type addrs struct{ listen, metrics net.Addr }
	ready := make(chan addrs, 1)
	d.Ready = func(l, m net.Addr) { ready <- addrs{l, m} }
	exited := make(chan int, 1)
	go func() {
		exited <- execute([]string{"--listen", "127.0.0.1:0", "--upstream", echo.addr,
			"--metrics", "127.0.0.1:0", "--rules", rules}, d)
	}()
	var a addrs
	select {
	case a = <-ready:
	case code := <-exited:
		t.Fatalf("exited %d: %s", code, errOut)
	case <-time.After(waitFor):
		t.Fatal("not ready")
	}

	c := echo.dial(t, a.listen.String())
	roundTrip(t, c, "ping")
	c.Close()
	waitLine(t, logs, `"msg":"hello echo.test"`)

	// The rule's evaluations are observed once they end, just after the
	// rule logged: poll the scrape, bounded.
	var body []byte
	for deadline := time.Now().Add(waitFor); ; time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get("http://" + a.metrics.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "haka_proxy_rule_eval_duration_seconds_count 1") || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{"haka_proxy_connections_total 1", "haka_proxy_rule_eval_duration_seconds_count 1"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}

	sigs <- syscall.SIGHUP
	waitLine(t, logs, `"msg":"rules reloaded"`)
	// A rule set that cannot be loaded keeps the running one.
	os.RemoveAll(rules)
	sigs <- syscall.SIGHUP
	waitLine(t, logs, `"msg":"reload failed; keeping the running rules"`)
	c = echo.dial(t, a.listen.String())
	roundTrip(t, c, "pong")
	c.Close()
	waitLine(t, logs, `"msg":"hello echo.test"`)
	sigs <- syscall.SIGTERM
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	case <-time.After(waitFor):
		t.Fatal("did not exit on SIGTERM")
	}
	all := errOut.String()
	for _, want := range []string{`"msg":"listening"`, `"msg":"shutting down`, `"msg":"stopped"`, `"msg":"connection closed"`} {
		if !strings.Contains(all, want) {
			t.Errorf("logs lack %s:\n%s", want, all)
		}
	}
	if !strings.Contains(out.String(), `"type":"connection"`) || !strings.Contains(out.String(), `"sni":"echo.test"`) {
		t.Errorf("no connection record on stdout: %q", out)
	}
}

// teeLines copies what the logger writes (one entry per Write) to a
// buffer and, line by line, to a channel.
type teeLines struct {
	all   *syncBuffer
	lines chan<- string
}

func (t teeLines) Write(p []byte) (int, error) {
	t.all.Write(p)
	select {
	case t.lines <- string(p):
	default: // nobody is waiting for that many
	}
	return len(p), nil
}

// waitLine waits for a log line containing want.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case l := <-lines:
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no log line with %s", want)
		}
	}
}

// A second SIGTERM during the drain closes the open connections at once.
func TestSecondSignalCutsDrain(t *testing.T) {
	echo := echoServer(t)
	d, out, errOut := testDeps()
	logs := make(chan string, 256)
	d.Stderr = teeLines{errOut, logs}
	sigs := make(chan os.Signal, 2)
	d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return sigs, func() {} }
	ready := make(chan net.Addr, 1)
	d.Ready = func(l, _ net.Addr) { ready <- l }
	exited := make(chan int, 1)
	go func() {
		exited <- execute([]string{"--listen", "127.0.0.1:0", "--upstream", echo.addr, "--drain-timeout", "1h"}, d)
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case <-time.After(waitFor):
		t.Fatal("not ready")
	}
	c := echo.dial(t, addr.String())
	roundTrip(t, c, "x")
	sigs <- syscall.SIGTERM
	waitLine(t, logs, `"msg":"shutting down`)
	sigs <- syscall.SIGINT
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(waitFor):
		t.Fatal("the second signal did not cut the drain")
	}
	waitLine(t, logs, `"msg":"second signal: dropping the open connections now"`)
	if !strings.Contains(out.String(), `"reason":"shutdown: drain timeout"`) {
		t.Fatalf("records: %s", out)
	}
}

// --pprof serves Go's profiles on the metrics address, and only with it.
func TestPprof(t *testing.T) {
	echo := echoServer(t)
	for _, on := range []bool{false, true} {
		d, _, errOut := testDeps()
		sigs := make(chan os.Signal, 1)
		d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return sigs, func() {} }
		ready := make(chan net.Addr, 1)
		d.Ready = func(_, m net.Addr) { ready <- m }
		args := []string{"--listen", "127.0.0.1:0", "--upstream", echo.addr, "--metrics", "127.0.0.1:0"}
		if on {
			args = append(args, "--pprof")
		}
		exited := make(chan int, 1)
		go func() { exited <- execute(args, d) }()
		var metrics net.Addr
		select {
		case metrics = <-ready:
		case code := <-exited:
			t.Fatalf("exited %d: %s", code, errOut)
		case <-time.After(waitFor):
			t.Fatal("not ready")
		}
		resp, err := http.Get("http://" + metrics.String() + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served := resp.StatusCode == http.StatusOK && strings.Contains(string(body), "goroutine profile:")
		if served != on {
			t.Errorf("--pprof=%v: GET /debug/pprof/goroutine: %s, %.80q", on, resp.Status, body)
		}
		sigs <- syscall.SIGTERM
		if code := <-exited; code != 0 {
			t.Errorf("exit %d: %s", code, errOut)
		}
	}
}
