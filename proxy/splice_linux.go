package proxy

import (
	"fmt"
	"sync"
	"time"

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

// spliceable is the RawConn read callback of a bypassed pump: it moves
// bytes from src into a borrowed pipe and from the pipe to dst, until src
// has nothing more to give (EAGAIN) — then the pipe goes back to the pool
// and the pump waits for readability holding nothing. A short splice does
// not mean that the socket is drained (a pipe holds a bounded number of
// segments, not bytes), so it always reads on to EAGAIN.
func (d *dir) spliceable(fd uintptr) bool {
	pool := d.c.p.pipes
	for {
		if d.c.stopped.Load() {
			d.halt = true
			return true
		}
		p, err := pool.get()
		if err != nil {
			d.c.abort(fmt.Sprintf("%s: splice: %v", d.srcName(), err), true)
			d.halt = true
			return true
		}
		n, err := unix.Splice(int(fd), nil, p.w, nil, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != nil {
			pool.put(p)
			switch err {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			d.c.abort(fmt.Sprintf("%s: read: %v", d.srcName(), err), true)
			d.halt = true
			return true
		}
		if n == 0 {
			pool.put(p)
			d.eof = true
			return true
		}
		p.n = int(n)
		d.c.touch(time.Now())
		ok := d.drainPipe(p)
		pool.put(p) // closed rather than pooled if bytes are left in it
		if !ok {
			d.halt = true
			return true
		}
	}
}

// drainPipe splices the pipe's bytes to dst, waiting for writability in
// the runtime's poller when dst's send buffer is full.
func (d *dir) drainPipe(p *pipe) bool {
	var werr error
	write := func(fd uintptr) bool {
		for p.n > 0 {
			m, err := unix.Splice(p.r, nil, int(fd), nil, p.n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch err {
			case nil:
				p.n -= int(m)
				d.fwd += m
				d.c.p.metrics.forwarded(d.d == dissect.Up, int(m))
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				werr = err
				return true
			}
		}
		return true
	}
	if err := d.dstRaw.Write(write); err != nil {
		werr = err
	}
	if werr != nil {
		if !d.c.stopped.Load() {
			d.c.abort(fmt.Sprintf("%s: write: %v", d.dstName(), unwrapOp(werr)), true)
		}
		return false
	}
	return true
}
