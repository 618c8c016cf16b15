package tlssm

import (
	"slices"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// result is what a crafted conversation gave.
type result struct {
	p      *pump
	rec    *recorder
	states []string
}

// anomalies returns the names of the anomaly events, in order.
func (r *result) anomalies() []string {
	var out []string
	for _, l := range r.rec.lines {
		if _, rest, ok := strings.Cut(l, " anomaly "); ok {
			name, _, _ := strings.Cut(rest, ":")
			out = append(out, name)
		}
	}
	return out
}

// has reports whether an event line contains s.
func (r *result) has(s string) bool {
	return slices.ContainsFunc(r.rec.lines, func(l string) bool { return strings.Contains(l, s) })
}

type runOpts struct {
	verdict func(*Event) inspect.Decision
	hook    func(EventID) bool
	machine MachineOptions
	split   func(int) []int
	// started, if set, is given the result before the first byte.
	started func(*result)
}

// runConv plays c through a Session whose recorder hooks every event but
// record (unless o.hook says otherwise), checking the hold invariant.
func runConv(t *testing.T, c *conv, o runOpts) *result {
	t.Helper()
	res := &result{}
	var p *pump
	f, err := NewFactory(Options{
		NoTimers: true,
		Machine:  o.machine,
		NewHandler: func(_ *inspect.Flow, s *Session) Handler {
			res.rec = &recorder{s: s, hook: o.hook, verdict: o.verdict, check: heldChecker(&p)}
			return res.rec
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.trace = func(_ *Session, _, to string) { res.states = append(res.states, to) }
	insp, dec := f.New(&inspect.Flow{ID: 7, Start: t0}, func(inspect.Decision) {})
	p = &pump{t: t, s: insp.(*Session), now: t0, keepOut: true}
	res.p = p
	if dec.Verdict.Kills() {
		p.decision, p.killed = dec, true
	}
	if o.started != nil {
		o.started(res)
	}
	for _, r := range streamReadsOf(c.reads, o.split) {
		p.read(r.dir, r.data, r.at)
	}
	p.finish()
	for _, e := range p.errs {
		t.Error(e)
	}
	for d := range p.out {
		want := c.stream(dissect.Direction(d))
		if got := p.out[d]; string(got) != string(want[:len(got)]) {
			t.Errorf("%s: the forwarded bytes are not the stream's", dissect.Direction(d))
		}
	}
	return res
}

func streamReadsOf(reads []read, split func(int) []int) []read {
	if split == nil {
		return reads
	}
	var out []read
	for _, r := range reads {
		rest := r.data
		for _, k := range split(len(rest)) {
			out = append(out, read{r.dir, rest[:k], r.at})
			rest = rest[k:]
		}
		if len(rest) > 0 {
			out = append(out, read{r.dir, rest, r.at})
		}
	}
	return out
}

// heartbleedRule is what the stock heartbleed.lua decides, in Go.
func heartbleedRule(ev *Event) inspect.Decision {
	drop := inspect.Decision{Verdict: inspect.Drop, Rule: "test:heartbleed"}
	switch ev.ID {
	case EvHeartbeat:
		if ev.Heartbeat.Overflow || ev.Heartbeat.Leak {
			drop.Reason = "heartbleed"
			return drop
		}
	case EvAnomaly:
		switch ev.Anomaly.Name {
		case AnomalyHeartbeatDuringHandshake, AnomalyHeartbeatBeforeApplicationData,
			AnomalyHeartbeatRequestTooShort, dissect.AnomalyHeartbeatOverflow:
			drop.Reason = "heartbleed: " + ev.Anomaly.Name
			return drop
		}
	}
	return inspect.Decision{}
}

// fieldRule drops only on the heartbeat event's overflow and leak fields.
func fieldRule(ev *Event) inspect.Decision {
	if ev.ID == EvHeartbeat && (ev.Heartbeat.Overflow || ev.Heartbeat.Leak) {
		return inspect.Decision{Verdict: inspect.Drop, Reason: "heartbleed", Rule: "test:fields"}
	}
	return inspect.Decision{}
}

func wantStates(t *testing.T, r *result, want ...string) {
	t.Helper()
	got := r.states
	if n := len(got); n > 0 && got[n-1] == "finish" {
		got = got[:n-1] // Close
	}
	if !slices.Equal(got, want) {
		t.Errorf("states %v, want %v\n%s", r.states, want, strings.Join(r.rec.lines, "\n"))
	}
}

func wantAnomalies(t *testing.T, r *result, want ...string) {
	t.Helper()
	if got := r.anomalies(); !slices.Equal(got, want) {
		t.Errorf("anomalies %v, want %v\n%s", got, want, strings.Join(r.rec.lines, "\n"))
	}
}

// wantPass checks that the connection passed with every byte forwarded.
func wantPass(t *testing.T, r *result, c *conv) {
	t.Helper()
	if r.p.decision.Verdict != inspect.Pass {
		t.Errorf("decision %+v, want pass\n%s", r.p.decision, strings.Join(r.rec.lines, "\n"))
	}
	for d := range r.p.fwd {
		if n := int64(len(c.stream(dissect.Direction(d)))); r.p.fwd[d] != n {
			t.Errorf("%s: %d of %d bytes forwarded", dissect.Direction(d), r.p.fwd[d], n)
		}
	}
}

// wantDrop checks the decision and that nothing of d from stop on was
// forwarded.
func wantDrop(t *testing.T, r *result, reason string, d dissect.Direction, stop int64) {
	t.Helper()
	if !r.p.decision.Verdict.Kills() || !strings.Contains(r.p.decision.Reason, reason) {
		t.Errorf("decision %+v, want a drop for %q\n%s", r.p.decision, reason, strings.Join(r.rec.lines, "\n"))
	}
	if r.p.fwd[d] > stop {
		t.Errorf("%s: %d bytes forwarded, the offending record starts at %d", d, r.p.fwd[d], stop)
	}
}
