package proxy

import (
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

const (
	// sweepMin and sweepMax bound the sweeper's period, a tenth of the
	// shortest timeout (see sweepPeriod): below a few milliseconds the
	// sweeps would cost more than they save; above a second a timeout of
	// minutes would still fire on time, but hot pumps would keep their
	// goroutines longer than needed.
	sweepMin = 5 * time.Millisecond
	sweepMax = time.Second
	// coolAfter is how long a connection stays idle before its hot
	// pumps give up their goroutines and park in the poller: long enough
	// that a bulk transfer pausing between two bursts keeps the cheap
	// wake-up of the runtime's poller, short enough that idle
	// connections soon cost no goroutine.
	coolAfter = time.Second
)

// sweepPeriod is how often the sweeper looks at every connection: a
// timeout fires within one period after it is due, a tenth of the
// shortest timeout.
func sweepPeriod(l Limits) time.Duration {
	return min(max(min(l.HandshakeTimeout, l.IdleTimeout, l.DialTimeout)/10, sweepMin), sweepMax)
}

// sweeper enforces the handshake and idle timeouts of every connection
// from one goroutine, so that no connection holds a timer and no read
// re-arms one, and sends hot pumps of idle connections back to their
// poller. It runs from the first Serve until Shutdown.
type sweeper struct {
	quit chan struct{}
	done chan struct{}
}

func (p *Proxy) startSweeper() *sweeper {
	s := &sweeper{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(sweepPeriod(p.lim))
		defer t.Stop()
		var conns []*conn
		for {
			select {
			case <-s.quit:
				return
			case now := <-t.C:
				conns = p.sweep(now, conns[:0])
			}
		}
	}()
	return s
}

func (s *sweeper) stop() {
	close(s.quit)
	<-s.done
}

// sweep looks at every connection whose pumps run; buf is reused between
// sweeps.
func (p *Proxy) sweep(now time.Time, buf []*conn) []*conn {
	p.mu.Lock()
	for c := range p.conns {
		if c.pumping.Load() {
			buf = append(buf, c)
		}
	}
	p.mu.Unlock()
	lim := &p.lim
	cool := time.Duration(p.coolAfter.Load())
	for i, c := range buf {
		buf[i] = nil
		if c.stopped.Load() {
			continue
		}
		elapsed := now.Sub(c.flow.Start)
		if c.active.Swap(false) {
			c.lastActive.Store(int64(elapsed))
		}
		if c.connecting.Load() {
			if elapsed >= lim.DialTimeout {
				c.dialFailed(c.dialError("connect", os.ErrDeadlineExceeded))
			}
			continue
		}
		if !c.helloDone.Load() && elapsed >= lim.HandshakeTimeout {
			c.kill(inspect.Decision{
				Verdict: inspect.Drop,
				Reason:  fmt.Sprintf("handshake timeout: the client's opening message was not complete within %s", lim.HandshakeTimeout),
				Rule:    RuleHandshakeTimeout,
			})
			continue
		}
		idle := elapsed - time.Duration(c.lastActive.Load())
		if idle >= lim.IdleTimeout {
			c.kill(inspect.Decision{
				Verdict: inspect.Drop,
				Reason:  fmt.Sprintf("idle timeout: no data either way for %s", lim.IdleTimeout),
				Rule:    RuleIdleTimeout,
			})
			continue
		}
		if idle >= cool && c.pl != nil {
			c.up.coolDown()
			c.down.coolDown()
		}
	}
	return buf[:0]
}

// coolDown asks a hot pump to park in its poller: its wait in the
// runtime's poller ends with a deadline in the past, and it looks at
// cool.
func (d *dir) coolDown() {
	if d.hot.Load() && !d.cool.Swap(true) {
		d.src.setReadDeadline(past)
	}
}

// reporter ends the connections that finished on a poller: inspector's
// end, log line, record, metrics. One goroutine takes them in batches: a
// poller hands over what finished during one batch of events at once,
// and their connection records go out in one write.
type reporter struct {
	records *output.Writer
	log     *zap.Logger

	mu   sync.Mutex
	q    []*conn
	wake chan struct{}
	quit chan struct{}
	done chan struct{}
}

func startReporter(records *output.Writer, log *zap.Logger) *reporter {
	r := &reporter{records: records, log: log, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

// push queues the connections of one batch of a poller.
func (r *reporter) push(cs []*conn) {
	r.mu.Lock()
	r.q = append(r.q, cs...)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *reporter) run() {
	defer close(r.done)
	var batch []*conn
	for {
		select {
		case <-r.wake:
		case <-r.quit:
			return
		}
		r.mu.Lock()
		batch, r.q = r.q, batch[:0]
		r.mu.Unlock()
		r.report(batch)
		clear(batch)
	}
}

// report reports a batch of connections, their records in one write; it
// runs on the reporter's goroutine, or on a poller that reports its own.
func (r *reporter) report(batch []*conn) {
	r.records.Hold()
	for _, c := range batch {
		c.report()
	}
	if err := r.records.Release(); err != nil {
		r.log.Error("writing connection records", zap.Error(err))
	}
}

// stop ends the reporter; every connection is reported by then
// (Shutdown waits for them).
func (r *reporter) stop() {
	close(r.quit)
	<-r.done
}
