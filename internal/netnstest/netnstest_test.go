package netnstest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { Main(m) }

// echoOnce listens on addr inside ns and answers one connection with the
// peer address it saw.
func echoOnce(t *testing.T, ns *NS, addr netip.AddrPort) <-chan error {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = io.WriteString(c, c.RemoteAddr().String())
		done <- err
	}()
	return done
}

func dialFrom(t *testing.T, ns *NS, dst netip.AddrPort) string {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", dst, ns.Name, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTopologyRoutesBothFamilies(t *testing.T) {
	t.Parallel()
	topo := NewTopology(t)
	for _, tc := range []struct {
		server, client netip.Addr
	}{
		{topo.ServerIPv4, topo.ClientIPv4},
		{topo.ServerIPv6, topo.ClientIPv6},
	} {
		dst := netip.AddrPortFrom(tc.server, 7000)
		done := echoOnce(t, topo.Server, dst)
		got := dialFrom(t, topo.Client, dst)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// The server sees the client's own address: the router forwards,
		// it does not masquerade.
		peer, err := netip.ParseAddrPort(got)
		if err != nil {
			t.Fatalf("server saw %q: %v", got, err)
		}
		if peer.Addr() != tc.client {
			t.Errorf("server saw the connection from %s, want the client %s", peer.Addr(), tc.client)
		}
	}
}

func TestNamespacesAreIsolatedAndRemoved(t *testing.T) {
	t.Parallel()
	var names []string
	t.Run("build", func(t *testing.T) {
		topo := NewTopology(t)
		a := New(t, "extra")
		names = []string{topo.Client.Name, topo.Router.Name, topo.Server.Name, a.Name}
		for _, n := range names {
			if _, err := os.Stat(filepath.Join("/run/netns", n)); err != nil {
				t.Errorf("namespace %s is not under /run/netns: %v", n, err)
			}
		}
		// The test's namespaces are not the one the test runs in.
		self, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		if self.Equal(topo.Router.Handle()) {
			t.Fatal("the router namespace is the test's own")
		}
		// Commands see the namespace's links, not the host's.
		out := topo.Router.Run(t, "ip", "-o", "link", "show")
		for _, l := range []string{"lo", RouterClientLink, RouterServerLink} {
			if !strings.Contains(out, " "+l+"@") && !strings.Contains(out, " "+l+":") {
				t.Errorf("router links %q lack %s", out, l)
			}
		}
		if strings.Count(out, "\n") != 3 {
			t.Errorf("router has links other than lo, cli, srv: %q", out)
		}
		// Sysctls are per namespace.
		var fwd []byte
		if err := topo.Router.Do(func() (err error) {
			fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(fwd)) != "1" {
			t.Errorf("router ip_forward = %q, want 1", fwd)
		}
	})
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s survived its test: %v", n, err)
		}
	}
}

func TestStartedProcessesAreKilled(t *testing.T) {
	t.Parallel()
	var pid int
	t.Run("start", func(t *testing.T) {
		ns := New(t, "proc")
		cmd := ns.Command(context.Background(), "sleep", "600")
		ns.Start(t, cmd)
		pid = cmd.Process.Pid
	})
	// The cleanup waited for the process: it is gone, not a zombie.
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("process %d still exists after the test: %v", pid, err)
	}
}

func TestDoRestoresTheThreadsNamespace(t *testing.T) {
	t.Parallel()
	ns := New(t, "do")
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	wantErr := errors.New("from fn")
	err = ns.Do(func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(ns.Handle()) {
			return errors.New("fn does not run in the namespace")
		}
		return wantErr
	})
	if !errors.Is(err, wantErr) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Error("Do left the thread in another namespace")
	}
}

// TestChild checks the child mechanism itself: the dropped capability is
// gone in the child, and netfilter netlink sockets fail as on a kernel
// without nfnetlink.
func TestChildRestrictions(t *testing.T) {
	if InChild() {
		eff, err := effectiveCaps()
		if err != nil {
			ExitChild(err)
		}
		if eff&(1<<unix.CAP_NET_ADMIN) != 0 {
			ExitChild(errors.New("CAP_NET_ADMIN is effective"))
		}
		if eff&(1<<unix.CAP_NET_RAW) == 0 {
			ExitChild(errors.New("CAP_NET_RAW was dropped too"))
		}
		_, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if !errors.Is(err, unix.EPROTONOSUPPORT) {
			ExitChild(errors.New("netfilter netlink socket: " + errString(err)))
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			ExitChild(err)
		}
		unix.Close(fd)
		ExitChild(nil)
	}
	RequireRoot(t)
	res := RunChild(t, Child{Test: t.Name(), DropCaps: []int{unix.CAP_NET_ADMIN}, NoNetfilterNetlink: true})
	if res.ExitCode != 0 {
		t.Fatalf("child exited %d: %s", res.ExitCode, res.Stderr)
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
