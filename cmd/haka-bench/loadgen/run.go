package loadgen

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Run is the result of N timed operations (a handshake, a replayed
// exchange) done C at a time.
type Run struct {
	Concurrency int `json:"concurrency"`
	Requested   int `json:"requested"`
	OK          int `json:"ok"`
	Errors      int `json:"errors"`
	// FirstError is the first failure seen, for the report.
	FirstError string `json:"first_error,omitempty"`
	// Seconds is the wall time of the whole run, Rate the successful
	// operations per second over it.
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	// Latency of the successful operations, in microseconds: from the
	// start of the dial to the last byte of the answer.
	Latency Percentiles `json:"latency_us"`
	// ProxyCPU is the CPU the process given by PID (the proxy) spent
	// during the run, per successful operation; nil without a PID.
	ProxyCPU *CPUPerOp `json:"proxy_cpu,omitempty"`
}

// Percentiles of a latency distribution, in microseconds (nearest rank).
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Err reports a run that is not a measurement: any failed operation, or
// fewer operations than requested (the time limit stopped it).
func (r Run) Err() error {
	switch {
	case r.Errors > 0:
		return fmt.Errorf("%d of %d failed, first: %s", r.Errors, r.Requested, r.FirstError)
	case r.OK < r.Requested:
		return fmt.Errorf("stopped after %d of %d (time limit or interrupt)", r.OK, r.Requested)
	}
	return nil
}

// String is the one-line text form of the subcommands.
func (r Run) String() string {
	s := fmt.Sprintf("c=%d ok=%d errors=%d seconds=%.3f rate=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f",
		r.Concurrency, r.OK, r.Errors, r.Seconds, r.Rate, r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max)
	if c := r.ProxyCPU; c != nil {
		s += fmt.Sprintf(" proxy_cpu_user_us=%.1f proxy_cpu_sys_us=%.1f", c.UserUS, c.SysUS)
	}
	if r.FirstError != "" {
		s += fmt.Sprintf(" first_error=%q", r.FirstError)
	}
	return s
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		i = min(max(i, 0), len(d)-1)
		return float64(d[i].Nanoseconds()) / 1e3
	}
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

// operation does one timed unit of work. Each worker gets its own from
// newOp, so per-worker buffers need no locking.
type operation func(ctx context.Context) error

// runLoad does n operations, conc at a time, and stops early when ctx ends
// or maxTime passes.
func runLoad(ctx context.Context, n, conc int, maxTime time.Duration, newOp func() operation) Run {
	ctx, cancel := context.WithTimeout(ctx, maxTime)
	defer cancel()
	conc = max(min(conc, n), 1)
	var (
		next     atomic.Int64
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, n)
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Go(func() {
			op := newOp()
			local := make([]time.Duration, 0, n/conc+1)
			var lerrs int
			var lfirst error
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx)
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() != nil {
						// Interrupted, not failed: the run is cut short.
						break
					}
					lerrs++
					if lfirst == nil {
						lfirst = err
					}
					continue
				}
				local = append(local, d)
			}
			mu.Lock()
			lat = append(lat, local...)
			errs += lerrs
			if lfirst != nil && firstErr == "" {
				firstErr = lfirst.Error()
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start)
	return Run{
		Concurrency: conc,
		Requested:   n,
		OK:          len(lat),
		Errors:      errs,
		FirstError:  firstErr,
		Seconds:     el.Seconds(),
		Rate:        float64(len(lat)) / el.Seconds(),
		Latency:     percentiles(lat),
	}
}

// abortOnDone makes a blocked read or write on c return when ctx ends; call
// the returned stop when the operation is over.
func abortOnDone(ctx context.Context, c net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}
