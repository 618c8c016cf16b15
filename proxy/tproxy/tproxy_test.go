package tproxy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"golang.org/x/sys/unix"
)

func netListen(a netip.AddrPort) (net.Listener, error) {
	return net.Listen("tcp", a.String())
}

func getsockoptInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestListenSetsTransparent checks the options on the listening socket
// itself, for an IPv4 socket and a dual-stack one.
func TestListenSetsTransparent(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()
	ns := netnstest.New(t, "listen")
	if err := ns.Do(func() error {
		for _, addr := range []string{"127.0.0.1:0", ":0"} {
			ln, err := Listen(context.Background(), addr, ListenOptions{ReusePort: true})
			if err != nil {
				return err
			}
			defer ln.Close()
			if v := getsockoptInt(t, ln, unix.SOL_IP, unix.IP_TRANSPARENT); v != 1 {
				t.Errorf("%s: IP_TRANSPARENT = %d", addr, v)
			}
			if v := getsockoptInt(t, ln, unix.SOL_SOCKET, unix.SO_REUSEPORT); v != 1 {
				t.Errorf("%s: SO_REUSEPORT = %d", addr, v)
			}
			if addr == ":0" {
				if v := getsockoptInt(t, ln, unix.SOL_IPV6, unix.IPV6_TRANSPARENT); v != 1 {
					t.Errorf("%s: IPV6_TRANSPARENT = %d", addr, v)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestAddressesWithoutTPROXY: on a plain connection the original
// destination is the listener's address, and a client that came over a
// dual-stack socket as a v4-mapped address is reported as IPv4.
func TestAddressesWithoutTPROXY(t *testing.T) {
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack listener here: %v", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := (&Dialer{}).Dial(context.Background(), netip.AddrPort{}, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer s.Close()
	dst, err := OriginalDst(s)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)); dst != want {
		t.Errorf("OriginalDst = %s, want %s", dst, want)
	}
	src, err := ClientAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	if !src.Addr().Is4() || src != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Errorf("ClientAddr = %s, want the client's IPv4 %s", src, c.LocalAddr())
	}
}

func TestSpoofFamilyMismatch(t *testing.T) {
	_, err := (&Dialer{Spoof: true}).Dial(context.Background(),
		netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("192.0.2.1:443"))
	if err == nil || !strings.Contains(err.Error(), "different address families") {
		t.Fatalf("got %v", err)
	}
}

func TestControlRejectsOtherNetworks(t *testing.T) {
	if err := Control("unix", "", nil); err == nil || !strings.Contains(err.Error(), `"unix"`) {
		t.Fatalf("got %v", err)
	}
}
