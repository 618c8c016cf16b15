package rules

import (
	"errors"
	"fmt"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap"
)

// PanicError is the value an evaluation panics with when Go code it ran
// — the field of a parameter, a library function — panicked. That is a
// bug, not a mistake of the rule, so it is not contained like a rule
// error (logged, then the error policy): it goes on up the connection's
// path as the panic it is, and the proxy resets the connection, counts the
// panic and logs it. gopher-lua has already unwound the interpreter
// state, which stays usable for the other connections.
type PanicError struct {
	// Rule is the "file.lua:line" of the rule that was running, Event
	// the event evaluated.
	Rule, Event string
	// Value is the panic's value as text.
	Value string
	// Stack is the Go stack where it panicked (its first 4 KiB), then
	// the Lua stack.
	Stack string
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("Go panic under rule %s on %s: %s", e.Rule, e.Event, e.Value)
}

// repanic turns a Go panic that PCall recovered back into one, after
// logging where it happened: the stack of the panic itself is only known
// here. Other errors are the rule's own and are left to the caller.
func (st *state) repanic(f *Flow, err error) {
	var ae *lua.ApiError
	if !errors.As(err, &ae) || ae.Type != lua.ApiErrorPanic {
		return
	}
	p := &PanicError{Rule: st.rule.loc, Event: st.set.reg.events[st.ev].display, Value: ae.Object.String(), Stack: ae.StackTrace}
	st.log.Error("panic in Go code under a rule",
		zap.String("rule", p.Rule),
		zap.String("event", p.Event),
		zap.Uint64("flow", f.id),
		zap.String("panic", p.Value),
		zap.String("stack", p.Stack))
	panic(p)
}
