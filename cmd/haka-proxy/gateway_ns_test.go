package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/nftcmd"
	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// The gateway tests run the real haka-proxy binary, built by the test, in
// network namespaces the test creates:
//
//	client ── router (haka-proxy --tproxy --nft) ── server
//
// with real servers (openssl s_server, a Go HTTPS server that answers with
// the address it sees, a Heartbleed-vulnerable tlspeer.Backend) and real
// clients (curl, openssl s_client, the tlspeer attacks) that connect to
// the server's own address without knowing of the proxy.

func TestMain(m *testing.M) { netnstest.Main(m) }

// Ports of the servers in the server namespace; all three are intercepted.
const (
	sServerPort = 443  // openssl s_server -www
	peerPort    = 8443 // Go HTTPS server answering with the peer address
	backendPort = 4433 // tlspeer.Backend, the Heartbleed target
	// leakSize is what the vulnerable backend answers an encrypted
	// heartbeat with: far more than any request.
	leakSize = 16000
)

// certName is the name in the servers' certificate.
const certName = "haka.test"

// lab is the topology with its servers.
type lab struct {
	topo              *netnstest.Topology
	bin               string
	cert              tls.Certificate
	pool              *x509.CertPool
	certFile, keyFile string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "ip", "nft", "openssl", "curl")
	l := &lab{bin: buildBinary(t), topo: netnstest.NewTopology(t)}
	var err error
	if l.cert, l.pool, err = tlspeer.NewCert(certName); err != nil {
		t.Fatal(err)
	}
	if l.certFile, l.keyFile, err = tlspeer.WritePEM(t.TempDir(), l.cert); err != nil {
		t.Fatal(err)
	}
	return l
}

// startSServer runs `openssl s_server -www` in the server namespace on
// both families and waits for its ready line, ACCEPT.
func (l *lab) startSServer(t *testing.T) {
	t.Helper()
	cmd := l.topo.Server.Command(context.Background(), "openssl", "s_server", "-www",
		"-accept", fmt.Sprint(sServerPort), "-cert", l.certFile, "-key", l.keyFile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l.topo.Server.Start(t, cmd)
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "ACCEPT") {
				ready <- nil
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
		ready <- fmt.Errorf("openssl s_server exited before ACCEPT: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		t.Fatal("openssl s_server did not print ACCEPT")
	}
}

// startPeerServer runs, in the server namespace, an HTTPS server whose
// page is the client address it sees.
func (l *lab) startPeerServer(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := l.topo.Server.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, r.RemoteAddr)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{l.cert}},
		ReadHeaderTimeout: waitFor,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// startBackend runs a fresh Heartbleed-vulnerable backend on backendPort
// in the server namespace.
func (l *lab) startBackend(t *testing.T) *tlspeer.Backend {
	t.Helper()
	b := &tlspeer.Backend{Config: &tls.Config{Certificates: []tls.Certificate{l.cert}}, LeakSize: leakSize}
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", backendPort))
		return err
	}
	// The previous backend's listener is closed, but a process forked
	// meanwhile by a parallel test holds a copy of every descriptor
	// until it execs, and the socket listens until then: the port is
	// free again within that window, which has no event to wait on.
	err := l.topo.Server.Do(listen)
	for deadline := time.Now().Add(waitFor); errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		err = l.topo.Server.Do(listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	b.StartOn(ln)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { b.Close() }) })
	return b
}

// startProxy runs the binary in the router namespace and waits until it
// says it listens (after the --nft rules are in).
func (l *lab) startProxy(t *testing.T, args ...string) *proc {
	t.Helper()
	p := launch(t, l.topo.Router.Command(context.Background(), l.bin, args...))
	p.addr = p.waitLog(t, "listening")["addr"].(string)
	return p
}

// routerState is what --nft may change on the router.
type routerState struct{ ruleset, rules, routes string }

func snapshot(t *testing.T, ns *netnstest.NS) routerState {
	t.Helper()
	return routerState{
		ruleset: ns.Run(t, "nft", "list", "ruleset"),
		rules:   ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule"),
		routes: ns.Run(t, "ip", "-4", "route", "show", "table", "all") +
			ns.Run(t, "ip", "-6", "route", "show", "table", "all"),
	}
}

func (s routerState) diff(t *testing.T, before routerState, when string) {
	t.Helper()
	if s != before {
		t.Errorf("%s, the router's ruleset, ip rules and routes differ from before:\nbefore: %+v\nafter:  %+v", when, before, s)
	}
}

func urlHost(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), fmt.Sprint(port))
}

// curlPeer fetches the peer server's page from the client namespace: the
// address the server saw.
func (l *lab) curlPeer(t *testing.T, server netip.Addr) netip.AddrPort {
	t.Helper()
	out := l.topo.Client.Run(t, "curl", "-sS", "-k", "--max-time", fmt.Sprint(int(waitFor.Seconds())),
		"https://"+urlHost(server, peerPort)+"/")
	peer, err := netip.ParseAddrPort(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("the peer server answered %q: %v", out, err)
	}
	return netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
}

// curlSServer fetches s_server's -www page from the client namespace.
func (l *lab) curlSServer(t *testing.T, server netip.Addr) {
	t.Helper()
	out := l.topo.Client.Run(t, "curl", "-sS", "-k", "--max-time", fmt.Sprint(int(waitFor.Seconds())),
		"https://"+urlHost(server, sServerPort)+"/")
	if !strings.Contains(out, "s_server -www") {
		t.Fatalf("curl https://%s/ did not get s_server's page:\n%s", urlHost(server, sServerPort), out)
	}
}

// sClient runs openssl s_client from the client namespace and checks the
// handshake reached the server's certificate.
func (l *lab) sClient(t *testing.T, server netip.Addr) {
	t.Helper()
	out := l.topo.Client.Run(t, "sh", "-c", "openssl s_client -connect "+urlHost(server, sServerPort)+" </dev/null")
	for _, want := range []string{"CONNECTED", "CN = haka-proxy test"} {
		if !strings.Contains(out, want) {
			t.Fatalf("openssl s_client to %s: no %q in\n%s", server, want, out)
		}
	}
}

// dialFromClient opens a TCP connection from the client namespace.
func (l *lab) dialFromClient(t *testing.T, server netip.Addr, port int) net.Conn {
	t.Helper()
	var c net.Conn
	if err := l.topo.Client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", urlHost(server, port), waitFor)
		return err
	}); err != nil {
		t.Fatalf("connect to %s: %v", urlHost(server, port), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitConn waits for the proxy's "connection closed" line of the next
// connection from client to dst, and for its connection record.
func (p *proc) waitConn(t *testing.T, client netip.Addr, dst netip.AddrPort) map[string]any {
	t.Helper()
	what := fmt.Sprintf(`"connection closed" line from %s to %s`, client, dst)
	line := p.waitLogMatch(t, what, func(m map[string]any) bool {
		src, _ := netip.ParseAddrPort(fmt.Sprint(m["src"]))
		return m["msg"] == "connection closed" && src.Addr() == client && m["dst"] == dst.String()
	})
	// The record of the same connection, on stdout (--alerts -).
	id := fmt.Sprint(line["id"])
	p.stdout.waitFrom(t, &p.recAt, "connection record "+id, func(l string) bool {
		m := logEntry(l)
		f, _ := m["flow"].(map[string]any)
		return m["type"] == "connection" && f != nil && fmt.Sprint(f["id"]) == id &&
			f["src"] == line["src"] && f["dst"] == line["dst"]
	})
	return line
}

type family struct {
	name                   string
	client, server, router netip.Addr // router: its address on the server's side
}

func (l *lab) families() []family {
	tp := l.topo
	return []family{
		{"ipv4", tp.ClientIPv4, tp.ServerIPv4, tp.RouterServerIPv4},
		{"ipv6", tp.ClientIPv6, tp.ServerIPv6, tp.RouterServerIPv6},
	}
}

// TestGatewayEndToEnd is the transparent gateway through the real binary:
// with `--tproxy --nft`, curl and openssl s_client in the client namespace
// reach the servers' own addresses over IPv4 and IPv6, every connection is
// in the proxy's log and records with the client as src and the server as
// dst, the server sees the client (--spoof-source) or the router (without
// it), Heartbleed is stopped before it reaches either side, and after
// SIGTERM traffic flows directly and the router is as it was.
func TestGatewayEndToEnd(t *testing.T) {
	for _, spoof := range []bool{false, true} {
		t.Run(fmt.Sprintf("spoof-source=%v", spoof), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			l.startSServer(t)
			l.startPeerServer(t)
			router := l.topo.Router
			before := snapshot(t, router)

			ports := fmt.Sprintf("%d,%d,%d", sServerPort, peerPort, backendPort)
			// Without spoofing, from configs/gateway.yaml (the command
			// line wins: the servers' ports, and records on stdout
			// rather than in /var/log); with it, from flags alone.
			args := []string{"run", "--config", filepath.Join(repoRoot(t), "configs", "gateway.yaml"), "--alerts", "-", "--nft-ports", ports}
			if spoof {
				args = []string{"run", "--tproxy", "--nft", "--nft-ports", ports, "--spoof-source"}
			}
			p := launch(t, router.Command(context.Background(), l.bin, args...))
			applied := p.waitLog(t, "nftables rules applied")
			ready := p.waitLog(t, "listening")
			if ready["tproxy"] != true || ready["nft"] != true || ready["spoof_source"] != spoof ||
				ready["upstream"] != "original destination" || !strings.HasSuffix(fmt.Sprint(ready["addr"]), ":15001") {
				t.Fatalf("listening line %v", ready)
			}
			if !strings.Contains(fmt.Sprint(applied["rules"]), "TCP ports 443,8443,4433") {
				t.Errorf("applied line %v", applied)
			}
			router.Run(t, "nft", "list", "table", "inet", "haka")

			for _, fam := range l.families() {
				// The server sees the client itself when spoofing, else
				// the router's address on its side.
				wantPeer := fam.router
				if spoof {
					wantPeer = fam.client
				}
				peer := l.curlPeer(t, fam.server)
				if peer.Addr() != wantPeer {
					t.Errorf("%s: the server saw the connection from %s, want %s", fam.name, peer, wantPeer)
				}
				line := p.waitConn(t, fam.client, netip.AddrPortFrom(fam.server, peerPort))
				if line["upstream"] != netip.AddrPortFrom(fam.server, peerPort).String() || line["verdict"] != "pass" {
					t.Errorf("%s: connection line %v", fam.name, line)
				}
				l.curlSServer(t, fam.server)
				p.waitConn(t, fam.client, netip.AddrPortFrom(fam.server, sServerPort))
				l.sClient(t, fam.server)
				p.waitConn(t, fam.client, netip.AddrPortFrom(fam.server, sServerPort))
			}

			// A client that connects to the transparent listener itself
			// (not through the interception) is refused, rather than
			// the proxy dialling itself over and over.
			// The reset may come before or after connect returns.
			self := netip.AddrPortFrom(l.topo.RouterClientIPv4, 15001)
			if err := l.topo.Client.Do(func() error {
				c, err := net.DialTimeout("tcp", self.String(), waitFor)
				if err != nil {
					return nil
				}
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(waitFor))
				if n, err := c.Read(make([]byte, 1)); err == nil {
					return fmt.Errorf("got %d bytes", n)
				}
				return nil
			}); err != nil {
				t.Errorf("a connection to the listener itself: %v", err)
			}
			if line := p.waitConn(t, l.topo.ClientIPv4, self); line["verdict"] != "reset" ||
				!strings.Contains(fmt.Sprint(line["reason"]), "is the transparent listener itself") {
				t.Errorf("connection to the listener itself: %v", line)
			}

			if !spoof {
				// configs/gateway.yaml serves metrics on 127.0.0.1:9090.
				m := router.Run(t, "curl", "-sS", "--max-time", fmt.Sprint(int(waitFor.Seconds())), "http://127.0.0.1:9090/metrics")
				if !strings.Contains(m, "haka_proxy_connections_total 7") {
					t.Errorf("metrics after 7 connections:\n%s", m)
				}
			}

			for _, fam := range l.families() {
				t.Run("heartbleed/"+fam.name, func(t *testing.T) {
					l.heartbleed(t, p, ready, fam)
				})
			}

			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			p.waitLog(t, "shutting down")
			p.waitLog(t, "nftables rules removed")
			p.waitLog(t, "stopped")
			p.wait(t)

			// Directly again: the server sees the client, whatever the
			// proxy did before.
			for _, fam := range l.families() {
				if peer := l.curlPeer(t, fam.server); peer.Addr() != fam.client {
					t.Errorf("%s: after SIGTERM the server saw %s, want the client %s directly", fam.name, peer, fam.client)
				}
			}
			snapshot(t, router).diff(t, before, "after SIGTERM")
		})
	}
}

// heartbleed runs both attacks from the client namespace against a fresh
// vulnerable backend and checks the proxy stopped them: the cleartext
// request never reaches the backend, the encrypted leak never reaches the
// attacker.
// The binary runs the TLS inspection with the stock rules; its listening
// line must say so, or the drop below would prove nothing about them.
func (l *lab) heartbleed(t *testing.T, p *proc, ready map[string]any, fam family) {
	dst := netip.AddrPortFrom(fam.server, backendPort)

	b := l.startBackend(t)
	c := l.dialFromClient(t, fam.server, backendPort)
	clear := tlspeer.CleartextHeartbleed(c, waitFor)
	c.Close()
	clearLine := p.waitConn(t, fam.client, dst)
	b.Close() // waits for its connections to end: the count is final
	heartbeats := b.Heartbeats.Load()

	b = l.startBackend(t)
	c = l.dialFromClient(t, fam.server, backendPort)
	enc := tlspeer.EncryptedHeartbleed(c, &tls.Config{RootCAs: l.pool, ServerName: certName}, 64, waitFor)
	c.Close()
	encLine := p.waitConn(t, fam.client, dst)
	b.Close()

	if insp, _ := ready["inspection"].(string); !strings.HasPrefix(insp, "TLS inspection") {
		t.Fatalf("the listening line says %q, want the TLS inspection", insp)
	}
	if heartbeats != 0 {
		t.Errorf("cleartext Heartbleed: %d heartbeat records reached the backend, want 0", heartbeats)
	}
	if clear.Leaked != 0 || !clear.Closed {
		t.Errorf("cleartext Heartbleed: the attacker got %d bytes back (%+v), want none and the connection closed", clear.Leaked, clear)
	}
	if enc.Leaked != 0 {
		t.Errorf("encrypted Heartbleed: %d leaked bytes reached the attacker (%+v), want 0", enc.Leaked, enc)
	}
	for name, line := range map[string]map[string]any{"cleartext": clearLine, "encrypted": encLine} {
		if v := line["verdict"]; v != "drop" && v != "reset" {
			t.Errorf("%s Heartbleed: the connection ended with %v, want drop or reset: %v", name, v, line)
		}
	}
}

// startFailure is a start of the binary that must fail.
type startFailure struct {
	name  string
	args  []string
	setup func(t *testing.T, ns *netnstest.NS) // before the start
	want  []string                             // in its standard error
}

// checkFailedStart runs the binary in ns, expects exit 1 with the words of
// want on standard error, no "listening" line, and the namespace's
// ruleset, rules and routes as they were before.
func checkFailedStart(t *testing.T, bin string, ns *netnstest.NS, before routerState, args []string, want []string) {
	t.Helper()
	p := launch(t, ns.Command(context.Background(), bin, args...))
	code := p.exitCode(t)
	stderr := strings.Join(p.stderr.all(), "\n")
	if code != 1 {
		t.Errorf("exit %d, want 1:\n%s", code, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("standard error does not say %q:\n%s", w, stderr)
		}
	}
	if strings.Contains(stderr, `"msg":"listening"`) {
		t.Errorf("it said it was listening:\n%s", stderr)
	}
	snapshot(t, ns).diff(t, before, "after the failed start")
}

// TestGatewayStartFailures: a taken port or a colliding mark ends the
// start with the cause and the fix, exit 1, and nothing installed.
func TestGatewayStartFailures(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "ip", "nft")
	bin := buildBinary(t)
	listenOn := func(addr string) func(t *testing.T, ns *netnstest.NS) {
		return func(t *testing.T, ns *netnstest.NS) {
			var ln net.Listener
			if err := ns.Do(func() (err error) {
				ln, err = net.Listen("tcp", addr)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}
	}
	for _, tc := range []startFailure{
		{
			name:  "listen port in use",
			args:  []string{"run", "--tproxy", "--nft"},
			setup: listenOn(":15001"),
			want:  []string{"--listen: transparent listener on :15001: port 15001 is already in use", "ss -ltnp 'sport = :15001'", "choose another --listen port"},
		},
		{
			// The metrics listener is opened before the rules too.
			name:  "metrics port in use",
			args:  []string{"run", "--tproxy", "--nft", "--metrics", "127.0.0.1:9090"},
			setup: listenOn("127.0.0.1:9090"),
			want:  []string{"--metrics: listen tcp 127.0.0.1:9090: bind: address already in use"},
		},
		{
			name: "mark taken by another ip rule",
			args: []string{"run", "--tproxy", "--nft"},
			setup: func(t *testing.T, ns *netnstest.NS) {
				ns.Run(t, "ip", "-4", "rule", "add", "fwmark", "0x1", "lookup", "200")
			},
			want: []string{"--nft: policy routing conflict", "already selects packets marked 0x1", "choose another --nft-mark"},
		},
		{
			name: "route table taken",
			args: []string{"run", "--tproxy", "--nft"},
			setup: func(t *testing.T, ns *netnstest.NS) {
				ns.Run(t, "ip", "-4", "route", "add", "blackhole", "10.9.0.0/16", "table", "100")
			},
			want: []string{"--nft: policy routing conflict", "route table 100 already holds", "choose another --nft-route-table"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := netnstest.New(t, "fail")
			tc.setup(t, ns)
			before := snapshot(t, ns)
			checkFailedStart(t, bin, ns, before, tc.args, tc.want)
		})
	}

	// The fix the conflict error names works: another mark, and at
	// SIGTERM the namespace is back to its state with the other rule.
	t.Run("another mark", func(t *testing.T) {
		t.Parallel()
		ns := netnstest.New(t, "mark")
		ns.Run(t, "ip", "-4", "rule", "add", "fwmark", "0x1", "lookup", "200")
		before := snapshot(t, ns)
		p := launch(t, ns.Command(context.Background(), bin, "run", "--tproxy", "--nft", "--nft-mark", "0x2"))
		p.waitLog(t, "listening")
		if rules := ns.Run(t, "ip", "-4", "rule"); !strings.Contains(rules, "fwmark 0x2 lookup 100") {
			t.Errorf("ip rules with --nft-mark 0x2:\n%s", rules)
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		p.wait(t)
		snapshot(t, ns).diff(t, before, "after SIGTERM")
	})
}

// Environment of the children of TestGatewayWithoutPrivileges.
const (
	envBinary = "HAKA_TEST_BINARY"
	envArgs   = "HAKA_TEST_ARGS" // a JSON list
)

// TestGatewayWithoutPrivileges runs the binary from children that lack a
// capability or nftables: each start fails with the cause and the fix,
// exit 1, and leaves the namespace as it was.
func TestGatewayWithoutPrivileges(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv(envArgs)), &args); err != nil {
			netnstest.ExitChild(fmt.Errorf("%s: %w", envArgs, err))
		}
		cmd := ns.Command(context.Background(), os.Getenv(envBinary), args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		netnstest.ExitChild(err)
	}
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "ip", "nft")
	bin := buildBinary(t)
	for _, tc := range []struct {
		name  string
		child netnstest.Child
		args  []string
		want  []string
	}{
		{
			// The transparent listener opens (CAP_NET_RAW suffices),
			// then the rules cannot be installed: the listener is
			// closed again and nothing is left.
			"no CAP_NET_ADMIN", netnstest.Child{DropCaps: []int{unix.CAP_NET_ADMIN}},
			[]string{"run", "--tproxy", "--nft"},
			[]string{"--nft: changing nftables and policy routing needs CAP_NET_ADMIN", "AmbientCapabilities=CAP_NET_ADMIN", "NET_ADMIN"},
		},
		{
			"no CAP_NET_ADMIN nor CAP_NET_RAW", netnstest.Child{DropCaps: []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW}},
			[]string{"run", "--tproxy"},
			[]string{"--listen: transparent listener on :15001", "transparent sockets need CAP_NET_RAW or CAP_NET_ADMIN"},
		},
		{
			"no nftables", netnstest.Child{NoNetfilterNetlink: true},
			[]string{"run", "--tproxy", "--nft"},
			[]string{"--nft: nftables not available", "modprobe nf_tables", "CONFIG_NF_TABLES"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netnstest.New(t, "nopriv")
			before := snapshot(t, ns)
			c := tc.child
			c.Test, c.NS = "TestGatewayWithoutPrivileges", ns
			args, err := json.Marshal(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			c.Env = []string{envBinary + "=" + bin, envArgs + "=" + string(args)}
			res := netnstest.RunChild(t, c)
			if res.ExitCode != 1 {
				t.Errorf("exit %d, want 1:\n%s", res.ExitCode, res.Stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Stderr, w) {
					t.Errorf("standard error does not say %q:\n%s", w, res.Stderr)
				}
			}
			if strings.Contains(res.Stderr, `"msg":"listening"`) {
				t.Errorf("it said it was listening:\n%s", res.Stderr)
			}
			snapshot(t, ns).diff(t, before, "after the failed start")
		})
	}
}

// TestGatewayExitPaths runs the run command in process, in a namespace,
// through the exits the binary cannot be driven to from outside: a panic
// once the rules are in, a SIGTERM that arrives during the start, and
// rules that cannot be installed once the listener is open.
func TestGatewayExitPaths(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	const listen = ":16002"
	args := []string{"run", "--tproxy", "--nft", "--listen", listen}

	t.Run("panic", func(t *testing.T) {
		ns := netnstest.New(t, "panic")
		before := snapshot(t, ns)
		d, _, errOut := testDeps()
		d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return make(chan os.Signal), func() {} }
		var during string
		d.Ready = func(net.Addr, net.Addr) {
			during = ns.Run(t, "nft", "list", "table", "inet", "haka")
			panic("boom")
		}
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			_ = ns.Do(func() error {
				execute(args, d)
				return nil
			})
		}()
		if recovered != "boom" {
			t.Fatalf("recovered %v, want the panic to go through", recovered)
		}
		if !strings.Contains(during, "tproxy") {
			t.Fatalf("the rules were not in place while the proxy ran:\n%s", during)
		}
		if !strings.Contains(errOut.String(), `"msg":"nftables rules removed"`) {
			t.Errorf("no removal logged:\n%s", errOut)
		}
		snapshot(t, ns).diff(t, before, "after the panic")
	})

	t.Run("SIGTERM during the start", func(t *testing.T) {
		ns := netnstest.New(t, "early")
		before := snapshot(t, ns)
		d, _, errOut := testDeps()
		// The signal is there before the proxy has subscribed, let alone
		// installed anything: it must still take the normal exit.
		sigs := make(chan os.Signal, 1)
		sigs <- syscall.SIGTERM
		d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return sigs, func() {} }
		var code int
		if err := ns.Do(func() error { code = execute(args, d); return nil }); err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, errOut)
		}
		logs := errOut.String()
		for _, want := range []string{"nftables rules applied", "listening", "shutting down", "nftables rules removed", "stopped"} {
			i := strings.Index(logs, `"msg":"`+want)
			if i < 0 {
				t.Fatalf("no %q line:\n%s", want, logs)
			}
			logs = logs[i:]
		}
		snapshot(t, ns).diff(t, before, "after the exit")
	})

	t.Run("rules fail after the listener opened", func(t *testing.T) {
		ns := netnstest.New(t, "norules")
		d, _, errOut := testDeps()
		d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return make(chan os.Signal), func() {} }
		fail := errors.New("--nft: injected failure")
		d.WithNFT = func(nftcmd.Options, *zap.Logger, func() error) error { return fail }
		var code int
		if err := ns.Do(func() error { code = execute(args, d); return nil }); err != nil {
			t.Fatal(err)
		}
		if code != 1 || !strings.Contains(errOut.String(), fail.Error()) {
			t.Fatalf("exit %d, want 1 and the error:\n%s", code, errOut)
		}
		// The transparent listener was closed: the port is free again
		// (a listener still open would make this bind fail).
		if err := ns.Do(func() error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			return ln.Close()
		}); err != nil {
			t.Errorf("the listener was left open: %v", err)
		}
	})
}
