package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// childEnv makes the test binary a splice proxy in front of the address it
// holds, for the tests that read another process's /proc entries. The
// child prints its address and exits when its stdin closes, so it cannot
// outlive the test.
const childEnv = "LOADGEN_TEST_SPLICE_UPSTREAM"

func TestMain(m *testing.M) {
	if up := os.Getenv(childEnv); up != "" {
		os.Exit(spliceChild(up))
	}
	os.Exit(m.Run())
}

func spliceChild(upstream string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		bufio.NewReader(os.Stdin).ReadByte() // EOF when the parent is gone
		cancel()
	}()
	fmt.Println(ln.Addr())
	SpliceProxy(ctx, ln, upstream)
	return 0
}

// env is a server with its three listeners on loopback.
type env struct {
	mat                     *Material
	tls, flight, flightHold string
	srv                     *Server
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func startEnv(t *testing.T) *env {
	t.Helper()
	mat, err := Prepare(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(mat)
	lt, lf, lh := listen(t), listen(t), listen(t)
	done := make(chan error, 3)
	go func() { done <- srv.ServeTLS(lt) }()
	go func() { done <- srv.ServeFlight(lf, false) }()
	go func() { done <- srv.ServeFlight(lh, true) }()
	t.Cleanup(func() {
		srv.Close()
		for range 3 {
			if err := <-done; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		}
	})
	return &env{mat: mat, tls: lt.Addr().String(), flight: lf.Addr().String(), flightHold: lh.Addr().String(), srv: srv}
}

// startSplice runs SpliceProxy in this process in front of upstream.
func startSplice(t *testing.T, upstream string) string {
	t.Helper()
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- SpliceProxy(ctx, ln, upstream) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("SpliceProxy returned %v, want context.Canceled", err)
		}
	})
	return ln.Addr().String()
}

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:443", true},
		{"127.1.2.3:0", true},
		{"[::1]:8443", true},
		{"localhost:443", false},
		{"10.0.0.1:443", false},
		{"0.0.0.0:443", false},
		{"[::]:443", false},
		{"192.0.2.1:443", false},
		{"127.0.0.1", false},
		{"127.0.0.1:70000", false},
		{"example.com:443", false},
	} {
		err := CheckLoopback(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestFlightIsARealTLSConversation(t *testing.T) {
	dir := t.TempDir()
	mat, err := Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := mat.Flight
	if len(f.Turns) != 4 {
		t.Fatalf("%d turns, want 4", len(f.Turns))
	}
	// The server's flight carries the certificate clients trust, as a
	// TLS inspector would parse it.
	if !bytes.Contains(f.Turns[1], mat.Cert.Certificate[0]) {
		t.Error("the server's first turn does not carry the certificate")
	}
	// Record types, and for cleartext handshake records the message
	// type: what a TLS inspector in the path parses.
	const ccs, app = typeChangeCipherSpec, typeApplicationData
	hs := func(msg byte) [2]byte { return [2]byte{typeHandshake, msg} }
	encrypted := [2]byte{typeHandshake, 0}
	want := [][][2]byte{
		{hs(msgClientHello)},
		{hs(msgServerHello), hs(11), hs(12), hs(14)}, // Certificate, ServerKeyExchange, ServerHelloDone
		{hs(16), {ccs, 1}, encrypted, {app, 0}},      // ClientKeyExchange, CCS, Finished, request
		{{ccs, 1}, encrypted, {app, 0}},              // CCS, Finished, response
	}
	for i, turn := range f.Turns {
		var got [][2]byte
		afterCCS := false
		for off := 0; off < len(turn); {
			typ, n := turn[off], int(turn[off+3])<<8|int(turn[off+4])
			var second byte
			switch {
			case typ == ccs:
				second, afterCCS = turn[off+recordHeaderLen], true
			case typ == typeHandshake && !afterCCS:
				second = turn[off+recordHeaderLen]
			}
			got = append(got, [2]byte{typ, second})
			off += recordHeaderLen + n
		}
		if fmt.Sprint(got) != fmt.Sprint(want[i]) {
			t.Errorf("turn %d records %v, want %v", i, got, want[i])
		}
	}
	if last := f.Turns[3]; len(last) < recordHeaderLen+FlightPayload {
		t.Errorf("the last turn is %d bytes: too short for the %d-byte response", len(last), FlightPayload)
	}

	// Prepare again reuses the files; Open reads the same flight.
	again, err := Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	opened, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.Turns {
		if !bytes.Equal(f.Turns[i], again.Flight.Turns[i]) || !bytes.Equal(f.Turns[i], opened.Flight.Turns[i]) {
			t.Fatalf("turn %d differs after reloading", i)
		}
	}
	if !opened.Roots.Equal(mat.Roots) {
		t.Error("Open trusts another certificate than Prepare made")
	}
}

func TestOpenWithoutMaterial(t *testing.T) {
	_, err := Open(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "haka-bench serve") {
		t.Fatalf("Open(empty dir) = %v, want an error that says to start the server", err)
	}
}

func TestFlightFileRejectsCorruption(t *testing.T) {
	mat, err := Prepare(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := mat.Flight.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var f Flight
	if err := f.UnmarshalBinary(b); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	for n := range len(b) {
		if err := new(Flight).UnmarshalBinary(b[:n]); err == nil {
			t.Fatalf("a %d-byte prefix of a %d-byte flight file parsed", n, len(b))
		}
	}
	if err := new(Flight).UnmarshalBinary(append(bytes.Clone(b), 0)); err == nil {
		t.Error("a trailing byte was accepted")
	}
	// A turn that is not TLS records: the first record's type byte.
	bad := bytes.Clone(b)
	bad[len(flightMagic)+1+3] = 0x80
	if err := new(Flight).UnmarshalBinary(bad); err == nil || !strings.Contains(err.Error(), "not a TLS record") {
		t.Errorf("corrupt record type: %v", err)
	}
}

func FuzzFlightUnmarshal(f *testing.F) {
	mat, err := Prepare(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	b, err := mat.Flight.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(flightMagic + "\x02\x00\x00\x06\x16\x03\x01\x00\x01\x01\x00\x00\x06\x16\x03\x03\x00\x01\x02"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fl Flight
		if fl.UnmarshalBinary(data) != nil {
			return
		}
		again, err := fl.MarshalBinary()
		if err != nil {
			t.Fatalf("a parsed flight does not marshal: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatal("marshal(unmarshal(x)) != x")
		}
	})
}

func TestStreamThroughSplice(t *testing.T) {
	e := startEnv(t)
	proxy := startSplice(t, e.tls)
	ctx := context.Background()

	const size = 4 << 20
	r, err := Stream(ctx, StreamConfig{Addr: proxy, Roots: e.mat.Roots, Conns: 1, Bytes: size, MaxTime: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes != size || r.Conns != 1 || r.Gbps <= 0 || r.Seconds <= 0 {
		t.Errorf("bytes mode: %v", r)
	}
	if r.TLS.Version != "TLS 1.3" {
		t.Errorf("negotiated %v, want TLS 1.3", r.TLS)
	}
	t.Logf("bytes mode through the splice proxy: %v", r)

	r, err = Stream(ctx, StreamConfig{Addr: proxy, Roots: e.mat.Roots, Conns: 3, Duration: 300 * time.Millisecond, MaxTime: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Conns != 3 || r.Bytes <= 0 || r.MinConnGbps <= 0 || r.Seconds != 0.3 {
		t.Errorf("duration mode: %v", r)
	}
	if d := r.PerConnGbps*3 - r.Gbps; d > 1e-9 || d < -1e-9 {
		t.Errorf("per-connection %v x 3 != aggregate %v", r.PerConnGbps, r.Gbps)
	}
}

func TestStreamRefusesBadConfig(t *testing.T) {
	roots := x509.NewCertPool()
	for _, cfg := range []StreamConfig{
		{Addr: "10.1.1.1:443", Conns: 1, Bytes: 1},
		{Addr: "127.0.0.1:1", Conns: 1, Bytes: 1, Duration: time.Second},
		{Addr: "127.0.0.1:1", Conns: 1},
		{Addr: "127.0.0.1:1", Conns: 0, Bytes: 1},
		{Addr: "127.0.0.1:1", Conns: MaxStreamConns + 1, Bytes: 1},
	} {
		cfg.Roots, cfg.MaxTime = roots, time.Second
		if _, err := Stream(context.Background(), cfg); err == nil {
			t.Errorf("Stream(%+v) succeeded", cfg)
		}
	}
}

func TestStreamReportsShortStream(t *testing.T) {
	e := startEnv(t)
	// Point the client at the flight server: its bytes are no TLS server.
	_, err := Stream(context.Background(), StreamConfig{Addr: e.flight, Roots: e.mat.Roots, Conns: 2, Bytes: 1 << 20, MaxTime: 10 * time.Second})
	if err == nil {
		t.Fatal("a stream against a non-TLS server succeeded")
	}
}

func TestHandshakes(t *testing.T) {
	e := startEnv(t)
	proxy := startSplice(t, e.tls)
	ctx := context.Background()
	r, err := Handshakes(ctx, HandshakeConfig{Addr: proxy, Roots: e.mat.Roots, N: 50, Concurrency: 10, LatN: 5, MaxTime: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if r.Loaded.OK != 50 || r.Unloaded == nil || r.Unloaded.OK != 5 || r.Unloaded.Concurrency != 1 {
		t.Errorf("loaded %v, unloaded %v", r.Loaded, r.Unloaded)
	}
	if r.Loaded.Rate <= 0 || r.Loaded.Latency.P50 <= 0 || r.Loaded.Latency.P99 < r.Loaded.Latency.P50 {
		t.Errorf("loaded %v", r.Loaded)
	}
	if r.TLS.Version != "TLS 1.3" {
		t.Errorf("negotiated %v", r.TLS)
	}
	t.Logf("%v; c=1 %v; %v", r.Loaded, r.Unloaded, r.TLS)

	// The client verifies the chain: a client that trusts another
	// certificate fails every handshake.
	_, otherRoots, err := tlspeer.NewCert("localhost")
	if err != nil {
		t.Fatal(err)
	}
	r, err = Handshakes(ctx, HandshakeConfig{Addr: e.tls, Roots: otherRoots, N: 5, Concurrency: 5, MaxTime: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Loaded.Errors != 5 || r.Err() == nil || !strings.Contains(r.Loaded.FirstError, "certificate") {
		t.Errorf("untrusted server: %v", r.Loaded)
	}
}

func TestExchanges(t *testing.T) {
	e := startEnv(t)
	proxy := startSplice(t, e.flight)
	ctx := context.Background()
	for name, addr := range map[string]string{"direct": e.flight, "splice": proxy} {
		r, err := Exchanges(ctx, ExchangeConfig{Addr: addr, Flight: e.mat.Flight, N: 100, Concurrency: 10, LatN: 10, MaxTime: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Loaded.OK != 100 || r.Unloaded.OK != 10 {
			t.Errorf("%s: %v; %v", name, r.Loaded, r.Unloaded)
		}
		t.Logf("%s: %v; c=1 %v", name, r.Loaded, r.Unloaded)
	}

	// Both ends check every byte: a client whose ClientHello differs
	// from the recording is refused by the server.
	tampered := &Flight{Turns: make([][]byte, len(e.mat.Flight.Turns))}
	copy(tampered.Turns, e.mat.Flight.Turns)
	tampered.Turns[0] = bytes.Clone(tampered.Turns[0])
	tampered.Turns[0][len(tampered.Turns[0])-1] ^= 0xff
	r, err := Exchanges(ctx, ExchangeConfig{Addr: proxy, Flight: tampered, N: 10, Concurrency: 2, MaxTime: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Loaded.Errors != 10 {
		t.Errorf("tampered flight: %v", r.Loaded)
	}
}

// startSpliceChild runs the splice proxy in a child process and returns
// its address and process.
func startSpliceChild(t *testing.T, upstream string) (string, *os.Process) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A race build sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), childEnv+"="+upstream, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("splice child: %v", err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("splice child: %v", err)
	}
	return strings.TrimSpace(line), cmd.Process
}

func TestIdleMeasuresAnotherProcess(t *testing.T) {
	e := startEnv(t)
	addr, proc := startSpliceChild(t, e.flightHold)
	const n = 100
	r, release, err := Idle(context.Background(), IdleConfig{
		Addr: addr, Flight: e.mat.Flight, N: n, Concurrency: 20, PID: proc.Pid,
		Settle: 2 * time.Second, MaxTime: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	t.Log(r)
	// Go's splice path holds both sockets and, while each direction is
	// blocked, a pipe pair: from 2 to 6 descriptors per connection.
	if r.Open != n || r.FDsPerConn < 2 || r.FDsPerConn > 6.5 {
		t.Errorf("open %d, %.2f fds per connection", r.Open, r.FDsPerConn)
	}
	if r.RSSBeforeKiB <= 0 || r.RSSAfterKiB <= 0 {
		t.Errorf("rss %d -> %d KiB", r.RSSBeforeKiB, r.RSSAfterKiB)
	}

	// Released, the proxy sees its clients go and closes its sockets.
	// (Its splice pipes go back to the runtime's pool, which frees them
	// only after a garbage collection: they are not counted here.)
	release()
	deadline := time.Now().Add(10 * time.Second)
	for {
		socks := socketFDs(t, proc.Pid)
		if socks <= 2 { // the listener, and a connection being closed
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy still has %d sockets after the release", socks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func socketFDs(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func TestIdleRefusesBadConfig(t *testing.T) {
	for _, cfg := range []IdleConfig{
		{Addr: "10.0.0.1:1", N: 1, Concurrency: 1},
		{Addr: "127.0.0.1:1", N: 0, Concurrency: 1},
		{Addr: "127.0.0.1:1", N: MaxIdleConns + 1, Concurrency: 1},
		{Addr: "127.0.0.1:1", N: 1, Concurrency: 1}, // no flight
	} {
		if _, release, err := Idle(context.Background(), cfg); err == nil {
			release()
			t.Errorf("Idle(%+v) succeeded", cfg)
		}
	}
}

func TestServerCloseEndsHeldConnections(t *testing.T) {
	mat, err := Prepare(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(mat)
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- srv.ServeFlight(ln, true) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := mat.Flight.PlayClient(c, make([]byte, mat.Flight.MaxTurn())); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("ServeFlight returned %v", err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes from a connection the server closed", n)
	}
	if err := srv.ServeTLS(listen(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("ServeTLS after Close: %v", err)
	}
}

func TestPercentiles(t *testing.T) {
	d := make([]time.Duration, 0, 100)
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	p := percentiles(d)
	if p != (Percentiles{P50: 50, P90: 90, P99: 99, Max: 100}) {
		t.Errorf("percentiles of 1..100 µs: %+v", p)
	}
	if p := percentiles([]time.Duration{7 * time.Microsecond}); p != (Percentiles{7, 7, 7, 7}) {
		t.Errorf("one sample: %+v", p)
	}
	if p := percentiles(nil); p != (Percentiles{}) {
		t.Errorf("no sample: %+v", p)
	}
}

func TestProcReadings(t *testing.T) {
	rss, err := ProcRSSKiB(os.Getpid())
	if err != nil || rss <= 0 {
		t.Errorf("own rss: %d, %v", rss, err)
	}
	fds, err := ProcFDs(os.Getpid())
	if err != nil || fds < 3 {
		t.Errorf("own fds: %d, %v", fds, err)
	}
	// PIDs are below /proc/sys/kernel/pid_max (at most 2^22).
	if _, err := ProcRSSKiB(1 << 23); err == nil {
		t.Error("rss of a process that cannot exist")
	}
	if _, err := ProcFDs(1 << 23); err == nil {
		t.Error("fds of a process that cannot exist")
	}
	if _, _, err := ProcCPU(1 << 23); err == nil {
		t.Error("cpu of a process that cannot exist")
	}
	// Burn a quarter of a second of this thread's CPU, counted by the
	// thread's own clock (not the wall clock: on a loaded machine the
	// thread may get a fraction of it): user time grows by about that.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	threadCPU := func() time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	u0, s0, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := uint64(1)
	for start := threadCPU(); threadCPU()-start < 250*time.Millisecond; {
		for range 100000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	u1, s1, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := u1 - u0; d < 100*time.Millisecond || s1 < s0 {
		t.Errorf("250 ms of computing: user %v → %v, kernel %v → %v (%d)", u0, u1, s0, s1, x)
	}
}

// TestExchangesReportTheProxyCPU: with the proxy's PID, the loaded run
// says what CPU the proxy (a child process here) spent per connection.
func TestExchangesReportTheProxyCPU(t *testing.T) {
	e := startEnv(t)
	addr, proc := startSpliceChild(t, e.flight)
	r, err := Exchanges(context.Background(), ExchangeConfig{Addr: addr, Flight: e.mat.Flight, N: 2000, Concurrency: 20, MaxTime: 60 * time.Second, PID: proc.Pid})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	c := r.Loaded.ProxyCPU
	// A proxy cannot relay a connection for nothing, nor spend 10 ms on it.
	if c == nil || c.UserUS+c.SysUS <= 0 || c.UserUS+c.SysUS > 10000 {
		t.Fatalf("proxy CPU per connection: %+v", c)
	}
	if !strings.Contains(r.Loaded.String(), "proxy_cpu_sys_us=") {
		t.Errorf("the text form lacks the proxy CPU: %s", r.Loaded)
	}
	if r2, err := Exchanges(context.Background(), ExchangeConfig{Addr: addr, Flight: e.mat.Flight, N: 10, Concurrency: 2, MaxTime: 10 * time.Second}); err != nil || r2.Loaded.ProxyCPU != nil {
		t.Errorf("without a PID: %+v, %v", r2.Loaded.ProxyCPU, err)
	}
}

// TestStreamReportsTheProxyCPU: with the proxy's PID, a stream says what
// CPU the proxy (a child process here) spent per GiB.
func TestStreamReportsTheProxyCPU(t *testing.T) {
	e := startEnv(t)
	addr, proc := startSpliceChild(t, e.tls)
	r, err := Stream(context.Background(), StreamConfig{Addr: addr, Roots: e.mat.Roots, Conns: 1, Bytes: 256 << 20, MaxTime: 60 * time.Second, PID: proc.Pid})
	if err != nil {
		t.Fatal(err)
	}
	// Moving a GiB costs a proxy something, and less than a minute.
	if c := r.ProxyCPU; c == nil || c.UserMS+c.SysMS <= 0 || c.UserMS+c.SysMS > 60000 {
		t.Fatalf("proxy CPU per GiB: %+v (%v)", c, r)
	}
	if !strings.Contains(r.String(), "proxy_cpu_sys_ms_per_gib=") {
		t.Errorf("the text form lacks the proxy CPU: %s", r)
	}
}
