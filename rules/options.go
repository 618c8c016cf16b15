package rules

import (
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/rules/output"
)

// DefaultDeadline bounds the evaluation of one event (all the rules that
// hook it, on one connection). The stock rules take a few microseconds; a
// rule that needs milliseconds is doing something a proxy in the path of
// every connection cannot afford, and 10 ms keeps a stuck rule from
// stalling the connections that share its interpreter state for long.
const DefaultDeadline = 10 * time.Millisecond

// statesPerProc is the default number of interpreter states per
// GOMAXPROCS. A state is locked while one of its connections is evaluated,
// so a few per processor keep a slow evaluation from holding up the others
// on the same processor; each state costs the memory of one loaded rule set.
const statesPerProc = 4

// ErrorPolicy says what happens to a connection whose rule failed: raised
// an error, overran its deadline or exhausted a sandbox limit.
type ErrorPolicy uint8

const (
	// PolicyDrop drops the connection (the default: a rule that cannot
	// judge a connection must not let it through unjudged).
	PolicyDrop ErrorPolicy = iota
	// PolicyPass logs the failure, skips the failed rule and goes on with
	// the others.
	PolicyPass
)

// String returns "drop" or "pass", the values of --rule-error-policy.
func (p ErrorPolicy) String() string {
	switch p {
	case PolicyDrop:
		return "drop"
	case PolicyPass:
		return "pass"
	}
	return "invalid"
}

// ParseErrorPolicy reads "drop" or "pass".
func ParseErrorPolicy(s string) (ErrorPolicy, error) {
	switch strings.ToLower(s) {
	case "drop", "":
		return PolicyDrop, nil
	case "pass":
		return PolicyPass, nil
	}
	return 0, fmt.Errorf("unknown rule error policy %q (want drop or pass)", s)
}

// Options configures an Engine. The zero value loads the stock rules with
// the defaults.
type Options struct {
	// Dir is the directory whose *.lua files are the rule set, loaded in
	// name order. Empty means the stock rules embedded in the binary.
	Dir string
	// FS, when set, is read instead of Dir (tests, or rules shipped in
	// another embedded file system).
	FS fs.FS
	// Logger receives rule errors, flow:log and haka.log records. Nil
	// discards them.
	Logger *zap.Logger
	// Alerts receives haka.alert records. Nil discards them.
	Alerts *output.Writer
	// Deadline bounds the evaluation of one event; zero means
	// DefaultDeadline.
	Deadline time.Duration
	// Steps, when positive, bounds the evaluation of one event by Lua
	// instructions instead of by Deadline: the replay sets it, so that
	// its verdicts do not depend on the load of the machine it runs on.
	Steps int
	// ErrorPolicy says what a rule failure does to its connection.
	ErrorPolicy ErrorPolicy
	// PoolSize is the number of interpreter states per rule set; zero
	// means GOMAXPROCS × 4.
	PoolSize int
	// ObserveEval, when set, is called after every evaluation that ran at
	// least one rule, with the event's name and how long the rules took
	// (the haka_proxy_rule_eval_duration_seconds histogram). It is called
	// from the connection's goroutine and must be cheap.
	ObserveEval func(event string, d time.Duration)
	// Dissectors are registered after the tls dissector, whose events
	// keep the numbers of tlssm.EventID.
	Dissectors []Dissector
}

func (o *Options) normalise() {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Deadline <= 0 {
		o.Deadline = DefaultDeadline
	}
	if o.PoolSize <= 0 {
		o.PoolSize = runtime.GOMAXPROCS(0) * statesPerProc
	}
}

// sourceName names where the rules come from, in logs and errors.
func (o *Options) sourceName() string {
	switch {
	case o.Dir != "":
		return o.Dir
	case o.FS != nil:
		return "rules"
	}
	return "stock rules"
}

// open returns the file system the rules are read from and what releases
// it. A directory is opened as an os.Root: neither a rule file nor a
// module can be reached through a symbolic link that leads out of it
// (links inside it, such as those of a Kubernetes ConfigMap volume, work).
func (o *Options) open() (fs.FS, func(), error) {
	switch {
	case o.FS != nil:
		return o.FS, func() {}, nil
	case o.Dir != "":
		root, err := os.OpenRoot(o.Dir)
		if err != nil {
			return nil, nil, fmt.Errorf("rules directory: %w", err)
		}
		return root.FS(), func() { root.Close() }, nil
	}
	return Stock(), func() {}, nil
}
