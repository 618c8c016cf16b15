package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/replaycmd"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// inspectionOptions are what the command line says of the inspection.
type inspectionOptions struct {
	// Rules is the rule directory, "" for the stock rules.
	Rules string
	// ErrorPolicy is --rule-error-policy.
	ErrorPolicy rules.ErrorPolicy
	// NoTimers is for the replay, whose stream time is packet time: the
	// machine's timeouts fire when a packet passes them, not on the wall
	// clock.
	NoTimers bool
}

// replayRuleSteps bounds the Lua instructions of one event's rules in a
// replay: about what the live deadline (10 ms) allows an unloaded core,
// where a runaway loop runs 100,000 instructions a millisecond.
const replayRuleSteps = 1_000_000

// inspection is the inspector factory of the proxy, the replay and the
// demo: the TLS state machine (tlssm), each of whose sessions runs the
// rule engine's rules on its events.
type inspection struct {
	*tlssm.Factory
	engine *rules.Engine
	// dir is the rule directory, "" for the stock rules.
	dir string
}

// buildFactory makes the inspector factory from the rules o names. It is
// the one place where the TLS inspection and the rule engine are wired
// in: the engine observes its rule evaluations into m
// (Metrics.ObserveRuleEval; m may be nil), writes its alerts to alerts
// and its rule errors and flow:log lines to log. A rule set with mistakes
// is an error listing each at its file and line.
func buildFactory(o inspectionOptions, m *proxy.Metrics, alerts *output.Writer, log *zap.Logger) (*inspection, error) {
	if o.Rules != "" {
		if err := checkRulesDir(o.Rules); err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
	}
	var observe func(string, time.Duration)
	if m != nil {
		observe = func(_ string, d time.Duration) { m.ObserveRuleEval(d) }
	}
	ro := rules.Options{
		Dir:         o.Rules,
		Logger:      log,
		Alerts:      alerts,
		ErrorPolicy: o.ErrorPolicy,
		ObserveEval: observe,
	}
	if o.NoTimers {
		// A replay's verdicts must not depend on the machine's load: its
		// rules are bounded by instructions, not by the wall clock.
		ro.Steps = replayRuleSteps
	}
	engine, err := rules.New(ro)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	f, err := tlssm.NewFactory(tlssm.Options{
		NewHandler: engine.NewTLSHandler,
		NoTimers:   o.NoTimers,
	})
	if err != nil {
		engine.Close()
		return nil, err
	}
	return &inspection{Factory: f, engine: engine, dir: o.Rules}, nil
}

// String names the inspection for the "listening" line.
func (i *inspection) String() string {
	if i.dir == "" {
		return "TLS inspection with the stock rules"
	}
	return "TLS inspection with the rules of " + i.dir
}

// rules names the rule set for logs: its directory, or "stock".
func (i *inspection) rules() string {
	if i.dir == "" {
		return "stock"
	}
	return i.dir
}

// Reload loads the rule set again (SIGHUP): connections accepted from now
// on use the new set, those in flight keep theirs. A set with mistakes
// is refused and the running one stays.
func (i *inspection) Reload() error { return i.engine.Reload() }

// Close releases the rule set once the last connection using it closes.
func (i *inspection) Close() { i.engine.Close() }

// replayFactory is the replay's BuildFactory: buildFactory without timers,
// its rule errors and flow:log lines on the replay's stderr.
func replayFactory(in replaycmd.Inspection) (inspect.Factory, error) {
	policy, err := rules.ParseErrorPolicy(in.RuleErrorPolicy)
	if err != nil {
		return nil, fmt.Errorf("--rule-error-policy: %w", err)
	}
	log, err := newLogger("info", "console", in.Log)
	if err != nil {
		return nil, err
	}
	f, err := buildFactory(inspectionOptions{Rules: in.Rules, ErrorPolicy: policy, NoTimers: true}, nil, in.Alerts, log)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// demoFactory is the demo's BuildFactory: the proxy's inspection with the
// stock rules.
func demoFactory(alerts *output.Writer, log *zap.Logger) (inspect.Factory, error) {
	f, err := buildFactory(inspectionOptions{}, nil, alerts, log)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// checkRulesDir checks that dir is a directory this process can list.
func checkRulesDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.ReadDir(1); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return nil
}
