package sm_test

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run with -update if the change is intended):\n%s", path, got)
	}
}

// sslMachine exercises everything DOT draws: grammar elements in each
// direction, guards, several events on one transition, actions without
// jump, both pseudo-states and the defaults.
func sslMachine(t testing.TB) *M {
	b := sm.NewBuilder[*rec, string, string]("ssl")
	clientHello := b.RegisterEvent("client_hello")
	heartbeat := b.RegisterEvent("heartbeat")
	b.BidirectionalState("hello_request", element("client_hello"), nil).
		On(T{Event: sm.EvUp, Execute: nop, Jump: "client_hello_done"}).
		On(T{Event: sm.EvParseError, Jump: sm.Fail}).
		On(T{Event: b.Timeout(10 * time.Second), Jump: sm.Fail})
	b.BidirectionalState("client_hello_done", nil, element("server_hello")).
		On(T{Event: sm.EvDown, When: is("retry"), Jump: "hello_request"}).
		On(T{Event: sm.EvDown, Jump: "session"})
	b.BidirectionalState("session", element("record"), element("record")).
		On(T{Events: []sm.EventID{sm.EvUp, sm.EvDown}, Execute: nop}).
		On(T{Event: heartbeat, When: is("overflow"), Jump: sm.Fail})
	b.Any().On(T{Event: sm.EvMissingGrammar, Jump: sm.Fail})
	b.Any().On(T{Event: sm.EvFail, Execute: nop})
	b.Any().On(T{Event: clientHello, Jump: sm.Finish})
	b.Initial("hello_request")
	return build(t, b)
}

func TestWriteDOT(t *testing.T) {
	var buf bytes.Buffer
	if err := sslMachine(t).WriteDOT(&buf); err != nil {
		t.Fatal(err)
	}
	golden(t, "ssl.dot", buf.Bytes())

	// The same definition renders the same bytes.
	var again bytes.Buffer
	sslMachine(t).WriteDOT(&again)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("two renderings of one definition differ")
	}
}

func TestWriteDOTQuotes(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string](`say "hi"`)
	b.BidirectionalState(`a\b "c"`, &El{Name: "x\ny", Parse: element("x").Parse}, nil)
	b.Initial(`a\b "c"`)
	var buf bytes.Buffer
	build(t, b).WriteDOT(&buf)
	for _, want := range []string{`digraph "say \"hi\"" {`, `"a\\b \"c\"" [label="a\\b \"c\"\nup: x\ny"];`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("DOT lacks %s:\n%s", want, buf.String())
		}
	}
}

// TestDOTRendersWithGraphviz feeds the golden file to Graphviz, when it is
// installed, so that the golden file is known to be a valid graph.
func TestDOTRendersWithGraphviz(t *testing.T) {
	dot, err := exec.LookPath("dot")
	if err != nil {
		t.Skip("graphviz (dot) is not installed; apt-get install graphviz to run this test")
	}
	out, err := exec.Command(dot, "-Tsvg", filepath.Join("testdata", "ssl.dot")).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("<svg")) {
		t.Fatalf("dot -Tsvg: %v\n%s", err, out)
	}
}

// A transition's Label names its guard in place of "[when]".
func TestWriteDOTLabel(t *testing.T) {
	b := sm.NewBuilder[*rec, string, string]("labels")
	b.BidirectionalState("a", element("x"), nil).
		On(T{Event: sm.EvUp, When: is("retry"), Label: "retry", Jump: "b"}).
		On(T{Event: sm.EvUp, When: is("other"), Jump: "b"})
	b.State("b")
	b.Initial("a")
	var buf bytes.Buffer
	build(t, b).WriteDOT(&buf)
	for _, want := range []string{`"a" -> "b" [label="up [retry]"];`, `"a" -> "b" [label="up [when]"];`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("DOT lacks %s:\n%s", want, buf.String())
		}
	}
}
