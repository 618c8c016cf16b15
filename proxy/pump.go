package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
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
)

// bufPool lends read buffers to pumps while bytes are in flight. Pointers
// to arrays, so that Get and Put do not allocate.
type bufPool struct{ p sync.Pool }

func (b *bufPool) get() *[bufSize]byte {
	if v, ok := b.p.Get().(*[bufSize]byte); ok {
		return v
	}
	return new([bufSize]byte)
}

func (b *bufPool) put(a *[bufSize]byte) { b.p.Put(a) }

// dir is the pump of one direction: it reads src, feeds the inspector
// and writes the cleared bytes to dst. Its fields belong to its
// goroutine.
//
// Reading goes through syscall.RawConn.Read with a callback that reads
// until EAGAIN and then returns false, so that the goroutine waits in the
// runtime's poller for the next readiness edge. The callback takes a
// buffer only when it is about to read and gives it back on EAGAIN unless
// the inspector holds bytes: an idle connection holds no buffer.
type dir struct {
	c        *conn
	d        dissect.Direction
	src, dst *net.TCPConn
	srcRaw   syscall.RawConn
	dstRaw   syscall.RawConn
	readFn   func(fd uintptr) bool
	spliceFn func(fd uintptr) bool

	// pending is buf[r:w]: read, not yet forwarded. arr is the pooled
	// array behind buf, nil when buf was grown past bufSize.
	arr  *[bufSize]byte
	buf  []byte
	r, w int
	// pass is how many bytes still to read may go on unseen
	// (Result.Pass).
	pass int64
	// fwd counts the bytes written to dst.
	fwd int64

	eof      bool // src ended (read returned 0)
	halt     bool // this pump is done: verdict, error or stop
	splicing bool // bypassed: the kernel moves the bytes
}

func (d *dir) init(c *conn, dd dissect.Direction, src, dst *net.TCPConn, srcRaw, dstRaw syscall.RawConn) {
	d.c, d.d, d.src, d.dst = c, dd, src, dst
	d.srcRaw, d.dstRaw = srcRaw, dstRaw
	d.readFn = d.readable
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

func (d *dir) run() {
	defer d.release()
	if d.w > d.r && !d.consume(time.Now()) {
		d.halt = true
	}
	for !d.halt && !d.eof {
		if d.c.stopped.Load() {
			break
		}
		if spliceSupported && !d.splicing && d.c.bypassed.Load() && !d.startBypass() {
			break
		}
		fn := d.readFn
		if d.splicing {
			if d.spliceFn == nil {
				d.spliceFn = d.spliceable
			}
			fn = d.spliceFn
		}
		err := d.srcRaw.Read(fn)
		switch {
		case err == nil:
			// The callback returned true: eof, halt, or a bypass to
			// switch to; the loop condition sorts them out.
		case errors.Is(err, os.ErrDeadlineExceeded):
			if !d.onDeadline() {
				d.halt = true
			}
		default:
			if !d.c.stopped.Load() {
				d.c.abort(fmt.Sprintf("%s: %v", d.srcName(), err), true)
			}
			d.halt = true
		}
	}
	if d.eof && !d.halt && !d.c.stopped.Load() {
		d.finishEOF()
	}
}

// readable is the RawConn read callback of the inspecting path.
func (d *dir) readable(fd uintptr) bool {
	for {
		if d.c.stopped.Load() {
			d.halt = true
			return true
		}
		if spliceSupported && d.c.bypassed.Load() {
			return true // to switch to the splicing callback
		}
		space := d.space()
		n, err := unix.Read(int(fd), space)
		if err != nil {
			switch err {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				d.releaseIfEmpty()
				return false
			}
			d.c.abort(fmt.Sprintf("%s: read: %v", d.srcName(), err), true)
			d.halt = true
			return true
		}
		if n == 0 {
			d.eof = true
			return true
		}
		d.w += n
		now := time.Now()
		d.c.touch(now)
		if !d.consume(now) {
			d.halt = true
			return true
		}
	}
}

// consume deals with the pending bytes after a read: the passed ones go
// on unseen, the rest is fed to the inspector. It reports false when the
// pump must stop.
func (d *dir) consume(now time.Time) bool {
	if d.pass > 0 {
		// Pass is only given with nothing left pending (apply checks),
		// so the passed bytes are at the head.
		k := min(int64(d.w-d.r), d.pass)
		if !d.forward(int(k)) {
			return false
		}
		d.pass -= k
		if d.r == d.w {
			return true
		}
	}
	if d.c.bypassed.Load() {
		return d.forward(d.w - d.r)
	}
	res := d.c.insp.Feed(d.d, d.buf[d.r:d.w], now)
	return d.apply(res, false)
}

// apply enforces an inspector's result: it forwards the cleared head,
// then acts on the verdict. Bytes cleared along with a killing verdict
// are forwarded first: the inspector judged them harmless.
func (d *dir) apply(res inspect.Result, eof bool) bool {
	c := d.c
	n := d.w - d.r
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
	if res.Forward > 0 && !d.forward(res.Forward) {
		return false
	}
	d.pass = res.Pass
	switch res.Decision.Verdict {
	case inspect.Drop, inspect.Reset:
		c.kill(res.Decision)
		return false
	case inspect.Bypass:
		c.bypass(res.Decision)
		d.pass = 0
		return d.forward(d.w - d.r)
	}
	if held := d.w - d.r; held > c.p.lim.MaxHeldBytes {
		c.kill(inspect.Decision{
			Verdict: inspect.Drop,
			Reason:  fmt.Sprintf("inspector held %d bytes %s, more than max-held-bytes %d", held, d.d, c.p.lim.MaxHeldBytes),
			Rule:    RuleMaxHeldBytes,
		})
		return false
	}
	return true
}

// forward writes the first k pending bytes to dst.
func (d *dir) forward(k int) bool {
	if k == 0 {
		return true
	}
	if d.c.stopped.Load() {
		return false
	}
	m, err := d.dst.Write(d.buf[d.r : d.r+k])
	d.r += m
	d.fwd += int64(m)
	d.c.p.metrics.forwarded(d.d == dissect.Up, m)
	if err != nil {
		if !d.c.stopped.Load() {
			d.c.abort(fmt.Sprintf("%s: write: %v", d.dstName(), unwrapOp(err)), true)
		}
		return false
	}
	return true
}

// finishEOF shows the inspector the end of the stream, forwards what it
// clears and half-closes dst.
func (d *dir) finishEOF() {
	var res inspect.Result
	if d.c.bypassed.Load() {
		res.Forward = d.w - d.r
	} else {
		res = d.c.insp.EOF(d.d, d.buf[d.r:d.w], time.Now())
	}
	if !d.apply(res, true) {
		return
	}
	// Bytes the inspector did not clear at the end are dropped with the
	// stream: they were never judged harmless.
	d.r = d.w
	if err := d.dst.CloseWrite(); err != nil && !d.c.stopped.Load() {
		d.c.abort(fmt.Sprintf("%s: half-close: %v", d.dstName(), unwrapOp(err)), true)
	}
}

// onDeadline handles a read deadline: a wake-up from stop or bypass, the
// handshake timeout, or the idle timeout, which is checked against the
// last read of either direction and re-armed lazily, so that a busy
// connection resets no timer per read. It reports false when the pump
// must stop.
func (d *dir) onDeadline() bool {
	c := d.c
	if c.stopped.Load() {
		return false
	}
	lim := &c.p.lim
	elapsed := time.Since(c.flow.Start)
	handshaking := d.d == dissect.Up && !c.helloDone.Load()
	if handshaking && elapsed >= lim.HandshakeTimeout {
		c.kill(inspect.Decision{
			Verdict: inspect.Drop,
			Reason:  fmt.Sprintf("handshake timeout: the client's opening message was not complete within %s", lim.HandshakeTimeout),
			Rule:    RuleHandshakeTimeout,
		})
		return false
	}
	last := time.Duration(c.lastActive.Load())
	if elapsed-last >= lim.IdleTimeout {
		c.kill(inspect.Decision{
			Verdict: inspect.Drop,
			Reason:  fmt.Sprintf("idle timeout: no data either way for %s", lim.IdleTimeout),
			Rule:    RuleIdleTimeout,
		})
		return false
	}
	next := last + lim.IdleTimeout
	if handshaking {
		next = min(next, lim.HandshakeTimeout)
	}
	c.arm(d.src, c.flow.Start.Add(next))
	return !c.stopped.Load()
}

// startBypass forwards the pending bytes and switches the pump to the
// kernel path.
func (d *dir) startBypass() bool {
	if !d.forward(d.w - d.r) {
		return false
	}
	d.pass = 0
	d.release()
	d.splicing = true
	return true
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
		d.release()
	}
}

// release gives the buffer back (a grown one is left to the collector).
func (d *dir) release() {
	if d.arr != nil && d.c != nil {
		d.c.p.bufs.put(d.arr)
	}
	d.arr, d.buf = nil, nil
	d.r, d.w = 0, 0
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
