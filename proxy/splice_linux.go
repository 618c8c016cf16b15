package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
)

const (
	spliceSupported = true
	// pipeSize is asked of each pipe with F_SETPIPE_SZ and moved per
	// splice call: 1 MiB is the default /proc/sys/fs/pipe-max-size, as
	// Go's own splice path uses. Pages are only allocated as the pipe
	// fills, so an empty pipe costs little.
	pipeSize = 1 << 20
	// maxIdlePipes bounds the pipes kept open between transfers. A pipe
	// is only borrowed while bytes are in it, so at most one per pump
	// that is moving bytes right now; more than this would be idle
	// descriptors.
	maxIdlePipes = 64
	// pipeFlushAt is how much a pump splices into its pipe before
	// draining it to dst, while its source still has bytes: several
	// records per drain saves a system call each, and a quarter of the
	// pipe leaves room for what the socket's next segments bring.
	pipeFlushAt = pipeSize / 4
)

// pipe is a kernel pipe used to splice between two sockets.
type pipe struct {
	r, w int
	// n is the number of bytes in the pipe; only an empty pipe goes back
	// to the pool.
	n int
}

// pipePool lends pipes to pumps while bytes are in flight, unlike Go's
// splice path which keeps a pipe per blocked direction (three descriptor
// pairs per connection). An idle bypassed connection holds no pipe.
type pipePool struct {
	mu     sync.Mutex
	free   []*pipe
	closed bool
	lent   int // pipes borrowed and not given back
	// spliced counts the bytes that went through the pool's pipes.
	spliced atomic.Int64
}

func newPipePool() *pipePool { return &pipePool{} }

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	pp.lent++
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		pp.mu.Lock()
		pp.lent--
		pp.mu.Unlock()
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	// A smaller pipe works, with more system calls per byte.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	pp.lent--
	if p.n == 0 && !pp.closed && len(pp.free) < maxIdlePipes {
		pp.free = append(pp.free, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	p.close()
}

// close closes the idle pipes; pipes lent out are closed when returned.
func (pp *pipePool) close() {
	pp.mu.Lock()
	free := pp.free
	pp.free = nil
	pp.closed = true
	pp.mu.Unlock()
	for _, p := range free {
		p.close()
	}
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// spliceIn moves up to max bytes from the socket fd into the pump's
// pipe, borrowing one if it has none. pass: the bytes are a Pass run
// (d.pass counts down; once it is over, the next read is a probe).
func (d *dir) spliceIn(fd int, max int, pass bool) (fillResult, int) {
	c := d.c
	if d.pipe == nil {
		p, err := c.p.pipes.get()
		if err != nil {
			c.abort(fmt.Sprintf("%s: splice: %v", d.srcName(), err), true)
			d.halt = true
			return fillHalt, 0
		}
		d.pipe = p
	}
	n, err := sysSplice(fd, d.pipe.w, max)
	switch err {
	case nil:
	case unix.EAGAIN:
		// Either side may be the one that would block: an empty
		// socket, or a pipe with no free slot (it holds a bounded
		// number of segments, not bytes).
		if d.pipe.n > 0 {
			return fillPipeFull, 0
		}
		d.releasePipe()
		return fillAgain, 0
	default:
		if d.pipe.n == 0 {
			d.releasePipe()
		}
		return d.readError(err), 0
	}
	if n == 0 {
		if d.pipe.n == 0 {
			d.releasePipe()
		}
		return fillEOF, 0
	}
	d.pipe.n += n
	if pass {
		d.pass -= int64(n)
		if d.pass == 0 {
			d.probe, d.misses = true, 0
		}
	}
	c.touch()
	return fillData, n
}

// drain splices the pipe's bytes to dst and gives the pipe back once it
// is empty. On a poller it never waits.
func (d *dir) drain(onPoller bool) flushResult {
	if d.spliceOut(uintptr(d.dstFD)) {
		return d.drained()
	}
	if onPoller {
		return flushBlocked
	}
	if d.drainFn == nil {
		d.drainFn = d.spliceOut
	}
	raw, err := d.dst.waiter(d.c)
	if err == nil {
		err = raw.Write(d.drainFn)
	}
	if err != nil && d.werr == nil {
		d.werr = err
	}
	return d.drained()
}

// spliceOut moves the pipe's bytes to fd; it reports false when fd
// would block, true when done or failed (d.werr).
func (d *dir) spliceOut(fd uintptr) bool {
	p := d.pipe
	for p.n > 0 {
		m, err := sysSplice(p.r, int(fd), p.n)
		if m > 0 {
			p.n -= m
			d.fwd += int64(m)
			d.c.p.pipes.spliced.Add(int64(m))
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

func (d *dir) drained() flushResult {
	if d.werr != nil {
		return d.flushed() // reports the error
	}
	d.releasePipe()
	return flushDone
}

// releasePipe gives the pipe back; one with bytes left in it is closed
// by the pool rather than lent again.
func (d *dir) releasePipe() {
	if d.pipe != nil {
		d.c.p.pipes.put(d.pipe)
		d.pipe = nil
	}
}
