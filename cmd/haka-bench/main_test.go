package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// selfEnv makes the test binary act as haka-bench, so that the
// comparison's children (os.Executable) are this binary running the
// subcommands for real.
const selfEnv = "HAKA_BENCH_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(selfEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// asMain makes the children of a comparison run as haka-bench. A race
// build sleeps a second at exit by default (GORACE atexit_sleep_ms): not in
// the dozens of children a comparison starts.
func asMain(t *testing.T) {
	t.Setenv(selfEnv, "1")
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// tinyOptions are the smallest sizes that still measure something.
func tinyOptions(t *testing.T, configs ...string) compareOptions {
	asMain(t)
	o := defaultCompareOptions()
	o.out = t.TempDir()
	o.reps = 1
	o.configs = configs
	o.streamBytes = 4 << 20
	o.hsN, o.hsC, o.hsLatN = 20, 5, 5
	o.connN, o.connC, o.connLatN = 100, 10, 10
	o.idleN, o.idleC = 100, 20
	o.settle = time.Second
	o.scaleConns = []int{1, 4}
	o.scaleDuration = 200 * time.Millisecond
	o.pause = 0
	o.maxTime = 30 * time.Second
	return o
}

// pidLog records the children a comparison starts.
type pidLog struct {
	mu   sync.Mutex
	pids map[string]int
}

func (p *pidLog) started(name string, pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pids == nil {
		p.pids = make(map[string]int)
	}
	p.pids[name] = pid
}

// assertAllGone checks that every child was stopped and reaped.
func (p *pidLog) assertAllGone(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pids) == 0 {
		t.Fatal("no child was started")
	}
	for name, pid := range p.pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child %s (pid %d) still exists: %v", name, pid, err)
		}
	}
}

func haveHAProxy() bool {
	_, err := findHAProxy("", defaultHAProxy)
	return err == nil
}

func TestCompareSmall(t *testing.T) {
	configs := []string{"direct", "splice"}
	if haveHAProxy() {
		configs = []string{"direct", "hap1", "hap2", "splice"}
	} else {
		t.Log("HAProxy is not installed: comparing direct and splice only")
	}
	o := tinyOptions(t, configs...)
	var stdout, stderr bytes.Buffer
	var pids pidLog
	start := time.Now()
	if err := runCompare(context.Background(), o, &stdout, &stderr, hooks{started: pids.started}); err != nil {
		t.Fatalf("compare: %v\n%s", err, stderr.String())
	}
	t.Logf("compare took %v\n%s", time.Since(start), stdout.String())
	pids.assertAllGone(t)

	summary, err := os.ReadFile(filepath.Join(o.out, "summary.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(summary, stdout.Bytes()) {
		t.Error("summary.md differs from what was printed")
	}
	for _, row := range []string{"TLS 1.3 stream, 1 conn", "handshakes/s, c=5", "handshake latency c=1, p50",
		"RSS per idle conn, KiB (100 conns)", "descriptors per idle conn", "new conns/s", "conn latency c=1, p99",
		"TLS streams, 4 conns", "proxy CPU per conn, µs", "proxy CPU per handshake, µs", "… of which kernel", "proxy CPU per GiB streamed"} {
		if !strings.Contains(stdout.String(), row) {
			t.Errorf("the table has no row %q", row)
		}
	}
	if strings.Contains(stdout.String(), "failed") {
		t.Error("a measurement failed")
	}

	raw, err := os.ReadFile(filepath.Join(o.out, "raw.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n")[1:] {
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			t.Fatalf("raw.tsv line %q: %d fields", line, len(f))
		}
		if f[3] == "error" {
			t.Errorf("raw.tsv: %s", line)
		}
		got[f[0]+" "+f[1]+" "+f[3]] = true
	}
	for _, cfg := range configs {
		want := []string{"stream gbps", "hs-c5 rate", "hs-c1 p50_us", "connrate-c10 rate", "connrate-c1 p99_us", "scale-k1 gbps", "scale-k4 gbps_per_conn"}
		if cfg != "direct" {
			want = append(want, "idle-n100 kib_per_conn", "idle-n100 fds_per_conn",
				"connrate-c10 cpu_us", "connrate-c10 cpu_user_us", "connrate-c10 cpu_sys_us", "hs-c5 cpu_us", "stream cpu_ms_per_gib")
		}
		for _, w := range want {
			phase, metric, _ := strings.Cut(w, " ")
			if !got[phase+" "+cfg+" "+metric] {
				t.Errorf("raw.tsv has no %s %s %s", phase, cfg, metric)
			}
		}
	}
	for _, f := range []string{"env.txt", "run.log", "logs/serve.log", "cfg/cert.pem", "cfg/flight.bin"} {
		if _, err := os.Stat(filepath.Join(o.out, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.out, "cfg", "key.pem")); err == nil {
		t.Error("the throwaway key was left behind")
	}
}

// haka-proxy does not exist yet on every branch: the splice proxy stands in
// for it, through --haka-proxy and --haka-args, so the subject's columns
// and targets are exercised.
func TestCompareSubjectColumnsAndTargets(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := tinyOptions(t, "direct", "splice", "haka")
	o.phases = []string{"connrate", "idle"}
	o.hakaProxy = self
	o.hakaArgs = "splice-proxy --listen {listen} --upstream {upstream}"
	var stdout, stderr bytes.Buffer
	var pids pidLog
	if err := runCompare(context.Background(), o, &stdout, &stderr, hooks{started: pids.started}); err != nil {
		t.Fatalf("compare: %v\n%s", err, stderr.String())
	}
	pids.assertAllGone(t)
	out := stdout.String()
	t.Log(out)
	for _, want := range []string{"| haka/splice |", "| 3. RSS per idle conn ≤ 8 KiB |", "| 3. descriptors per idle conn ≤ 2 | 6.00 | no |"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// No HAProxy in this run: its targets are left out, not failed.
	if strings.Contains(out, "hap2") {
		t.Error("a target against a config that was not run is shown")
	}
}

func TestCompareInterrupted(t *testing.T) {
	o := tinyOptions(t, "direct", "splice")
	o.phases = []string{"stream", "hs"}
	o.hsN = 1 << 30 // far more than the test waits for
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pids pidLog
	measuring := make(chan struct{})
	var once sync.Once
	h := hooks{started: func(name string, pid int) {
		pids.started(name, pid)
		if name == "hs-direct" {
			once.Do(func() { close(measuring) })
		}
	}}
	done := make(chan error, 1)
	var stdout, stderr bytes.Buffer
	go func() { done <- runCompare(ctx, o, &stdout, &stderr, h) }()
	select {
	case <-measuring:
	case err := <-done:
		t.Fatalf("compare ended before the handshake phase: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("compare never got to the handshake phase")
	}
	// The handshake phase's splice proxy, the server and the measurement
	// are running now.
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("compare returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("compare did not stop within 10s of the interrupt")
	}
	pids.assertAllGone(t)
	if _, ok := pids.pids["hs-splice-proxy"]; !ok {
		t.Error("the handshake phase's proxy was never started")
	}
	// What was measured before the interrupt is still reported.
	if !strings.Contains(stdout.String(), "| TLS 1.3 stream, 1 conn, Gbit/s |") {
		t.Errorf("no partial table:\n%s", stdout.String())
	}
}

func TestCompareRefusesBadOptions(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "file")
	os.WriteFile(rulesFile, nil, 0o644)
	for _, tc := range []struct {
		edit func(*compareOptions)
		want string
	}{
		{func(o *compareOptions) { o.reps = 0 }, "--reps"},
		{func(o *compareOptions) { o.phases = []string{"stream", "bulk"} }, `unknown phase "bulk"`},
		{func(o *compareOptions) { o.configs = []string{"direct", "nginx"} }, `unknown config "nginx"`},
		{func(o *compareOptions) { o.configs = []string{"haka-rules"} }, "needs --haka-rules"},
		{func(o *compareOptions) { o.hakaRules = rulesFile }, "not a directory"},
		{func(o *compareOptions) { o.hakaArgs = "--listen {listen}" }, "{upstream}"},
		{func(o *compareOptions) { o.hsC = 0 }, "--hs-c"},
		{func(o *compareOptions) { o.scaleConns = []int{1, 1 << 20} }, "--scale-conns"},
		{func(o *compareOptions) { o.phases = nil }, "nothing to do"},
		// A file where the output goes, such as a binary built to
		// /tmp/haka-bench: the error names the path and the flag.
		{func(o *compareOptions) { o.out = filepath.Join(rulesFile, "run") }, "the output directory (--out " + filepath.Join(rulesFile, "run") + "): mkdir " + rulesFile + ": not a directory"},
	} {
		o := defaultCompareOptions()
		tc.edit(&o)
		err := runCompare(context.Background(), o, new(bytes.Buffer), new(bytes.Buffer), hooks{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}

func TestHAProxyMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findHAProxy("", "/nonexistent/haproxy")
	if err == nil || !strings.Contains(err.Error(), "apt-get install haproxy") {
		t.Errorf("got %v, want the install hint", err)
	}
	if _, err := findHAProxy("/nonexistent/haproxy", defaultHAProxy); err == nil {
		t.Error("a missing --haproxy was accepted")
	}
}

func TestHAProxyConfigIsValid(t *testing.T) {
	hap, err := findHAProxy("", defaultHAProxy)
	if err != nil {
		t.Skip("HAProxy is not installed")
	}
	path := filepath.Join(t.TempDir(), "hap.cfg")
	if err := os.WriteFile(path, []byte(haproxyConfig(15999, "127.0.0.1:15400", 2, 9000)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(hap, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "haka-bench")); err != nil {
		t.Errorf("module root %s: %v", root, err)
	}
}

func TestHakaArgv(t *testing.T) {
	got := hakaArgv("/bin/hp", "run --listen={listen} --upstream {upstream} --log-level warn", 4000, "127.0.0.1:15400", []string{"--rules", "/r"})
	want := "/bin/hp run --listen=127.0.0.1:4000 --upstream 127.0.0.1:15400 --log-level warn --rules /r"
	if strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", strings.Join(got, " "), want)
	}
}

func TestListensOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if ok, err := listensOn(os.Getpid(), port); err != nil || !ok {
		t.Errorf("listensOn(self, %d) = %v, %v", port, ok, err)
	}
	other, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := listensOn(os.Getpid(), other); ok {
		t.Errorf("listensOn(self, %d): true for a port nobody listens on", other)
	}
	// Another process's listener on the port is not ours.
	if ok, _ := listensOn(os.Getppid(), port); ok {
		t.Error("listensOn(parent): true for this process's listener")
	}
}

func TestCommandsRefuseNonLoopback(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve", "--dir", dir, "--tls", "0.0.0.0:15400"},
		{"stream", "--dir", dir, "--addr", "10.0.0.1:443"},
		{"hs", "--dir", dir, "--addr", "192.0.2.1:443"},
		{"connrate", "--dir", dir, "--addr", "localhost:443"},
		{"idle", "--dir", dir, "--addr", "[2001:db8::1]:443"},
		{"splice-proxy", "--listen", "127.0.0.1:0", "--upstream", "10.0.0.1:443"},
	} {
		// serve makes the material; the clients need it to get as far as
		// the address check.
		if args[0] == "serve" {
			if code := run([]string{"serve", "--dir", dir, "--tls", "", "--flight", "", "--flight-hold", ""}, new(bytes.Buffer), new(bytes.Buffer)); code != 1 {
				t.Fatalf("serve with every listener off: exit %d", code)
			}
		}
		var stderr bytes.Buffer
		if code := run(args, new(bytes.Buffer), &stderr); code != 1 || !strings.Contains(stderr.String(), "loopback") {
			t.Errorf("%v: exit %d, %q", args, code, stderr.String())
		}
	}
}

func TestClientWithoutServerMaterial(t *testing.T) {
	var stderr bytes.Buffer
	code := run([]string{"hs", "--dir", t.TempDir(), "--addr", "127.0.0.1:1"}, new(bytes.Buffer), &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "haka-bench serve") {
		t.Errorf("exit %d, %q", code, stderr.String())
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"2GiB": 2 << 30, "64MiB": 64 << 20, "512KiB": 512 << 10, "1000": 1000, "3M": 3 << 20, "10B": 10} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1.5GiB", "1TiB", "99999999999GiB"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
	b := byteSize(2 << 30)
	if b.String() != "2GiB" {
		t.Errorf("String() = %q", b.String())
	}
}

// A proxy that breaks every connection, and one that does not start, are
// failures in the table and in the result, not crashes or hangs.
func TestCompareReportsFailures(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string]string{
		// pflag keeps the last --upstream: a port nobody listens on.
		"refusing upstream": "splice-proxy --listen {listen} --upstream {upstream} --upstream 127.0.0.1:1",
		"no start":          "no-such-command --listen {listen} --upstream {upstream}",
	} {
		t.Run(name, func(t *testing.T) {
			o := tinyOptions(t, "direct", "haka")
			o.phases = []string{"connrate"}
			o.hakaProxy, o.hakaArgs = self, args
			var stdout, stderr bytes.Buffer
			var pids pidLog
			err := runCompare(context.Background(), o, &stdout, &stderr, hooks{started: pids.started})
			if err == nil || !strings.Contains(err.Error(), "1 measurements failed") {
				t.Errorf("compare returned %v, want 1 failed measurement", err)
			}
			pids.assertAllGone(t)
			if !strings.Contains(stdout.String(), "| failed |") {
				t.Errorf("no failed cell:\n%s", stdout.String())
			}
			raw, _ := os.ReadFile(filepath.Join(o.out, "raw.tsv"))
			if !strings.Contains(string(raw), "connrate\thaka\t1\terror\t") {
				t.Errorf("raw.tsv has no error line:\n%s", raw)
			}
		})
	}
}
