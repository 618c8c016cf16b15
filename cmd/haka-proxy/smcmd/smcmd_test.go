package smcmd

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
)

var update = flag.Bool("update", false, "rewrite testdata/tls.dot")

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := New(&out)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err := cmd.Execute()
	return out.String(), err
}

// `haka-proxy sm graph tls` prints the TLS machine, as in testdata/tls.dot.
func TestGraphTLS(t *testing.T) {
	got, err := run(t, "graph", "tls")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "tls.dot")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("the graph differs from %s (run with -update if the change is intended):\n%s", path, got)
	}
	for _, st := range []string{tlssm.StateClientHello, tlssm.StateServerHello, tlssm.StateHelloRetry, tlssm.StateServerFlight,
		tlssm.StateClientFlight, tlssm.StateServerFinished, tlssm.StateClientFinished, tlssm.StateEstablished, tlssm.StateSSLv2} {
		if !strings.Contains(got, "\t\""+st+"\" [label=") {
			t.Errorf("state %s not drawn", st)
		}
	}
}

// The golden graph is one Graphviz renders.
func TestGraphRenders(t *testing.T) {
	dot, err := exec.LookPath("dot")
	if err != nil {
		t.Skip("graphviz (dot) is not installed; apt-get install graphviz to run this test")
	}
	out, err := exec.Command(dot, "-Tsvg", filepath.Join("testdata", "tls.dot")).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("<svg")) {
		t.Fatalf("dot -Tsvg: %v\n%.500s", err, out)
	}
}

func TestGraphUnknown(t *testing.T) {
	if _, err := run(t, "graph", "ssh"); err == nil || !strings.Contains(err.Error(), `unknown state machine "ssh" (built in: tls;`) {
		t.Errorf("error %v", err)
	}
	if _, err := run(t, "graph"); err == nil {
		t.Error("no error without a machine")
	}
}

// A machine written in Lua is drawn from the rules that define it: the
// shipped example's states and the grammar elements they bind.
func TestGraphLuaMachine(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "rules", "examples")
	got, err := run(t, "graph", "--rules", dir, "ssl")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`digraph "ssl"`, `"hello_request" [label="hello_request\nup: tls.grammar.client_hello"]`} {
		if !strings.Contains(got, want) {
			t.Errorf("graph lacks %q:\n%s", want, got)
		}
	}
	if _, err := run(t, "graph", "--rules", dir, "nope"); err == nil || !strings.Contains(err.Error(), "machines in") || !strings.Contains(err.Error(), "ssl") {
		t.Errorf("an unknown machine: %v, want an error listing the machines there", err)
	}
	if _, err := run(t, "graph", "ssl"); err == nil || !strings.Contains(err.Error(), "--rules") {
		t.Errorf("a Lua machine without --rules: %v, want an error pointing to --rules", err)
	}
}
