package tproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// TestCapabilities measures, in children that dropped capabilities, what
// the transparent listener and the spoofing dialer need on this kernel:
// IP_TRANSPARENT takes CAP_NET_RAW or CAP_NET_ADMIN, either one.
func TestCapabilities(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		err = ns.Do(func() error {
			ln, lerr := Listen(context.Background(), "127.0.0.1:15001", ListenOptions{})
			fmt.Printf("listen: %v\n", verdict(lerr))
			if lerr == nil {
				defer ln.Close()
			}
			// A spoofed dial from another loopback address to a plain
			// listener: the transparent bind is what needs the capability.
			dst := netip.MustParseAddrPort("127.0.0.1:15002")
			pl, err := netListen(dst)
			if err != nil {
				return err
			}
			defer pl.Close()
			c, derr := (&Dialer{Spoof: true}).Dial(context.Background(), netip.MustParseAddrPort("127.0.0.9:4000"), dst)
			fmt.Printf("spoofed dial: %v\n", verdict(derr))
			if derr == nil {
				c.Close()
			}
			return nil
		})
		netnstest.ExitChild(err)
	}
	netnstest.RequireRoot(t)
	for _, tc := range []struct {
		name string
		drop []int
		want string
	}{
		{"all", nil, "listen: ok\nspoofed dial: ok\n"},
		{"no NET_ADMIN", []int{unix.CAP_NET_ADMIN}, "listen: ok\nspoofed dial: ok\n"},
		{"no NET_RAW", []int{unix.CAP_NET_RAW}, "listen: ok\nspoofed dial: ok\n"},
		{"neither", []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW}, "listen: ErrPermission\nspoofed dial: ErrPermission\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netnstest.New(t, "caps")
			res := netnstest.RunChild(t, netnstest.Child{Test: "TestCapabilities", NS: ns, DropCaps: tc.drop})
			if res.ExitCode != 0 {
				t.Fatalf("child exited %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
			}
			if res.Stdout != tc.want {
				t.Errorf("without %v:\n%s\nwant:\n%s", tc.drop, res.Stdout, tc.want)
			}
		})
	}
}

func verdict(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrPermission) && errors.Is(err, unix.EPERM) &&
		strings.Contains(err.Error(), "IP_TRANSPARENT") && strings.Contains(err.Error(), "CAP_NET_ADMIN"):
		return "ErrPermission"
	}
	return "unexpected error: " + err.Error()
}
