package rules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/replay"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// exampleFile is the example machine of the README.
const exampleFile = "examples/ssl_state_machine.lua"

// exampleDir returns a rule directory holding the example machine alone,
// as a user would deploy it (haka-proxy --rules DIR).
func exampleDir(t testing.TB) string {
	t.Helper()
	src, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(exampleFile)), src, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sharedCaptures lists the shared captures, relative to their root.
func sharedCaptures(t testing.TB) (string, []string) {
	t.Helper()
	root, err := pcaptest.Root()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasSuffix(p, ".md") {
			rel, _ := filepath.Rel(root, p)
			names = append(names, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil || len(names) == 0 {
		t.Skipf("shared captures not found at %s: %v", root, err)
	}
	sort.Strings(names)
	return root, names
}

// replayed is what a replay wrote of one connection.
type replayed struct {
	conn   output.Connection
	alerts []output.Alert
}

// line is the connection's outcome, one line of the golden file.
func (r replayed) line(capture string) string {
	s := fmt.Sprintf("%s #%d %s -> %s: %s", capture, r.conn.Flow.ID, r.conn.Flow.Src, r.conn.Flow.Dst, r.conn.Verdict)
	if r.conn.Rule != "" {
		s += " by " + r.conn.Rule
	}
	if r.conn.Reason != "" {
		s += " (" + r.conn.Reason + ")"
	}
	for _, a := range r.alerts {
		s += fmt.Sprintf("\n    alert %s [%s, %s]: %s", a.Rule, a.Event, a.Action, a.Description)
	}
	return s
}

// replayDir plays every capture through the factory `haka-proxy replay
// --rules dir` builds: a tlssm Factory without timers whose Sessions run
// the engine's rules, alerts and connection lines to one writer.
func replayDir(t *testing.T, dir string, root string, captures []string) map[string][]replayed {
	t.Helper()
	var out bytes.Buffer
	w := output.NewWriter(&out, output.JSON)
	core, logs := observer.New(zapcore.InfoLevel)
	e, err := New(Options{Dir: dir, Alerts: w, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	f, err := tlssm.NewFactory(tlssm.Options{NewHandler: e.NewTLSHandler, NoTimers: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := replay.New(replay.Options{Factory: f, Output: w})
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string][]replayed)
	for _, c := range captures {
		out.Reset()
		// Damaged captures are replayed up to the damage, as the command
		// does.
		r.ReplayFile(filepath.Join(root, filepath.FromSlash(c)))
		alerts := make(map[uint64][]output.Alert)
		sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var typ struct{ Type string }
			if err := json.Unmarshal(sc.Bytes(), &typ); err != nil {
				t.Fatalf("%s: %q: %v", c, sc.Text(), err)
			}
			switch typ.Type {
			case "alert":
				var a output.Alert
				json.Unmarshal(sc.Bytes(), &a)
				alerts[a.Flow.ID] = append(alerts[a.Flow.ID], a)
			case "connection":
				var conn output.Connection
				json.Unmarshal(sc.Bytes(), &conn)
				got[c] = append(got[c], replayed{conn: conn, alerts: alerts[conn.Flow.ID]})
			}
		}
	}
	if errs := messages(logs, zapcore.WarnLevel); len(errs) > 0 {
		t.Errorf("errors logged:\n%s", strings.Join(errs, "\n"))
	}
	return got
}

// The example machine over every shared capture, in the replay: it
// changes no verdict of the captures without Heartbleed (the built-in
// machine's drops of malformed ones stay its own), and drops every
// connection of the Heartbleed captures by its rules, with an alert. The
// outcomes are in testdata/luasm_replay.golden (-update rewrites it).
func TestExampleMachineReplay(t *testing.T) {
	root, captures := sharedCaptures(t)
	base := t.TempDir()
	if err := os.WriteFile(filepath.Join(base, "none.lua"), []byte("-- no rules\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	without := replayDir(t, base, root, captures)
	with := replayDir(t, exampleDir(t), root, captures)

	var golden strings.Builder
	for _, c := range captures {
		heartbleed := strings.Contains(c, "heartbleed")
		if len(with[c]) != len(without[c]) {
			t.Errorf("%s: %d connections with the machine, %d without", c, len(with[c]), len(without[c]))
			continue
		}
		for i, r := range with[c] {
			golden.WriteString(r.line(c) + "\n")
			b := without[c][i].conn
			byMachine := strings.HasPrefix(r.conn.Rule, "ssl_state_machine.lua:")
			switch {
			case heartbleed:
				if r.conn.Verdict != "drop" || !byMachine || len(r.alerts) == 0 {
					t.Errorf("%s: Heartbleed not dropped by the machine's rules, with an alert: %s", c, r.line(c))
				}
			case byMachine:
				t.Errorf("%s: the machine judged a capture without Heartbleed: %s", c, r.line(c))
			case r.conn.Verdict != b.Verdict || r.conn.Rule != b.Rule || r.conn.Reason != b.Reason:
				t.Errorf("%s: verdict %s (%s: %s) with the machine, %s (%s: %s) without", c,
					r.conn.Verdict, r.conn.Rule, r.conn.Reason, b.Verdict, b.Rule, b.Reason)
			}
		}
	}
	checkGolden(t, "testdata/luasm_replay.golden", golden.String())
}

// checkGolden compares got with the file at path, or rewrites it with
// -update.
func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		wl, gl := strings.Split(string(want), "\n"), strings.Split(got, "\n")
		for i := 0; i < max(len(wl), len(gl)); i++ {
			var a, b string
			if i < len(wl) {
				a = wl[i]
			}
			if i < len(gl) {
				b = gl[i]
			}
			if a != b {
				t.Errorf("%s differs at line %d (run with -update if the change is intended):\n  want %q\n  got  %q", path, i+1, a, b)
				break
			}
		}
	}
}
