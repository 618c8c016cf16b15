package rules

import (
	"testing"
	"time"
)

// Short evaluations in a row are never stopped, however the timer's
// firings fall between them.
func TestDeadlineNoSpuriousStop(t *testing.T) {
	d := newDeadline()
	const limit = 300 * time.Millisecond // far above any stall of this loop
	stopped := 0
	for i := 0; i < 200_000; i++ {
		d.arm(limit)
		for range 10 {
			d.Done()
		}
		if d.Err() != nil {
			stopped++
		}
		d.disarm()
	}
	if stopped > 0 {
		t.Errorf("%d short evaluations stopped", stopped)
	}
}

// An evaluation that runs instructions past its deadline is stopped, and
// the next one starts with an open channel.
func TestDeadlineStopsOverdue(t *testing.T) {
	d := newDeadline()
	const limit = 5 * time.Millisecond
	for round := 0; round < 3; round++ {
		start := time.Now()
		d.arm(limit)
		for {
			select {
			case <-d.Done():
			default:
				if time.Since(start) > 10*time.Second {
					t.Fatal("never stopped")
				}
				continue
			}
			break
		}
		if elapsed := time.Since(start); elapsed < limit {
			t.Errorf("stopped after %v, before the %v deadline", elapsed, limit)
		}
		if !d.hit() || d.Err() == nil {
			t.Error("stopped but not reported")
		}
		d.disarm()
		if d.hit() || d.Err() != nil {
			t.Error("the next evaluation starts stopped")
		}
	}
	// Once idle, the timer stops ticking.
	for start := time.Now(); d.ticking.Load(); {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the timer ticks on while the state is idle")
		}
		time.Sleep(limit)
	}
}

// An evaluation armed while the timer still ticks for a longer limit (the
// load's, just before the first event) is stopped at its own deadline, not
// at the longer one.
func TestDeadlineShorterLimitBringsTheTimerForward(t *testing.T) {
	d := newDeadline()
	d.arm(time.Hour)
	d.disarm() // idle, but the timer still ticks for an hour
	const limit = 5 * time.Millisecond
	start := time.Now()
	d.arm(limit)
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the evaluation was not stopped: the timer kept the longer limit")
	}
	if elapsed := time.Since(start); elapsed < limit {
		t.Errorf("stopped after %v, before the %v deadline", elapsed, limit)
	}
	d.disarm()
}

// With Steps, an evaluation is bounded by instructions: a runaway loop is
// stopped after exactly that many, whatever the clock says, and quick
// evaluations in a row are never stopped.
func TestStepBudget(t *testing.T) {
	d := newDeadline()
	const budget = 1000
	for round := 0; round < 3; round++ {
		d.armSteps(budget)
		n := 0
		for {
			n++
			select {
			case <-d.Done():
			default:
				continue
			}
			break
		}
		if n != budget+1 {
			t.Errorf("round %d: stopped at instruction %d, want %d", round, n, budget+1)
		}
		if !d.hit() || d.Err() == nil {
			t.Error("stopped but not reported")
		}
		d.disarm()
		d.armSteps(budget)
		for range budget {
			d.Done()
		}
		if d.Err() != nil {
			t.Errorf("round %d: an evaluation within its budget was stopped", round)
		}
		d.disarm()
	}
	// A wall-clock evaluation after a counted one is not bounded by the
	// old budget.
	d.arm(time.Hour)
	for range 2 * budget {
		d.Done()
	}
	if d.Err() != nil {
		t.Error("the budget of an earlier evaluation stopped a wall-clock one")
	}
	d.disarm()
}
