package tlssm

import (
	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Options configure a Factory.
type Options struct {
	// NewHandler makes the Handler of each connection, given the flow and
	// the Session (whose FlowInfo the rules read as flow fields). Nil, or
	// a nil Handler, means no rules: the machine alone judges.
	NewHandler func(f *inspect.Flow, s *Session) Handler
	// Limits caps the reassembly of handshake messages.
	Limits dissect.Limits
	// Machine tunes the definition.
	Machine MachineOptions
	// NoTimers arms no wall-clock timer for the machine's timeouts: they
	// fire only when a Feed, EOF or Gap passes their deadline. For the
	// replay, whose stream time is packet time; live, a connection that
	// stalls gets no call, and the timer kills it.
	NoTimers bool
}

// Factory makes the Session of each connection. It implements
// inspect.Factory and is safe for concurrent use.
type Factory struct {
	opts Options
	def  *definition
	// trace, if set, is told every state change (tests).
	trace func(s *Session, from, to string)
}

// NewFactory builds the TLS machine with opts.Machine and returns the
// factory of its Sessions.
func NewFactory(opts Options) (*Factory, error) {
	def, err := newDefinition(opts.Machine)
	if err != nil {
		return nil, err
	}
	return &Factory{opts: opts, def: def}, nil
}

// Machine returns the factory's machine definition.
func (f *Factory) Machine() *Machine { return f.def.m }
