package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

const (
	// bufSize is the pooled read buffer: 32 KiB, as io.Copy, holds two
	// full TLS records (16 KiB + 2 KiB each) and makes bulk transfers
	// cost one read and one write per 32 KiB.
	bufSize = 32 << 10
	// minReadSpace is the least free tail a read is given; below it the
	// pending bytes are moved to the front or the buffer grows. A TLS
	// record header is 5 bytes, so any smaller would still make
	// progress, but each read is a system call: 4 KiB keeps them few.
	minReadSpace = 4 << 10
	// pollBudget is how many bytes a pump moves in one turn on a poller
	// before it goes on on a goroutine of its own: a source that stays
	// readable for that long is a bulk transfer, and the other pumps of
	// the poller must not wait behind it. Eight full reads.
	pollBudget = 8 * bufSize
	// minSplicePass is the shortest Result.Pass run worth splicing: a
	// splice costs two system calls like a read and a write, so it only
	// pays where it saves copying; below a few pages the copy is cheaper
	// than moving page references through a pipe.
	minSplicePass = 4 << 10
	// probeSize is what a pump peeks at once a spliced Pass run is over:
	// a TLS record header (type, version, length). When the inspector
	// passes the payload behind it, header and payload are spliced
	// together and never enter user space; anything else is read as
	// usual. An inspector that needs a longer header just gets the
	// usual read.
	probeSize = 5
	// maxProbeMisses is how many probes in a row may find something else
	// than a passed payload (an alert, a handshake record) before the
	// pump stops peeking and reads as usual until the next spliced run:
	// a miss costs a system call more than a plain read.
	maxProbeMisses = 4
	// slowFeed is how long one Feed may take before the connection's
	// pumps leave the poller (see dir.feed): a hundred times what the TLS
	// inspection takes on a record, a fifth of a typical rule deadline.
	slowFeed = 2 * time.Millisecond
)

// Pump states (dir.state). A pump is owned by at most one goroutine at a
// time: the one that moved it to running (its connection's setup, a
// poller, a goroutine it handed itself to, or a goroutine woken for it);
// parked, it is owned by nobody and waits in its poller.
const (
	stRunning int32 = iota // a goroutine runs the pump
	stWoken                // running, and woken since: look again before parking
	stParked               // waiting in the poller for its source, no goroutine
	stDone                 // ended
)

// fillResult is what one read step of a pump came to.
type fillResult uint8

const (
	fillData     fillResult = iota // bytes came in (or a verdict to act on)
	fillAgain                      // nothing to read now
	fillPipeFull                   // the pipe took no more: drain it, then read on
	fillEOF                        // the source ended
	fillHalt                       // the pump must stop (error or verdict): d.halt is set
)

// flushResult is what writing the owed bytes came to.
type flushResult uint8

const (
	flushDone    flushResult = iota // all written
	flushBlocked                    // dst is full and the caller may not wait
	flushFailed                     // write error or stop: d.halt is set
)

// bufPool lends read buffers to pumps while bytes are in flight. Pointers
// to arrays, so that Get and Put do not allocate.
type bufPool struct {
	p    sync.Pool
	lent atomic.Int64 // buffers borrowed and not given back
}

func (b *bufPool) get() *[bufSize]byte {
	b.lent.Add(1)
	if v, ok := b.p.Get().(*[bufSize]byte); ok {
		return v
	}
	return new([bufSize]byte)
}

func (b *bufPool) put(a *[bufSize]byte) {
	b.lent.Add(-1)
	b.p.Put(a)
}

// dir is the pump of one direction: it reads src, feeds the inspector
// and writes the cleared bytes to dst.
//
// All of a pump's state is in its dir, none on a goroutine's stack, so
// that any goroutine can take it up where it stopped (see the states
// above). A pump runs (run) until a read would block; then it parks in
// its connection's poller and no goroutine is left behind, or, when it
// is hot (a bulk transfer, see hot), it waits for readability in the
// runtime's poller on a goroutine of its own. Buffer and pipe are
// borrowed only while bytes are in flight: an idle connection holds
// neither.
//
// Writing is resumable: what the inspector cleared is owed (buf[r:r+owe],
// after the bytes in the pipe) and written before anything else; a
// verdict that ends the pump waits in after until they are out. On a
// poller a write that would block hands the pump to a goroutine, which
// may wait.
type dir struct {
	c        *conn
	d        dissect.Direction
	src, dst *sock
	// srcFD and dstFD are the sockets' descriptors. They stay valid
	// while the pump runs: the sockets are closed by finish, once both
	// pumps have ended.
	srcFD, dstFD int
	// key names the pump in its poller: connection ID and direction.
	key uint64

	state atomic.Int32
	// hot: the pump waits for readability on a goroutine of its own in
	// the runtime's poller instead of parking in its poller. A pump gets
	// hot when it hands itself off a poller (a bulk transfer, or a full
	// dst), and cold again when the sweeper finds its connection idle
	// (cool). Without a poller every pump is hot.
	hot  atomic.Bool
	cool atomic.Bool
	// armed: src is in the poller's epoll set (owner only).
	armed bool
	// skipRead: the next step parks without reading (the source was
	// drained by a short read, or has nothing to say yet).
	skipRead bool
	// readOn: a short read is no proof of a drained socket, so the pump
	// reads on to EAGAIN (or the end) before it parks: the poller woke it
	// with the socket's end reported (see poller.fire), or reported the
	// socket while the pump was running (see park).
	readOn bool
	// ended: the poller reported the source's end (RDHUP or HUP without
	// an error) when it woke the pump. The peer's FIN came after every
	// byte queued before it, so a read that comes back short has taken
	// the last of them: the end is known without the read that would
	// return 0 (endNext). Reset when the pump parks.
	ended, endNext bool

	// pending is buf[r:w]: read, not yet written. Its head buf[r:r+owe]
	// is cleared (owed to dst); the inspector sees buf[r+owe:w]. arr is
	// the pooled array behind buf, nil when buf was grown past bufSize.
	arr  *[bufSize]byte
	buf  []byte
	r, w int
	owe  int
	// pipe holds spliced bytes owed to dst, which go before buf's.
	pipe *pipe
	// pass is how many bytes still to read may go on unseen
	// (Result.Pass); probe: a spliced Pass run ended, reads that start
	// on a record boundary peek at its header first (see probeSize);
	// misses counts the probes in a row that found no passed payload.
	pass   int64
	probe  bool
	misses uint8
	hdr    [probeSize]byte
	// fwd counts the bytes written to dst.
	fwd int64

	// after: a killing verdict, to enforce once the owed bytes are out.
	after    bool
	decision inspect.Decision

	eof      bool // src ended (read returned 0)
	halt     bool // this pump is done: verdict, error or stop
	splicing bool // bypassed: the kernel moves the bytes

	// Read and write callbacks for the runtime's poller, made on first
	// use; last is what the read callback's step came to.
	hotFn, writeFn, drainFn func(fd uintptr) bool
	last                    fillResult
	werr                    error
}

func (d *dir) init(c *conn, dd dissect.Direction, src, dst *sock) {
	d.c, d.d, d.src, d.dst = c, dd, src, dst
	d.srcFD, d.dstFD = src.fd, dst.fd
	d.key = c.flow.ID<<1 | uint64(dd&1)
	if c.pl == nil {
		d.hot.Store(true)
	}
}

func (d *dir) srcName() string {
	if d.d == dissect.Up {
		return "client"
	}
	return "upstream"
}

func (d *dir) dstName() string {
	if d.d == dissect.Up {
		return "upstream"
	}
	return "client"
}

// preload makes b the first pending bytes (client bytes read with the
// PROXY header), before the pump runs.
func (d *dir) preload(c *conn, b []byte) {
	d.c = c
	d.arr = c.p.bufs.get()
	d.buf = d.arr[:]
	d.r, d.w = 0, copy(d.buf, b)
}

// claim makes the caller the owner of a parked pump and reports true;
// a running pump is only marked woken, so that its owner looks again
// before parking.
func (d *dir) claim() bool {
	for {
		switch d.state.Load() {
		case stParked:
			if d.state.CompareAndSwap(stParked, stRunning) {
				return true
			}
		case stRunning:
			if d.state.CompareAndSwap(stRunning, stWoken) {
				return false
			}
		default:
			return false
		}
	}
}

// wake makes a parked pump run on a goroutine of its own, so that it
// sees a stop or a bypass; safe from any goroutine. A pump waiting in
// the runtime's poller is woken by a deadline in the past instead (see
// stop and bypass).
func (d *dir) wake() {
	if d.claim() {
		go d.resume(false)
	}
}

// resume runs the pump for its owner: a poller (onPoller, which must
// never wait) or a goroutine (which may wait on writes, and on reads
// when the pump is hot).
func (d *dir) resume(onPoller bool) {
	defer func() {
		if r := recover(); r != nil {
			d.c.panicked(r, d.d.String())
			if d.state.Load() != stDone {
				d.end(onPoller)
			}
		}
	}()
	for d.c.connecting.Load() && !d.c.stopped.Load() {
		// Woken before the upstream answered the proxy's connect: the
		// pumps wait for it (the poller runs them once connected).
		if d.state.CompareAndSwap(stRunning, stParked) {
			return
		}
		d.state.Store(stRunning)
	}
	if d.run(onPoller) {
		d.end(onPoller)
	}
}

// end marks the pump ended; the last pump of a connection finishes it.
func (d *dir) end(onPoller bool) {
	d.release()
	if d.armed && d.c.pumps.Load() > 1 {
		d.c.pl.disarm(d)
	}
	d.state.Store(stDone)
	if d.c.pumps.Add(-1) == 0 {
		d.c.finish(onPoller)
	}
}

// run moves bytes until the pump ends (true) or is no longer the
// caller's: parked in the poller or handed to another goroutine (false).
func (d *dir) run(onPoller bool) (ended bool) {
	c := d.c
	moved := 0
	for {
		if d.halt || c.stopped.Load() {
			return true
		}
		// What is owed goes out first: always the buffer's (the
		// inspector is only shown what follows it), the pipe's once
		// enough is in it or before a verdict or the end.
		if d.owe > 0 || d.pipe != nil && (d.pipe.n >= pipeFlushAt || d.after || d.eof) {
			switch d.flush(onPoller) {
			case flushBlocked:
				return d.handOff()
			case flushFailed:
				return true
			}
		}
		if d.after {
			c.kill(d.decision)
			return true
		}
		if d.eof {
			d.finishEOF()
			return true
		}
		if d.mustSplice() {
			// Bypassed: what is pending goes on unjudged, then the
			// kernel moves the rest.
			if d.w > d.r {
				d.owe = d.w - d.r
				continue
			}
			d.release()
			d.pass = 0
			d.splicing = true
		}
		if onPoller && moved >= pollBudget {
			return d.handOff()
		}

		var r fillResult
		var n int
		switch {
		case d.skipRead:
			d.skipRead = false
			r = fillAgain
		case d.hot.Load() && !onPoller:
			r, n = d.waitFill()
		default:
			r, n = d.fill(d.srcFD)
		}
		moved += n
		switch r {
		case fillData:
		case fillHalt:
			return true
		case fillPipeFull:
			switch d.flush(onPoller) {
			case flushBlocked:
				return d.handOff()
			case flushFailed:
				return true
			}
		case fillEOF:
			d.eof = true
			var res inspect.Result
			if c.bypassed.Load() {
				res.Forward = d.w - d.r - d.owe
			} else {
				res = c.insp.EOF(d.d, d.buf[d.r+d.owe:d.w], time.Now())
			}
			if !d.apply(res, true) {
				return true
			}
		case fillAgain:
			if c.stopped.Load() {
				return true
			}
			// Spliced bytes go out before the pump sleeps.
			if d.pipe != nil {
				switch d.flush(onPoller) {
				case flushBlocked:
					return d.handOff()
				case flushFailed:
					return true
				}
			}
			if d.hot.Load() && !onPoller {
				if !d.cool.Load() {
					continue // woken by a deadline: look at the flags again
				}
				d.hot.Store(false)
			}
			d.releaseIfEmpty()
			if d.park() {
				return false
			}
		}
	}
}

// mustSplice reports a bypass the pump has yet to switch to splicing
// for.
func (d *dir) mustSplice() bool {
	return spliceSupported && !d.splicing && d.c.bypassed.Load()
}

// handOff continues the pump on a goroutine of its own, which may wait:
// a poller must not, for a full dst or a long transfer.
func (d *dir) handOff() bool {
	d.c.pl.disarm(d)
	d.hot.Store(true)
	d.cool.Store(false)
	go d.resumeHot()
	return false
}

func (d *dir) resumeHot() {
	// A raw source is made known to the runtime's poller. A deadline in
	// the past left by a wake-up (bypass, cool) while the pump was cold
	// would end the first wait at once: clear it. A stop sets stopped
	// before its deadline, and run looks at stopped first.
	if _, err := d.src.waiter(d.c); err != nil {
		d.c.abort(fmt.Sprintf("%s: %v", d.srcName(), err), true)
	}
	d.src.setReadDeadline(time.Time{})
	d.resume(false)
}

// park hands the pump to its poller once its source has nothing to
// read. It reports false when the pump must go on instead: it was woken
// meanwhile, or the poller refused it (the connection is then aborted).
func (d *dir) park() bool {
	d.readOn, d.ended = false, false
	if err := d.c.pl.arm(d); err != nil {
		d.c.abort(fmt.Sprintf("%s: %v", d.srcName(), err), true)
		d.halt = true
		return false
	}
	// From here the poller may claim the pump on another goroutine: this
	// one must not touch it once the swap succeeded.
	if d.state.CompareAndSwap(stRunning, stParked) {
		return true
	}
	// stWoken: look again, down to EAGAIN. The poller reported the
	// socket while the pump ran elsewhere (a slow connection's
	// goroutine, a wake-up's): what it reported is not known here, and
	// it may be the end behind bytes that arrived with it. A short read
	// would take the bytes and leave the end queued; the registration,
	// level-triggered, reports it again only at the poller's next
	// wake-up, which an end that has already arrived never brings.
	d.state.Store(stRunning)
	d.readOn = true
	return false
}

// waitFill is fill for a hot pump: it waits for readability in the
// runtime's poller. A deadline in the past (stop, bypass, cool) ends the
// wait with fillAgain; the pump then looks at its flags.
func (d *dir) waitFill() (fillResult, int) {
	if d.hotFn == nil {
		d.hotFn = d.hotFill
	}
	d.last = fillAgain
	raw, err := d.src.waiter(d.c)
	if err == nil {
		err = raw.Read(d.hotFn)
	}
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.src.setReadDeadline(time.Time{})
		return fillAgain, 0
	default:
		if !d.c.stopped.Load() {
			d.c.abort(fmt.Sprintf("%s: %v", d.srcName(), unwrapOp(err)), true)
		}
		d.halt = true
		return fillHalt, 0
	}
	return d.last, 0
}

// hotFill is the read callback of a hot pump. Bytes spliced in are
// drained before it waits, as the pump would before parking; it never
// waits after a short read (the end of the stream may already be there,
// its edge consumed).
func (d *dir) hotFill(fd uintptr) bool {
	for {
		r, _ := d.fill(int(fd))
		if r == fillData && d.owe == 0 && !d.after && !d.c.stopped.Load() &&
			(d.pipe == nil || d.pipe.n < pipeFlushAt) && !d.mustSplice() {
			continue // nothing to write yet: read on
		}
		if r != fillAgain {
			d.last = r
			return true
		}
		if d.pipe != nil {
			if d.flush(false) == flushFailed {
				d.last = fillHalt
				return true
			}
		}
		d.releaseIfEmpty()
		if d.c.stopped.Load() || d.cool.Load() || d.mustSplice() {
			d.last = fillAgain
			return true
		}
		return false
	}
}

// fill reads from fd once and deals with what came: bytes covered by
// Pass are spliced (or owed), the rest is shown to the inspector.
func (d *dir) fill(fd int) (fillResult, int) {
	switch {
	case d.endNext:
		d.endNext = false
		return fillEOF, 0
	case spliceSupported && d.splicing:
		return d.spliceIn(fd, pipeSize, false)
	case spliceSupported && d.pass > 0 && d.r == d.w:
		if d.pass >= minSplicePass {
			return d.spliceIn(fd, int(min(d.pass, pipeSize)), true)
		}
		// The short end of a passed payload: copied, but not a byte
		// past it, so that the next header is peeked at.
		return d.read(fd, int(d.pass))
	case spliceSupported && d.probe && d.pass == 0 && d.r == d.w && !d.c.bypassed.Load():
		return d.peek(fd)
	}
	return d.read(fd, bufSize)
}

// read reads up to max bytes into pending and shows them to the
// inspector.
func (d *dir) read(fd int, max int) (fillResult, int) {
	space := d.space()
	space = space[:min(len(space), max)]
	n, err := sysRead(fd, space)
	if err != nil {
		return d.readError(err), 0
	}
	if n == 0 {
		return fillEOF, 0
	}
	d.w += n
	// A short read drained the socket: a cold pump parks at once (its
	// poller's level-triggered registration fires again if more came),
	// and one woken with the end reported has reached it.
	d.skipRead = n < len(space) && !d.hot.Load() && !d.readOn
	d.endNext = n < len(space) && d.ended
	now := time.Now()
	d.c.touch()
	if !d.consume(now) {
		d.halt = true
		return fillHalt, n
	}
	return fillData, n
}

func (d *dir) readError(err error) fillResult {
	switch err {
	case unix.EINTR:
		return fillData
	case unix.EAGAIN:
		return fillAgain
	}
	if !d.c.stopped.Load() {
		d.c.abort(fmt.Sprintf("%s: read: %v", d.srcName(), err), true)
	}
	d.halt = true
	return fillHalt
}

// peek shows the inspector the next header without taking it from the
// socket. If the inspector clears it and passes the payload behind it,
// both are spliced; otherwise the header is read for real and the
// answer applied as after any read. A source with less than a header
// waiting is read as usual.
func (d *dir) peek(fd int) (fillResult, int) {
	n, err := sysRecvPeek(fd, d.hdr[:])
	switch {
	case err == unix.EAGAIN:
		return fillAgain, 0
	case err != nil:
		// The socket's error (a reset): the peek took it, so a read
		// now would find only the end and pass a reset on as a clean
		// close.
		return d.readError(err), 0
	case n < probeSize:
		d.probe = false
		return d.read(fd, bufSize)
	}
	c := d.c
	now := time.Now()
	res := d.feed(d.hdr[:], now)
	if res.Forward == probeSize && res.Pass > 0 && res.Decision.Verdict == inspect.Pass {
		if res.HelloDone && d.d == dissect.Up {
			c.helloDone.Store(true)
		}
		d.pass = probeSize + res.Pass
		d.misses = 0
		return fillData, 0
	}
	if d.misses++; d.misses >= maxProbeMisses {
		d.probe = false
	}
	space := d.space()
	m, err := sysRead(fd, space[:n])
	if err != nil || m != n {
		// The peeked bytes were queued: only a broken socket loses them.
		if err == nil {
			err = fmt.Errorf("read %d of %d peeked bytes", m, n)
		}
		if !c.stopped.Load() {
			c.abort(fmt.Sprintf("%s: read: %v", d.srcName(), err), true)
		}
		d.halt = true
		return fillHalt, 0
	}
	d.w += n
	c.touch()
	if !d.apply(res, false) {
		d.halt = true
		return fillHalt, n
	}
	return fillData, n
}

// consume deals with the bytes a read added: those covered by Pass are
// owed as they are, the rest is fed to the inspector. It reports false
// when the pump must stop at once.
func (d *dir) consume(now time.Time) bool {
	if d.pass > 0 {
		// Pass is only given with nothing left pending (apply checks),
		// so the passed bytes are at the head.
		k := min(int64(d.w-d.r-d.owe), d.pass)
		d.owe += int(k)
		d.pass -= k
		if d.pass == 0 && spliceSupported {
			d.probe, d.misses = true, 0
		}
		if d.r+d.owe == d.w {
			return true
		}
	}
	if d.c.bypassed.Load() {
		d.owe = d.w - d.r
		return true
	}
	res := d.feed(d.buf[d.r+d.owe:d.w], now)
	return d.apply(res, false)
}

// feed shows the inspector pending bytes. An inspection that takes
// longer than slowFeed (a rule that computes, a long certificate chain)
// would hold up the other connections of the poller the next time too:
// the connection's pumps run on goroutines of their own from then on
// (see poller.fire).
func (d *dir) feed(pending []byte, now time.Time) inspect.Result {
	res := d.c.insp.Feed(d.d, pending, now)
	if time.Since(now) > slowFeed && !d.c.slow.Load() {
		d.c.slow.Store(true)
	}
	return res
}

// apply takes in an inspector's result: the cleared head is owed to
// dst, a killing verdict is enforced once it is out (the inspector
// judged those bytes harmless). It reports false when the pump must
// stop at once (the inspector broke its contract).
func (d *dir) apply(res inspect.Result, eof bool) bool {
	c := d.c
	n := d.w - d.r - d.owe
	if res.Forward < 0 || res.Forward > n || res.Pass < 0 || (res.Pass > 0 && (res.Forward != n || eof)) ||
		res.Decision.Verdict > inspect.Bypass {
		c.p.metrics.InspectionError()
		c.kill(inspect.Decision{
			Verdict: inspect.Drop,
			Reason: fmt.Sprintf("inspector broke its contract on %s: Forward %d, Pass %d, verdict %s with %d bytes pending",
				d.d, res.Forward, res.Pass, res.Decision.Verdict, n),
			Rule: RuleInspector,
		})
		return false
	}
	if res.HelloDone && d.d == dissect.Up {
		c.helloDone.Store(true)
	}
	d.owe += res.Forward
	d.pass = res.Pass
	switch res.Decision.Verdict {
	case inspect.Drop, inspect.Reset:
		d.killAfter(res.Decision)
		return true
	case inspect.Bypass:
		c.bypass(res.Decision)
		d.pass = 0
		d.owe = d.w - d.r
		return true
	}
	if held := n - res.Forward; held > c.p.lim.MaxHeldBytes {
		d.killAfter(inspect.Decision{
			Verdict: inspect.Drop,
			Reason:  fmt.Sprintf("inspector held %d bytes %s, more than max-held-bytes %d", held, d.d, c.p.lim.MaxHeldBytes),
			Rule:    RuleMaxHeldBytes,
		})
	}
	return true
}

func (d *dir) killAfter(dec inspect.Decision) {
	d.after = true
	d.decision = dec
}

// flush writes what is owed to dst: the pipe's bytes, then the cleared
// head of the buffer. On a poller it never waits.
func (d *dir) flush(onPoller bool) flushResult {
	if d.pipe != nil {
		if r := d.drain(onPoller); r != flushDone {
			return r
		}
	}
	if d.owe == 0 {
		return flushDone
	}
	if d.writeOwed(uintptr(d.dstFD)) {
		return d.flushed()
	}
	if onPoller {
		return flushBlocked
	}
	if d.writeFn == nil {
		d.writeFn = d.writeOwed
	}
	raw, err := d.dst.waiter(d.c)
	if err == nil {
		err = raw.Write(d.writeFn)
	}
	if err != nil && d.werr == nil {
		d.werr = err
	}
	return d.flushed()
}

// writeOwed writes the owed bytes to fd; it reports false when fd would
// block, true when done or failed (d.werr).
func (d *dir) writeOwed(fd uintptr) bool {
	for d.owe > 0 {
		m, err := sysWrite(int(fd), d.buf[d.r:d.r+d.owe])
		if m > 0 {
			d.r += m
			d.owe -= m
			d.fwd += int64(m)
			d.c.p.metrics.forwarded(d.d == dissect.Up, m)
		}
		switch err {
		case nil, unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			d.werr = err
			return true
		}
	}
	return true
}

// flushed checks the outcome of a write.
func (d *dir) flushed() flushResult {
	if err := d.werr; err != nil {
		d.werr = nil
		if !d.c.stopped.Load() {
			d.c.abort(fmt.Sprintf("%s: write: %v", d.dstName(), unwrapOp(err)), true)
		}
		d.halt = true
		return flushFailed
	}
	if d.r == d.w {
		d.r, d.w = 0, 0
	}
	return flushDone
}

// finishEOF ends the pump after its source ended and the cleared bytes
// went out: the bytes the inspector did not clear are dropped with the
// stream (they were never judged harmless), and dst learns of the end
// by a half-close — unless the other pump has ended too, in which case
// finish closes both sockets at once, which says the same.
func (d *dir) finishEOF() {
	d.r, d.w, d.owe = 0, 0, 0
	if d.c.pumps.Load() == 1 {
		return
	}
	if err := sysShutdownWrite(d.dstFD); err != nil && !d.c.stopped.Load() {
		d.c.abort(fmt.Sprintf("%s: half-close: %v", d.dstName(), err), true)
	}
}

func (d *dir) space() []byte {
	if d.buf == nil {
		d.arr = d.c.p.bufs.get()
		d.buf = d.arr[:]
		d.r, d.w = 0, 0
	}
	if d.r == d.w {
		d.r, d.w = 0, 0
	}
	if len(d.buf)-d.w >= minReadSpace {
		return d.buf[d.w:]
	}
	if d.r > 0 {
		d.w = copy(d.buf, d.buf[d.r:d.w])
		d.r = 0
		if len(d.buf)-d.w >= minReadSpace {
			return d.buf[d.w:]
		}
	}
	// The inspector holds nearly a whole buffer: grow. Pending is at most
	// MaxHeldBytes here (apply drops the connection beyond), so the cap
	// still leaves a full bufSize to read into.
	size := min(max(2*len(d.buf), d.w+bufSize), d.c.p.lim.MaxHeldBytes+bufSize)
	nb := make([]byte, size)
	copy(nb, d.buf[:d.w])
	if d.arr != nil {
		d.c.p.bufs.put(d.arr)
		d.arr = nil
	}
	d.buf = nb
	return d.buf[d.w:]
}

func (d *dir) releaseIfEmpty() {
	if d.r == d.w {
		d.releaseBuf()
	}
}

// releaseBuf gives the buffer back (a grown one is left to the
// collector).
func (d *dir) releaseBuf() {
	if d.arr != nil && d.c != nil {
		d.c.p.bufs.put(d.arr)
	}
	d.arr, d.buf = nil, nil
	d.r, d.w, d.owe = 0, 0, 0
}

// release gives back the buffer and the pipe.
func (d *dir) release() {
	d.releaseBuf()
	d.releasePipe()
}

// unwrapOp drops the *net.OpError wrapping, whose text repeats the
// addresses the log line already has.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
