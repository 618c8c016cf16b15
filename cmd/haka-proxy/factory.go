package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// buildFactory makes the inspector factory of the proxy from the rules in
// dir ("" for the built-in rules). It is the one place where the TLS
// inspection and the rule engine are wired in: the engine observes its
// rule evaluations into m (Metrics.ObserveRuleEval) and writes its alerts
// to alerts. Startup and SIGHUP both come through here. Until the engine
// lands, every connection gets the pass-through inspector.
func buildFactory(dir string, m *proxy.Metrics, alerts *output.Writer, log *zap.Logger) (inspect.Factory, error) {
	if dir != "" {
		if err := checkRulesDir(dir); err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
	}
	return inspect.PassThrough{}, nil
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
