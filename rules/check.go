package rules

import (
	"errors"
	"sync/atomic"
)

// CheckResult is what Check found in a rule set.
type CheckResult struct {
	// Files are the rule files, in load order (when the set loads).
	Files []string
	// Rules are the rules declared, in evaluation order (none when there
	// are problems).
	Rules []Rule
	// Problems are the mistakes found, each at its file and line, in file
	// order.
	Problems LoadErrors
}

// Check loads the rule set opts names the way New does, in one sandboxed
// interpreter state, and reports every mistake it finds: syntax errors,
// hooks on unknown events, rules without eval or with a non-function
// eval, unknown keys in haka.rule, requires of missing modules or of
// files outside the directory, errors raised by top-level code, top-level
// code that does not end, and reads of globals nothing defines (which
// New only logs: they may sit in a branch that never runs, but usually
// they are a typo waiting for the traffic that takes that branch). The
// error is for a set that cannot be read at all (a missing directory).
func Check(opts Options) (*CheckResult, error) {
	opts.normalise()
	var created atomic.Int64
	s, err := loadSet(&opts, 1, &created, true)
	var problems LoadErrors
	switch {
	case errors.As(err, &problems):
		return &CheckResult{Problems: problems}, nil
	case err != nil:
		return nil, err
	}
	defer s.unpin()
	res := &CheckResult{Files: s.files, Problems: s.warnings}
	if len(res.Problems) == 0 {
		res.Rules = s.list()
	}
	return res, nil
}
