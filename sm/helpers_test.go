package sm_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

// The tests' machines: the context records what happened, units and
// parameters are strings.
type (
	rec struct{ log []string }
	B   = sm.Builder[*rec, string, string]
	T   = sm.Transition[*rec, string, string]
	I   = sm.Instance[*rec, string, string]
	E   = sm.Event[string, string]
	M   = sm.Machine[*rec, string, string]
	El  = sm.Element[*rec, string, string]
)

var t0 = time.Date(2014, 4, 8, 12, 0, 0, 0, time.UTC)

func (r *rec) add(s string) { r.log = append(r.log, s) }

// note is an action that logs tag, with the event's name.
func note(tag string) sm.Action[*rec, string, string] {
	return func(in *I, ev E) {
		in.Context().add(tag + ":" + in.Machine().EventName(ev.ID))
	}
}

// is is a guard that passes for the given parameter.
func is(param string) sm.Guard[*rec, string, string] {
	return func(in *I, ev E) bool { return ev.Param == param }
}

var errNotMine = errors.New("not mine")

// element parses units that start with its name, returning the rest.
func element(name string) *El {
	return &El{Name: name, Parse: func(_ *rec, _ sm.Direction, u string) (string, error) {
		rest, ok := strings.CutPrefix(u, name)
		if !ok {
			return "", errNotMine
		}
		return rest, nil
	}}
}

// logEnterLeave makes every state log its enter and leave through any.
func logEnterLeave(b *B) {
	b.Any().On(T{Event: sm.EvEnter, Execute: func(in *I, _ E) { in.Context().add("enter " + in.State()) }})
	b.Any().On(T{Event: sm.EvLeave, Execute: func(in *I, _ E) { in.Context().add("leave " + in.State()) }})
}

func build(t testing.TB, b *B) *M {
	t.Helper()
	m, err := b.Build()
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return m
}

func wantLog(t testing.TB, got *rec, want ...string) {
	t.Helper()
	if strings.Join(got.log, "|") != strings.Join(want, "|") {
		t.Errorf("log:\n got  %q\n want %q", got.log, want)
	}
	got.log = nil
}
