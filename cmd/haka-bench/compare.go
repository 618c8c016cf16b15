package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
)

// The phases and configs of a comparison, in the order they run and are
// shown.
var (
	allPhases  = []string{"stream", "hs", "connrate", "idle", "scale"}
	allConfigs = []string{"direct", "hap1", "hap2", "splice", "haka", "haka-rules"}
)

const (
	// childLifetime bounds the server and splice-proxy children even if
	// the comparison could not stop them (it always tries).
	childLifetime = 4 * time.Hour
	// measureSlack is added to --max-time for a measurement child's own
	// start and stop.
	measureSlack = 30 * time.Second
	// fdReserve is what a process keeps for itself besides the
	// connections (listeners, logs, epoll, pipes of the runtime).
	fdReserve = 200
	// maxFDsPerIdleConn is the most descriptors a compared proxy holds
	// per idle connection: Go's splice path keeps a pipe pair for each
	// blocked direction besides the two sockets. Every config gets the
	// same N, the largest its descriptor limit allows the worst of them.
	maxFDsPerIdleConn = 6
	// defaultHakaArgs is how haka-proxy is started; {listen} and
	// {upstream} are replaced by the addresses.
	defaultHakaArgs = "--listen {listen} --upstream {upstream} --log-level warn --alerts /dev/null"
	// defaultHAProxy is where Debian installs HAProxy.
	defaultHAProxy = "/usr/sbin/haproxy"
)

type compareOptions struct {
	out       string
	reps      int
	phases    []string
	configs   []string
	hakaProxy string
	hakaArgs  string
	hakaRules string
	haproxy   string

	streamBytes      byteSize
	hsN, hsC, hsLatN int
	x25519           bool
	connN, connC     int
	connLatN         int
	idleN, idleC     int
	scaleConns       []int
	scaleDuration    time.Duration
	pause, maxTime   time.Duration
	settle           time.Duration
}

func defaultCompareOptions() compareOptions {
	return compareOptions{
		reps:          3,
		phases:        slices.Clone(allPhases),
		configs:       []string{"direct", "hap1", "hap2", "splice", "haka"},
		hakaArgs:      defaultHakaArgs,
		streamBytes:   2 << 30,
		hsN:           5000,
		hsC:           50,
		hsLatN:        500,
		connN:         10000,
		connC:         50,
		connLatN:      2000,
		idleN:         3000,
		idleC:         100,
		scaleConns:    []int{1, 10, 100, 1000},
		scaleDuration: 3 * time.Second,
		pause:         500 * time.Millisecond,
		maxTime:       defaultMaxTime,
		settle:        loadgen.DefaultSettle,
	}
}

// hooks are the comparison's test seams.
type hooks struct {
	// started is told of every child process.
	started func(name string, pid int)
}

func newCompareCmd(stdout, stderr io.Writer) *cobra.Command {
	o := defaultCompareOptions()
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Run every phase against direct, HAProxy, the Go splice proxy and haka-proxy, interleaved; print a table",
		Long: `compare starts the server, then for each phase every proxy (HAProxy 2.6 in
mode tcp with 1 and 2 threads, the minimal Go splice proxy, haka-proxy) in
front of it, and measures each config in turn, repetition after repetition
(rep 1 of every config, then rep 2, ...), so that the machine's drift hits all
of them alike. It prints a Markdown table of medians with min-max, the ratios
of haka-proxy to the others and the performance targets, and writes raw.tsv,
summary.md, env.txt, run.log, logs/ and cfg/ to --out.

Configs: direct, hap1, hap2, splice, haka, haka-rules (haka-proxy started with
--rules DIR, given by --haka-rules). Phases: stream, hs, connrate, idle, scale.
The defaults take about 10-15 minutes on 2 cores; do not run them while the
machine is busy.`,
		Example: `  haka-bench compare --haka-proxy ./haka-proxy
  haka-bench compare --configs direct,hap1,hap2,splice --reps 1 --phases connrate,idle
  haka-bench compare --haka-rules ./rules --phases hs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCompare(cmd.Context(), o, stdout, stderr, hooks{})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.out, "out", "", "output directory (default /tmp/haka-bench/<UTC time>)")
	f.IntVar(&o.reps, "reps", o.reps, "repetitions of every measurement")
	f.StringSliceVar(&o.phases, "phases", o.phases, "phases to run: "+strings.Join(allPhases, ","))
	f.StringSliceVar(&o.configs, "configs", o.configs, "configs to compare: "+strings.Join(allConfigs, ","))
	f.StringVar(&o.hakaProxy, "haka-proxy", "", "haka-proxy binary (default: go build ./cmd/haka-proxy into a temporary directory)")
	f.StringVar(&o.hakaArgs, "haka-args", o.hakaArgs, "haka-proxy's arguments; {listen} and {upstream} are replaced")
	f.StringVar(&o.hakaRules, "haka-rules", "", "rules directory for the haka-rules config (adds it to --configs)")
	f.StringVar(&o.haproxy, "haproxy", "", "HAProxy binary (default "+defaultHAProxy+", else $PATH)")
	f.Var(&o.streamBytes, "stream-bytes", "stream: bytes of the single TLS stream")
	f.IntVar(&o.hsN, "hs-n", o.hsN, "hs: handshakes at concurrency --hs-c")
	f.IntVar(&o.hsC, "hs-c", o.hsC, "hs: concurrency")
	f.IntVar(&o.hsLatN, "hs-lat-n", o.hsLatN, "hs: handshakes at concurrency 1")
	f.BoolVar(&o.x25519, "x25519", false, "hs: offer X25519 only instead of Go's default X25519MLKEM768 hybrid")
	f.IntVar(&o.connN, "conn-n", o.connN, "connrate: connections at concurrency --conn-c")
	f.IntVar(&o.connC, "conn-c", o.connC, "connrate: concurrency")
	f.IntVar(&o.connLatN, "conn-lat-n", o.connLatN, "connrate: connections at concurrency 1")
	f.IntVar(&o.idleN, "idle-n", o.idleN, "idle: connections held (lowered to what the descriptor limit allows)")
	f.IntVar(&o.idleC, "idle-c", o.idleC, "idle: connections opened at a time")
	f.DurationVar(&o.settle, "idle-settle", o.settle, "idle: longest wait for the proxy's RSS to settle")
	f.IntSliceVar(&o.scaleConns, "scale-conns", o.scaleConns, "scale: concurrent TLS streams per point")
	f.DurationVar(&o.scaleDuration, "scale-duration", o.scaleDuration, "scale: streaming time per point")
	f.DurationVar(&o.pause, "pause", o.pause, "pause between measurements (lets sockets and CPU settle)")
	f.DurationVar(&o.maxTime, "max-time", o.maxTime, "time limit of one measurement")
	return cmd
}

// proxyConfig is one column of the comparison.
type proxyConfig struct {
	name string
	// argv is the command line of the proxy listening on 127.0.0.1:port
	// and forwarding to upstream; nil for direct.
	argv func(port int, upstream string) ([]string, error)
	// desc says what runs, for env.txt.
	desc string
}

type comparison struct {
	o       compareOptions
	self    string
	out     string
	cfgDir  string
	logDir  string
	sup     *supervisor
	log     io.Writer
	raw     *bufio.Writer
	res     *results
	srv     serveReady
	configs []proxyConfig
	idleN   int
	// buildDir holds the haka-proxy built for the comparison.
	buildDir string
	haproxy  string
}

func (o *compareOptions) validate() error {
	if o.reps < 1 {
		return fmt.Errorf("--reps %d: want at least 1", o.reps)
	}
	for _, p := range o.phases {
		if !slices.Contains(allPhases, p) {
			return fmt.Errorf("--phases: unknown phase %q (want some of %s)", p, strings.Join(allPhases, ","))
		}
	}
	if o.hakaRules != "" && !slices.Contains(o.configs, "haka-rules") {
		o.configs = append(o.configs, "haka-rules")
	}
	for _, c := range o.configs {
		if !slices.Contains(allConfigs, c) {
			return fmt.Errorf("--configs: unknown config %q (want some of %s)", c, strings.Join(allConfigs, ","))
		}
	}
	if len(o.phases) == 0 || len(o.configs) == 0 {
		return errors.New("nothing to do: --phases and --configs must not be empty")
	}
	if slices.Contains(o.configs, "haka-rules") {
		if o.hakaRules == "" {
			return errors.New("--configs haka-rules needs --haka-rules DIR")
		}
		if st, err := os.Stat(o.hakaRules); err != nil || !st.IsDir() {
			return fmt.Errorf("--haka-rules %q: not a directory", o.hakaRules)
		}
	}
	if !strings.Contains(o.hakaArgs, "{listen}") || !strings.Contains(o.hakaArgs, "{upstream}") {
		return fmt.Errorf("--haka-args %q: must contain {listen} and {upstream}", o.hakaArgs)
	}
	for name, v := range map[string]int{"--hs-n": o.hsN, "--hs-c": o.hsC, "--conn-n": o.connN, "--conn-c": o.connC, "--idle-n": o.idleN, "--idle-c": o.idleC} {
		if v < 1 {
			return fmt.Errorf("%s %d: want at least 1", name, v)
		}
	}
	if o.hsLatN < 0 || o.connLatN < 0 {
		return errors.New("--hs-lat-n and --conn-lat-n must not be negative")
	}
	if o.streamBytes < 1 {
		return errors.New("--stream-bytes must be positive")
	}
	for _, k := range o.scaleConns {
		if k < 1 || k > loadgen.MaxStreamConns {
			return fmt.Errorf("--scale-conns %d: want 1 to %d", k, loadgen.MaxStreamConns)
		}
	}
	if o.scaleDuration <= 0 || o.maxTime <= 0 || o.pause < 0 {
		return errors.New("--scale-duration and --max-time must be positive, --pause not negative")
	}
	return nil
}

func (c *comparison) has(phase string) bool { return slices.Contains(c.o.phases, phase) }

func runCompare(ctx context.Context, o compareOptions, stdout, stderr io.Writer, h hooks) (err error) {
	if err := o.validate(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding haka-bench's own binary: %w", err)
	}
	if o.out == "" {
		o.out = filepath.Join(os.TempDir(), "haka-bench", time.Now().UTC().Format("20060102T150405Z"))
	}
	c := &comparison{o: o, self: self, out: o.out, cfgDir: filepath.Join(o.out, "cfg"), logDir: filepath.Join(o.out, "logs"), res: newResults()}
	for _, d := range []string{c.cfgDir, c.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("the output directory (--out %s): %w", o.out, err)
		}
	}
	runLog, err := os.Create(filepath.Join(c.out, "run.log"))
	if err != nil {
		return err
	}
	defer runLog.Close()
	c.log = io.MultiWriter(stderr, runLog)
	rawFile, err := os.Create(filepath.Join(c.out, "raw.tsv"))
	if err != nil {
		return err
	}
	defer rawFile.Close()
	c.raw = bufio.NewWriter(rawFile)
	defer c.raw.Flush()
	fmt.Fprintln(c.raw, "phase\tconfig\trep\tmetric\tvalue")

	c.sup = newSupervisor(c.logDir)
	c.sup.started = h.started
	defer c.sup.stopAll()
	defer func() {
		if c.buildDir != "" {
			os.RemoveAll(c.buildDir)
		}
		// A throwaway key; the certificate stays for reference.
		os.Remove(filepath.Join(c.cfgDir, loadgen.KeyFile))
	}()

	nofile := raiseNofile()
	c.idleN = min(o.idleN, int(nofile-fdReserve)/maxFDsPerIdleConn)
	if c.idleN < o.idleN && c.has("idle") {
		c.logf("idle: %d connections lowered to %d: the descriptor limit is %d and a Go splice proxy holds up to %d per connection", o.idleN, c.idleN, nofile, maxFDsPerIdleConn)
	}
	if err := c.resolveConfigs(ctx, nofile); err != nil {
		return err
	}
	if err := c.writeEnv(nofile); err != nil {
		return err
	}
	if _, err := loadgen.Prepare(c.cfgDir); err != nil {
		return err
	}
	srvChild, ready, err := c.sup.startWithReadyLine(ctx, "serve", []string{self, "serve", "--dir", c.cfgDir,
		"--tls", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--flight-hold", "127.0.0.1:0",
		"--for", childLifetime.String(), "--json"})
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(ready), &c.srv); err != nil {
		return fmt.Errorf("serve's ready line %q: %w", ready, err)
	}
	c.logf("server: %v; output in %s", c.srv, c.out)

	defer func() {
		c.raw.Flush()
		if werr := c.writeSummary(stdout); werr != nil && err == nil {
			err = werr
		}
	}()
	for _, p := range allPhases {
		if !c.has(p) {
			continue
		}
		if err := c.runPhase(ctx, p, srvChild); err != nil {
			return err
		}
	}
	if n := c.res.failures(); n > 0 {
		return fmt.Errorf("%d measurements failed (see %s and %s)", n, filepath.Join(c.out, "run.log"), c.logDir)
	}
	return nil
}

// raiseNofile lifts the soft descriptor limit to the hard one. Setting it
// explicitly (rather than relying on the Go runtime's own raise) makes the
// children inherit it.
func raiseNofile() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return l.Cur
}

func (c *comparison) logf(format string, args ...any) {
	fmt.Fprintf(c.log, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// resolveConfigs finds or builds the proxies' binaries and makes the
// configs' command lines.
func (c *comparison) resolveConfigs(ctx context.Context, nofile uint64) error {
	var haka string
	for _, name := range allConfigs {
		if !slices.Contains(c.o.configs, name) {
			continue
		}
		pc := proxyConfig{name: name, desc: "the client connects to the server"}
		switch name {
		case "direct":
		case "hap1", "hap2":
			if c.haproxy == "" {
				var err error
				if c.haproxy, err = findHAProxy(c.o.haproxy, defaultHAProxy); err != nil {
					return err
				}
			}
			haproxy := c.haproxy
			threads := 1
			if name == "hap2" {
				threads = 2
			}
			// HAProxy holds two descriptors per connection and needs
			// its maxconn to fit the limit it inherits.
			maxconn := max(int(nofile-1000)/2, 1000)
			pc.argv = func(port int, upstream string) ([]string, error) {
				path := filepath.Join(c.cfgDir, fmt.Sprintf("%s-%d.cfg", name, port))
				if err := os.WriteFile(path, []byte(haproxyConfig(port, upstream, threads, maxconn)), 0o644); err != nil {
					return nil, err
				}
				return []string{haproxy, "-db", "-f", path}, nil
			}
			pc.desc = fmt.Sprintf("%s -db -f cfg/%s-PORT.cfg (mode tcp, nbthread %d, maxconn %d)", haproxy, name, threads, maxconn)
		case "splice":
			pc.argv = func(port int, upstream string) ([]string, error) {
				return []string{c.self, "splice-proxy", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", upstream, "--for", childLifetime.String()}, nil
			}
			pc.desc = c.self + " splice-proxy (io.Copy between *net.TCPConn: splice(2))"
		case "haka", "haka-rules":
			if haka == "" {
				var err error
				if haka, err = c.hakaBinary(ctx); err != nil {
					return err
				}
			}
			var extra []string
			if name == "haka-rules" {
				extra = []string{"--rules", c.o.hakaRules}
			}
			pc.argv = func(port int, upstream string) ([]string, error) {
				return hakaArgv(haka, c.o.hakaArgs, port, upstream, extra), nil
			}
			pc.desc = strings.NewReplacer("{listen}", "127.0.0.1:PORT", "{upstream}", "UPSTREAM").Replace(haka + " " + c.o.hakaArgs + " " + strings.Join(extra, " "))
		}
		c.configs = append(c.configs, pc)
	}
	return nil
}

func hakaArgv(bin, template string, port int, upstream string, extra []string) []string {
	argv := []string{bin}
	for _, f := range strings.Fields(template) {
		f = strings.ReplaceAll(f, "{listen}", fmt.Sprintf("127.0.0.1:%d", port))
		f = strings.ReplaceAll(f, "{upstream}", upstream)
		argv = append(argv, f)
	}
	return append(argv, extra...)
}

// findHAProxy returns --haproxy, else the Debian path, else haproxy from
// $PATH.
func findHAProxy(flagValue, debianPath string) (string, error) {
	if flagValue != "" {
		if _, err := exec.LookPath(flagValue); err != nil {
			return "", fmt.Errorf("--haproxy %q: %w", flagValue, err)
		}
		return flagValue, nil
	}
	if _, err := os.Stat(debianPath); err == nil {
		return debianPath, nil
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("HAProxy not found at %s or in $PATH: apt-get install haproxy (or leave hap1,hap2 out of --configs)", debianPath)
}

// haproxyConfig is HAProxy as a plain TCP relay: no inspection, no logs,
// timeouts long enough that an idle test is not cut short.
func haproxyConfig(port int, upstream string, threads, maxconn int) string {
	return fmt.Sprintf(`# haka-bench: HAProxy as a plain TCP relay, the reference proxy
global
    nbthread %d
    maxconn %d

defaults
    mode tcp
    maxconn %d
    timeout connect 5s
    timeout client 10m
    timeout server 10m

listen relay
    bind 127.0.0.1:%d
    server upstream %s
`, threads, maxconn, maxconn, port, upstream)
}

// hakaBinary returns --haka-proxy, or builds ./cmd/haka-proxy of the
// repository around the working directory into a temporary directory.
func (c *comparison) hakaBinary(ctx context.Context) (string, error) {
	if c.o.hakaProxy != "" {
		p, err := exec.LookPath(c.o.hakaProxy)
		if err != nil {
			return "", fmt.Errorf("--haka-proxy %q: %w", c.o.hakaProxy, err)
		}
		return filepath.Abs(p)
	}
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("building haka-proxy: %w; pass --haka-proxy BIN, or leave haka out of --configs", err)
	}
	tmp, err := os.MkdirTemp("", "haka-bench-build-")
	if err != nil {
		return "", err
	}
	c.buildDir = tmp // removed when the comparison ends
	bin := filepath.Join(tmp, "haka-proxy")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	c.logf("building %s/cmd/haka-proxy", root)
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/haka-proxy")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(c.logDir, "build-haka-proxy.log"), out, 0o644)
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("go build ./cmd/haka-proxy: %w: %s; pass --haka-proxy BIN, or leave haka out of --configs", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// moduleRoot walks up from the working directory to haka-proxy's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/hakaproxy/haka-proxy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the haka-proxy repository")
		}
		dir = parent
	}
}

func (c *comparison) writeEnv(nofile uint64) error {
	var b strings.Builder
	fmt.Fprintf(&b, "date: %s\n", time.Now().UTC().Format(time.RFC3339))
	if rel, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		fmt.Fprintf(&b, "kernel: %s", rel)
	}
	fmt.Fprintf(&b, "cpus: %d %s\n", runtime.NumCPU(), cpuModel())
	fmt.Fprintf(&b, "haka-bench: %s, %s\n", c.self, runtime.Version())
	fmt.Fprintf(&b, "descriptor limit: %d (idle test: %d connections)\n", nofile, c.idleN)
	for _, pc := range c.configs {
		fmt.Fprintf(&b, "%s: %s\n", pc.name, pc.desc)
	}
	if c.haproxy != "" {
		if v, err := exec.Command(c.haproxy, "-v").Output(); err == nil {
			first, _, _ := strings.Cut(string(v), "\n")
			fmt.Fprintf(&b, "haproxy: %s\n", first)
			if !strings.Contains(first, "version 2.6") {
				c.logf("note: %s; the anchors (ANCHORS.md) were measured with HAProxy 2.6", first)
			}
		}
	}
	opts, _ := json.Marshal(map[string]any{
		"reps": c.o.reps, "phases": c.o.phases, "configs": c.o.configs,
		"stream_bytes": int64(c.o.streamBytes), "hs_n": c.o.hsN, "hs_c": c.o.hsC, "hs_lat_n": c.o.hsLatN, "x25519": c.o.x25519,
		"conn_n": c.o.connN, "conn_c": c.o.connC, "conn_lat_n": c.o.connLatN, "idle_n": c.idleN,
		"scale_conns": c.o.scaleConns, "scale_duration": c.o.scaleDuration.String(), "pause": c.o.pause.String(),
	})
	fmt.Fprintf(&b, "options: %s\n", opts)
	return os.WriteFile(filepath.Join(c.out, "env.txt"), []byte(b.String()), 0o644)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// runningProxy is a config's proxy started for a phase.
type runningProxy struct {
	child *child
	addr  string
}

// phasePoints are the parameter values of a phase: the connection counts
// of scale, a single point otherwise.
func (c *comparison) phasePoints(phase string) []int {
	if phase == "scale" {
		return c.o.scaleConns
	}
	return []int{0}
}

func (c *comparison) upstream(phase string) string {
	switch phase {
	case "connrate":
		return c.srv.Flight
	case "idle":
		return c.srv.FlightHold
	}
	return c.srv.TLS
}

func (c *comparison) runPhase(ctx context.Context, phase string, srv *child) error {
	c.logf("phase %s", phase)
	upstream := c.upstream(phase)
	fresh := phase == "idle" // every idle measurement gets a new proxy
	proxies := make(map[string]*runningProxy)
	startErrs := make(map[string]error)
	defer func() {
		for _, p := range proxies {
			p.child.stop()
		}
	}()
	if !fresh {
		for _, pc := range c.configs {
			if pc.argv == nil {
				continue
			}
			p, err := c.startProxy(ctx, phase, pc, upstream)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				c.logf("%s %s: the proxy did not start: %v", phase, pc.name, err)
				startErrs[pc.name] = err
				continue
			}
			proxies[pc.name] = p
		}
	}
	for rep := 1; rep <= c.o.reps; rep++ {
		for _, point := range c.phasePoints(phase) {
			for _, pc := range c.configs {
				if phase == "idle" && pc.argv == nil {
					continue // nothing to measure without a proxy
				}
				if srv.exited() {
					return fmt.Errorf("the server exited: %v: %s", srv.err, srv.logTail())
				}
				err := c.measureOne(ctx, phase, pc, upstream, proxies, startErrs, rep, point)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					c.fail(phase, point, pc.name, rep, err)
				}
				if err := sleepCtx(ctx, c.o.pause); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (c *comparison) startProxy(ctx context.Context, phase string, pc proxyConfig, upstream string) (*runningProxy, error) {
	ch, port, err := c.sup.startListener(ctx, phase+"-"+pc.name+"-proxy", func(port int) ([]string, error) {
		return pc.argv(port, upstream)
	})
	if err != nil {
		return nil, err
	}
	return &runningProxy{child: ch, addr: fmt.Sprintf("127.0.0.1:%d", port)}, nil
}

func (c *comparison) measureOne(ctx context.Context, phase string, pc proxyConfig, upstream string,
	proxies map[string]*runningProxy, startErrs map[string]error, rep, point int) error {
	addr, pid := upstream, 0
	if pc.argv != nil {
		p := proxies[pc.name]
		if phase == "idle" {
			var err error
			if p, err = c.startProxy(ctx, phase, pc, upstream); err != nil {
				return fmt.Errorf("the proxy did not start: %w", err)
			}
			defer p.child.stop()
		}
		if p == nil {
			return fmt.Errorf("the proxy did not start: %w", startErrs[pc.name])
		}
		if p.child.exited() {
			return fmt.Errorf("the proxy exited: %v: %s", p.child.err, p.child.logTail())
		}
		addr, pid = p.addr, p.child.pid()
	}
	switch phase {
	case "stream":
		return c.measureStream(ctx, pc.name, addr, pid, rep)
	case "hs":
		return c.measureHS(ctx, pc.name, addr, pid, rep)
	case "connrate":
		return c.measureConnrate(ctx, pc.name, addr, pid, rep)
	case "idle":
		return c.measureIdle(ctx, pc.name, addr, pid, rep)
	case "scale":
		return c.measureScale(ctx, pc.name, addr, rep, point)
	}
	return fmt.Errorf("unknown phase %q", phase)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// runJSON runs "haka-bench ARGS... --json" as a child and decodes its
// result into v.
func (c *comparison) runJSON(ctx context.Context, name string, v any, args ...string) error {
	argv := append([]string{c.self}, args...)
	argv = append(argv, "--dir", c.cfgDir, "--max-time", c.o.maxTime.String(), "--json")
	out, err := c.sup.measure(ctx, name, argv, 2*c.o.maxTime+measureSlack)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("reading the result %q: %w", strings.TrimSpace(string(out)), err)
	}
	return nil
}

// Phase names as they appear in raw.tsv; the parameters are part of them.
func hsPhase(c int) string       { return fmt.Sprintf("hs-c%d", c) }
func connratePhase(c int) string { return fmt.Sprintf("connrate-c%d", c) }
func idlePhase(n int) string     { return fmt.Sprintf("idle-n%d", n) }
func scalePhase(k int) string    { return fmt.Sprintf("scale-k%d", k) }

func (c *comparison) measureStream(ctx context.Context, cfg, addr string, pid, rep int) error {
	var r loadgen.StreamResult
	args := []string{"stream", "--addr", addr, "--conns", "1", "--bytes", strconv.FormatInt(int64(c.o.streamBytes), 10)}
	if err := c.runJSON(ctx, "stream-"+cfg, &r, append(args, pidArgs(pid)...)...); err != nil {
		return err
	}
	c.record("stream", cfg, rep, "gbps", r.Gbps)
	if u := r.ProxyCPU; u != nil {
		c.record("stream", cfg, rep, "cpu_ms_per_gib", u.UserMS+u.SysMS)
	}
	c.logf("stream %-10s rep %d: %.3f Gbit/s (%s)", cfg, rep, r.Gbps, r.TLS)
	return nil
}

// proxyCPU records the proxy's CPU per operation of a loaded run.
func (c *comparison) proxyCPU(phase, cfg string, rep int, r loadgen.Run) {
	if u := r.ProxyCPU; u != nil {
		c.record(phase, cfg, rep, "cpu_user_us", u.UserUS)
		c.record(phase, cfg, rep, "cpu_sys_us", u.SysUS)
		c.record(phase, cfg, rep, "cpu_us", u.UserUS+u.SysUS)
	}
}

// pidArgs asks a client to report the CPU of the proxy pid (0: none).
func pidArgs(pid int) []string {
	if pid == 0 {
		return nil
	}
	return []string{"--pid", strconv.Itoa(pid)}
}

func (c *comparison) measureHS(ctx context.Context, cfg, addr string, pid, rep int) error {
	args := []string{"hs", "--addr", addr, "-n", strconv.Itoa(c.o.hsN), "-c", strconv.Itoa(c.o.hsC), "--lat-n", strconv.Itoa(c.o.hsLatN)}
	args = append(args, pidArgs(pid)...)
	if c.o.x25519 {
		args = append(args, "--x25519")
	}
	var r loadgen.HandshakeResult
	if err := c.runJSON(ctx, "hs-"+cfg, &r, args...); err != nil {
		return err
	}
	p := hsPhase(c.o.hsC)
	c.record(p, cfg, rep, "rate", r.Loaded.Rate)
	c.proxyCPU(p, cfg, rep, r.Loaded)
	c.record(p, cfg, rep, "p50_us", r.Loaded.Latency.P50)
	c.record(p, cfg, rep, "p99_us", r.Loaded.Latency.P99)
	msg := fmt.Sprintf("hs       %-10s rep %d: %.0f handshakes/s at c=%d", cfg, rep, r.Loaded.Rate, c.o.hsC)
	if u := r.Unloaded; u != nil {
		c.record(hsPhase(1), cfg, rep, "p50_us", u.Latency.P50)
		c.record(hsPhase(1), cfg, rep, "p99_us", u.Latency.P99)
		msg += fmt.Sprintf(", c=1 p50 %.0f µs p99 %.0f µs", u.Latency.P50, u.Latency.P99)
	}
	c.logf("%s (%s)", msg, r.TLS)
	return nil
}

func (c *comparison) measureConnrate(ctx context.Context, cfg, addr string, pid, rep int) error {
	var r loadgen.ExchangeResult
	args := []string{"connrate", "--addr", addr,
		"-n", strconv.Itoa(c.o.connN), "-c", strconv.Itoa(c.o.connC), "--lat-n", strconv.Itoa(c.o.connLatN)}
	if err := c.runJSON(ctx, "connrate-"+cfg, &r, append(args, pidArgs(pid)...)...); err != nil {
		return err
	}
	p := connratePhase(c.o.connC)
	c.record(p, cfg, rep, "rate", r.Loaded.Rate)
	c.proxyCPU(p, cfg, rep, r.Loaded)
	c.record(p, cfg, rep, "p50_us", r.Loaded.Latency.P50)
	c.record(p, cfg, rep, "p99_us", r.Loaded.Latency.P99)
	msg := fmt.Sprintf("connrate %-10s rep %d: %.0f conns/s at c=%d", cfg, rep, r.Loaded.Rate, c.o.connC)
	if u := r.Unloaded; u != nil {
		c.record(connratePhase(1), cfg, rep, "p50_us", u.Latency.P50)
		c.record(connratePhase(1), cfg, rep, "p99_us", u.Latency.P99)
		msg += fmt.Sprintf(", c=1 p50 %.0f µs p99 %.0f µs", u.Latency.P50, u.Latency.P99)
	}
	c.logf("%s", msg)
	return nil
}

func (c *comparison) measureIdle(ctx context.Context, cfg, addr string, pid, rep int) error {
	var r loadgen.IdleResult
	if err := c.runJSON(ctx, "idle-"+cfg, &r, "idle", "--addr", addr, "-n", strconv.Itoa(c.idleN),
		"-c", strconv.Itoa(c.o.idleC), "--pid", strconv.Itoa(pid), "--settle", c.o.settle.String()); err != nil {
		return err
	}
	p := idlePhase(c.idleN)
	c.record(p, cfg, rep, "kib_per_conn", r.KiBPerConn)
	c.record(p, cfg, rep, "fds_per_conn", r.FDsPerConn)
	c.record(p, cfg, rep, "rss_mib", float64(r.RSSAfterKiB)/1024)
	note := ""
	if !r.Settled {
		note = " (RSS still moving at the settle bound)"
	}
	c.logf("idle     %-10s rep %d: %.2f KiB and %.2f fds per connection, RSS %d -> %d KiB%s", cfg, rep, r.KiBPerConn, r.FDsPerConn, r.RSSBeforeKiB, r.RSSAfterKiB, note)
	return nil
}

func (c *comparison) measureScale(ctx context.Context, cfg, addr string, rep, k int) error {
	var r loadgen.StreamResult
	if err := c.runJSON(ctx, "scale-"+cfg, &r, "stream", "--addr", addr, "--conns", strconv.Itoa(k),
		"--duration", c.o.scaleDuration.String()); err != nil {
		return err
	}
	p := scalePhase(k)
	c.record(p, cfg, rep, "gbps", r.Gbps)
	c.record(p, cfg, rep, "gbps_per_conn", r.PerConnGbps)
	c.record(p, cfg, rep, "min_conn_gbps", r.MinConnGbps)
	c.logf("scale    %-10s rep %d: %d conns, %.3f Gbit/s total, %.4f per conn (slowest %.4f)", cfg, rep, k, r.Gbps, r.PerConnGbps, r.MinConnGbps)
	return nil
}

func (c *comparison) record(phase, cfg string, rep int, metric string, v float64) {
	c.res.add(phase, metric, cfg, v)
	fmt.Fprintf(c.raw, "%s\t%s\t%d\t%s\t%g\n", phase, cfg, rep, metric, v)
	c.raw.Flush()
}

func (c *comparison) fail(phase string, point int, cfg string, rep int, err error) {
	if phase == "scale" {
		phase = scalePhase(point)
	}
	c.res.fail(phase, cfg)
	msg := strings.NewReplacer("\t", " ", "\n", " ").Replace(err.Error())
	fmt.Fprintf(c.raw, "%s\t%s\t%d\terror\t%s\n", phase, cfg, rep, msg)
	c.raw.Flush()
	c.logf("%-8s %-10s rep %d: FAILED: %s", phase, cfg, rep, msg)
}

func (c *comparison) writeSummary(stdout io.Writer) error {
	t := c.table()
	md := t.markdown()
	var b strings.Builder
	fmt.Fprintf(&b, "# haka-bench compare, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Median of %d repetition(s) [min–max]; (×) is the ratio to direct, (±N) the latency in µs added to direct's. Raw results: %s\n\n", c.o.reps, filepath.Join(c.out, "raw.tsv"))
	b.WriteString(md)
	if tg := t.targetsMarkdown(); tg != "" {
		b.WriteString("\n")
		b.WriteString(tg)
	}
	if err := os.WriteFile(filepath.Join(c.out, "summary.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	_, err := io.WriteString(stdout, b.String())
	return err
}
