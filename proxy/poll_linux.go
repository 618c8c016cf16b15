package proxy

import (
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/dissect"
)

const (
	// pollerSupported: the pumps of idle connections wait in our own
	// epoll sets instead of on parked goroutines.
	pollerSupported = true
	// pollBatch is how many readiness events one epoll_wait returns. A
	// full batch is waited for again at once, so this only trades
	// system calls against the poller's footprint (12 bytes an event).
	pollBatch = 128
	// pollEvents is a pump's interest in its source socket, from its
	// first park until it ends or gets hot. Level-triggered and kept
	// across parks: parking costs no system call, and a socket that
	// still has bytes (or its end) after a short read is reported again
	// at the next wait, so a pump may park after a short read without
	// reading on to EAGAIN. The poller runs most pumps it wakes itself,
	// so a socket is not reported again while its pump is being run;
	// a report that finds the pump running elsewhere (a slow
	// connection's) makes it read on to EAGAIN before it parks (see
	// dir.park); pumps that run elsewhere for long (hot ones) leave the
	// set.
	pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP
)

// poller waits, on one epoll set, for the source sockets of the pumps
// that parked there, and runs the pump of each socket that becomes
// readable on its own goroutine (see dir.run), unless the pump's
// connection was found slow to inspect (then on a goroutine of its own,
// see dir.feed). A pump that would have to wait (a full destination) or
// that keeps the poller busy leaves it (see dir.handOff).
//
// The epoll descriptor is itself waited for in the runtime's network
// poller (an epoll set is readable while events are ready), so a poller
// with nothing to do is a parked goroutine like any other and no thread
// blocks in epoll_wait. Sockets that came as a net.TCPConn stay
// registered with the runtime's poller too (edge-triggered): Linux
// allows a descriptor in several epoll sets; the runtime only records
// their edges, which nobody waits for while the pump is parked here.
//
// A registration is keyed by the connection's ID and the direction (see
// dir.key), never by a pointer: an event read just before a connection
// ended finds no pump under its key and is dropped, and a reused
// descriptor number cannot reach the old pump. A socket leaves the set
// when it is closed.
type poller struct {
	epfd int
	file *os.File
	raw  syscall.RawConn
	wait func(fd uintptr) bool // pl.poll, bound once

	mu        sync.Mutex
	dirs      map[uint64]*dir
	acceptors map[uint64]*acceptor

	events [pollBatch]unix.EpollEvent
	// ended collects the connections finished by the pumps of one batch
	// of events, for the reporter (see conn.finish); poller only.
	ended   []*conn
	reports *reporter
	// inline: the poller reports them itself (Config.ReportOnPoller).
	inline bool
	done   chan struct{}
}

func newPoller(reports *reporter, inline bool) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with the runtime's
	// poller; epoll_wait itself is always called with a zero timeout.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll: O_NONBLOCK: %w", err)
	}
	f := os.NewFile(uintptr(fd), "epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	pl := &poller{epfd: fd, file: f, raw: raw, dirs: make(map[uint64]*dir), acceptors: make(map[uint64]*acceptor),
		reports: reports, inline: inline, done: make(chan struct{})}
	pl.wait = pl.poll
	go pl.run()
	return pl, nil
}

// run is the poller's goroutine: it ends when the epoll file is closed.
func (pl *poller) run() {
	defer close(pl.done)
	for pl.raw.Read(pl.wait) == nil {
	}
}

// poll is the read callback on the epoll descriptor: it takes the ready
// events and runs their pumps, and reports false (wait in the runtime's
// poller) once a batch comes back short. The runtime reset the
// descriptor's readiness before calling it, so an event that arrives
// while the pumps run is an edge that ends the wait at once: none is
// lost.
func (pl *poller) poll(fd uintptr) bool {
	for {
		n, err := sysEpollPoll(int(fd), pl.events[:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil || n <= 0:
			return false
		}
		for i := range n {
			ev := &pl.events[i]
			pl.fire(eventKey(ev), ev.Events)
		}
		if len(pl.ended) > 0 {
			if pl.inline {
				pl.reports.report(pl.ended)
			} else {
				pl.reports.push(pl.ended)
			}
			clear(pl.ended)
			pl.ended = pl.ended[:0]
		}
		if n < len(pl.events) {
			return false
		}
	}
}

// fire runs the pump registered under key, if it is parked; a pump
// running elsewhere is only told that it was woken.
//
// A pump parks after a short read, trusting the level-triggered
// registration to report what comes later. What came before this very
// wait is the exception: an end that arrived before it is reported
// now, but the socket stays readable without a new wake-up of the
// poller. So a pump woken with its socket's end (or an error) reported
// reads on to EAGAIN or the end, and so does a pump that was running
// when its socket was reported (see dir.park).
func (pl *poller) fire(key uint64, events uint32) {
	if key&listenerKey != 0 {
		pl.mu.Lock()
		a := pl.acceptors[key]
		pl.mu.Unlock()
		if a != nil {
			a.accept()
		}
		return
	}
	pl.mu.Lock()
	d := pl.dirs[key]
	pl.mu.Unlock()
	if d == nil || !d.claim() {
		return
	}
	if d.d == dissect.Down && d.c.connecting.Load() {
		d.c.connected(events)
		return
	}
	d.readOn = events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	d.ended = d.readOn && events&unix.EPOLLERR == 0
	if d.c.slow.Load() {
		go d.resume(false)
		return
	}
	d.resume(true)
}

// register makes the pumps of c known to the poller, before either
// parks.
func (pl *poller) register(c *conn) {
	pl.mu.Lock()
	pl.dirs[c.up.key] = &c.up
	pl.dirs[c.down.key] = &c.down
	pl.mu.Unlock()
}

func (pl *poller) addAcceptor(a *acceptor) {
	pl.mu.Lock()
	pl.acceptors[a.key] = a
	pl.mu.Unlock()
}

func (pl *poller) removeAcceptor(a *acceptor) {
	pl.mu.Lock()
	delete(pl.acceptors, a.key)
	pl.mu.Unlock()
}

// unregister forgets the pumps of c; their sockets are closed (which
// removes them from the epoll set) or about to be.
func (pl *poller) unregister(c *conn) {
	pl.mu.Lock()
	delete(pl.dirs, c.up.key)
	delete(pl.dirs, c.down.key)
	pl.mu.Unlock()
}

// arm adds d's source socket to the set, unless it is in it already.
func (pl *poller) arm(d *dir) error {
	if d.armed {
		return nil
	}
	ev := unix.EpollEvent{Events: pollEvents}
	setEventKey(&ev, d.key)
	if err := sysEpollCtl(pl.epfd, unix.EPOLL_CTL_ADD, d.srcFD, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	d.armed = true
	return nil
}

// disarm takes d's source socket out of the set: its pump runs
// elsewhere for a while (hot), or has ended while the other goes on (a
// readable end would be reported at every wait).
func (pl *poller) disarm(d *dir) {
	if !d.armed {
		return
	}
	d.armed = false
	// Only fails for a socket not in the set.
	sysEpollCtl(pl.epfd, unix.EPOLL_CTL_DEL, d.srcFD, nil)
}

// close stops the poller once no pump is parked in it any more.
func (pl *poller) close() {
	pl.file.Close()
	<-pl.done
}

// The kernel hands an event's 64 bits of data back as they were given;
// x/sys/unix names them Fd and Pad.
func setEventKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd = int32(uint32(key))
	ev.Pad = int32(uint32(key >> 32))
}

func eventKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
