package loadgen

import (
	"context"
	"fmt"
	"net"
	"time"
)

// ExchangeConfig is a connection-rate measurement with the replayed flight.
type ExchangeConfig struct {
	Addr   string
	Flight *Flight
	// N connections at Concurrency, then LatN at concurrency 1 (0 skips).
	N, Concurrency, LatN int
	MaxTime              time.Duration
	// PID, when not 0, is the proxy's process: the loaded run reports
	// its CPU per connection.
	PID int
}

// ExchangeResult is the loaded and the unloaded run.
type ExchangeResult struct {
	Loaded   Run  `json:"loaded"`
	Unloaded *Run `json:"unloaded,omitempty"`
}

// Err reports the first part that is not a clean measurement.
func (r ExchangeResult) Err() error {
	return runsErr(r.Loaded, r.Unloaded)
}

// Exchanges measures new connections per second: each operation dials,
// plays the client's side of the flight (checking every byte of the
// server's), and closes. The server closes first.
func Exchanges(ctx context.Context, cfg ExchangeConfig) (ExchangeResult, error) {
	if err := CheckLoopback(cfg.Addr); err != nil {
		return ExchangeResult{}, err
	}
	if cfg.N < 1 || cfg.Concurrency < 1 || cfg.LatN < 0 {
		return ExchangeResult{}, fmt.Errorf("exchanges: want n >= 1, c >= 1, lat-n >= 0; got %d, %d, %d", cfg.N, cfg.Concurrency, cfg.LatN)
	}
	if cfg.Flight == nil {
		return ExchangeResult{}, fmt.Errorf("exchanges: no flight")
	}
	d := &net.Dialer{Timeout: dialTimeout}
	newOp := func() operation {
		buf := make([]byte, cfg.Flight.MaxTurn())
		return func(ctx context.Context) error {
			c, err := d.DialContext(ctx, "tcp", cfg.Addr)
			if err != nil {
				return err
			}
			defer c.Close()
			stop := abortOnDone(ctx, c)
			defer stop()
			c.SetDeadline(time.Now().Add(handshakeTimeout))
			return cfg.Flight.PlayClient(c, buf)
		}
	}
	loaded, err := measureCPU(cfg.PID, func() Run { return runLoad(ctx, cfg.N, cfg.Concurrency, cfg.MaxTime, newOp) })
	if err != nil {
		return ExchangeResult{}, err
	}
	res := ExchangeResult{Loaded: loaded}
	if cfg.LatN > 0 && ctx.Err() == nil {
		u := runLoad(ctx, cfg.LatN, 1, cfg.MaxTime, newOp)
		res.Unloaded = &u
	}
	return res, nil
}
