package rules

import "testing"

// Stats follows the sets through a reload: the replaced one stays open
// with its states until its last flow closes; a refused reload leaves
// nothing behind.
func TestStats(t *testing.T) {
	dir := t.TempDir()
	writeRules(t, dir, versioned(1))
	e, err := New(Options{Dir: dir, PoolSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := func(sets, states int) {
		t.Helper()
		if s := e.Stats(); s.Sets != sets || s.States != states {
			t.Fatalf("stats %+v, want %d sets and %d states", s, sets, states)
		}
	}
	want(1, 3)
	old := e.NewFlow(meta(1), nil)
	writeRules(t, dir, versioned(2))
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	want(2, 6)
	writeRules(t, dir, "haka.rule{ on = tls.events.nope }")
	if err := e.Reload(); err == nil {
		t.Fatal("a broken set was loaded")
	}
	want(2, 6)
	old.Close()
	want(1, 3)
	e.Close()
	want(0, 0)
	if c := e.Stats().Created; c < 6 {
		t.Errorf("created %d states", c)
	}
}
