package replaycmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The tests of this file and of suite_test.go and cli_test.go run the
// real haka-proxy binary, built from cmd/haka-proxy once per test
// process: the stock rules, the TLS machine and the replay, wired by the
// command's own factory.

// hakaPackage is the main package of the binary.
const hakaPackage = "github.com/hakaproxy/haka-proxy/cmd/haka-proxy"

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// hakaBinary returns the path of the haka-proxy binary, built on first use.
func hakaBinary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		binDir, binErr = os.MkdirTemp("", "haka-replaycmd-test")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "haka-proxy")
		// No VCS stamping: a worktree's repository may be out of reach.
		out, err := exec.Command(goBin, "build", "-buildvcs=false", "-o", binPath, hakaPackage).CombinedOutput()
		if err != nil {
			binErr = errors.New("go build " + hakaPackage + ": " + err.Error() + "\n" + string(out))
		}
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

// removeBinary deletes the built binary; TestMain calls it.
func removeBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// result is what a run of the binary gave.
type result struct {
	stdout, stderr string
	status         int
}

// hakaProxy runs the real binary with args, stdin as its standard input.
func hakaProxy(tb testing.TB, stdin []byte, args ...string) result {
	tb.Helper()
	cmd := exec.Command(hakaBinary(tb), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.status = ee.ExitCode()
	default:
		tb.Fatalf("haka-proxy %v: %v\nstderr:\n%s", args, err, r.stderr)
	}
	return r
}

// repoRoot returns the repository's root, found by walking up to go.mod.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// captureRoot is the repository's copy of the shared captures.
func captureRoot(tb testing.TB) string {
	return filepath.Join(repoRoot(tb), "testdata", "pcaps")
}

// capture returns the path of a capture named relative to captureRoot,
// which must exist.
func capture(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(captureRoot(tb), filepath.FromSlash(name))
	if _, err := os.Stat(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// record is one line of the JSON output: an alert or a connection line
// (the fields of output.Alert and output.Connection).
type record struct {
	Type        string          `json:"type"`
	Time        time.Time       `json:"time"`
	Description string          `json:"description"`
	Severity    string          `json:"severity"`
	Method      *output.Method  `json:"method"`
	Event       string          `json:"event"`
	Rule        string          `json:"rule"`
	Action      string          `json:"action"`
	Flow        output.FlowRef  `json:"flow"`
	BytesUp     int64           `json:"bytes_up"`
	BytesDown   int64           `json:"bytes_down"`
	Verdict     string          `json:"verdict"`
	Reason      string          `json:"reason"`
	Version     string          `json:"version"`
	JA3         string          `json:"ja3"`
	JA4         string          `json:"ja4"`
	Anomalies   []string        `json:"anomalies"`
	Raw         json.RawMessage `json:"-"`
}

// timeField is the one part of a line that changes from run to run: an
// alert's time is the wall clock of its rule's evaluation. The writer
// puts it right after the type.
var timeField = regexp.MustCompile(`^(\{"type":"(?:alert|connection)"),"time":"[^"]*"`)

// parseOutput reads JSON output, which must hold nothing but alert and
// connection lines; it returns them and the output without their times.
func parseOutput(tb testing.TB, stdout string) ([]record, string) {
	tb.Helper()
	var recs []record
	var norm strings.Builder
	for _, line := range strings.SplitAfter(stdout, "\n") {
		if line == "" {
			continue
		}
		if !strings.HasSuffix(line, "\n") {
			tb.Fatalf("stdout ends without a newline: %q", line)
		}
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			tb.Fatalf("stdout line is not JSON (%v): %q", err, line)
		}
		if r.Type != "alert" && r.Type != "connection" {
			tb.Fatalf("stdout line of type %q: %q", r.Type, line)
		}
		if !timeField.MatchString(line) {
			tb.Fatalf("stdout line without its time after the type: %q", line)
		}
		r.Raw = json.RawMessage(strings.TrimSuffix(line, "\n"))
		recs = append(recs, r)
		norm.WriteString(timeField.ReplaceAllString(line, "$1"))
	}
	return recs, norm.String()
}

func alertsOf(recs []record) []record      { return filter(recs, "alert") }
func connectionsOf(recs []record) []record { return filter(recs, "connection") }

func filter(recs []record, typ string) []record {
	var out []record
	for _, r := range recs {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}
