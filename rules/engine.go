package rules

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Engine runs a rule set on connections and swaps in new sets on Reload.
// It is safe for concurrent use.
type Engine struct {
	opts Options
	name string

	cur atomic.Pointer[ruleSet]
	// mu serialises Reload and Close; the per-connection path never takes
	// it.
	mu     sync.Mutex
	closed bool

	// created counts the interpreter states ever created, which only
	// loading a set does.
	created atomic.Int64
	// sets and states count the sets loaded and not yet closed, and
	// their states (Stats).
	sets, states atomic.Int64
}

// ErrClosed is returned by Reload after Close.
var ErrClosed = errors.New("rules: engine closed")

// New loads the rule set that opts names and returns an engine running it.
// A set with mistakes is refused with LoadErrors listing each at its file
// and line.
func New(opts Options) (*Engine, error) {
	if opts.ErrorPolicy > PolicyPass {
		return nil, fmt.Errorf("rules: invalid error policy %d", opts.ErrorPolicy)
	}
	opts.normalise()
	e := &Engine{opts: opts}
	e.name = opts.sourceName()
	s, err := e.load()
	if err != nil {
		return nil, err
	}
	e.cur.Store(s)
	return e, nil
}

func (e *Engine) load() (*ruleSet, error) {
	s, err := loadSet(&e.opts, e.opts.PoolSize, &e.created, false)
	if err != nil {
		return nil, err
	}
	n := int64(len(s.states))
	e.sets.Add(1)
	e.states.Add(n)
	s.closed = func() {
		e.sets.Add(-1)
		e.states.Add(-n)
	}
	for _, w := range s.warnings {
		e.opts.Logger.Warn("rule set: "+w.Msg, zap.String("at", fmt.Sprintf("%s:%d", w.File, w.Line)))
	}
	e.opts.Logger.Info("rules loaded",
		zap.String("from", e.name),
		zap.Strings("files", s.files),
		zap.Int("rules", len(s.rules)),
		zap.Int("states", len(s.states)))
	return s, nil
}

// Reload loads the rule set again from the same place. The new set is
// compiled and loaded into all its states before it replaces the running
// one, atomically: connections accepted afterwards use it, connections in
// flight finish with the set they started with, whose states close when
// the last of them does. A set with mistakes is refused (LoadErrors) and
// the running set stays.
func (e *Engine) Reload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	s, err := e.load()
	if err != nil {
		e.opts.Logger.Error("rules reload refused; the running rules stay", zap.String("from", e.name), zap.Error(err))
		return err
	}
	e.cur.Swap(s).unpin()
	return nil
}

// Close releases the running set; its states close when the last flow
// pinned to it closes. Flows created afterwards evaluate nothing.
func (e *Engine) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	if s := e.cur.Swap(nil); s != nil {
		s.unpin()
	}
}

// NewFlow returns the rules' view of a new connection, pinned to the
// current rule set and to one of its states (chosen by f.ID, so ids
// handed out in sequence spread evenly). info may be nil before the
// inspector exists; the live flow fields then read as nil. It takes no
// lock.
func (e *Engine) NewFlow(f *inspect.Flow, info FlowInfo) *Flow {
	fl := &Flow{id: f.ID, src: f.Src, dst: f.Dst, info: info}
	for {
		s := e.cur.Load()
		if s == nil {
			return fl
		}
		if s.tryAcquire() {
			fl.set = s
			fl.st = s.states[f.ID%uint64(len(s.states))]
			return fl
		}
		// s was replaced and released between the load and the pin: the
		// next load sees its successor.
	}
}

// Event returns the Event of a dissector's event by name. The tls
// dissector's are also TLS(tlssm.EvX).
func (e *Engine) Event(dissector, name string) (Event, bool) {
	s := e.cur.Load()
	if s == nil {
		return 0, false
	}
	return s.reg.lookup(dissector, name)
}

// Rule describes a loaded rule.
type Rule struct {
	// Loc is "file.lua:LINE" of its haka.rule.
	Loc string
	// Event is the name of the event it hooks.
	Event string
}

// Rules lists the running set's rules in evaluation order (file order,
// then declaration order).
func (e *Engine) Rules() []Rule {
	s := e.cur.Load()
	if s == nil {
		return nil
	}
	return s.list()
}

func (s *ruleSet) list() []Rule {
	out := make([]Rule, len(s.rules))
	for i, r := range s.rules {
		out[i] = Rule{Loc: r.loc, Event: s.reg.events[r.ev].display}
	}
	return out
}
