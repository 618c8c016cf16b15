package replaycmd

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The command line's contract, through the real binary: stdout holds the
// records and nothing else, diagnostics go to stderr, the exit status
// says whether every capture was read to its end.

// flowID is a record's flow ID, as the writer puts it.
var flowID = regexp.MustCompile(`"flow":\{"id":(\d+),`)

// shiftIDs adds n to the flow IDs of normalised output.
func shiftIDs(t *testing.T, out string, n int) string {
	return flowID.ReplaceAllStringFunc(out, func(m string) string {
		id, err := strconv.Atoi(flowID.FindStringSubmatch(m)[1])
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`"flow":{"id":%d,`, id+n)
	})
}

// TestManyFiles replays every capture in one run: the output is that of
// the captures one by one, in the order given, flow IDs going on from
// one capture to the next; only the damaged capture is reported, and the
// exit status is 1 for it.
func TestManyFiles(t *testing.T) {
	names, runs := suite(t)
	args := []string{"replay", "--format", "json"}
	var want strings.Builder
	ids := 0
	for _, name := range names {
		args = append(args, capture(t, name))
		want.WriteString(shiftIDs(t, runs[name].norm, ids))
		ids += len(connectionsOf(runs[name].recs))
	}
	r := hakaProxy(t, nil, args...)
	_, got := parseOutput(t, r.stdout)
	if got != want.String() {
		t.Errorf("the output of one run differs from the captures' one by one:\n%s", lineDiff(want.String(), got))
	}
	if r.status != 1 {
		t.Errorf("exit status %d, want 1", r.status)
	}
	var replayLines []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.Contains(l, `"type":"alert"`) || strings.Contains(l, `"type":"connection"`) {
			t.Errorf("a record on stderr: %s", l)
		}
		if strings.HasPrefix(l, "replay: ") || strings.HasPrefix(l, "Error: ") || strings.HasPrefix(l, "haka-proxy: ") {
			replayLines = append(replayLines, l)
		}
	}
	damagedPath := capture(t, "suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap")
	if len(replayLines) != 2 || !strings.HasPrefix(replayLines[0], "replay: "+damagedPath+": capture damaged after packet 6") ||
		!strings.Contains(replayLines[1], "1 of 31 captures could not be read to the end") {
		t.Errorf("diagnostics:\n%s", strings.Join(replayLines, "\n"))
	}
}

// TestExitStatus: 0 when every capture was read to its end, whatever the
// verdicts; 1 when one could not be, with the others' records (and the
// readable part of a damaged one) printed all the same.
func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	hb := capture(t, "zeek/heartbleed.pcap")
	good := capture(t, "zeek/tls1.2.pcap")
	notCapture := filepath.Join(dir, "notes.pcap")
	if err := os.WriteFile(notCapture, []byte("not a capture\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pcap")
	// tls1.2.pcap cut 30 bytes into its 11th packet's record.
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	cut := pcapPrefix(t, raw, 10) + 30
	truncated := filepath.Join(dir, "truncated.pcap")
	if err := os.WriteFile(truncated, raw[:cut], 0o644); err != nil {
		t.Fatal(err)
	}

	r := hakaProxy(t, nil, "replay", hb, good)
	recs, _ := parseOutput(t, r.stdout)
	if r.status != 0 || len(connectionsOf(recs)) != 2 || len(alertsOf(recs)) != 1 || strings.Contains(r.stderr, "replay: ") {
		t.Errorf("good captures: status %d, %d records, stderr:\n%s", r.status, len(recs), r.stderr)
	}

	for _, tc := range []struct {
		name, path, diagnostic string
	}{
		{"missing", missing, missing + ": open " + missing + ": no such file or directory"},
		{"not a capture", notCapture, notCapture + ": not a pcap or pcapng capture (magic 6e6f7420)"},
		{"truncated", truncated, truncated + ": capture truncated after packet 10 (record at byte " + strconv.Itoa(pcapPrefix(t, raw, 10)) + "): unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := hakaProxy(t, nil, "replay", hb, tc.path, good)
			if r.status != 1 || !strings.Contains(r.stderr, "replay: "+tc.diagnostic) ||
				!strings.Contains(r.stderr, "1 of 3 captures could not be read to the end") {
				t.Errorf("status %d, stderr:\n%s", r.status, r.stderr)
			}
			recs, _ := parseOutput(t, r.stdout)
			conns := connectionsOf(recs)
			wantConns := 2
			if tc.name == "truncated" {
				wantConns = 3 // the 10 packets before the cut are a stream too
			}
			if len(conns) != wantConns || conns[0].Verdict != "drop" || conns[len(conns)-1].BytesDown != 6036 {
				t.Errorf("connections %v", conns)
			}
			if tc.name == "truncated" && (conns[1].Flow.Src != "10.0.0.80:56637" || conns[1].BytesUp == 0) {
				t.Errorf("the truncated capture's stream: %s", conns[1].Raw)
			}
		})
	}
}

// pcapPrefix returns the length of a classic pcap file's header and first
// n records.
func pcapPrefix(t *testing.T, raw []byte, n int) int {
	t.Helper()
	off := 24
	for range n {
		if off+16 > len(raw) {
			t.Fatalf("fewer than %d records", n)
		}
		caplen := int(raw[off+8]) | int(raw[off+9])<<8 | int(raw[off+10])<<16 | int(raw[off+11])<<24
		off += 16 + caplen
	}
	return off
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestGzip: a gzip-compressed capture, from a file or stdin, gives the
// output of the capture itself.
func TestGzip(t *testing.T) {
	_, runs := suite(t)
	dir := t.TempDir()
	// heartbleed.pcap compressed.
	raw, err := os.ReadFile(capture(t, "zeek/heartbleed.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	gz := filepath.Join(dir, "heartbleed.pcap.gz")
	if err := os.WriteFile(gz, gzipBytes(t, raw), 0o644); err != nil {
		t.Fatal(err)
	}
	// tls-fragmented-handshake.pcap.gz, which comes compressed, expanded.
	f, err := os.Open(capture(t, "zeek/tls-fragmented-handshake.pcap.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	expanded := filepath.Join(dir, "tls-fragmented-handshake.pcap")
	if err := os.WriteFile(expanded, plain, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path string
		stdin      []byte
		same       string
	}{
		{"compressed file", gz, nil, "zeek/heartbleed.pcap"},
		{"compressed stdin", "-", gzipBytes(t, raw), "zeek/heartbleed.pcap"},
		{"expanded file", expanded, nil, "zeek/tls-fragmented-handshake.pcap.gz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := hakaProxy(t, tc.stdin, "replay", tc.path)
			_, got := parseOutput(t, r.stdout)
			if r.status != 0 || got != runs[tc.same].norm {
				t.Errorf("status %d, output differs from %s's:\n%s", r.status, tc.same, lineDiff(runs[tc.same].norm, got))
			}
		})
	}
}

// customRule drops connections to www.google.com at the ClientHello.
const customRule = `-- A test rule: no connection to www.google.com.
haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, hello)
    if hello.sni == "www.google.com" then
      haka.alert{ description = "custom: " .. hello.sni, severity = "low" }
      flow:drop("custom: no google")
    end
  end,
}
`

// TestCustomRules: --rules DIR replaces the stock rules with the
// directory's.
func TestCustomRules(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "google.lua"), []byte(customRule), 0o644); err != nil {
		t.Fatal(err)
	}
	google := capture(t, "suricata-verify/tls/tls-client-hello-frag-01/dump_mtu300.pcap")
	ssl3 := capture(t, "arkime/openssl-ssl3.pcap")
	hb := capture(t, "zeek/heartbleed.pcap")
	r := hakaProxy(t, nil, "replay", "--rules", dir, google, ssl3, hb)
	recs, _ := parseOutput(t, r.stdout)
	alerts, conns := alertsOf(recs), connectionsOf(recs)
	if r.status != 0 || len(alerts) != 1 || len(conns) != 3 {
		t.Fatalf("status %d, %d alerts, %d connection lines:\n%s\nstderr:\n%s", r.status, len(alerts), len(conns), r.stdout, r.stderr)
	}
	a := alerts[0]
	if a.Description != "custom: www.google.com" || a.Severity != "low" || a.Rule != "google.lua:2" || a.Event != "client_hello" || a.Action != "drop" {
		t.Errorf("alert %s", a.Raw)
	}
	// The ClientHello, split over 3 segments, was held whole and dropped.
	if c := conns[0]; c.Verdict != "drop" || c.Reason != "custom: no google" || c.Rule != "google.lua:2" || c.BytesUp != 0 || c.BytesDown != 0 {
		t.Errorf("google: %s", c.Raw)
	}
	// Without the stock rules, SSL 3.0 and Heartbleed go through.
	for _, c := range conns[1:] {
		if c.Verdict != "pass" {
			t.Errorf("without the stock rules: %s", c.Raw)
		}
	}
	if !strings.Contains(r.stderr, "rules loaded") || !strings.Contains(r.stderr, "google.lua") {
		t.Errorf("stderr:\n%s", r.stderr)
	}

	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, "broken.lua"), []byte("haka.rule {\n  on = tls.events.client_hello,\n  eval = function(flow\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, want string }{
		{broken, "broken.lua:"},
		{filepath.Join(dir, "nowhere"), "no such file or directory"},
	} {
		r := hakaProxy(t, nil, "replay", "--rules", tc.dir, hb)
		if r.status != 1 || r.stdout != "" || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--rules %s: status %d, stdout %q, stderr:\n%s", tc.dir, r.status, r.stdout, r.stderr)
		}
	}
}

// textLine is a record in --format text: an RFC 3339 time, ALERT or
// CONN, and the rest.
var textLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z (ALERT|CONN) `)

// TestTextFormat: --format text writes one readable line per record, the
// same records as JSON.
func TestTextFormat(t *testing.T) {
	hb := capture(t, "zeek/heartbleed.pcap")
	ssh := capture(t, "suricata-verify/firewall/app-layer-protocol-unknown-tls-boundary/input.pcap")
	r := hakaProxy(t, nil, "replay", "--format", "text", hb, ssh)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.status != 0 || len(lines) != 4 {
		t.Fatalf("status %d:\n%s", r.status, r.stdout)
	}
	for _, l := range lines {
		if !textLine.MatchString(l) {
			t.Errorf("not a text record: %q", l)
		}
	}
	for i, want := range []string{
		" ALERT heartbleed: heartbeat payload_length larger than its record [high] 173.203.79.216:46592 -> 162.219.2.166:443 sni=\"\" event=anomaly rule=heartbleed.lua:",
		"2014-04-08T16:11:26.753913Z CONN 173.203.79.216:46592 -> 162.219.2.166:443 sni=\"\" version=TLS1.2 up=267 down=3657 duration=0.070s verdict=drop rule=heartbleed.lua:",
		` ALERT not TLS (up): the client's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83) [medium] 192.0.2.10:54321 -> 198.51.100.5:443 sni="" event=parse_error rule=hygiene.lua:`,
		` CONN 192.0.2.10:54321 -> 198.51.100.5:443 sni="" version= up=0 down=0 duration=0.000s verdict=drop rule=hygiene.lua:`,
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %q\nwant it to contain %q", i+1, lines[i], want)
		}
	}
	if !strings.Contains(lines[1], "anomalies=heartbeat_overflow") {
		t.Errorf("line 2: %q", lines[1])
	}
	r = hakaProxy(t, nil, "replay", "--format", "xml", hb)
	if r.status != 1 || r.stdout != "" || !strings.Contains(r.stderr, `unknown output format "xml"`) {
		t.Errorf("--format xml: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
}

// TestStatsOnStderr: --stats adds what each capture held, on stderr; the
// records on stdout are the same.
func TestStatsOnStderr(t *testing.T) {
	_, runs := suite(t)
	name := "suricata-verify/ssl_version_negated/input.pcap"
	r := hakaProxy(t, nil, "replay", "--stats", capture(t, name))
	_, got := parseOutput(t, r.stdout)
	if r.status != 0 || got != runs[name].norm ||
		!strings.Contains(r.stderr, ": 114 packets (") || !strings.Contains(r.stderr, " in 7 streams, 0 gaps") {
		t.Errorf("status %d, stderr:\n%s", r.status, r.stderr)
	}
}
