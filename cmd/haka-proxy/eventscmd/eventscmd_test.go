package eventscmd

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
)

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

// Every event, every field of its parameter, every flow field and every
// anomaly name is listed, in each format.
func TestEventsListed(t *testing.T) {
	for _, format := range []string{"text", "markdown"} {
		out, err := run(t, "--format", format)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range tlssm.FlowFields {
			if !strings.Contains(out, "flow."+f.Name) {
				t.Errorf("%s: flow.%s missing", format, f.Name)
			}
		}
		for _, e := range tlssm.Events {
			head := e.Name + "(flow"
			if e.Param != "" {
				head += ", " + e.Param + ")"
			}
			if !strings.Contains(out, head) {
				t.Errorf("%s: %s missing", format, head)
			}
			for _, f := range e.Fields {
				if !strings.Contains(out, e.Param+"."+f.Name) {
					t.Errorf("%s: %s.%s missing", format, e.Param, f.Name)
				}
			}
		}
		for _, a := range tlssm.AnomalyNames {
			if !strings.Contains(out, a.Name) {
				t.Errorf("%s: anomaly %s missing", format, a.Name)
			}
		}
	}
	text, _ := run(t)
	if !strings.Contains(text, "heartbeat(flow, hb)\n  raised: every heartbeat record, before it is forwarded\n") ||
		!strings.Contains(text, "  hb.overflow ") {
		t.Errorf("text listing:\n%s", text)
	}
}

func TestEventsJSON(t *testing.T) {
	out, err := run(t, "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Dissector string
		Flow      []tlssm.Field
		Events    []struct {
			Name, Param, Raised string
			Fields              []tlssm.Field
		}
		Anomalies []tlssm.Field
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.Dissector != "tls" || len(got.Events) != int(tlssm.NumEvents) || len(got.Flow) != len(tlssm.FlowFields) || len(got.Anomalies) != len(tlssm.AnomalyNames) {
		t.Fatalf("%+v", got)
	}
	for i, e := range got.Events {
		if e.Name != tlssm.Events[i].Name || len(e.Fields) != len(tlssm.Events[i].Fields) {
			t.Errorf("event %d: %+v", i, e)
		}
	}
}

func TestEventsBadFormat(t *testing.T) {
	if _, err := run(t, "--format", "yaml"); err == nil || !strings.Contains(err.Error(), `--format "yaml"`) {
		t.Errorf("error %v", err)
	}
	if _, err := run(t, "extra"); err == nil {
		t.Error("no error for an argument")
	}
}
