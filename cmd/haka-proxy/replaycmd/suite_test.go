package replaycmd

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The regression suite: every capture of testdata/pcaps replayed by the
// real binary with the stock rules and JSON output. TestGolden compares
// the whole output with a golden file per capture; the other tests assert
// what the output must say whatever the golden files hold.

var update = flag.Bool("update", false, "rewrite the golden files under testdata/replay from the binary's output")

// goldenDir is where the golden files live, under the repository root:
// testdata/replay/<capture path>.jsonl, the output without the times.
const goldenDir = "testdata/replay"

// damaged are the captures that cannot be read to their end.
var damaged = map[string]bool{
	"suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap": true,
}

// capRun is the replay of one capture.
type capRun struct {
	result
	recs []record
	// norm is stdout without the times.
	norm string
}

var (
	suiteOnce sync.Once
	suiteRuns map[string]*capRun
	suiteList []string
)

// captureNames lists the captures of testdata/pcaps, relative to it, in
// order.
func captureNames(tb testing.TB) []string {
	tb.Helper()
	root := captureRoot(tb)
	var names []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".md") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(names)
	return names
}

// suite replays every capture once per test process, each in its own
// run of the binary.
func suite(t *testing.T) ([]string, map[string]*capRun) {
	t.Helper()
	suiteOnce.Do(func() {
		names := captureNames(t)
		runs := map[string]*capRun{}
		for _, name := range names {
			r := &capRun{result: hakaProxy(t, nil, "replay", "--format", "json", capture(t, name))}
			r.recs, r.norm = parseOutput(t, r.stdout)
			runs[name] = r
		}
		suiteList, suiteRuns = names, runs
	})
	if suiteRuns == nil {
		t.Fatal("the suite's replays failed in an earlier test")
	}
	return suiteList, suiteRuns
}

// TestGolden compares each capture's output, without times, with its
// golden file; -update rewrites them.
func TestGolden(t *testing.T) {
	names, runs := suite(t)
	if len(names) != 31 {
		t.Errorf("%d captures in testdata/pcaps, MANIFEST.md lists 31", len(names))
	}
	dir := filepath.Join(repoRoot(t), filepath.FromSlash(goldenDir))
	for _, name := range names {
		path := filepath.Join(dir, filepath.FromSlash(name)+".jsonl")
		got := runs[name].norm
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v (go test -run TestGolden -update writes it)", name, err)
			continue
		}
		if got != string(want) {
			t.Errorf("%s: the output differs from %s (go test -run TestGolden -update if the change is intended)\n%s",
				name, path, lineDiff(string(want), got))
		}
	}
	// A golden file without its capture is left over.
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if name := strings.TrimSuffix(filepath.ToSlash(rel), ".jsonl"); runs[name] == nil {
			t.Errorf("%s has no capture in testdata/pcaps", p)
		}
		return nil
	})
}

// lineDiff lists the lines that differ, for a failure message.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %s\n  got  %s\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// manifestStreams reads the TCP stream count of every capture from
// testdata/pcaps/MANIFEST.md.
func manifestStreams(t *testing.T) map[string]int {
	t.Helper()
	f, err := os.Open(filepath.Join(captureRoot(t), "MANIFEST.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	streams := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "|")
		if len(cols) < 8 || !strings.HasPrefix(strings.TrimSpace(cols[1]), "`") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(cols[6]))
		if err != nil {
			t.Fatalf("MANIFEST row %s: TCP streams %q", cols[1], cols[6])
		}
		streams[strings.Trim(strings.TrimSpace(cols[1]), "`")] = n
	}
	return streams
}

// TestOneConnectionLinePerStream: every capture gives one connection line
// per TCP stream the MANIFEST counts, flow IDs 1 to n, every alert before
// the line of its flow; the exit status is 0 but for the damaged capture.
func TestOneConnectionLinePerStream(t *testing.T) {
	names, runs := suite(t)
	want := manifestStreams(t)
	if len(want) != len(names) {
		t.Fatalf("MANIFEST lists %d captures, testdata/pcaps holds %d", len(want), len(names))
	}
	for _, name := range names {
		r := runs[name]
		if wantStatus := map[bool]int{false: 0, true: 1}[damaged[name]]; r.status != wantStatus {
			t.Errorf("%s: exit status %d, want %d; stderr:\n%s", name, r.status, wantStatus, r.stderr)
		}
		conns := connectionsOf(r.recs)
		if len(conns) != want[name] {
			t.Errorf("%s: %d connection lines, MANIFEST counts %d TCP streams", name, len(conns), want[name])
		}
		closed := map[uint64]bool{}
		for _, rec := range r.recs {
			id := rec.Flow.ID
			switch {
			case rec.Type == "alert" && closed[id]:
				t.Errorf("%s: alert of flow %d after its connection line: %s", name, id, rec.Raw)
			case rec.Type == "connection" && closed[id]:
				t.Errorf("%s: two connection lines for flow %d", name, id)
			case rec.Type == "connection":
				closed[id] = true
			}
			if id < 1 || id > uint64(want[name]) {
				t.Errorf("%s: flow ID %d outside 1..%d", name, id, want[name])
			}
		}
	}
}

// alertCaptures returns the captures some of whose alerts match.
func alertCaptures(names []string, runs map[string]*capRun, match func(record) bool) []string {
	var out []string
	for _, name := range names {
		if slices.ContainsFunc(alertsOf(runs[name].recs), match) {
			out = append(out, name)
		}
	}
	return out
}

// TestHeartbleed: Heartbleed alerts come from exactly the three Heartbleed
// captures: the cleartext overflow (payload_length 16365 in a record of
// 16368: RFC 6520's 16 bytes of padding are missing) in heartbleed.pcap
// and heartbleed-success.pcap, and an encrypted heartbeat before any
// application data in heartbleed-encrypted.pcap. Each connection is
// dropped before the heartbeat record is forwarded.
func TestHeartbleed(t *testing.T) {
	names, runs := suite(t)
	got := alertCaptures(names, runs, func(a record) bool {
		return strings.Contains(strings.ToLower(a.Description+a.Rule), "heartbleed")
	})
	want := []string{"zeek/heartbleed-encrypted.pcap", "zeek/heartbleed-success.pcap", "zeek/heartbleed.pcap"}
	if !slices.Equal(got, want) {
		t.Errorf("Heartbleed alerts in %v, want exactly %v", got, want)
	}

	for _, name := range []string{"zeek/heartbleed.pcap", "zeek/heartbleed-success.pcap"} {
		t.Run(name, func(t *testing.T) {
			recs := runs[name].recs
			alerts, conns := alertsOf(recs), connectionsOf(recs)
			if len(alerts) != 1 || len(conns) != 1 {
				t.Fatalf("%d alerts, %d connection lines:\n%s", len(alerts), len(conns), runs[name].stdout)
			}
			a, c := alerts[0], conns[0]
			// Times are the capture's: the alert is raised at the
			// heartbeat's packet, which ends the stream.
			if a.Time.Year() != 2014 || !a.Time.Equal(c.Time) {
				t.Errorf("alert at %v, connection at %v: want both at the heartbeat's packet time (2014)", a.Time, c.Time)
			}
			if !strings.HasPrefix(a.Rule, "heartbleed.lua:") || a.Severity != "high" || a.Action != "drop" ||
				!strings.Contains(a.Description, "payload_length larger than its record") ||
				a.Method == nil || !strings.Contains(a.Method.Description, "heartbeat_overflow") ||
				!strings.Contains(a.Method.Description, "16365 + 3 + 16 > record length 16368") {
				t.Errorf("alert %s", a.Raw)
			}
			// The client's stream is 16640 bytes (tshark's follow) and
			// ends with the heartbeat record, 5 + 16368 bytes: only the
			// 267 before it were forwarded.
			if c.Verdict != "drop" || c.Rule != a.Rule || c.BytesUp != 16640-5-16368 ||
				!slices.Contains(c.Anomalies, "heartbeat_overflow") {
				t.Errorf("connection %s", c.Raw)
			}
			// The server's 20044 bytes end with its leaking response,
			// 5 + 16384 bytes, after the request: it never reached the
			// client.
			if name == "zeek/heartbleed-success.pcap" && c.BytesDown != 20044-5-16384 {
				t.Errorf("%d bytes forwarded to the client", c.BytesDown)
			}
		})
	}
	t.Run("zeek/heartbleed-encrypted.pcap", func(t *testing.T) {
		recs := runs["zeek/heartbleed-encrypted.pcap"].recs
		alerts, conns := alertsOf(recs), connectionsOf(recs)
		if len(alerts) != 1 || len(conns) != 1 {
			t.Fatalf("%d alerts, %d connection lines", len(alerts), len(conns))
		}
		a, c := alerts[0], conns[0]
		if !strings.HasPrefix(a.Rule, "heartbleed.lua:") || a.Action != "drop" || a.Event != "anomaly" ||
			!strings.Contains(a.Description, "encrypted heartbeat before any application data") ||
			a.Method == nil || !strings.Contains(a.Method.Description, "heartbeat of 86 bytes from the client") {
			t.Errorf("alert %s", a.Raw)
		}
		// The client's 426 bytes (tshark's follow) are its handshake
		// records up to byte 273, the heartbeat (5 + 86 bytes) and two
		// encrypted alerts: only the 273 before the heartbeat went on.
		if c.Verdict != "drop" || c.BytesUp != 273 || c.Flow.SNI != "www.lilawelt.net" ||
			!slices.Contains(c.Anomalies, "heartbeat_before_application_data") {
			t.Errorf("connection %s", c.Raw)
		}
	})
}

// benign are the MANIFEST's captures of well-formed TLS sessions with
// nothing to refuse under the stock rules: no alert, every connection
// passes.
var benign = []string{
	"arkime/badcurveball.pcap", // the CurveBall certificate: no stock rule judges certificates
	"arkime/curl-enabled-tls13.pcap",
	"arkime/https2-301-get.pcap",      // SSLv2-format hello, TLS 1.0 negotiated
	"arkime/openssl-tls1.pcap",        // TLS 1.0 is logged, not refused
	"arkime/openssl-tls1_2-tls1.pcap", // TLS 1.2 offered, TLS 1.0 chosen
	"arkime/tls-split-client-hello.pcap",
	"suricata-verify/bug-7264-tcp-3whs-ack-data-tls-01/input.pcap",
	"suricata-verify/ssl_version_negated/input.pcap",
	"suricata-verify/sslv2-tls-upgrade-01/ssl-v2-s1.pcap",
	"suricata-verify/tls/tls-client-hello-frag-01/dump_mtu300.pcap",
	"suricata-verify/tls/tls13-draft14/tls13_draft14.pcap",
	"zeek/chrome-1250-tls-x25519-kyber.pcap",
	"zeek/hrr.pcap",
	"zeek/signed_certificate_timestamp_tls1_0.pcap",
	"zeek/tls-1.2-handshake-failure.pcap", // a well-formed fatal alert from the server
	"zeek/tls-fragmented-handshake.pcap.gz",
	"zeek/tls1.2.pcap",
	"zeek/tls13-ech.pcap", // its first stream was caught after its start: not inspected
	"zeek/tls13_wolfssl.pcap",
	"zeek/tls1_1.pcap",
}

func TestBenignCapturesPass(t *testing.T) {
	_, runs := suite(t)
	for _, name := range benign {
		r := runs[name]
		if r == nil {
			t.Errorf("%s: no such capture", name)
			continue
		}
		if a := alertsOf(r.recs); len(a) != 0 {
			t.Errorf("%s: %d alerts, first %s", name, len(a), a[0].Raw)
		}
		for _, c := range connectionsOf(r.recs) {
			if c.Verdict != "pass" {
				t.Errorf("%s: %s", name, c.Raw)
			}
		}
	}
	// The first stream of tls13-ech.pcap, whose SYN was not captured,
	// starts with application data: it is named, not judged. It never
	// ends in the capture, so its line comes last.
	conns := connectionsOf(runs["zeek/tls13-ech.pcap"].recs)
	for _, c := range conns {
		midstream := slices.Equal(c.Anomalies, []string{"midstream"})
		if midstream != (c.Flow.ID == 1) || c.Flow.ID == 1 && (c.BytesUp != 39 || c.BytesDown != 39 || c.Version != "") {
			t.Errorf("tls13-ech.pcap: %s", c.Raw)
		}
	}
}

// TestMalformedCaptures: the malformed captures are named by a parse
// error or an anomaly of the TLS machine, which the stock hygiene rule
// turns into an alert and a drop.
func TestMalformedCaptures(t *testing.T) {
	_, runs := suite(t)
	for _, tc := range []struct {
		name        string
		flow        uint64
		event       string
		description string
	}{
		// The server answers 00 00 00 00 02 00 28: content type 0.
		{"zeek/tls-1.2-protocol-error.pcap", 1, "anomaly", "TLS protocol anomaly: invalid_record_type (down): content type 0"},
		// One corrupted vector length inside the server's Certificate.
		{"zeek/tls1.2-protocol-violation.pcap", 1, "parse_error", "malformed TLS (down): certificate: malformed certificate_list length"},
		// An HTTP CONNECT before any TLS.
		{"suricata-verify/http-connect/http-connect-tls/input.pcap", 1, "parse_error", `not TLS (up): the client's first bytes "CONN"`},
		// After the 15-byte Certificate with its truncated DER, the
		// record goes on with 84 ff ff ff: a message of type 132.
		{"suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap", 1, "anomaly", "TLS protocol anomaly: unexpected_message (down): unknown_132 from the server in state server_flight"},
		// The second of two ClientHellos back to back.
		{"suricata-verify/tls-duplicate-hello/input.pcap", 2, "anomaly", "TLS protocol anomaly: unexpected_message (up): client_hello from the client in state server_hello"},
		// SSH on port 443.
		{"suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap", 1, "parse_error", `not TLS (up): the client's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83)`},
	} {
		r := runs[tc.name]
		alerts := alertsOf(r.recs)
		if len(alerts) != 1 {
			t.Errorf("%s: %d alerts, want 1:\n%s", tc.name, len(alerts), r.stdout)
			continue
		}
		a := alerts[0]
		if a.Flow.ID != tc.flow || a.Event != tc.event || !strings.HasPrefix(a.Description, tc.description) ||
			!strings.HasPrefix(a.Rule, "hygiene.lua:") || a.Action != "drop" {
			t.Errorf("%s: alert %s\nwant flow %d, event %s, %q", tc.name, a.Raw, tc.flow, tc.event, tc.description)
		}
		for _, c := range connectionsOf(r.recs) {
			if c.Flow.ID == tc.flow && (c.Verdict != "drop" || c.Rule != a.Rule) {
				t.Errorf("%s: connection %s", tc.name, c.Raw)
			}
		}
	}
	// The duplicate hello is held: nothing of the stream's client bytes
	// after the first hello, and nothing of the server's, was forwarded.
	c := connectionsOf(runs["suricata-verify/tls-duplicate-hello/input.pcap"].recs)
	if len(c) != 2 || c[0].Verdict != "pass" || c[0].BytesUp+c[0].BytesDown != 0 || c[1].BytesDown != 0 || c[1].Flow.SNI != "localhost" {
		t.Errorf("tls-duplicate-hello: %v", c)
	}
}

// TestNotTLS: SSH on port 443 is reported as a stream that does not speak
// TLS (a parse error of its first bytes), not as an attack.
func TestNotTLS(t *testing.T) {
	_, runs := suite(t)
	r := runs["suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap"]
	// stderr's first line lists the rule files loaded, heartbleed.lua
	// among them; nothing else may speak of heartbeats.
	logs := strings.SplitN(r.stderr, "\n", 2)
	if !strings.Contains(logs[0], "rules loaded") {
		t.Errorf("stderr does not start with the rules loaded:\n%s", r.stderr)
	}
	for _, s := range []string{r.stdout, logs[len(logs)-1]} {
		if strings.Contains(strings.ToLower(s), "heartbleed") || strings.Contains(strings.ToLower(s), "heartbeat") {
			t.Errorf("the SSH stream's output speaks of heartbeats:\n%s", s)
		}
	}
	conns := connectionsOf(r.recs)
	if len(conns) != 1 {
		t.Fatalf("%d connection lines", len(conns))
	}
	c := conns[0]
	if c.Flow.Dst != "198.51.100.5:443" || c.Verdict != "drop" || !strings.HasPrefix(c.Reason, `not TLS (up): the client's first bytes "SSH-"`) ||
		c.Version != "" || c.JA3 != "" || c.BytesUp != 0 || c.BytesDown != 0 {
		t.Errorf("connection %s", c.Raw)
	}
	if a := alertsOf(r.recs); len(a) != 1 || a[0].Event != "parse_error" || a[0].Severity == "high" {
		t.Errorf("alerts %v", a)
	}
}

// TestVersionPolicy: the stock version policy refuses SSL 3.0 when the
// ServerHello negotiates it (which is not forwarded) and an SSLv2-only
// ClientHello; an SSLv2-format ClientHello that negotiates TLS 1.0
// passes, with the deprecated version logged.
func TestVersionPolicy(t *testing.T) {
	_, runs := suite(t)
	refused := func(name, description, event string, up, down int64) {
		t.Helper()
		r := runs[name]
		alerts, conns := alertsOf(r.recs), connectionsOf(r.recs)
		if len(alerts) != 1 || len(conns) != 1 {
			t.Fatalf("%s: %d alerts, %d connection lines", name, len(alerts), len(conns))
		}
		a, c := alerts[0], conns[0]
		if a.Description != description || a.Event != event || !strings.HasPrefix(a.Rule, "version_policy.lua:") || a.Action != "drop" {
			t.Errorf("%s: alert %s", name, a.Raw)
		}
		if c.Verdict != "drop" || c.Reason != description || c.BytesUp != up || c.BytesDown != down {
			t.Errorf("%s: connection %s", name, c.Raw)
		}
	}
	// The client's hello (140 bytes) went through; the ServerHello that
	// chose SSL 3.0 was held and dropped.
	refused("arkime/openssl-ssl3.pcap", "refused protocol version SSL3.0 (negotiated)", "server_hello", 140, 0)
	// Refused at the client's CLIENT-HELLO, before it reached the server.
	refused("zeek/ssl-v2.pcap", "refused protocol version SSL2.0 (SSLv2-only ClientHello)", "client_hello", 0, 0)
	if c := connectionsOf(runs["zeek/ssl-v2.pcap"].recs)[0]; !strings.HasPrefix(c.JA4, "ts2") {
		t.Errorf("ssl-v2.pcap: JA4 %q, want an SSL 2.0 one", c.JA4)
	}

	for _, name := range []string{
		"suricata-verify/sslv2-tls-upgrade-01/ssl-v2-s1.pcap",
		"arkime/https2-301-get.pcap",
		"suricata-verify/ssl_version_negated/input.pcap",
	} {
		r := runs[name]
		var tls10 int
		for _, c := range connectionsOf(r.recs) {
			if c.Version == "TLS1.0" && c.Verdict == "pass" && c.BytesDown > 0 {
				tls10++
			}
		}
		if tls10 == 0 || len(alertsOf(r.recs)) != 0 {
			t.Errorf("%s: %d TLS 1.0 connections passed:\n%s", name, tls10, r.stdout)
		}
		if n := strings.Count(r.stderr, "deprecated protocol version TLS1.0 negotiated"); n != tls10 {
			t.Errorf("%s: %d deprecated-version logs for %d TLS 1.0 connections:\n%s", name, n, tls10, r.stderr)
		}
	}
}

// TestTLSByContent: TLS is recognised by its bytes, on any port: 4433,
// 9090 and 10443 are inspected in full (version, fingerprints), and SSH
// on 443 is not taken for TLS.
func TestTLSByContent(t *testing.T) {
	_, runs := suite(t)
	for _, tc := range []struct {
		name, dst, version, sni string
	}{
		{"zeek/tls-fragmented-handshake.pcap.gz", "104.236.167.107:4433", "TLS1.2", "104.236.167.107"},
		{"zeek/tls13_wolfssl.pcap", "192.168.186.134:9090", "TLS1.3", ""},
		{"suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap", "127.0.0.1:10443", "TLS1.2", ""},
	} {
		conns := connectionsOf(runs[tc.name].recs)
		if len(conns) != 1 {
			t.Errorf("%s: %d connection lines", tc.name, len(conns))
			continue
		}
		c := conns[0]
		if c.Flow.Dst != tc.dst || c.Version != tc.version || c.Flow.SNI != tc.sni || c.JA3 == "" || c.JA4 == "" {
			t.Errorf("%s: connection %s, want to %s, %s, SNI %q, fingerprinted", tc.name, c.Raw, tc.dst, tc.version, tc.sni)
		}
	}
	// The 340 KB certificate over 21 records reached the client whole.
	if c := connectionsOf(runs["zeek/tls-fragmented-handshake.pcap.gz"].recs)[0]; c.BytesDown != 340179 || c.Verdict != "pass" {
		t.Errorf("tls-fragmented-handshake: %s", c.Raw)
	}
	r := runs["suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap"]
	if c := connectionsOf(r.recs)[0]; !strings.HasPrefix(c.Reason, "not TLS") {
		t.Errorf("SSH on 443: %s", c.Raw)
	}
}

// TestDamagedCapture: bug-1450-04's file is damaged after its 6th packet:
// the exit status is 1, stderr names the damage, and what was read is
// replayed and reported.
func TestDamagedCapture(t *testing.T) {
	_, runs := suite(t)
	name := "suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap"
	r := runs[name]
	if r.status != 1 || !strings.Contains(r.stderr, name+": capture damaged after packet 6 (record at byte 5035)") ||
		!strings.Contains(r.stderr, "1 of 1 captures could not be read to the end") {
		t.Errorf("status %d, stderr:\n%s", r.status, r.stderr)
	}
	conns := connectionsOf(r.recs)
	if len(conns) != 1 || conns[0].BytesUp != 295 || conns[0].Verdict != "drop" {
		t.Errorf("connections %v", conns)
	}
}
