package rules

// Stats counts what an Engine holds. A replaced rule set stays open, with
// its interpreter states, until the last connection pinned to it closes:
// Sets above one long after a reload means a connection that has not
// ended, or one whose Flow was never closed.
type Stats struct {
	// Sets is the rule sets loaded and not yet closed: the running one,
	// and replaced ones that open connections still use.
	Sets int
	// States is the interpreter states of those sets.
	States int
	// Created counts the interpreter states created since New, by
	// loads that succeeded or not.
	Created int64
}

// Stats returns the engine's counts; it takes no lock.
func (e *Engine) Stats() Stats {
	return Stats{Sets: int(e.sets.Load()), States: int(e.states.Load()), Created: e.created.Load()}
}
