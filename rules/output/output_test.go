package output

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestJSONShapes(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, JSON)
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	if err := w.Alert(&Alert{Time: now, Description: "heartbleed", Severity: "high", Event: "heartbeat",
		Rule: "heartbleed.lua:10", Action: "drop", Flow: FlowRef{ID: 7, Src: "10.0.0.1:5555", Dst: "10.0.0.2:443"}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Connection(&Connection{Time: now, Flow: FlowRef{ID: 7}, BytesUp: 10, Verdict: "drop"}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", buf.String())
	}
	var a map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &a); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"type", "time", "description", "severity", "event", "rule", "action", "flow"} {
		if _, ok := a[k]; !ok {
			t.Errorf("alert lacks %q: %s", k, lines[0])
		}
	}
	if a["type"] != "alert" {
		t.Errorf("type = %v", a["type"])
	}
	var c map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &c); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"type", "bytes_up", "bytes_down", "duration", "verdict"} {
		if _, ok := c[k]; !ok {
			t.Errorf("connection lacks %q: %s", k, lines[1])
		}
	}
}

func TestNilWriterDiscards(t *testing.T) {
	var w *Writer
	if err := w.Alert(&Alert{}); err != nil {
		t.Fatal(err)
	}
}

func TestParseFormat(t *testing.T) {
	if _, err := ParseFormat("xml"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Fatalf("want an error naming the format, got %v", err)
	}
}
