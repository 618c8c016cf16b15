package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
)

// defaultDir is where serve creates, and the clients read, the certificate
// and the recorded flight when --dir is not given.
func defaultDir() string { return filepath.Join(os.TempDir(), "haka-bench") }

const (
	// defaultLifetime bounds the long-running commands (serve,
	// splice-proxy): a forgotten server stops by itself.
	defaultLifetime = time.Hour
	// defaultMaxTime bounds one measurement.
	defaultMaxTime = 3 * time.Minute
)

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "haka-bench",
		Short: "Load generator and side-by-side comparison for haka-proxy (loopback only)",
		Long: `haka-bench measures a TCP proxy against a direct connection, HAProxy in TCP
mode and a minimal Go splice proxy, on loopback, with real TLS.

  haka-bench serve       the far end: a TLS 1.3 server and a replayed TLS 1.2 flight
  haka-bench stream      bulk TLS 1.3 throughput, Gbit/s
  haka-bench hs          full TLS 1.3 handshakes per second, and latency at c=1
  haka-bench connrate    new connections per second with a TLS-shaped exchange
  haka-bench idle        a proxy's memory and descriptors per idle connection
  haka-bench compare     all of it, every config interleaved, as a Markdown table

Every address must be a loopback IP; every run is bounded in count and time.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newServeCmd(stdout),
		newStreamCmd(stdout),
		newHSCmd(stdout),
		newConnrateCmd(stdout),
		newIdleCmd(stdout),
		newSpliceProxyCmd(stdout),
		newCompareCmd(stdout, stderr),
	)
	return root
}

// printResult writes v as one JSON line, or its text form.
func printResult(w io.Writer, asJSON bool, v fmt.Stringer) error {
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := fmt.Fprintln(w, v)
	return err
}

func listenLoopback(addr string) (net.Listener, error) {
	if err := loadgen.CheckLoopback(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

type serveOptions struct {
	dir                     string
	tls, flight, flightHold string
	lifetime                time.Duration
	json                    bool
}

// serveReady is the line serve prints once it listens.
type serveReady struct {
	TLS        string `json:"tls,omitempty"`
	Flight     string `json:"flight,omitempty"`
	FlightHold string `json:"flight_hold,omitempty"`
}

func (r serveReady) String() string {
	return fmt.Sprintf("ready tls=%s flight=%s flight-hold=%s", r.TLS, r.Flight, r.FlightHold)
}

func newServeCmd(stdout io.Writer) *cobra.Command {
	o := serveOptions{dir: defaultDir(), tls: "127.0.0.1:15400", flight: "127.0.0.1:15410", flightHold: "127.0.0.1:15411", lifetime: defaultLifetime}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve TLS 1.3 streams and echoes, and replay the recorded TLS 1.2 flight",
		Long: `serve is the far end of every measurement. On --tls, a TLS 1.3 server (ECDSA
P-256 certificate, no session tickets) streams or echoes what the client asks
for. On --flight it replays the server's side of the recorded TLS 1.2 flight
and closes; on --flight-hold it replays it and keeps the connection until the
client closes it (the idle test). An empty address turns a listener off.

The certificate, its key and the flight live in --dir; serve creates them if
they are missing, and the clients read the same --dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), o, stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", o.dir, "certificate, key and flight directory (created if missing)")
	f.StringVar(&o.tls, "tls", o.tls, "TLS 1.3 stream/echo listener (\"\" = off)")
	f.StringVar(&o.flight, "flight", o.flight, "flight replay listener (\"\" = off)")
	f.StringVar(&o.flightHold, "flight-hold", o.flightHold, "flight replay listener that holds connections open (\"\" = off)")
	f.DurationVar(&o.lifetime, "for", o.lifetime, "stop after this long")
	f.BoolVar(&o.json, "json", false, "print the ready line as JSON")
	return cmd
}

func runServe(ctx context.Context, o serveOptions, stdout io.Writer) error {
	mat, err := loadgen.Prepare(o.dir)
	if err != nil {
		return err
	}
	srv := loadgen.NewServer(mat)
	var ready serveReady
	var lns []net.Listener
	var serves []func() error
	for _, l := range []struct {
		addr  string
		out   *string
		serve func(net.Listener) error
	}{
		{o.tls, &ready.TLS, srv.ServeTLS},
		{o.flight, &ready.Flight, func(ln net.Listener) error { return srv.ServeFlight(ln, false) }},
		{o.flightHold, &ready.FlightHold, func(ln net.Listener) error { return srv.ServeFlight(ln, true) }},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := listenLoopback(l.addr)
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return fmt.Errorf("serve: %w", err)
		}
		lns = append(lns, ln)
		*l.out = ln.Addr().String()
		serves = append(serves, func() error { return l.serve(ln) })
	}
	if len(lns) == 0 {
		return errors.New("serve: every listener is off")
	}
	errc := make(chan error, len(serves))
	for _, s := range serves {
		go func() { errc <- s() }()
	}
	if err := printResult(stdout, o.json, ready); err != nil {
		srv.Close()
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.lifetime)
	defer cancel()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	srv.Close()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil
	}
	if err != nil && !errors.Is(err, loadgen.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return ctx.Err()
}

// clientOptions are the flags every client command has.
type clientOptions struct {
	addr    string
	dir     string
	maxTime time.Duration
	json    bool
}

func (o *clientOptions) bind(cmd *cobra.Command, defaultAddr string) {
	o.addr, o.dir, o.maxTime = defaultAddr, defaultDir(), defaultMaxTime
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "server or proxy address (loopback only)")
	f.StringVar(&o.dir, "dir", o.dir, "the server's --dir: certificate to trust and flight to replay")
	f.DurationVar(&o.maxTime, "max-time", o.maxTime, "hard time limit of the run (of each part for hs and connrate)")
	f.BoolVar(&o.json, "json", false, "print the result as one JSON line")
}

func newStreamCmd(stdout io.Writer) *cobra.Command {
	var o clientOptions
	var conns, pid int
	bytes := byteSize(2 << 30)
	var dur time.Duration
	cmd := &cobra.Command{
		Use:   "stream",
		Short: "Bulk TLS 1.3 throughput: the server streams, the client reports Gbit/s of plaintext",
		Long: `stream opens --conns TLS 1.3 connections (handshakes done before the clock
starts), then each asks the server for --bytes of application data, or for
data until --duration has passed. It prints the aggregate Gbit/s of
plaintext, the per-connection share and the slowest connection's rate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("duration") && !cmd.Flags().Changed("bytes") {
				bytes = 0
			}
			mat, err := loadgen.Open(o.dir)
			if err != nil {
				return err
			}
			r, err := loadgen.Stream(cmd.Context(), loadgen.StreamConfig{
				Addr: o.addr, Roots: mat.Roots, Conns: conns, Bytes: int64(bytes), Duration: dur, MaxTime: o.maxTime, PID: pid,
			})
			if err != nil {
				return err
			}
			return printResult(stdout, o.json, r)
		},
	}
	o.bind(cmd, "127.0.0.1:15400")
	f := cmd.Flags()
	f.IntVar(&conns, "conns", 1, fmt.Sprintf("concurrent connections (1-%d)", loadgen.MaxStreamConns))
	f.Var(&bytes, "bytes", "application bytes per connection")
	f.DurationVar(&dur, "duration", 0, "stream for this long instead of a byte count")
	f.IntVar(&pid, "pid", 0, "process (the proxy) whose CPU per GiB streamed is reported; 0 = none")
	return cmd
}

// runsResult is the text form of a loaded and an unloaded run.
type runsResult struct {
	name     string
	loaded   loadgen.Run
	unloaded *loadgen.Run
	extra    string
}

func (r runsResult) String() string {
	s := r.name + " " + r.loaded.String()
	if r.unloaded != nil {
		s += "\n" + r.name + " " + r.unloaded.String()
	}
	if r.extra != "" {
		s += "\n" + r.name + " " + r.extra
	}
	return s
}

func newHSCmd(stdout io.Writer) *cobra.Command {
	var o clientOptions
	n, c, latN, pid := 5000, 50, 500, 0
	var x25519 bool
	cmd := &cobra.Command{
		Use:   "hs",
		Short: "Full TLS 1.3 handshakes per second at concurrency -c, then latency at concurrency 1",
		Long: `hs does -n full TLS 1.3 handshakes, -c at a time: each dials, handshakes
(no resumption; the chain is verified against --dir's certificate), sends a
100-byte request, reads the 100-byte echo and closes. Then --lat-n more, one
at a time, for the unloaded latency. Latency runs from the dial to the last
byte of the echo.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mat, err := loadgen.Open(o.dir)
			if err != nil {
				return err
			}
			r, err := loadgen.Handshakes(cmd.Context(), loadgen.HandshakeConfig{
				Addr: o.addr, Roots: mat.Roots, N: n, Concurrency: c, LatN: latN, X25519Only: x25519, MaxTime: o.maxTime, PID: pid,
			})
			if err != nil {
				return err
			}
			return printRuns(cmd.Context(), stdout, o.json, r, runsResult{"hs", r.Loaded, r.Unloaded, r.TLS.String()}, r.Err())
		},
	}
	o.bind(cmd, "127.0.0.1:15400")
	f := cmd.Flags()
	f.IntVarP(&n, "n", "n", n, "handshakes at concurrency -c")
	f.IntVarP(&c, "concurrency", "c", c, "concurrency")
	f.IntVar(&latN, "lat-n", latN, "handshakes at concurrency 1 afterwards (0 = none)")
	f.BoolVar(&x25519, "x25519", false, "offer X25519 only (default: Go's default groups, X25519MLKEM768 first)")
	f.IntVar(&pid, "pid", 0, "process (the proxy) whose CPU per handshake of the loaded run is reported; 0 = none")
	return cmd
}

// printRuns prints a result, then reports runErr (a run with failures is
// not a measurement) or the interruption.
func printRuns(ctx context.Context, w io.Writer, asJSON bool, v any, text runsResult, runErr error) error {
	if err := printResult(w, asJSON, resultPrinter{v, text}); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return runErr
}

type resultPrinter struct {
	v    any
	text runsResult
}

func (p resultPrinter) MarshalJSON() ([]byte, error) { return json.Marshal(p.v) }
func (p resultPrinter) String() string               { return p.text.String() }

func newConnrateCmd(stdout io.Writer) *cobra.Command {
	var o clientOptions
	n, c, latN, pid := 10000, 50, 2000, 0
	cmd := &cobra.Command{
		Use:   "connrate",
		Short: "New connections per second with a minimal TLS-framed exchange, then latency at concurrency 1",
		Long: `connrate makes -n connections, -c at a time, each replaying the client's side
of the recorded TLS 1.2 flight (ClientHello; the server's certificate flight;
ClientKeyExchange, ChangeCipherSpec, Finished and a 100-byte record; the
server's ChangeCipherSpec, Finished and a 100-byte record) and closing; the
server closes first. Both ends check every byte. Then --lat-n more, one at a
time, for the unloaded latency (dial to last byte).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mat, err := loadgen.Open(o.dir)
			if err != nil {
				return err
			}
			r, err := loadgen.Exchanges(cmd.Context(), loadgen.ExchangeConfig{
				Addr: o.addr, Flight: mat.Flight, N: n, Concurrency: c, LatN: latN, MaxTime: o.maxTime, PID: pid,
			})
			if err != nil {
				return err
			}
			return printRuns(cmd.Context(), stdout, o.json, r, runsResult{name: "connrate", loaded: r.Loaded, unloaded: r.Unloaded}, r.Err())
		},
	}
	o.bind(cmd, "127.0.0.1:15410")
	f := cmd.Flags()
	f.IntVarP(&n, "n", "n", n, "connections at concurrency -c")
	f.IntVarP(&c, "concurrency", "c", c, "concurrency")
	f.IntVar(&latN, "lat-n", latN, "connections at concurrency 1 afterwards (0 = none)")
	f.IntVar(&pid, "pid", 0, "process (the proxy) whose CPU per connection of the loaded run is reported; 0 = none")
	return cmd
}

func newIdleCmd(stdout io.Writer) *cobra.Command {
	var o clientOptions
	n, c, pid := 1000, 100, 0
	var hold time.Duration
	settle := loadgen.DefaultSettle
	cmd := &cobra.Command{
		Use:   "idle",
		Short: "Hold -n idle connections through a proxy and report its RSS and descriptors per connection",
		Long: `idle reads the VmRSS and the descriptor count of --pid (the proxy, freshly
started), opens -n connections through it to serve's --flight-hold listener,
each after one replayed flight, waits for the RSS to settle (at most
--settle), reads them again and prints the difference per connection. It
then holds the connections for --hold (or until interrupted) and closes them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mat, err := loadgen.Open(o.dir)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			r, release, err := loadgen.Idle(ctx, loadgen.IdleConfig{
				Addr: o.addr, Flight: mat.Flight, N: n, Concurrency: c, PID: pid, Settle: settle, MaxTime: o.maxTime,
			})
			defer release()
			if err != nil {
				return err
			}
			if err := printResult(stdout, o.json, r); err != nil {
				return err
			}
			if err := r.Err(); err != nil {
				return err
			}
			if hold > 0 {
				t := time.NewTimer(hold)
				defer t.Stop()
				select {
				case <-ctx.Done():
				case <-t.C:
				}
			}
			return nil
		},
	}
	o.bind(cmd, "127.0.0.1:15411")
	f := cmd.Flags()
	f.IntVarP(&n, "n", "n", n, "connections to hold")
	f.IntVarP(&c, "concurrency", "c", c, "connections opened at a time")
	f.IntVar(&pid, "pid", 0, "process to measure (the proxy); 0 = none")
	f.DurationVar(&hold, "hold", 0, "keep the connections open this long after measuring")
	f.DurationVar(&settle, "settle", settle, "longest wait for the proxy's RSS to stop moving")
	return cmd
}

func newSpliceProxyCmd(stdout io.Writer) *cobra.Command {
	listen, upstream, lifetime := "127.0.0.1:15500", "127.0.0.1:15400", defaultLifetime
	cmd := &cobra.Command{
		Use:    "splice-proxy",
		Short:  "The minimal Go splice proxy (an anchor of the comparison)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := listenLoopback(listen)
			if err != nil {
				return fmt.Errorf("splice-proxy: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), lifetime)
			defer cancel()
			err = loadgen.SpliceProxy(ctx, ln, upstream)
			if errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", listen, "listen address (loopback only)")
	f.StringVar(&upstream, "upstream", upstream, "upstream address (loopback only)")
	f.DurationVar(&lifetime, "for", lifetime, "stop after this long")
	return cmd
}
