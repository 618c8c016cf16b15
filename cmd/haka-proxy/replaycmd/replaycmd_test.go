package replaycmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// mainEnv makes the test binary act as haka-proxy, so that exit statuses
// and the two output streams are those of a real process.
const mainEnv = "HAKA_REPLAYCMD_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(fakeMain(os.Args[1:]))
	}
	code := m.Run()
	removeBinary()
	os.Exit(code)
}

// fakeMain is what cmd/haka-proxy's main does with the command.
func fakeMain(args []string) int {
	root := &cobra.Command{Use: "haka-proxy", SilenceErrors: true}
	root.AddCommand(New(&Options{}, os.Stdout, os.Stderr, alertingBuilder))
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

// alertingBuilder makes inspectors that forward everything and raise one
// alert per connection at its first read, through the writer they are
// given, as the rules do.
func alertingBuilder(in Inspection) (inspect.Factory, error) {
	if in.Rules == "broken" {
		return nil, errors.New("rules: broken.lua:3: syntax error")
	}
	return alertFactory{in.Alerts}, nil
}

type alertFactory struct{ w *output.Writer }

func (f alertFactory) New(fl *inspect.Flow, _ func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return &alertInsp{w: f.w, flow: fl}, inspect.Decision{}
}

type alertInsp struct {
	w      *output.Writer
	flow   *inspect.Flow
	raised bool
}

func (i *alertInsp) Feed(_ dissect.Direction, p []byte, now time.Time) inspect.Result {
	if !i.raised {
		i.raised = true
		i.w.Alert(&output.Alert{Time: now, Description: "first bytes", Severity: "low", Event: "record",
			Rule: "test.lua:1", Action: "none", Flow: output.FlowRef{ID: i.flow.ID, Src: i.flow.Src.String(), Dst: i.flow.Dst.String()}})
	}
	return inspect.Result{Forward: len(p)}
}

func (i *alertInsp) EOF(_ dissect.Direction, p []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(p)}
}
func (i *alertInsp) Info() inspect.Info    { return inspect.Info{} }
func (i *alertInsp) Close(inspect.Summary) {}

// haka runs the test binary as haka-proxy.
func haka(t *testing.T, stdin []byte, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		status = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return o.String(), e.String(), status
}

// jsonLines parses stdout, which must hold nothing but JSON lines.
func jsonLines(t *testing.T, stdout string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stdout line is not JSON: %q", line)
		}
		recs = append(recs, m)
	}
	return recs
}

func TestReplayGoodCaptures(t *testing.T) {
	stdout, stderr, status := haka(t, nil, "replay",
		capture(t, "zeek/tls13-ech.pcap"), capture(t, "suricata-verify/ssl_version_negated/input.pcap"))
	if status != 0 || stderr != "" {
		t.Fatalf("status %d, stderr %q", status, stderr)
	}
	recs := jsonLines(t, stdout)
	conns, alerts := 0, 0
	for _, r := range recs {
		switch r["type"] {
		case "connection":
			conns++
		case "alert":
			alerts++
		}
	}
	// 3 + 7 streams; every one with bytes raised its alert before its
	// line, but for ssl_version_negated's first stream, a lone SYN, and
	// tls13-ech's first, caught after its start and so not inspected.
	if conns != 10 || alerts != 8 {
		t.Fatalf("%d connections, %d alerts:\n%s", conns, alerts, stdout)
	}
	seen := map[float64]bool{}
	for _, r := range recs {
		id := r["flow"].(map[string]any)["id"].(float64)
		if r["type"] == "connection" {
			seen[id] = true
		} else if seen[id] {
			t.Errorf("alert of flow %v after its connection line", id)
		}
	}
}

func TestReplayBadCaptures(t *testing.T) {
	dir := t.TempDir()
	notPcap := filepath.Join(dir, "notes.txt")
	os.WriteFile(notPcap, []byte("not a capture\n"), 0o644)
	missing := filepath.Join(dir, "missing.pcap")
	damaged := capture(t, "suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap")
	good := capture(t, "zeek/heartbleed.pcap")

	stdout, stderr, status := haka(t, nil, "replay", damaged, notPcap, good, missing)
	if status != 1 {
		t.Fatalf("status %d, want 1", status)
	}
	recs := jsonLines(t, stdout)
	// The damaged capture's readable part, then the good capture.
	var lines []string
	for _, r := range recs {
		if r["type"] == "connection" {
			lines = append(lines, fmt.Sprintf("%v %v", r["bytes_up"], r["bytes_down"]))
		}
	}
	if strings.Join(lines, ",") != "295 4208,16640 3657" {
		t.Fatalf("connections %v", lines)
	}
	for _, want := range []string{
		damaged + ": capture damaged after packet 6",
		notPcap + ": not a pcap or pcapng capture",
		missing + ": open ",
		"3 of 4 captures could not be read to the end",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, good) {
		t.Errorf("stderr speaks of the good capture:\n%s", stderr)
	}
}

func TestReplayFlags(t *testing.T) {
	hb := capture(t, "zeek/heartbleed.pcap")
	stdout, _, status := haka(t, nil, "replay", "--format", "text", hb)
	if status != 0 || !strings.Contains(stdout, " CONN 173.203.79.216:") || !strings.Contains(stdout, " ALERT first bytes") {
		t.Fatalf("text: status %d:\n%s", status, stdout)
	}
	_, stderr, status := haka(t, nil, "replay", "--format", "xml", hb)
	if status != 1 || !strings.Contains(stderr, `"xml"`) {
		t.Fatalf("xml: status %d: %s", status, stderr)
	}
	_, stderr, status = haka(t, nil, "replay", "--rules", "broken", hb)
	if status != 1 || !strings.Contains(stderr, "broken.lua:3") {
		t.Fatalf("broken rules: status %d: %s", status, stderr)
	}
	_, stderr, status = haka(t, nil, "replay")
	if status != 1 || !strings.Contains(stderr, "requires at least 1 arg") {
		t.Fatalf("no file: status %d: %s", status, stderr)
	}
	_, stderr, status = haka(t, nil, "replay", "--stats", hb)
	if status != 0 || !strings.Contains(stderr, "23 packets") || !strings.Contains(stderr, "in 1 streams") {
		t.Fatalf("stats: status %d: %s", status, stderr)
	}
}

func TestReplayStdin(t *testing.T) {
	b, err := os.ReadFile(capture(t, "zeek/tls-fragmented-handshake.pcap.gz"))
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr, status := haka(t, b, "replay", "-")
	recs := jsonLines(t, stdout)
	if status != 0 || stderr != "" || len(recs) != 2 || recs[1]["bytes_down"].(float64) != 340179 {
		t.Fatalf("status %d, stderr %q:\n%s", status, stderr, stdout)
	}
}

// TestPassThroughBuilder: without a rule engine, --rules is refused
// rather than ignored.
func TestPassThroughBuilder(t *testing.T) {
	var out, errb bytes.Buffer
	cmd := New(nil, &out, &errb, nil)
	cmd.SetArgs([]string{"--rules", "/etc/haka", capture(t, "zeek/heartbleed.pcap")})
	cmd.SetOut(&errb)
	cmd.SetErr(&errb)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no rule engine") {
		t.Fatalf("err = %v", err)
	}
	out.Reset()
	cmd = New(nil, &out, &errb, nil)
	cmd.SetArgs([]string{capture(t, "zeek/heartbleed.pcap")})
	if err := cmd.Execute(); err != nil || len(jsonLines(t, out.String())) != 1 {
		t.Fatalf("err = %v, out %q", err, out.String())
	}
}
