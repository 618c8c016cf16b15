package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/democmd"
	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/eventscmd"
	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/nftcmd"
	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/replaycmd"
	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/rulescmd"
	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/smcmd"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// deps is what the commands take from the outside world; tests give
// their own.
type deps struct {
	Stdout, Stderr io.Writer
	// Signals subscribes to process signals; the returned function
	// unsubscribes.
	Signals func(sig ...os.Signal) (<-chan os.Signal, func())
	// Ready, when set, is called once the proxy accepts connections,
	// with its listener's address and the metrics server's (nil if none).
	Ready func(listen, metrics net.Addr)
	// WithNFT installs the nftables rules of --nft, runs fn and removes
	// them however fn ends (nftcmd.With).
	WithNFT func(o nftcmd.Options, log *zap.Logger, fn func() error) error
}

func defaultDeps() *deps {
	return &deps{
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Signals: func(sig ...os.Signal) (<-chan os.Signal, func()) {
			// Room for two: the second SIGTERM cuts a drain short.
			ch := make(chan os.Signal, 2)
			signal.Notify(ch, sig...)
			return ch, func() { signal.Stop(ch) }
		},
		WithNFT: nftcmd.With,
	}
}

// execute runs the command line args and returns the process exit code.
func execute(args []string, d *deps) int {
	cmd := newCmdRoot(d, nil)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(d.Stderr, "haka-proxy: %v\n", err)
		if errors.As(err, new(usageError)) {
			fmt.Fprintln(d.Stderr, "Run 'haka-proxy --help' for usage.")
			return 2
		}
		return 1
	}
	return 0
}

// usageError is a mistake on the command line (unknown flag, bad value).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// rootOptions are the proxy's settings; every field is a flag and a key
// of the config file of the same name.
type rootOptions struct {
	Config    string
	Listen    string
	Upstream  string
	Rules     string
	LogLevel  string
	LogFormat string
	Alerts    string
	Metrics   string
	// Pprof serves Go's profiles beside the metrics.
	Pprof bool

	// RuleErrorPolicy is what a rule that fails does to its connection:
	// "drop" or "pass".
	RuleErrorPolicy string

	ProxyProtocolIn      bool
	ProxyProtocolTrusted []string
	ProxyProtocolTimeout time.Duration
	ProxyProtocolOut     string

	MaxConns         int
	DialTimeout      time.Duration
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxHeldBytes     byteSize
	DrainTimeout     time.Duration

	// The transparent gateway (see gateway.go).
	TProxy      bool
	SpoofSource bool
	NFT         bool
	// NFTOptions are the --nft-* flags and --ipv6; their Listen is
	// Listen, filled in by resolve.
	NFTOptions nftcmd.Options
	// nftFlagsGiven names the --nft-* flags given on the command line or
	// in the config file.
	nftFlagsGiven []string
}

const rootLong = `haka-proxy sits in front of a TLS service and inspects every connection
without terminating TLS: it holds no keys and never decrypts. Each direction
is parsed as TLS records and handshake messages, a state machine follows the
protocol, and Lua rules can drop, reset, log or alert on a connection before
the bytes that triggered them are forwarded. A Heartbleed request, or the
server's leaking answer, never reaches the other side.

Run without a subcommand (or as "haka-proxy run"), haka-proxy proxies:
clients connect to --listen, each connection is forwarded to --upstream
through the inspection. With --tproxy it is a transparent gateway instead:
nftables TPROXY hands it the connections the host forwards (--nft installs
those rules for as long as it runs), and each goes, inspected, to the address
its client connected to. Every flag can also be set in a YAML file given with
--config, under the same name (flags given on the command line win). On
SIGTERM or SIGINT it stops accepting, lets open connections finish for
--drain-timeout, then closes them (and removes the --nft rules); SIGHUP
reloads the rules.`

const rootExample = `  # Protect a local HTTPS service: clients connect to port 8443,
  # the service itself listens on 127.0.0.1:443
  haka-proxy --listen :8443 --upstream 127.0.0.1:443

  # Your own rules, Prometheus metrics, alerts to a file
  haka-proxy --listen :8443 --upstream 127.0.0.1:443 --rules ./rules \
    --metrics 127.0.0.1:9100 --alerts /var/log/haka-proxy/alerts.json

  # Behind a load balancer that sends PROXY protocol headers,
  # telling the backend the real client address too
  haka-proxy --listen :443 --upstream 10.0.0.5:443 --proxy-protocol-in \
    --proxy-protocol-trusted 10.0.0.0/8 --proxy-protocol-out v2

  # A transparent gateway on a router: intercept the forwarded
  # connections to port 443 while haka-proxy runs (needs CAP_NET_ADMIN)
  haka-proxy run --tproxy --nft --nft-ports 443

  # The same, the servers seeing the clients' own addresses
  haka-proxy run --tproxy --nft --spoof-source

  # Everything from a file
  haka-proxy --config configs/sidecar.yaml
  haka-proxy run --config configs/gateway.yaml`

// newCmdRoot is the haka-proxy command: the run command, with the other
// commands under it. runF replaces the proxy run in tests; it gets the
// options once the config file is merged and checked.
func newCmdRoot(d *deps, runF func(*rootOptions) error) *cobra.Command {
	cmd := newCmdRun(d, runF)
	cmd.Use = "haka-proxy"
	cmd.Short = "A transparent proxy that inspects TLS without terminating it"
	cmd.Args = func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q", args[0])}
		}
		return nil
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cmd.CompletionOptions.HiddenDefaultCmd = true

	// Subcommands: one line each.
	cmd.AddCommand(newCmdRun(d, runF))
	cmd.AddCommand(newCmdVersion(d, nil))
	cmd.AddCommand(nftcmd.New(nftcmd.DefaultOptions(), d.Stdout, d.Stderr))
	cmd.AddCommand(replaycmd.New(&replaycmd.Options{}, d.Stdout, d.Stderr, replayFactory))
	cmd.AddCommand(rulescmd.NewCmdRules())
	cmd.AddCommand(eventscmd.New(d.Stdout))
	cmd.AddCommand(smcmd.New(d.Stdout))
	cmd.AddCommand(democmd.New(d.Stdout, d.Stderr, demoFactory))
	return cmd
}

// newCmdRun is `haka-proxy run`, which the root command also is: the
// configuration files and unit files say "run", people type it or not.
func newCmdRun(d *deps, runF func(*rootOptions) error) *cobra.Command {
	lim := proxy.DefaultLimits()
	opts := &rootOptions{MaxHeldBytes: byteSize(lim.MaxHeldBytes), NFTOptions: nftcmd.DefaultOptions()}
	cmd := &cobra.Command{
		Use:     "run",
		Short:   "Run the proxy (the same as haka-proxy without a subcommand)",
		Long:    rootLong,
		Example: rootExample,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("run takes no arguments, got %q", args[0])}
			}
			return nil
		},
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd.Flags(), opts.Config); err != nil {
				return err
			}
			opts.resolve(cmd.Flags())
			if err := opts.validate(); err != nil {
				return usageError{err}
			}
			if runF != nil {
				return runF(opts)
			}
			return runRoot(cmd.Context(), d, opts)
		},
	}
	cmd.SetOut(d.Stdout)
	cmd.SetErr(d.Stderr)

	f := cmd.Flags()
	f.StringVar(&opts.Config, "config", "", "YAML `file` with the same keys as these flags")
	f.StringVar(&opts.Listen, "listen", ":8443", "`address` clients connect to; with --tproxy the default is "+nftcmd.DefaultListen+", the port `haka-proxy nft` sends to")
	f.StringVar(&opts.Upstream, "upstream", "", "`host:port` of the service every connection is forwarded to (required, except with --tproxy)")
	f.BoolVar(&opts.TProxy, "tproxy", false, "transparent gateway: accept the connections nftables TPROXY hands over and forward each to its original destination (excludes --upstream)")
	f.BoolVar(&opts.SpoofSource, "spoof-source", false, "with --tproxy: connect to the server from the client's own address, so the server sees the client")
	f.BoolVar(&opts.NFT, "nft", false, "with --tproxy: install the nftables rules and policy routing (the --nft-* flags) at start, remove them at exit")
	nftcmd.AddFlags(f, &opts.NFTOptions)
	f.StringVar(&opts.Rules, "rules", "", "`directory` of Lua rule files (default: the built-in rules)")
	f.StringVar(&opts.RuleErrorPolicy, "rule-error-policy", rules.PolicyDrop.String(), "what a rule that fails (an error, its deadline) does to its connection: drop or pass")
	f.StringVar(&opts.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&opts.LogFormat, "log-format", "json", "log format: json or console")
	f.StringVar(&opts.Alerts, "alerts", "-", "`file` the alerts and connection records are appended to, - for stdout")
	f.StringVar(&opts.Metrics, "metrics", "", "`address` to serve Prometheus metrics on at /metrics (default: off)")
	f.BoolVar(&opts.Pprof, "pprof", false, "with --metrics: also serve Go's profiles (CPU, heap, goroutines, ...) at /debug/pprof/ on that address; keep it off ports others can reach")
	f.BoolVar(&opts.ProxyProtocolIn, "proxy-protocol-in", false, "read a PROXY protocol header (v1 or v2) from trusted sources")
	f.StringSliceVar(&opts.ProxyProtocolTrusted, "proxy-protocol-trusted", nil, "`CIDRs` allowed (and required) to send a PROXY header; others are served on their own address and refused if they send one")
	f.DurationVar(&opts.ProxyProtocolTimeout, "proxy-protocol-timeout", proxy.DefaultProxyProtocolTimeout, "how long to wait for the PROXY header")
	f.StringVar(&opts.ProxyProtocolOut, "proxy-protocol-out", "", "send a PROXY protocol header to the upstream: v1 or v2 (default: none)")
	f.IntVar(&opts.MaxConns, "max-conns", lim.MaxConns, "client connections open at once; more are refused")
	f.DurationVar(&opts.DialTimeout, "dial-timeout", lim.DialTimeout, "upstream connect timeout")
	f.DurationVar(&opts.HandshakeTimeout, "handshake-timeout", lim.HandshakeTimeout, "time a client has to send its whole opening message (ClientHello)")
	f.DurationVar(&opts.IdleTimeout, "idle-timeout", lim.IdleTimeout, "close a connection after this long without a byte either way")
	f.Var(&opts.MaxHeldBytes, "max-held-bytes", "bytes the inspection may hold back per direction (e.g. 524288, 512KiB, 1MiB); more drops the connection")
	f.DurationVar(&opts.DrainTimeout, "drain-timeout", lim.DrainTimeout, "on SIGTERM, how long open connections may finish before they are closed")
	f.SortFlags = false
	return cmd
}

func (o *rootOptions) validate() error {
	var errs []error
	if o.TProxy {
		errs = append(errs, o.validateGateway()...)
	} else {
		if o.Upstream == "" {
			errs = append(errs, errors.New("--upstream is required: the host:port of the service to protect (or --tproxy for a transparent gateway)"))
		} else if err := checkHostPort(o.Upstream); err != nil {
			errs = append(errs, fmt.Errorf("--upstream %q: %w", o.Upstream, err))
		}
		if o.SpoofSource {
			errs = append(errs, errors.New("--spoof-source needs --tproxy: only the transparent gateway dials from its clients' addresses"))
		}
		if o.NFT {
			errs = append(errs, errors.New("--nft needs --tproxy: the rules hand connections to a transparent listener"))
		}
	}
	if err := checkHostPort(o.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", o.Listen, err))
	}
	if o.Metrics != "" {
		if err := checkHostPort(o.Metrics); err != nil {
			errs = append(errs, fmt.Errorf("--metrics %q: %w", o.Metrics, err))
		}
	} else if o.Pprof {
		errs = append(errs, errors.New("--pprof needs --metrics: the profiles are served on the metrics address"))
	}
	if o.Rules != "" {
		if err := checkRulesDir(o.Rules); err != nil {
			errs = append(errs, fmt.Errorf("--rules: %w", err))
		}
	}
	if _, err := rules.ParseErrorPolicy(o.RuleErrorPolicy); err != nil {
		errs = append(errs, fmt.Errorf("--rule-error-policy: %w", err))
	}
	if _, err := zap.ParseAtomicLevel(o.LogLevel); err != nil || o.LogLevel == "" {
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.LogLevel))
	}
	if o.LogFormat != "json" && o.LogFormat != "console" {
		errs = append(errs, fmt.Errorf("--log-format %q: want json or console", o.LogFormat))
	}
	if _, err := o.proxyProtocol(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if port == "" {
		return errors.New("missing port")
	}
	return nil
}

func (o *rootOptions) proxyProtocol() (proxy.ProxyProtocol, error) {
	pp := proxy.ProxyProtocol{In: o.ProxyProtocolIn, Timeout: o.ProxyProtocolTimeout}
	for _, s := range o.ProxyProtocolTrusted {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return pp, fmt.Errorf("--proxy-protocol-trusted %q: not a CIDR or an address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		pp.Trusted = append(pp.Trusted, p.Masked())
	}
	switch strings.ToLower(o.ProxyProtocolOut) {
	case "", "none", "off":
	case "v1", "1":
		pp.Out = 1
	case "v2", "2":
		pp.Out = 2
	default:
		return pp, fmt.Errorf("--proxy-protocol-out %q: want v1 or v2", o.ProxyProtocolOut)
	}
	if pp.In && len(pp.Trusted) == 0 {
		return pp, errors.New("--proxy-protocol-in needs --proxy-protocol-trusted: the sources allowed to send a PROXY header (0.0.0.0/0,::/0 trusts every source)")
	}
	if !pp.In && len(pp.Trusted) > 0 {
		return pp, errors.New("--proxy-protocol-trusted is set but --proxy-protocol-in is not")
	}
	return pp, nil
}

func (o *rootOptions) limits() proxy.Limits {
	return proxy.Limits{
		MaxConns:         o.MaxConns,
		DialTimeout:      o.DialTimeout,
		HandshakeTimeout: o.HandshakeTimeout,
		IdleTimeout:      o.IdleTimeout,
		MaxHeldBytes:     int(o.MaxHeldBytes),
		DrainTimeout:     o.DrainTimeout,
	}
}

// runRoot runs the proxy until SIGTERM or SIGINT.
//
// The order is what keeps a failed start from leaving anything behind:
// signals are subscribed first, so that a SIGTERM during the start ends
// through the same path as one later; every listener is opened before the
// --nft rules are installed, so that a taken port stops the start with
// nothing to undo, and the rules never send connections to a port nobody
// listens on; the rules are removed only after the drain, because the
// connections being drained still need them to reach the proxy.
func runRoot(ctx context.Context, d *deps, o *rootOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	log, err := newLogger(o.LogLevel, o.LogFormat, d.Stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	sigs, stopSignals := d.Signals(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stopSignals()
	if !o.NFT && len(o.nftFlagsGiven) > 0 {
		log.Warn("nftables settings have no effect without --nft: install the rules with `haka-proxy nft apply` and the same settings",
			zap.Strings("ignored", o.nftFlagsGiven))
	}

	var alertsOut io.Writer = d.Stdout
	if o.Alerts != "" && o.Alerts != "-" {
		f, err := os.OpenFile(o.Alerts, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("--alerts: %w", err)
		}
		defer f.Close()
		alertsOut = f
	}
	records := output.NewWriter(alertsOut, output.JSON)
	metrics := proxy.NewMetrics()

	factory, err := buildFactory(o.inspection(), metrics, records, log)
	if err != nil {
		return err
	}
	defer factory.Close()
	pp, _ := o.proxyProtocol() // checked by validate
	cfg := proxy.Config{
		Upstream:       o.Upstream,
		Factory:        factory,
		Logger:         log,
		Records:        records,
		Metrics:        metrics,
		Limits:         o.limits(),
		ProxyProtocol:  pp,
		ReportOnPoller: reportOnPoller(alertsOut, d.Stderr, log),
	}
	if o.TProxy {
		cfg.Dial = o.gatewayDial()
	}
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	ln, err := o.listen(ctx)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	// Serve's Shutdown closes it too; this covers the returns before.
	defer ln.Close()

	var metricsAddr net.Addr
	if o.Metrics != "" {
		mln, err := net.Listen("tcp", o.Metrics)
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		if o.Pprof {
			// The handlers net/http/pprof puts on the default mux,
			// on this one: the proxy never serves the default mux.
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		// A scrape is one small request: 10s to send its headers is
		// plenty, and bounds what a slow client can hold.
		metricsSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		metricsAddr = mln.Addr()
		go metricsSrv.Serve(mln)
		defer metricsSrv.Close()
	}

	serve := func() error {
		served := make(chan error, 1)
		go func() { served <- p.Serve(ln) }()
		log.Info("listening", o.readyFields(ln.Addr(), metricsAddr, factory)...)
		if d.Ready != nil {
			d.Ready(ln.Addr(), metricsAddr)
		}
		for {
			select {
			case err := <-served:
				return fmt.Errorf("serving %s: %w", o.Listen, err)
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					reload(factory, log)
					continue
				}
				shutdown(p, o, sigs, served, log, sig)
				return nil
			}
		}
	}
	if o.NFT {
		err = d.WithNFT(o.NFTOptions, log, serve)
	} else {
		err = serve()
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// reportOnPoller: the pollers write the connections' log lines and
// records themselves when no write there can wait on a reader — the
// records go to a file (or /dev/null), and the log writes no line per
// connection or goes to a file too.
func reportOnPoller(records, stderr io.Writer, log *zap.Logger) bool {
	return proxy.WritesNeverBlock(records) &&
		(!log.Core().Enabled(zapcore.InfoLevel) || proxy.WritesNeverBlock(stderr))
}

// readyFields are the fields of the "listening" line: what the proxy
// listens on, where it sends the connections, and what inspects them.
func (o *rootOptions) readyFields(listen, metrics net.Addr, f inspect.Factory) []zap.Field {
	fields := []zap.Field{zap.Stringer("addr", listen)}
	if o.TProxy {
		fields = append(fields, zap.String("upstream", "original destination"),
			zap.Bool("tproxy", true), zap.Bool("spoof_source", o.SpoofSource), zap.Bool("nft", o.NFT))
	} else {
		fields = append(fields, zap.String("upstream", o.Upstream))
	}
	fields = append(fields, zap.String("inspection", describeFactory(f)))
	if metrics != nil {
		fields = append(fields, zap.Stringer("metrics", metrics))
	}
	if o.Rules != "" {
		fields = append(fields, zap.String("rules", o.Rules))
	}
	return fields
}

// inspection returns the options of buildFactory.
func (o *rootOptions) inspection() inspectionOptions {
	policy, _ := rules.ParseErrorPolicy(o.RuleErrorPolicy) // checked by validate
	return inspectionOptions{Rules: o.Rules, ErrorPolicy: policy}
}

// reload loads the rules again; connections accepted from now on use
// them, those in flight keep theirs. A broken rule set keeps the running
// one (the engine logs each mistake at its file and line).
func reload(f *inspection, log *zap.Logger) {
	if err := f.Reload(); err != nil {
		log.Error("reload failed; keeping the running rules", zap.Error(err))
		return
	}
	log.Info("rules reloaded", zap.String("rules", f.rules()))
}

// shutdown drains the proxy: a second signal drops what is left at once.
func shutdown(p *proxy.Proxy, o *rootOptions, sigs <-chan os.Signal, served <-chan error, log *zap.Logger, sig os.Signal) {
	log.Info("shutting down: no new connections; open ones may finish",
		zap.Stringer("signal", sig), zap.Int("open", p.Active()), zap.Duration("drain_timeout", o.DrainTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
	defer cancel()
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP {
					continue
				}
				log.Warn("second signal: dropping the open connections now", zap.Stringer("signal", s))
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := p.Shutdown(ctx); err != nil {
		log.Warn("drain cut short; open connections were dropped", zap.Error(err))
	}
	if err := <-served; err != nil {
		log.Error("serve", zap.Error(err))
	}
}
