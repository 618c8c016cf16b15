package tproxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/nft"
	"golang.org/x/sys/unix"
)

// The end-to-end tests build client ── router ── server namespaces, run a
// real openssl s_server and a Go TLS server in the server namespace, a
// minimal transparent relay on the router (standing in for the proxy:
// accept, dial the original destination, copy both ways), install the
// rules with nft.Apply, and check that openssl s_client, curl and a Go
// client in the client namespace reach the server's own address without
// knowing of the relay.

const (
	relayPort   = 15001
	opensslPort = 443
	goTLSPort   = 8443
	// e2eTimeout bounds each client's exchange: a veth hop answers in
	// microseconds, so this only matters when something is broken.
	e2eTimeout = 10 * time.Second
)

// testPKI is a self-signed certificate for the server's addresses.
type testPKI struct {
	certFile, keyFile string
	cert              tls.Certificate
	pool              *x509.CertPool
}

func newPKI(t *testing.T, ips ...netip.Addr) testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "haka e2e server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := testPKI{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(p.certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if p.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AppendCertsFromPEM(certPEM)
	return p
}

// startOpenSSLServer runs `openssl s_server -www` on port 443 (both
// families) in ns and waits until it prints ACCEPT, its ready line.
func startOpenSSLServer(t *testing.T, ns *netnstest.NS, pki testPKI) {
	t.Helper()
	cmd := ns.Command(context.Background(), "openssl", "s_server", "-www",
		"-accept", fmt.Sprint(opensslPort), "-cert", pki.certFile, "-key", pki.keyFile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ns.Start(t, cmd)
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
	case <-time.After(e2eTimeout):
		t.Fatal("openssl s_server did not print ACCEPT")
	}
}

// peerServer is a Go TLS server that writes back the peer address it sees
// and records it.
type peerServer struct {
	mu    sync.Mutex
	peers []netip.AddrPort
}

func startPeerServer(t *testing.T, ns *netnstest.NS, pki testPKI) *peerServer {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", goTLSPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ps := &peerServer{}
	tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pki.cert}})
	var wg sync.WaitGroup
	t.Cleanup(func() { tln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			peer, _ := ClientAddr(c)
			ps.mu.Lock()
			ps.peers = append(ps.peers, peer)
			ps.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(e2eTimeout))
				_, _ = fmt.Fprintf(c, "%s\n", peer)
			}()
		}
	}()
	return ps
}

// flow is what the relay saw of one connection.
type flow struct {
	client, dst, upstreamLocal netip.AddrPort
	err                        error
}

// relay is the minimal transparent proxy: accept on the tproxy listener,
// dial the original destination (from the client's address with spoof),
// copy both ways with half-close.
type relay struct {
	router *netnstest.NS
	dialer Dialer
	ln     *net.TCPListener

	mu    sync.Mutex
	flows []flow
	conns []net.Conn
	wg    sync.WaitGroup
}

func startRelay(t *testing.T, router *netnstest.NS, spoof bool) *relay {
	t.Helper()
	r := &relay{router: router, dialer: Dialer{Spoof: spoof, Timeout: e2eTimeout}}
	if err := router.Do(func() (err error) {
		r.ln, err = Listen(context.Background(), fmt.Sprintf(":%d", relayPort), ListenOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	r.wg.Add(1)
	go r.serve()
	return r
}

func (r *relay) stop() {
	r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *relay) track(c net.Conn) {
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.AcceptTCP()
		if err != nil {
			return
		}
		r.track(c)
		r.wg.Add(1)
		go r.handle(c)
	}
}

func (r *relay) handle(c *net.TCPConn) {
	defer r.wg.Done()
	defer c.Close()
	f := flow{}
	f.client, f.err = ClientAddr(c)
	if f.err == nil {
		f.dst, f.err = OriginalDst(c)
	}
	var up *net.TCPConn
	if f.err == nil {
		// The dial creates a socket, which must be created in the
		// router's namespace.
		f.err = r.router.Do(func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
			defer cancel()
			up, err = r.dialer.DialFlow(ctx, &inspect.Flow{Src: f.client, Dst: f.dst})
			return err
		})
	}
	if up != nil {
		r.track(up)
		f.upstreamLocal, _ = addrPort(up.LocalAddr())
	}
	r.mu.Lock()
	r.flows = append(r.flows, f)
	r.mu.Unlock()
	if f.err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		_ = up.CloseWrite()
	}()
	_, _ = io.Copy(c, up)
	_ = c.CloseWrite()
	<-done
}

func (r *relay) seen() []flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]flow(nil), r.flows...)
}

// gateway is a topology with the servers, the relay and the rules.
type gateway struct {
	topo  *netnstest.Topology
	pki   testPKI
	peers *peerServer
	relay *relay
	cfg   nft.Config
}

func newGateway(t *testing.T, spoof bool) *gateway {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "ip", "nft", "openssl", "curl")
	topo := netnstest.NewTopology(t)
	g := &gateway{topo: topo, pki: newPKI(t, topo.ServerIPv4, topo.ServerIPv6)}
	startOpenSSLServer(t, topo.Server, g.pki)
	g.peers = startPeerServer(t, topo.Server, g.pki)
	g.relay = startRelay(t, topo.Router, spoof)
	g.cfg = nft.DefaultConfig()
	g.cfg.ListenPort = relayPort
	g.cfg.Ports = []uint16{opensslPort, goTLSPort}
	return g
}

func (g *gateway) apply(t *testing.T) {
	t.Helper()
	if err := g.topo.Router.Do(func() error { return nft.Apply(g.cfg) }); err != nil {
		t.Fatalf("nft.Apply: %v", err)
	}
}

func (g *gateway) remove(t *testing.T) {
	t.Helper()
	if err := g.topo.Router.Do(func() error { return nft.Remove(g.cfg) }); err != nil {
		t.Fatalf("nft.Remove: %v", err)
	}
}

func hostPort(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), fmt.Sprint(port))
}

func urlHost(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// curl fetches s_server's -www page from the client namespace.
func (g *gateway) curl(t *testing.T, server netip.Addr) {
	t.Helper()
	out := g.topo.Client.Run(t, "curl", "-sS", "-k", "--max-time", fmt.Sprint(int(e2eTimeout.Seconds())),
		"https://"+urlHost(server)+"/")
	if !strings.Contains(out, "s_server -www") {
		t.Fatalf("curl https://%s/ did not get s_server's page:\n%s", urlHost(server), out)
	}
}

// sClient runs openssl s_client against the server and checks it saw the
// server's certificate.
func (g *gateway) sClient(t *testing.T, server netip.Addr) {
	t.Helper()
	out := g.topo.Client.Run(t, "sh", "-c", "openssl s_client -connect "+hostPort(server, opensslPort)+" </dev/null")
	for _, want := range []string{"CONNECTED", "CN = haka e2e server"} {
		if !strings.Contains(out, want) {
			t.Fatalf("openssl s_client to %s: no %q in\n%s", server, want, out)
		}
	}
}

// goClient connects from the client namespace to the Go TLS server,
// verifying its certificate, and returns the peer address it reported.
func (g *gateway) goClient(t *testing.T, server netip.Addr) netip.AddrPort {
	t.Helper()
	var c *tls.Conn
	err := g.topo.Client.Do(func() (err error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: e2eTimeout}, Config: &tls.Config{RootCAs: g.pki.pool}}
		nc, err := d.DialContext(context.Background(), "tcp", hostPort(server, goTLSPort))
		if err == nil {
			c = nc.(*tls.Conn)
		}
		return err
	})
	if err != nil {
		t.Fatalf("TLS to %s: %v", server, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(e2eTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("TLS to %s: read: %v", server, err)
	}
	peer, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("server reported %q: %v", line, err)
	}
	return peer
}

type routerState struct{ ruleset, rules, routes string }

func snapshotRouter(t *testing.T, ns *netnstest.NS) routerState {
	t.Helper()
	return routerState{
		ruleset: ns.Run(t, "nft", "list", "ruleset"),
		rules:   ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule"),
		routes:  ns.Run(t, "ip", "-4", "route", "show", "table", "all") + ns.Run(t, "ip", "-6", "route", "show", "table", "all"),
	}
}

// TestGatewayEndToEnd is the gateway deployment: clients reach servers
// through the relay without knowing of it, with and without spoofing, over
// IPv4 and IPv6; after Remove traffic flows directly and the router's
// ruleset, rules and routes are as they were.
func TestGatewayEndToEnd(t *testing.T) {
	for _, spoof := range []bool{false, true} {
		t.Run(fmt.Sprintf("spoof=%v", spoof), func(t *testing.T) {
			t.Parallel()
			g := newGateway(t, spoof)
			topo := g.topo
			before := snapshotRouter(t, topo.Router)
			g.apply(t)

			type family struct {
				name                   string
				client, server, router netip.Addr
			}
			for _, fam := range []family{
				{"ipv4", topo.ClientIPv4, topo.ServerIPv4, topo.RouterServerIPv4},
				{"ipv6", topo.ClientIPv6, topo.ServerIPv6, topo.RouterServerIPv6},
			} {
				n := len(g.relay.seen())
				g.curl(t, fam.server)
				g.sClient(t, fam.server)
				peer := g.goClient(t, fam.server)

				flows := g.relay.seen()[n:]
				if len(flows) != 3 {
					t.Fatalf("%s: the relay saw %d connections, want 3 (curl, s_client, Go): %+v", fam.name, len(flows), flows)
				}
				for i, f := range flows {
					wantPort := opensslPort
					if i == 2 {
						wantPort = goTLSPort
					}
					if f.err != nil {
						t.Errorf("%s: relay: %v", fam.name, f.err)
					}
					if f.client.Addr() != fam.client {
						t.Errorf("%s: relay saw the client as %s, want %s", fam.name, f.client, fam.client)
					}
					if f.dst != netip.AddrPortFrom(fam.server, uint16(wantPort)) {
						t.Errorf("%s: original destination %s, want %s", fam.name, f.dst, netip.AddrPortFrom(fam.server, uint16(wantPort)))
					}
				}
				// Who the server sees: the client itself when spoofing,
				// else the router's address on the server's side.
				wantPeer := fam.router
				if spoof {
					wantPeer = fam.client
				}
				if peer.Addr() != wantPeer {
					t.Errorf("%s: the server saw the connection from %s, want %s", fam.name, peer.Addr(), wantPeer)
				}
				if up := flows[2].upstreamLocal; up != peer {
					t.Errorf("%s: the relay's upstream socket is %s but the server saw %s", fam.name, up, peer)
				}
				if spoof && peer.Port() == flows[2].client.Port() {
					// Not an error by itself, but the kernel picking the
					// client's own port is a 1 in ~28000 event; seeing
					// it here means the port was copied.
					t.Logf("%s: upstream port %d equals the client's", fam.name, peer.Port())
				}
			}

			g.remove(t)
			n := len(g.relay.seen())
			g.curl(t, topo.ServerIPv4)
			g.curl(t, topo.ServerIPv6)
			direct := g.goClient(t, topo.ServerIPv4)
			if got := len(g.relay.seen()); got != n {
				t.Errorf("after Remove the relay still saw %d connections", got-n)
			}
			if direct.Addr() != topo.ClientIPv4 {
				t.Errorf("after Remove the server saw %s, want the client %s directly", direct.Addr(), topo.ClientIPv4)
			}
			if after := snapshotRouter(t, topo.Router); after != before {
				t.Errorf("the router's state after Remove differs from before Apply:\nbefore: %+v\nafter:  %+v", before, after)
			}
		})
	}
}

// TestGatewayFailsClosed: with the rules installed and no proxy listening,
// a connection to an intercepted port is refused (TCP reset), not
// forwarded uninspected; with FailOpen it reaches the server directly.
func TestGatewayFailsClosed(t *testing.T) {
	t.Parallel()
	g := newGateway(t, false)
	g.relay.stop()
	g.apply(t)
	for _, server := range []netip.Addr{g.topo.ServerIPv4, g.topo.ServerIPv6} {
		err := g.topo.Client.Do(func() error {
			c, err := net.DialTimeout("tcp", hostPort(server, opensslPort), e2eTimeout)
			if err == nil {
				c.Close()
			}
			return err
		})
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("connect to %s with no proxy listening: %v, want connection refused", server, err)
		}
	}
	g.cfg.FailOpen = true
	g.apply(t)
	g.curl(t, g.topo.ServerIPv4)
	if peer := g.goClient(t, g.topo.ServerIPv6); peer.Addr() != g.topo.ClientIPv6 {
		t.Errorf("fail-open: the server saw %s, want the client directly", peer.Addr())
	}
}

func TestListenPortInUse(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()
	ns := netnstest.New(t, "inuse")
	err := ns.Do(func() error {
		ln, err := Listen(context.Background(), ":15001", ListenOptions{})
		if err != nil {
			return err
		}
		defer ln.Close()
		_, err = Listen(context.Background(), ":15001", ListenOptions{})
		return err
	})
	if err == nil {
		t.Fatal("a second listener on the same port succeeded")
	}
	for _, want := range []string{"already in use", "ss -ltnp", "--listen"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// With ReusePort on both, sharing is the point.
	if err := ns.Do(func() error {
		a, err := Listen(context.Background(), ":15002", ListenOptions{ReusePort: true})
		if err != nil {
			return err
		}
		defer a.Close()
		b, err := Listen(context.Background(), ":15002", ListenOptions{ReusePort: true})
		if err != nil {
			return err
		}
		return b.Close()
	}); err != nil {
		t.Errorf("two SO_REUSEPORT listeners: %v", err)
	}
}

// TestGatewayLeavesTheListenPortAlone: a forwarded connection to a server
// on the same port as the transparent listener is not taken by the
// listener (the socket rule matches connection sockets only, not a
// wildcard listener).
func TestGatewayLeavesTheListenPortAlone(t *testing.T) {
	t.Parallel()
	g := newGateway(t, false)
	g.apply(t)
	var ln net.Listener
	if err := g.topo.Server.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", relayPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		defer c.Close()
		p, _ := ClientAddr(c)
		accepted <- p
	}()
	var c net.Conn
	if err := g.topo.Client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", hostPort(g.topo.ServerIPv4, relayPort), e2eTimeout)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case p := <-accepted:
		if p.Addr() != g.topo.ClientIPv4 {
			t.Errorf("the server saw %s, want the client directly", p)
		}
	case <-time.After(e2eTimeout):
		t.Fatal("the server never saw the connection")
	}
	if n := len(g.relay.seen()); n != 0 {
		t.Errorf("the relay took %d connections to port %d that were not for it", n, relayPort)
	}
}
