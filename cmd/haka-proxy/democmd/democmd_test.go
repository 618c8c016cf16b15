package democmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The demo fails, saying why, when the proxy does not stop the attacks:
// without inspection both leak through.
func TestDemoFailsWithoutInspection(t *testing.T) {
	var out, log bytes.Buffer
	err := Run(context.Background(), Options{Out: &out, Log: &log, Wait: 5 * time.Second,
		Build: func(*output.Writer, *zap.Logger) (inspect.Factory, error) { return inspect.PassThrough{}, nil }})
	report := out.String()
	if err == nil {
		t.Fatalf("the demo passed without inspection:\n%s", report)
	}
	for _, want := range []string{
		"proxy    127.0.0.1:", "no inspection (pass-through)",
		"TLS 1.3 client        exchange ok: ",
		"cleartext Heartbleed  LEAKED 16408 bytes",
		"FAILED  16408 leaked bytes reached the attacker",
		"FAILED  1 heartbeat(s) reached the backend, want 0",
		"encrypted Heartbleed  LEAKED 16005 bytes",
		"FAILED  the connection ended with \"pass\" by \"\", want a rule's drop",
		"FAILED: ",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if !strings.Contains(err.Error(), "cleartext Heartbleed: 16408 leaked bytes reached the attacker") {
		t.Errorf("error %v", err)
	}
}

// refuseAll refuses every connection, as a rule set that drops
// everything would.
type refuseAll struct{}

func (refuseAll) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return nil, inspect.Decision{Verdict: inspect.Drop, Reason: "refused", Rule: "test"}
}

// A proxy that breaks normal clients fails the demo too.
func TestDemoFailsWhenNormalClientsBreak(t *testing.T) {
	var out, log bytes.Buffer
	err := Run(context.Background(), Options{Out: &out, Log: &log, Wait: 5 * time.Second,
		Build: func(*output.Writer, *zap.Logger) (inspect.Factory, error) { return refuseAll{}, nil }})
	if err == nil || !strings.Contains(err.Error(), "TLS 1.3 client: handshake: ") || !strings.Contains(err.Error(), "TLS 1.2 client: ") {
		t.Fatalf("err = %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "TLS 1.3 client        broken: handshake: ") {
		t.Errorf("report:\n%s", out.String())
	}
}
