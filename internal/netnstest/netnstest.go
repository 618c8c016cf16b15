// Package netnstest builds throw-away network topologies out of real Linux
// network namespaces and veth pairs for tests that need routing, nftables
// or transparent sockets, and runs commands and Go functions inside them.
//
//	topo := netnstest.NewTopology(t) // client ── router ── server
//	topo.Server.Start(t, "openssl", "s_server", ...)
//	err := topo.Router.Do(func() error { return nft.Apply(cfg) })
//	out := topo.Client.Run(t, "curl", "-k", "https://"+topo.ServerIPv4.String())
//
// Every namespace gets a name unique to the test run, so tests and
// parallel runs of the same test never collide, and everything is torn
// down by t.Cleanup even when the test fails. Tests skip with a message
// saying why when they are not run as root.
package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CommandTimeout bounds every command run by Run: the tools the tests use
// (ip, nft, curl, openssl s_client) finish in milliseconds on a veth, so a
// command still running after this long is hung, and a hung test should
// fail with the command's name rather than at go test's global timeout.
const CommandTimeout = 30 * time.Second

// RequireRoot skips the test unless it runs as root with network
// namespaces available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces, veth pairs and nftables rules (run go test as root)")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("skipping: network namespaces are not available: %v", err)
	}
}

// RequireTool skips the test when an external program it needs is missing.
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("skipping: %s is not installed (apt-get install %s)", n, debianPackage(n))
		}
	}
}

func debianPackage(tool string) string {
	switch tool {
	case "ip":
		return "iproute2"
	case "nft":
		return "nftables"
	}
	return tool
}

// NS is a named network namespace that lives as long as the test.
type NS struct {
	// Name is the namespace's name under /run/netns (`ip netns exec NAME`).
	Name string
	h    netns.NsHandle

	mu    sync.Mutex
	procs []*exec.Cmd
}

// uniquePrefix makes the names of one test run's namespaces unique on the
// machine: 4 random bytes, so parallel runs do not collide, and a fixed
// "hk" so that a leftover is recognisable in `ip netns list`.
func uniquePrefix(t testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random name: %v", err)
	}
	return "hk" + hex.EncodeToString(b[:])
}

// New creates a network namespace named after role (a short word such as
// "router") with its loopback up, and removes it when the test ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	RequireRoot(t)
	return newNamed(t, uniquePrefix(t)+"-"+role)
}

func newNamed(t testing.TB, name string) *NS {
	t.Helper()
	h, err := createNamed(name)
	if err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	n := &NS{Name: name, h: h}
	t.Cleanup(func() { n.destroy(t) })
	if err := n.LinkUp("lo"); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	// Links created from now on skip IPv6 duplicate address detection,
	// so their link-local addresses are usable at once (see Settle).
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := n.Sysctl(k, "0"); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// SettleTimeout bounds Settle. Without duplicate address detection the
// kernel finishes an address from a work queue within microseconds; a
// second means something is wrong.
const SettleTimeout = time.Second

// Settle waits until every IPv6 address of the namespace is final (not
// tentative) and has its route in the local table. The kernel adds
// link-local addresses and their routes asynchronously after a link comes
// up, so a test that compares routing tables before and after something
// must let them appear first. The kernel announces addresses but not
// this combined state, hence a poll, bounded by SettleTimeout.
func (n *NS) Settle() error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(SettleTimeout)
	for {
		pending, err := n.unsettled(h)
		if err != nil {
			return err
		}
		if pending == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: IPv6 address %s not ready after %v", n.Name, pending, SettleTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *NS) unsettled(h *netlink.Handle) (string, error) {
	links, err := h.LinkList()
	if err != nil {
		return "", err
	}
	local, err := h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", err
	}
	routed := map[string]bool{}
	for _, r := range local {
		if r.Dst != nil {
			routed[r.Dst.IP.String()] = true
		}
	}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().Name == "lo" {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return "", err
		}
		hasLinkLocal := false
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() {
				hasLinkLocal = true
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 || !routed[a.IP.String()] {
				return a.IP.String() + " on " + l.Attrs().Name, nil
			}
		}
		if !hasLinkLocal && l.Attrs().OperState == netlink.OperUp {
			return "link-local on " + l.Attrs().Name, nil
		}
	}
	return "", nil
}

// createNamed creates the namespace on a locked thread and brings the
// thread back to where it was: netns.NewNamed leaves the calling thread in
// the new namespace.
func createNamed(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("current namespace: %w", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// that the runtime throws it away with this goroutine.
		return netns.None(), fmt.Errorf("restore namespace after creating %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return netns.None(), nerr
	}
	return h, nil
}

func (n *NS) destroy(t testing.TB) {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	for _, p := range procs {
		if p.Process != nil && p.ProcessState == nil {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	// Deleting the namespace destroys its veth ends, and with them the
	// peers in the other namespaces.
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete network namespace %s: %v", n.Name, err)
	}
	n.h.Close()
}

// Handle returns the namespace's handle (an open fd), valid until the test
// ends.
func (n *NS) Handle() netns.NsHandle { return n.h }

// Do runs fn on a thread that is inside the namespace. Sockets that fn
// creates belong to the namespace for their whole life, whichever thread
// uses them later; goroutines that fn starts do not run in the namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", n.Name, err)
	}
	restored := false
	defer func() {
		if err := netns.Set(orig); err == nil {
			restored = true
		}
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise the thread stays locked and dies with the goroutine.
	}()
	return fn()
}

// Netlink returns a netlink handle whose sockets live in the namespace.
// The caller closes it.
func (n *NS) Netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Name, err)
	}
	return h, nil
}

// LinkUp sets a link of the namespace up.
func (n *NS) LinkUp(name string) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, n.Name, err)
	}
	return nil
}

// AddAddr assigns an address to a link. IPv6 addresses skip duplicate
// address detection, so they are usable at once instead of after a second
// or more of "tentative" state.
func (n *NS) AddAddr(link string, p netip.Prefix) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s in %s: %w", link, n.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", p, link, n.Name, err)
	}
	return nil
}

// AddDefaultRoute adds a default route via gw (IPv4 or IPv6).
func (n *NS) AddDefaultRoute(gw netip.Addr) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	bits := 32
	if gw.Is6() {
		bits = 128
	}
	dst := &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, n.Name, err)
	}
	return nil
}

// Sysctl writes a network sysctl of the namespace, key in dotted form
// ("net.ipv4.ip_forward"). /proc/sys/net shows the namespace of the
// thread that opens it, hence Do.
func (n *NS) Sysctl(key, value string) error {
	if !strings.HasPrefix(key, "net.") {
		return fmt.Errorf("sysctl %s: only net.* sysctls are per namespace", key)
	}
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// Command returns a command that runs inside the namespace
// (`ip netns exec NAME name args...`).
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its standard output;
// the test fails, with the command's output, if it fails or takes longer
// than CommandTimeout.
func (n *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Output(name, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// Output is Run that returns the error instead of failing the test.
func (n *NS) Output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := n.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("in %s: %s %s: %w\nstdout: %s\nstderr: %s",
			n.Name, name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Start starts a long-running command inside the namespace; it is killed
// when the test ends if it is still running.
func (n *NS) Start(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("in %s: start %v: %v", n.Name, cmd.Args, err)
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd)
	n.mu.Unlock()
}

// Veth connects two namespaces with a veth pair, aName in a and bName in
// b, both up. The ends are created inside their namespaces, so their names
// need only be unique there.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	h, err := a.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.h)),
	}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s ↔ %s/%s: %v", a.Name, aName, b.Name, bName, err)
	}
	if err := a.LinkUp(aName); err != nil {
		t.Fatal(err)
	}
	if err := b.LinkUp(bName); err != nil {
		t.Fatal(err)
	}
}

// Topology is a client and a server on two subnets with a router between
// them, dual-stack, with forwarding on in the router:
//
//	client eth0 ──── cli router srv ──── eth0 server
//	192.0.2.2/24   192.0.2.1  198.51.100.1   198.51.100.2/24
//	2001:db8:c::2  2001:db8:c::1  2001:db8:5::1  2001:db8:5::2
//
// The addresses come from the documentation ranges (RFC 5737, RFC 3849):
// they exist only inside the test's namespaces.
type Topology struct {
	Client, Router, Server *NS

	ClientIPv4, RouterClientIPv4, RouterServerIPv4, ServerIPv4 netip.Addr
	ClientIPv6, RouterClientIPv6, RouterServerIPv6, ServerIPv6 netip.Addr
}

// Link names inside the namespaces of a Topology.
const (
	// ClientLink is the client's and the server's interface.
	ClientLink = "eth0"
	// RouterClientLink is the router's interface towards the client.
	RouterClientLink = "cli"
	// RouterServerLink is the router's interface towards the server.
	RouterServerLink = "srv"
)

// NewTopology builds the client ── router ── server topology.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	RequireRoot(t)
	prefix := uniquePrefix(t)
	topo := &Topology{
		Client: newNamed(t, prefix+"-client"),
		Router: newNamed(t, prefix+"-router"),
		Server: newNamed(t, prefix+"-server"),

		ClientIPv4:       netip.MustParseAddr("192.0.2.2"),
		RouterClientIPv4: netip.MustParseAddr("192.0.2.1"),
		RouterServerIPv4: netip.MustParseAddr("198.51.100.1"),
		ServerIPv4:       netip.MustParseAddr("198.51.100.2"),
		ClientIPv6:       netip.MustParseAddr("2001:db8:c::2"),
		RouterClientIPv6: netip.MustParseAddr("2001:db8:c::1"),
		RouterServerIPv6: netip.MustParseAddr("2001:db8:5::1"),
		ServerIPv6:       netip.MustParseAddr("2001:db8:5::2"),
	}
	Veth(t, topo.Router, RouterClientLink, topo.Client, ClientLink)
	Veth(t, topo.Router, RouterServerLink, topo.Server, ClientLink)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p4 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }
	p6 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 64) }
	must(topo.Client.AddAddr(ClientLink, p4(topo.ClientIPv4)))
	must(topo.Client.AddAddr(ClientLink, p6(topo.ClientIPv6)))
	must(topo.Router.AddAddr(RouterClientLink, p4(topo.RouterClientIPv4)))
	must(topo.Router.AddAddr(RouterClientLink, p6(topo.RouterClientIPv6)))
	must(topo.Router.AddAddr(RouterServerLink, p4(topo.RouterServerIPv4)))
	must(topo.Router.AddAddr(RouterServerLink, p6(topo.RouterServerIPv6)))
	must(topo.Server.AddAddr(ClientLink, p4(topo.ServerIPv4)))
	must(topo.Server.AddAddr(ClientLink, p6(topo.ServerIPv6)))
	must(topo.Client.AddDefaultRoute(topo.RouterClientIPv4))
	must(topo.Client.AddDefaultRoute(topo.RouterClientIPv6))
	must(topo.Server.AddDefaultRoute(topo.RouterServerIPv4))
	must(topo.Server.AddDefaultRoute(topo.RouterServerIPv6))
	must(topo.Router.Sysctl("net.ipv4.ip_forward", "1"))
	must(topo.Router.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	for _, n := range []*NS{topo.Client, topo.Router, topo.Server} {
		must(n.Settle())
	}
	return topo
}
