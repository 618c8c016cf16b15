package loadgen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"
)

const (
	// streamDialConcurrency caps the handshakes in flight while a scale
	// run opens its connections: a thousand at once would overflow the
	// listener's SYN backlog and measure retransmission timers.
	streamDialConcurrency = 50
	// MaxStreamConns bounds a stream run: each connection costs a
	// descriptor here, one at the server and two or more in a proxy.
	MaxStreamConns = 5000
	// streamReadBuf is one TLS record's plaintext: crypto/tls returns at
	// most one record per Read.
	streamReadBuf = 16 << 10
)

// StreamConfig is a bulk-throughput measurement: Conns TLS 1.3
// connections, opened (handshakes done) before the clock starts, then all
// asking at once for Bytes each, or for data until Duration has passed.
type StreamConfig struct {
	Addr     string
	Roots    *x509.CertPool
	Conns    int
	Bytes    int64
	Duration time.Duration
	MaxTime  time.Duration
	// PID, when not 0, is the proxy's process: the result reports its
	// CPU per GiB streamed (the handshakes, before the clock starts,
	// are not counted).
	PID int
}

// StreamResult is the aggregate and per-connection throughput, in Gbit/s
// of TLS plaintext.
type StreamResult struct {
	Conns   int     `json:"conns"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Gbps    float64 `json:"gbps"`
	// PerConnGbps is Gbps / Conns; Min and Median are over the
	// connections' own rates and show how fairly they were served.
	PerConnGbps    float64 `json:"gbps_per_conn"`
	MinConnGbps    float64 `json:"min_conn_gbps"`
	MedianConnGbps float64 `json:"median_conn_gbps"`
	TLS            TLSInfo `json:"tls"`
	// ProxyCPU is the CPU the proxy (StreamConfig.PID) spent per GiB
	// streamed, in milliseconds; nil without a PID.
	ProxyCPU *CPUPerGiB `json:"proxy_cpu,omitempty"`
}

// CPUPerGiB is the CPU a process spent per GiB of a stream, in
// milliseconds.
type CPUPerGiB struct {
	UserMS float64 `json:"user_ms"`
	SysMS  float64 `json:"sys_ms"`
}

func (r StreamResult) String() string {
	s := fmt.Sprintf("conns=%d bytes=%d seconds=%.3f gbps=%.3f gbps_per_conn=%.4f min_conn_gbps=%.4f median_conn_gbps=%.4f %s",
		r.Conns, r.Bytes, r.Seconds, r.Gbps, r.PerConnGbps, r.MinConnGbps, r.MedianConnGbps, r.TLS)
	if c := r.ProxyCPU; c != nil {
		s += fmt.Sprintf(" proxy_cpu_user_ms_per_gib=%.1f proxy_cpu_sys_ms_per_gib=%.1f", c.UserMS, c.SysMS)
	}
	return s
}

// Stream runs the measurement. Any connection that fails fails the run.
func Stream(ctx context.Context, cfg StreamConfig) (StreamResult, error) {
	if err := CheckLoopback(cfg.Addr); err != nil {
		return StreamResult{}, err
	}
	if cfg.Conns < 1 || cfg.Conns > MaxStreamConns {
		return StreamResult{}, fmt.Errorf("stream: %d connections, want 1 to %d", cfg.Conns, MaxStreamConns)
	}
	if (cfg.Bytes > 0) == (cfg.Duration > 0) {
		return StreamResult{}, errors.New("stream: give either a byte count or a duration")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.MaxTime)
	defer cancel()

	conns, err := dialAll(ctx, cfg)
	if err != nil {
		err = fmt.Errorf("stream: opening the connections: %w", err)
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err != nil {
		return StreamResult{}, err
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()

	var req []byte
	if cfg.Bytes > 0 {
		req = request(OpStream, uint64(cfg.Bytes))
	} else {
		req = request(OpStreamUntilClose, 0)
	}
	got := make([]int64, len(conns))
	took := make([]time.Duration, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	var u0, s0 time.Duration
	if cfg.PID != 0 {
		if u0, s0, err = ProcCPU(cfg.PID); err != nil {
			return StreamResult{}, fmt.Errorf("stream: %w", err)
		}
	}
	start := time.Now()
	end := start.Add(cfg.Duration)
	for i, c := range conns {
		wg.Go(func() {
			if cfg.Duration > 0 {
				c.SetReadDeadline(end)
			}
			if _, err := c.Write(req); err != nil {
				errs[i] = fmt.Errorf("connection %d: request: %w", i, err)
				return
			}
			buf := make([]byte, streamReadBuf)
			for cfg.Duration > 0 || got[i] < cfg.Bytes {
				n, err := c.Read(buf)
				got[i] += int64(n)
				if err == nil {
					continue
				}
				if cfg.Duration > 0 && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(end) {
					break
				}
				if errors.Is(err, io.EOF) {
					err = fmt.Errorf("server closed after %d of %d bytes", got[i], cfg.Bytes)
				}
				errs[i] = fmt.Errorf("connection %d: %w", i, err)
				return
			}
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	if err := firstError(errs); err != nil {
		return StreamResult{}, fmt.Errorf("stream: %w", err)
	}

	res := StreamResult{Conns: len(conns), TLS: tlsInfo(conns[0].ConnectionState())}
	if cfg.PID != 0 {
		u1, s1, err := ProcCPU(cfg.PID)
		if err != nil {
			return StreamResult{}, fmt.Errorf("stream: %w", err)
		}
		var total int64
		for _, n := range got {
			total += n
		}
		if gib := float64(total) / (1 << 30); gib > 0 {
			res.ProxyCPU = &CPUPerGiB{UserMS: float64(u1-u0) / 1e6 / gib, SysMS: float64(s1-s0) / 1e6 / gib}
		}
	}
	rates := make([]float64, len(conns))
	var last time.Duration
	for i := range conns {
		res.Bytes += got[i]
		d := took[i]
		if cfg.Duration > 0 {
			d = cfg.Duration
		}
		last = max(last, d)
		rates[i] = gbps(got[i], d)
	}
	res.Seconds = last.Seconds()
	res.Gbps = gbps(res.Bytes, last)
	res.PerConnGbps = res.Gbps / float64(len(conns))
	slices.Sort(rates)
	res.MinConnGbps = rates[0]
	res.MedianConnGbps = rates[(len(rates)-1)/2]
	return res, nil
}

func gbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) * 8 / d.Seconds() / 1e9
}

// dialAll opens cfg.Conns TLS connections, streamDialConcurrency at a time.
// On error the connections opened so far are returned for closing.
func dialAll(ctx context.Context, cfg StreamConfig) ([]*tls.Conn, error) {
	d := tlsDialer(clientConfig(cfg.Roots, false))
	conns := make([]*tls.Conn, cfg.Conns)
	errs := make([]error, cfg.Conns)
	sem := make(chan struct{}, streamDialConcurrency)
	var wg sync.WaitGroup
	for i := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := d.DialContext(ctx, "tcp", cfg.Addr)
			if err != nil {
				errs[i] = fmt.Errorf("connection %d: %w", i, err)
				return
			}
			conns[i] = c.(*tls.Conn)
		})
	}
	wg.Wait()
	return conns, firstError(errs)
}

// firstError summarises per-connection errors: a thousand copies of one
// message say no more than the first and a count.
func firstError(errs []error) error {
	n := 0
	var first error
	for _, err := range errs {
		if err != nil {
			n++
			if first == nil {
				first = err
			}
		}
	}
	if n > 1 {
		return fmt.Errorf("%d connections failed, first: %w", n, first)
	}
	return first
}
