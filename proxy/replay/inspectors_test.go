package replay

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// call is one call the pump made to an inspector.
type call struct {
	kind    string // feed, eof, gap, close
	dir     dissect.Direction
	pending int // len(pending), or n for gap
	now     time.Time
}

// recorded is what a recorder saw of one connection.
type recorded struct {
	flow  inspect.Flow
	calls []call
	// seen holds every byte shown to the inspector for the first time,
	// per direction, in order; sum hashes them.
	seen    [2][]byte
	sum     [2]hash.Hash
	summary *inspect.Summary
	closes  int
}

// recorder is a Factory of inspectors that forward everything and record
// the calls, the bytes and the summary. keep bounds how many bytes per
// direction are kept in seen (the rest is only hashed).
type recorder struct {
	mu    sync.Mutex
	conns []*recorded
	keep  int
	// gapHandler makes the inspectors implement GapHandler.
	gapHandler bool
	// hold makes each Feed forward only all but the last hold bytes,
	// to exercise pending.
	hold int
}

func (r *recorder) New(f *inspect.Flow, _ func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	rec := &recorded{flow: *f, sum: [2]hash.Hash{sha256.New(), sha256.New()}}
	r.mu.Lock()
	r.conns = append(r.conns, rec)
	r.mu.Unlock()
	base := &recInsp{r: r, rec: rec}
	if r.gapHandler {
		return &recGapInsp{base}, inspect.Decision{}
	}
	return base, inspect.Decision{}
}

type recInsp struct {
	r    *recorder
	rec  *recorded
	held [2]int // bytes of pending seen before
}

func (i *recInsp) see(dir dissect.Direction, pending []byte) {
	fresh := pending[i.held[dir]:]
	i.rec.sum[dir].Write(fresh)
	if i.r.keep < 0 || len(i.rec.seen[dir]) < i.r.keep {
		i.rec.seen[dir] = append(i.rec.seen[dir], fresh...)
	}
}

func (i *recInsp) Feed(dir dissect.Direction, pending []byte, now time.Time) inspect.Result {
	i.rec.calls = append(i.rec.calls, call{"feed", dir, len(pending), now})
	if i.held[dir] > len(pending) {
		panic(fmt.Sprintf("pending shrank: held %d, got %d", i.held[dir], len(pending)))
	}
	i.see(dir, pending)
	fwd := max(len(pending)-i.r.hold, 0)
	i.held[dir] = len(pending) - fwd
	return inspect.Result{Forward: fwd, HelloDone: true}
}

func (i *recInsp) EOF(dir dissect.Direction, pending []byte, now time.Time) inspect.Result {
	i.rec.calls = append(i.rec.calls, call{"eof", dir, len(pending), now})
	i.held[dir] = 0
	return inspect.Result{Forward: len(pending)}
}

func (i *recInsp) Info() inspect.Info { return inspect.Info{SNI: "recorded.test"} }

func (i *recInsp) Close(s inspect.Summary) {
	i.rec.calls = append(i.rec.calls, call{kind: "close"})
	i.rec.summary = &s
	i.rec.closes++
}

type recGapInsp struct{ *recInsp }

func (i *recGapInsp) Gap(dir dissect.Direction, n int, now time.Time) inspect.Result {
	i.rec.calls = append(i.rec.calls, call{"gap", dir, n, now})
	// Forward what is held: it was judged already.
	fwd := i.held[dir]
	i.held[dir] = 0
	return inspect.Result{Forward: fwd}
}

// dropper is a Factory of inspectors that forward everything until a
// byte pattern appears in a direction, then drop the connection before
// the pattern. The last len(pattern)-1 bytes are held, so that a pattern
// split between reads is found.
type dropper struct {
	pattern []byte
	verdict inspect.Verdict
}

func (d *dropper) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return &dropInsp{d: d}, inspect.Decision{}
}

type dropInsp struct {
	d     *dropper
	feeds int
}

func (i *dropInsp) Feed(dir dissect.Direction, pending []byte, _ time.Time) inspect.Result {
	i.feeds++
	if at := bytes.Index(pending, i.d.pattern); at >= 0 {
		return inspect.Result{Forward: at, Decision: inspect.Decision{Verdict: i.d.verdict, Reason: "pattern", Rule: "test:dropper"}}
	}
	return inspect.Result{Forward: max(len(pending)-(len(i.d.pattern)-1), 0)}
}

func (i *dropInsp) EOF(_ dissect.Direction, pending []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(pending)}
}

func (i *dropInsp) Info() inspect.Info    { return inspect.Info{} }
func (i *dropInsp) Close(inspect.Summary) {}

// recordWalker is a Factory of inspectors that walk TLS record headers
// the way the TLS inspector frames a stream: each header is held until
// complete, then forwarded, and the record's body is passed unseen. It
// counts records and headers that are not TLS (content type 20..24,
// major version 3), which a misordered stream produces.
type recordWalker struct {
	mu           sync.Mutex
	records, bad [2]int64 // by direction, over all connections
}

func (w *recordWalker) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return &walkInsp{w: w}, inspect.Decision{}
}

type walkInsp struct {
	w            *recordWalker
	records, bad [2]int64
	broken       [2]bool
}

func (i *walkInsp) Feed(dir dissect.Direction, pending []byte, _ time.Time) inspect.Result {
	if i.broken[dir] {
		return inspect.Result{Forward: len(pending)}
	}
	off := 0
	for len(pending)-off >= 5 {
		h := pending[off : off+5]
		if h[0] < 20 || h[0] > 24 || h[1] != 3 {
			// Not a record: framing is lost for this direction.
			i.bad[dir]++
			i.broken[dir] = true
			return inspect.Result{Forward: len(pending)}
		}
		n := int(h[3])<<8 | int(h[4])
		i.records[dir]++
		if off+5+n > len(pending) {
			// The body runs past what was read: forward what there
			// is and pass the rest.
			return inspect.Result{Forward: len(pending), Pass: int64(off + 5 + n - len(pending)), HelloDone: true}
		}
		off += 5 + n
	}
	return inspect.Result{Forward: off, HelloDone: true}
}

func (i *walkInsp) EOF(_ dissect.Direction, pending []byte, _ time.Time) inspect.Result {
	return inspect.Result{Forward: len(pending)}
}

func (i *walkInsp) Info() inspect.Info { return inspect.Info{} }

func (i *walkInsp) Close(inspect.Summary) {
	i.w.mu.Lock()
	for d := range 2 {
		i.w.records[d] += i.records[d]
		i.w.bad[d] += i.bad[d]
	}
	i.w.mu.Unlock()
}
