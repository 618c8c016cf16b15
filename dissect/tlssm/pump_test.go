package tlssm

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// read is one read of a direction.
type read struct {
	dir  dissect.Direction
	data []byte
	at   time.Time
}

// pump drives a Session over in-memory streams the way the proxy's pump
// does (pending bytes, Forward, Pass, EOF, Close), and checks the
// inspector contract on every Result.
type pump struct {
	t       testing.TB
	s       *Session
	pending [2][]byte
	pass    [2]int64
	// fwd counts the bytes of each direction forwarded (cleared or
	// passed): the stream offset up to which the other side has them.
	fwd [2]int64
	out [2][]byte
	// keepOut keeps the forwarded bytes in out (memory for big streams).
	keepOut  bool
	decision inspect.Decision
	killed   bool
	bypassed bool
	now      time.Time
	errs     []string
	// last is the last event of the current call that concerned bytes
	// (heldChecker sets it): a killing decision must leave them
	// unforwarded.
	last *eventAt
}

type eventAt struct {
	id     EventID
	dir    dissect.Direction
	offset int64
}

func (p *pump) errorf(format string, args ...any) {
	p.errs = append(p.errs, fmt.Sprintf(format, args...))
}

func (p *pump) forward(d dissect.Direction, b []byte) {
	p.fwd[d] += int64(len(b))
	if p.keepOut {
		p.out[d] = append(p.out[d], b...)
	}
}

// read gives the Session the next bytes of d.
func (p *pump) read(d dissect.Direction, b []byte, at time.Time) {
	if at.After(p.now) {
		p.now = at
	}
	if p.killed {
		return
	}
	if p.bypassed {
		p.forward(d, b)
		return
	}
	if k := min(p.pass[d], int64(len(b))); k > 0 {
		p.forward(d, b[:k])
		p.pass[d] -= k
		b = b[k:]
	}
	if len(b) == 0 {
		return
	}
	p.pending[d] = append(p.pending[d], b...)
	p.last = nil
	p.apply(d, p.s.Feed(d, p.pending[d], p.now), false)
}

func (p *pump) apply(d dissect.Direction, res inspect.Result, eof bool) {
	n := len(p.pending[d])
	if res.Forward < 0 || res.Forward > n {
		p.errorf("%s: Forward %d outside pending %d", d, res.Forward, n)
		res.Forward = max(min(res.Forward, n), 0)
	}
	if res.Pass < 0 || res.Pass > 0 && (res.Forward != n || eof) {
		p.errorf("%s: Pass %d with Forward %d of %d pending (eof %v)", d, res.Pass, res.Forward, n, eof)
		res.Pass = 0
	}
	if res.Forward > 0 {
		p.forward(d, p.pending[d][:res.Forward])
		p.pending[d] = append(p.pending[d][:0], p.pending[d][res.Forward:]...)
	}
	p.pass[d] = res.Pass
	switch v := res.Decision.Verdict; {
	case v.Kills():
		p.decision, p.killed = res.Decision, true
		if l := p.last; l != nil && p.fwd[l.dir] > l.offset {
			p.errorf("%s killed the connection at %s offset %d, but %d bytes were forwarded", l.id, l.dir, l.offset, p.fwd[l.dir])
		}
	case v == inspect.Bypass:
		p.decision, p.bypassed = res.Decision, true
		for dd := range p.pending {
			p.forward(dissect.Direction(dd), p.pending[dd])
			p.pending[dd] = nil
		}
	}
}

// finish ends both directions and closes the Session.
func (p *pump) finish() {
	for _, d := range []dissect.Direction{dissect.Up, dissect.Down} {
		if p.killed || p.bypassed {
			break
		}
		p.last = nil
		p.apply(d, p.s.EOF(d, p.pending[d], p.now), true)
		p.pending[d] = nil
	}
	p.s.Close(inspect.Summary{BytesUp: p.fwd[0], BytesDown: p.fwd[1], Duration: p.now.Sub(p.s.Flow().Start), Decision: p.decision})
}

// run plays reads through a new Session of f and returns the pump.
func runReads(t testing.TB, f *Factory, reads []read) *pump {
	t.Helper()
	start := t0
	if len(reads) > 0 {
		start = reads[0].at
	}
	insp, dec := f.New(&inspect.Flow{ID: 1, Start: start}, func(inspect.Decision) {})
	p := &pump{t: t, s: insp.(*Session), now: start, keepOut: true}
	if dec.Verdict.Kills() {
		p.decision, p.killed = dec, true
	}
	for _, r := range reads {
		p.read(r.dir, r.data, r.at)
	}
	p.finish()
	return p
}

// streamReads turns a captured stream into reads, each chunk split by
// split (nil: as captured).
func streamReads(s *pcaptest.Stream, split func(n int) []int) []read {
	var out []read
	for _, c := range s.Chunks {
		d := dissect.Down
		if c.Up {
			d = dissect.Up
		}
		if split == nil {
			out = append(out, read{d, c.Data, c.Time})
			continue
		}
		rest := c.Data
		for _, k := range split(len(rest)) {
			out = append(out, read{d, rest[:k], c.Time})
			rest = rest[k:]
		}
		if len(rest) > 0 {
			out = append(out, read{d, rest, c.Time})
		}
	}
	return out
}

func byteSplit(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func randomSplit(r *rand.Rand) func(int) []int {
	return func(n int) []int {
		var s []int
		for n > 0 {
			k := 1 + r.IntN(min(n, 1+r.IntN(3000)))
			s = append(s, k)
			n -= k
		}
		return s
	}
}

// heldChecker returns a recorder check that fails when an event concerns
// bytes the pump has already forwarded: every judged record must still be
// held when its events are raised.
func heldChecker(p **pump) func(ev *Event) {
	return func(ev *Event) {
		switch ev.ID {
		case EvNewConnection, EvEstablished, EvEndConnection:
			return
		}
		pp := *p
		if pp == nil {
			return
		}
		if pp.fwd[ev.Dir] > ev.Offset {
			pp.errorf("%s event at %s offset %d, but %d bytes of it were forwarded", ev.ID, ev.Dir, ev.Offset, pp.fwd[ev.Dir])
		}
		pp.last = &eventAt{ev.ID, ev.Dir, ev.Offset}
	}
}

// outcome renders what a run gave: the events, the decision and the
// bytes forwarded.
func outcome(r *recorder, p *pump) string {
	return fmt.Sprintf("%s\nstate %s\ndecision %+v\nforwarded %d %d\n",
		strings.Join(r.lines, "\n"), r.s.State(), p.decision, p.fwd[0], p.fwd[1])
}

// runStream plays one stream with a recorder hooking every event, record
// included, and checks the hold invariant and the exactness of what was
// forwarded.
func runStream(t testing.TB, s *pcaptest.Stream, lim dissect.Limits, split func(int) []int) string {
	t.Helper()
	var p *pump
	var rec *recorder
	f, _ := newTestFactory(t, func(*Session) *recorder {
		rec = &recorder{hook: func(EventID) bool { return true }, check: heldChecker(&p)}
		return rec
	})
	f.opts.Limits = lim
	reads := streamReads(s, split)
	start := t0
	if len(reads) > 0 {
		start = reads[0].at
	}
	insp, _ := f.New(&inspect.Flow{ID: 1, Start: start}, func(inspect.Decision) {})
	p = &pump{t: t, s: insp.(*Session), now: start, keepOut: true}
	for _, r := range reads {
		p.read(r.dir, r.data, r.at)
	}
	p.finish()
	for d, up := range []bool{true, false} {
		want := s.Payload(up)
		if got := p.out[d]; string(got) != string(want[:len(got)]) {
			t.Errorf("%s: forwarded bytes are not the stream's", dissect.Direction(d))
		}
	}
	if len(p.errs) > 0 {
		t.Errorf("%d contract or hold violations, first: %s", len(p.errs), p.errs[0])
	}
	return outcome(rec, p)
}
