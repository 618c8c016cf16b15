package main

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// runningProxy is the root command running in this process, its signals
// injected and its outputs captured.
type runningProxy struct {
	addr   string
	sigs   chan os.Signal
	exited chan int
	out    *syncBuffer // alerts and connection records
	errOut *syncBuffer // logs
	logs   chan string
}

// startProxy runs `haka-proxy args...` with --listen 127.0.0.1:0 and
// returns once it listens; SIGTERM ends it when the test does.
func startProxy(t *testing.T, args ...string) *runningProxy {
	t.Helper()
	d, out, errOut := testDeps()
	rp := &runningProxy{sigs: make(chan os.Signal, 2), exited: make(chan int, 1), out: out, errOut: errOut,
		logs: make(chan string, 1024)}
	d.Stderr = teeLines{errOut, rp.logs}
	d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return rp.sigs, func() {} }
	ready := make(chan net.Addr, 1)
	d.Ready = func(l, _ net.Addr) { ready <- l }
	go func() { rp.exited <- execute(append([]string{"--listen", "127.0.0.1:0"}, args...), d) }()
	select {
	case a := <-ready:
		rp.addr = a.String()
	case code := <-rp.exited:
		t.Fatalf("exited %d: %s", code, errOut)
	case <-time.After(waitFor):
		t.Fatal("not ready")
	}
	t.Cleanup(func() {
		rp.sigs <- syscall.SIGTERM
		select {
		case code := <-rp.exited:
			if code != 0 {
				t.Errorf("exit %d: %s", code, errOut)
			}
		case <-time.After(waitFor):
			t.Error("did not exit on SIGTERM")
		}
	})
	return rp
}

// records returns the JSON records written so far.
func (rp *runningProxy) records(t *testing.T) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(rp.out.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// connRecord waits for the connection record of the client connection c.
func (rp *runningProxy) connRecord(t *testing.T, c net.Conn) map[string]any {
	t.Helper()
	src := c.LocalAddr().String()
	deadline := time.Now().Add(waitFor)
	for {
		for _, r := range rp.records(t) {
			if f, _ := r["flow"].(map[string]any); r["type"] == "connection" && f["src"] == src {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection record for %s:\n%s", src, rp.out)
		}
		// The record is written when the proxy has closed both sides,
		// which the client cannot observe: poll, bounded.
		time.Sleep(5 * time.Millisecond)
	}
}

// writeRuleDir writes the rule files into a fresh directory.
func writeRuleDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// SIGHUP swaps the rule set: connections accepted afterwards run the new
// rules, a connection in flight keeps the rules it started with, and a
// broken set is refused with its mistakes at their file and line while
// the running set stays.
func TestSIGHUPReloadsTheRules(t *testing.T) {
	echo := echoServer(t)
	ruleSet := func(v string) string {
		return `haka.rule{ on = tls.events.record, eval = function(flow, rec) flow:log("` + v + ` " .. rec.type) end }` + "\n"
	}
	dir := writeRuleDir(t, map[string]string{"v.lua": ruleSet("v1")})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)

	old := echo.dial(t, rp.addr)
	roundTrip(t, old, "before")
	waitLine(t, rp.logs, `"msg":"v1 application_data"`)

	os.WriteFile(filepath.Join(dir, "v.lua"), []byte(ruleSet("v2")), 0o644)
	rp.sigs <- syscall.SIGHUP
	waitLine(t, rp.logs, `"msg":"rules reloaded"`)
	roundTrip(t, old, "after")
	waitLine(t, rp.logs, `"msg":"v1 application_data"`)
	c := echo.dial(t, rp.addr)
	roundTrip(t, c, "new")
	waitLine(t, rp.logs, `"msg":"v2 application_data"`)

	os.WriteFile(filepath.Join(dir, "v.lua"), []byte("-- a typo\n\nhaka.rule{ on = tls.events.record, evla = function() end }\n"), 0o644)
	rp.sigs <- syscall.SIGHUP
	waitLine(t, rp.logs, `"msg":"reload failed; keeping the running rules"`)
	if !strings.Contains(rp.errOut.String(), `v.lua:3: haka.rule: unknown key \"evla\"`) {
		t.Errorf("the refused set's mistake is not logged at its line:\n%s", rp.errOut)
	}
	c = echo.dial(t, rp.addr)
	roundTrip(t, c, "still v2")
	waitLine(t, rp.logs, `"msg":"v2 application_data"`)
}

// The replay runs the same inspection as the proxy, the stock rules by
// default: the Heartbleed captures are dropped by heartbleed.lua, a
// normal session passes.
func TestReplayRunsTheStockRules(t *testing.T) {
	var files []string
	for _, name := range []string{"zeek/heartbleed.pcap", "zeek/heartbleed-encrypted.pcap", "zeek/tls1.2.pcap"} {
		p, err := pcaptest.Path(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); err != nil {
			t.Skipf("shared capture missing: %v", err)
		}
		files = append(files, p)
	}
	d, out, errOut := testDeps()
	if code := execute(append([]string{"replay"}, files...), d); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var verdicts, alerts []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		rule, _ := m["rule"].(string)
		switch m["type"] {
		case "alert":
			alerts = append(alerts, m["action"].(string)+" "+strings.Split(rule, ":")[0])
		case "connection":
			verdicts = append(verdicts, m["verdict"].(string)+" "+strings.Split(rule, ":")[0])
		}
	}
	if got, want := strings.Join(verdicts, ","), "drop heartbleed.lua,drop heartbleed.lua,pass "; got != want {
		t.Errorf("verdicts %s, want %s\n%s", got, want, out)
	}
	if got, want := strings.Join(alerts, ","), "drop heartbleed.lua,drop heartbleed.lua"; got != want {
		t.Errorf("alerts %s, want %s\n%s", got, want, out)
	}
	// A rule error policy the replay does not know is refused.
	d, _, errOut = testDeps()
	if code := execute([]string{"replay", "--rule-error-policy", "maybe", files[0]}, d); code == 0 ||
		!strings.Contains(errOut.String(), `--rule-error-policy: unknown rule error policy "maybe"`) {
		t.Errorf("exit %d: %s", code, errOut)
	}
}

// `haka-proxy demo`, the README's first command, as a process: it exits 0
// and its report says what happened, with the records as --alerts writes
// them.
func TestDemo(t *testing.T) {
	bin := buildBinary(t)
	cmd := exec.Command(bin, "demo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	took := time.Since(start)
	report := stdout.String()
	for _, want := range []string{
		"proxy    127.0.0.1:", "TLS inspection with the stock rules",
		"  TLS 1.3 client        exchange ok: TLS1.3, 24 bytes echoed\n",
		"  TLS 1.2 client        exchange ok: TLS1.2, 24 bytes echoed\n",
		"  cleartext Heartbleed  connection dropped\n",
		"rule    heartbleed.lua:",
		"alert   heartbleed: heartbeat payload_length larger than its record (high, on the anomaly event)\n",
		"server  0 heartbeat(s) reached it",
		"  encrypted Heartbleed  connection dropped\n",
		"alert   heartbleed: encrypted heartbeat response longer than the request (high, on the heartbeat event)\n",
		"server  1 heartbeat(s) reached it",
		"Without haka-proxy, the same attacks against the server leak 16408 bytes (cleartext) and 16005 bytes (encrypted).",
		"\nOK: ",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(report, "leak    0 bytes reached the attacker\n"); n != 2 {
		t.Errorf("%d attacks report no leak, want 2", n)
	}
	var alerts, conns int
	for _, line := range strings.Split(report, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("record %q: %v", line, err)
		}
		switch m["type"] {
		case "alert":
			alerts++
			if m["action"] != "drop" || !strings.HasPrefix(m["rule"].(string), "heartbleed.lua:") || m["event"] == "" {
				t.Errorf("alert %s", line)
			}
		case "connection":
			conns++
		}
	}
	if alerts != 2 || conns != 4 {
		t.Errorf("%d alerts and %d connection records, want 2 and 4", alerts, conns)
	}
	if stderr.Len() > 0 {
		t.Errorf("the demo logged:\n%s", &stderr)
	}
	if t.Failed() {
		t.Logf("report:\n%s", report)
	}
	t.Logf("the demo took %v", took)
}

// The rule example of the README's Rules section loads, and does what the
// README says: a client offering the heartbeat extension is dropped with
// an alert, and every connection gets its log line.
func TestReadmeRuleExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```lua\n-- example.lua")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no example.lua in the README")
	}
	echo := echoServer(t)
	dir := writeRuleDir(t, map[string]string{"example.lua": "-- example.lua" + example})
	rp := startProxy(t, "--upstream", echo.addr, "--rules", dir)

	c := echo.dial(t, rp.addr)
	roundTrip(t, c, "no heartbeat offered")
	c.Close()
	if rec := rp.connRecord(t, c); rec["verdict"] != "pass" {
		t.Errorf("connection record %v", rec)
	}
	hb, err := net.Dial("tcp", rp.addr)
	if err != nil {
		t.Fatal(err)
	}
	hb.Write(tlspeer.ClientHello12("echo.test", true))
	hb.SetReadDeadline(time.Now().Add(waitFor))
	if n, err := hb.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("the heartbeat offer got %d bytes back, %v", n, err)
	}
	hb.Close()
	rec := rp.connRecord(t, hb)
	if rec["verdict"] != "drop" || rec["reason"] != "heartbeat extension offered" || rec["rule"] != "example.lua:3" {
		t.Errorf("connection record %v", rec)
	}
	alerts := rp.alertRecords(t)
	if len(alerts) != 1 || alerts[0]["description"] != "heartbeat extension offered to echo.test" || alerts[0]["action"] != "drop" {
		t.Errorf("alerts %v", alerts)
	}
	logs := 0
	for _, l := range rp.errOut.lines() {
		if l["rule"] == "example.lua:17" && strings.Contains(str(l["msg"]), " to echo.test: ") {
			logs++
		}
	}
	if logs != 2 {
		t.Errorf("%d connection lines from the example, want 2:\n%s", logs, rp.errOut)
	}
}

// readmeConnClosedFields are the fields of the "connection closed" line
// in the README's example (zap's own included).
func readmeConnClosedFields(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(readme), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "connection closed" {
			return slices.Sorted(maps.Keys(m))
		}
	}
	t.Fatal("no connection closed line in the README")
	return nil
}

// connClosedLine returns the "connection closed" log line of the client
// connection c, once its record is written (the line is logged just
// before), after checking it has the README's fields and no other, and
// that those it shares with the record agree with it.
func (rp *runningProxy) connClosedLine(t *testing.T, c net.Conn) map[string]any {
	t.Helper()
	rec := rp.connRecord(t, c)
	var line map[string]any
	for _, l := range rp.logLines(t, "connection closed") {
		if l["src"] == c.LocalAddr().String() {
			if line != nil {
				t.Fatalf("two lines for one connection: %v and %v", line, l)
			}
			line = l
		}
	}
	if line == nil {
		t.Fatalf("no connection closed line for %s:\n%s", c.LocalAddr(), rp.errOut)
	}
	if keys, want := slices.Sorted(maps.Keys(line)), readmeConnClosedFields(t); !slices.Equal(keys, want) {
		t.Errorf("fields %v, want the README's %v", keys, want)
	}
	flow := rec["flow"].(map[string]any)
	for _, k := range [][2]any{
		{line["id"], flow["id"]}, {line["dst"], flow["dst"]}, {line["sni"], flow["sni"]},
		{line["version"], rec["version"]}, {line["bytes_up"], rec["bytes_up"]}, {line["bytes_down"], rec["bytes_down"]},
		{line["verdict"], rec["verdict"]},
	} {
		if k[0] != k[1] {
			t.Errorf("the line says %v where the record says %v\nline   %v\nrecord %v", k[0], k[1], line, rec)
		}
	}
	return line
}

// The "connection closed" line of a TLS connection through the stock
// rules carries every documented field with its real value: the flow's
// addresses, the upstream, the SNI and version the client negotiated,
// the bytes forwarded each way, counted at both ends, a duration within
// the connection's, and the verdict.
func TestConnectionClosedLine(t *testing.T) {
	for _, v := range []struct {
		version uint16
		name    string
	}{{tls.VersionTLS12, "TLS1.2"}, {tls.VersionTLS13, "TLS1.3"}} {
		t.Run(v.name, func(t *testing.T) {
			echo := echoServer(t)
			echo.cfg.MinVersion, echo.cfg.MaxVersion = v.version, v.version
			rp := startProxy(t, "--upstream", echo.addr)
			start := time.Now()
			tc, cc, err := echo.connect(t, rp.addr, "")
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.ConnectionState().Version; got != v.version {
				t.Fatalf("negotiated %s", tls.VersionName(got))
			}
			roundTrip(t, tc, "through the proxy")
			// close_notify up; the backend answers with its own and
			// closes: reading to EOF, at the TLS layer and then below it,
			// the client has every byte the proxy forwarded down.
			if err := tc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b, err := io.ReadAll(tc); err != nil || len(b) != 0 {
				t.Fatalf("after close_notify: %q, %v", b, err)
			}
			if b, err := io.ReadAll(cc); err != nil || len(b) != 0 {
				t.Fatalf("after the TLS end: %q, %v", b, err)
			}
			tc.Close()
			line := rp.connClosedLine(t, tc)
			took := time.Since(start).Seconds()

			if id, ok := line["id"].(float64); !ok || id < 1 {
				t.Errorf("id %v", line["id"])
			}
			if line["src"] != tc.LocalAddr().String() || line["dst"] != rp.addr || line["upstream"] != echo.addr {
				t.Errorf("src %v, dst %v, upstream %v; want %v, %v, %v",
					line["src"], line["dst"], line["upstream"], tc.LocalAddr(), rp.addr, echo.addr)
			}
			if line["sni"] != "echo.test" || line["version"] != v.name {
				t.Errorf("sni %v, version %v; want echo.test, %s", line["sni"], line["version"], v.name)
			}
			// The backend has closed, after reading the client's last
			// byte: its count is final.
			up, down := cc.written.Load(), cc.read.Load()
			if line["bytes_up"] != float64(up) || up != echo.Received.Load() || line["bytes_down"] != float64(down) {
				t.Errorf("bytes_up %v, bytes_down %v; the client wrote %d (the backend received %d) and read %d",
					line["bytes_up"], line["bytes_down"], up, echo.Received.Load(), down)
			}
			if d, ok := line["duration"].(float64); !ok || d <= 0 || d > took {
				t.Errorf("duration %v, want within the %vs of the connection", line["duration"], took)
			}
			if line["verdict"] != "pass" || line["rule"] != "" || line["reason"] != "" {
				t.Errorf("verdict %v, rule %q, reason %q; want pass and none", line["verdict"], line["rule"], line["reason"])
			}
		})
	}

	// A dropped connection: the encrypted Heartbleed, which heartbleed.lua
	// drops at the server's leaking answer.
	t.Run("drop", func(t *testing.T) {
		echo := echoServer(t)
		rp := startProxy(t, "--upstream", echo.addr)
		raw, err := net.DialTimeout("tcp", rp.addr, waitFor)
		if err != nil {
			t.Fatal(err)
		}
		cc := &countingConn{Conn: raw}
		t.Cleanup(func() { cc.Close() })
		if o := tlspeer.EncryptedHeartbleed(cc, echo.cfg, 64, waitFor); o.Leaked != 0 || !o.Closed {
			t.Fatalf("attack %+v: want no leak and the connection closed", o)
		}
		// Whatever the proxy forwarded before it closed.
		cc.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := io.ReadAll(cc); err != nil {
			t.Fatal(err)
		}
		cc.Close()
		line := rp.connClosedLine(t, cc)
		alerts := rp.alertRecords(t)
		if len(alerts) != 1 {
			t.Fatalf("alerts %v", alerts)
		}
		if line["verdict"] != "drop" || line["rule"] != alerts[0]["rule"] || !strings.HasPrefix(str(line["rule"]), "heartbleed.lua:") ||
			line["reason"] != "heartbleed: encrypted heartbeat response longer than the request" {
			t.Errorf("verdict %v, rule %v, reason %v; want drop by the alert's rule %v", line["verdict"], line["rule"], line["reason"], alerts[0]["rule"])
		}
		if line["sni"] != "echo.test" || line["version"] != "TLS1.2" || line["src"] != cc.LocalAddr().String() ||
			line["dst"] != rp.addr || line["upstream"] != echo.addr {
			t.Errorf("line %v", line)
		}
		// The backend received the heartbeat request, the last thing the
		// client sent, before it answered with the leak.
		if up, down := cc.written.Load(), cc.read.Load(); line["bytes_up"] != float64(up) || up != echo.Received.Load() ||
			line["bytes_down"] != float64(down) {
			t.Errorf("bytes_up %v, bytes_down %v; the client wrote %d (the backend received %d) and read %d",
				line["bytes_up"], line["bytes_down"], up, echo.Received.Load(), down)
		}
	})
}
