package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// MaxIdleConns bounds an idle run; each connection costs a
	// descriptor here, one at the server and two or more in the proxy,
	// all under one process limit (20,000 on the reference machine).
	MaxIdleConns = 100000
	// settlePoll is how often the proxy's RSS is read while it settles.
	// The kernel gives no event for "memory stopped growing", so this is
	// polled, with DefaultSettle as the bound.
	settlePoll = 200 * time.Millisecond
	// DefaultSettle bounds the wait for the RSS to settle.
	DefaultSettle = 5 * time.Second
	// settleSlackKiB is the RSS movement between two polls that counts as
	// settled, per thousand connections: 0.01 KiB per connection, well
	// under the resolution the 8 KiB target needs.
	settleSlackKiB = 10
)

// IdleConfig is an idle-connection memory measurement.
type IdleConfig struct {
	Addr   string
	Flight *Flight
	// N connections, opened Concurrency at a time, each after one
	// replayed flight.
	N, Concurrency int
	// PID is the process whose memory and descriptors are read (the proxy
	// under test); 0 opens the connections and reads nothing.
	PID int
	// Settle bounds the wait for the RSS to stop moving (DefaultSettle if
	// zero).
	Settle time.Duration
	// MaxTime bounds opening the connections.
	MaxTime time.Duration
}

// IdleResult is the proxy's cost per held connection.
type IdleResult struct {
	N          int    `json:"n"`
	Open       int    `json:"open"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	PID        int    `json:"pid,omitempty"`
	// RSS and descriptors of PID before the first connection and once
	// the N are open and the RSS has settled.
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSAfterKiB  int64   `json:"rss_after_kib"`
	KiBPerConn   float64 `json:"kib_per_conn"`
	FDsBefore    int     `json:"fds_before"`
	FDsAfter     int     `json:"fds_after"`
	FDsPerConn   float64 `json:"fds_per_conn"`
	// Settled is false when the RSS still moved at the Settle bound.
	Settled bool `json:"settled"`
}

func (r IdleResult) String() string {
	s := fmt.Sprintf("n=%d open=%d errors=%d", r.N, r.Open, r.Errors)
	if r.PID > 0 {
		s += fmt.Sprintf(" pid=%d rss_before_kib=%d rss_after_kib=%d kib_per_conn=%.2f fds_before=%d fds_after=%d fds_per_conn=%.2f settled=%v",
			r.PID, r.RSSBeforeKiB, r.RSSAfterKiB, r.KiBPerConn, r.FDsBefore, r.FDsAfter, r.FDsPerConn, r.Settled)
	}
	if r.FirstError != "" {
		s += fmt.Sprintf(" first_error=%q", r.FirstError)
	}
	return s
}

// Err reports a run where not every connection was established.
func (r IdleResult) Err() error {
	if r.Open < r.N {
		return fmt.Errorf("%d of %d connections established, %d failed, first: %s", r.Open, r.N, r.Errors, r.FirstError)
	}
	return nil
}

// Idle opens the connections, measures PID, and returns with the
// connections still open: the caller closes them with release (which is
// never nil) once it no longer needs them held.
func Idle(ctx context.Context, cfg IdleConfig) (res IdleResult, release func(), err error) {
	release = func() {}
	if err := CheckLoopback(cfg.Addr); err != nil {
		return res, release, err
	}
	if cfg.N < 1 || cfg.N > MaxIdleConns || cfg.Concurrency < 1 {
		return res, release, fmt.Errorf("idle: want 1 <= n <= %d and c >= 1; got %d, %d", MaxIdleConns, cfg.N, cfg.Concurrency)
	}
	if cfg.Flight == nil {
		return res, release, errors.New("idle: no flight")
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultSettle
	}
	res = IdleResult{N: cfg.N, PID: cfg.PID}
	if cfg.PID > 0 {
		if res.RSSBeforeKiB, err = ProcRSSKiB(cfg.PID); err != nil {
			return res, release, err
		}
		if res.FDsBefore, err = ProcFDs(cfg.PID); err != nil {
			return res, release, err
		}
	}

	octx, cancel := context.WithTimeout(ctx, cfg.MaxTime)
	defer cancel()
	conns := make([]net.Conn, cfg.N)
	release = func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	d := &net.Dialer{Timeout: dialTimeout}
	for range min(cfg.Concurrency, cfg.N) {
		wg.Go(func() {
			buf := make([]byte, cfg.Flight.MaxTurn())
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.N || octx.Err() != nil {
					return
				}
				c, err := openIdle(octx, d, cfg, buf)
				if err != nil {
					mu.Lock()
					errs++
					if firstErr == "" {
						firstErr = err.Error()
					}
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			res.Open++
		}
	}
	res.Errors, res.FirstError = errs, firstErr
	if octx.Err() != nil && res.Open < cfg.N && res.FirstError == "" {
		res.FirstError = "stopped by the time limit or an interrupt"
	}
	if cfg.PID > 0 && res.Open > 0 {
		if err := measureIdle(ctx, cfg, &res); err != nil {
			return res, release, err
		}
	}
	return res, release, nil
}

func openIdle(ctx context.Context, d *net.Dialer, cfg IdleConfig, buf []byte) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	stop := abortOnDone(ctx, c)
	defer stop()
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := cfg.Flight.PlayClient(c, buf); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// measureIdle waits, within cfg.Settle, for the RSS of cfg.PID to stop
// moving, then records it and the descriptor count.
func measureIdle(ctx context.Context, cfg IdleConfig, res *IdleResult) error {
	slack := int64(max(settleSlackKiB*res.Open/1000, settleSlackKiB))
	deadline := time.Now().Add(cfg.Settle)
	prev, err := ProcRSSKiB(cfg.PID)
	if err != nil {
		return err
	}
	tick := time.NewTicker(settlePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		cur, err := ProcRSSKiB(cfg.PID)
		if err != nil {
			return err
		}
		settled := cur-prev <= slack && prev-cur <= slack
		prev = cur
		if settled || time.Now().After(deadline) {
			res.Settled = settled
			break
		}
	}
	fds, err := ProcFDs(cfg.PID)
	if err != nil {
		return err
	}
	res.RSSAfterKiB, res.FDsAfter = prev, fds
	res.KiBPerConn = float64(res.RSSAfterKiB-res.RSSBeforeKiB) / float64(res.Open)
	res.FDsPerConn = float64(res.FDsAfter-res.FDsBefore) / float64(res.Open)
	return nil
}
