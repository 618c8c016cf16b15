package nftcmd

import (
	"bytes"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"github.com/hakaproxy/haka-proxy/proxy/nft"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// record runs the command with operations that record the config.
func record(t *testing.T, args ...string) (nft.Config, string, error) {
	t.Helper()
	var got nft.Config
	rec := func(c nft.Config) error { got = c; return nil }
	ops := operations{apply: rec, remove: rec, show: func(_ io.Writer, c nft.Config) error { got = c; return nil }}
	var out bytes.Buffer
	cmd := newCmd(DefaultOptions(), &out, io.Discard, ops)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return got, out.String(), err
}

func TestFlags(t *testing.T) {
	got, out, err := record(t, "apply", "--listen", "[::]:16000", "--nft-ports", "443, 8443",
		"--nft-iface", "eth1,eth2", "--nft-mark", "0x10/0xf0", "--nft-route-table", "200",
		"--no-ipv6", "--nft-fail-open")
	if err != nil {
		t.Fatal(err)
	}
	want := nft.Config{
		Table: "haka", Ports: []uint16{443, 8443}, Interfaces: []string{"eth1", "eth2"},
		ListenPort: 16000, Mark: 0x10, MarkMask: 0xf0, RouteTable: 200, IPv6: false, FailOpen: true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config\n%+v\nwant\n%+v", got, want)
	}
	if !strings.Contains(out, "applied: table inet haka: TCP ports 443,8443 on eth1, eth2 → :16000 (IPv4 only), fwmark 0x10/0xf0 lookup 200") {
		t.Errorf("apply printed %q", out)
	}

	// Defaults, and flags before the subcommand.
	got, _, err = record(t, "--ipv6=true", "show")
	if err != nil {
		t.Fatal(err)
	}
	want = nft.Config{Table: "haka", Ports: []uint16{443}, ListenPort: 15001, Mark: 1, MarkMask: 0xffffffff, RouteTable: 100, IPv6: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults\n%+v\nwant\n%+v", got, want)
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"apply", "--listen", "127.0.0.1:15001"}, "use --listen :15001"},
		{[]string{"apply", "--listen", "15001"}, "[HOST]:PORT"},
		{[]string{"apply", "--listen", ":0"}, "not 1-65535"},
		{[]string{"apply", "--nft-ports", "443,0"}, `port "0" is not 1-65535`},
		{[]string{"apply", "--nft-ports", "https"}, `port "https"`},
		{[]string{"apply", "--nft-mark", "0"}, "non-zero"},
		{[]string{"apply", "--nft-mark", "0x3/0x1"}, "outside its mask"},
		{[]string{"apply", "--nft-route-table", "x"}, "routing table"},
		{[]string{"apply", "extra"}, "unknown command"},
	} {
		_, _, err := record(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	// Errors the nft package finds come through the real command too.
	cmd := New(DefaultOptions(), io.Discard, io.Discard)
	cmd.SetArgs([]string{"show", "--nft-route-table", "254"})
	if err := cmd.Execute(); !errors.Is(err, nft.ErrInvalidConfig) || !strings.Contains(err.Error(), "--nft-route-table") {
		t.Errorf("route table 254: %v", err)
	}
}

func TestShowCommand(t *testing.T) {
	var out bytes.Buffer
	cmd := New(DefaultOptions(), &out, io.Discard)
	cmd.SetArgs([]string{"show", "--nft-ports", "443,8443"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	want, err := nft.Ruleset(nft.Config{ListenPort: 15001, Ports: []uint16{443, 8443}, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{want, "ip -4 rule add fwmark 0x1 lookup 100 protocol 104", "ip -6 route add local ::/0 dev lo table 100 protocol 104"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("show printed\n%s\nwithout\n%s", out.String(), w)
		}
	}
}

// runInNS executes the real command inside ns.
func runInNS(t *testing.T, ns *netnstest.NS, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := New(DefaultOptions(), &out, io.Discard)
	cmd.SetArgs(args)
	err := ns.Do(cmd.Execute)
	return out.String(), err
}

func TestApplyRemoveCommands(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	ns := netnstest.New(t, "cmd")
	before := ns.Run(t, "nft", "list", "ruleset") + ns.Run(t, "ip", "rule") + ns.Run(t, "ip", "-6", "rule")
	if _, err := runInNS(t, ns, "apply", "--listen", ":16001"); err != nil {
		t.Fatal(err)
	}
	if _, err := runInNS(t, ns, "apply", "--listen", ":16001"); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	show, err := runInNS(t, ns, "show", "--listen", ":16001")
	if err != nil {
		t.Fatal(err)
	}
	if listed := ns.Run(t, "nft", "list", "table", "inet", "haka"); !strings.Contains(show, listed) {
		t.Errorf("show\n%s\ndoes not contain what nft lists\n%s", show, listed)
	}
	if _, err := runInNS(t, ns, "remove"); err != nil {
		t.Fatal(err)
	}
	if after := ns.Run(t, "nft", "list", "ruleset") + ns.Run(t, "ip", "rule") + ns.Run(t, "ip", "-6", "rule"); after != before {
		t.Errorf("after remove:\n%s\nbefore apply:\n%s", after, before)
	}
}

// TestWith: the rules exist while fn runs and are gone after it, whether
// it returns an error or panics.
func TestWith(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft")
	ns := netnstest.New(t, "with")
	o := DefaultOptions()
	hasTable := func() bool {
		_, err := ns.Output("nft", "list", "table", "inet", "haka")
		return err == nil
	}
	fnErr := errors.New("serve failed")
	var during bool
	err := ns.Do(func() error {
		return With(o, nil, func() error { during = hasTable(); return fnErr })
	})
	if !errors.Is(err, fnErr) {
		t.Fatalf("With returned %v, want fn's error", err)
	}
	if !during || hasTable() {
		t.Fatalf("table present during fn: %v, after: %v", during, hasTable())
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want the panic re-raised", r)
			}
		}()
		_ = ns.Do(func() error {
			return With(o, nil, func() error { panic("boom") })
		})
	}()
	if hasTable() {
		t.Error("the table survived a panic in fn")
	}
	// A bad config fails before fn runs.
	o.Listen = "10.0.0.1:1"
	ran := false
	if err := With(o, nil, func() error { ran = true; return nil }); err == nil || ran {
		t.Errorf("With with a bad --listen: err %v, fn ran %v", err, ran)
	}
}

// TestApplyCommandFailures runs `haka-proxy nft apply` as a process would,
// in children: without CAP_NET_ADMIN, and on a kernel that refuses
// netfilter netlink. Each exits non-zero with the cause and the fix on
// standard error and leaves the namespace untouched.
func TestApplyCommandFailures(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		cmd := New(DefaultOptions(), os.Stdout, io.Discard)
		cmd.SetArgs([]string{"apply"})
		netnstest.ExitChild(ns.Do(cmd.Execute))
	}
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	for _, tc := range []struct {
		name  string
		child netnstest.Child
		want  []string
	}{
		{"no CAP_NET_ADMIN", netnstest.Child{DropCaps: []int{unix.CAP_NET_ADMIN}},
			[]string{"nft apply:", "needs CAP_NET_ADMIN", "AmbientCapabilities=CAP_NET_ADMIN"}},
		{"no nftables", netnstest.Child{NoNetfilterNetlink: true},
			[]string{"nft apply:", "nftables not available", "modprobe nf_tables", "CONFIG_NF_TABLES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netnstest.New(t, "fail")
			state := func() string {
				return ns.Run(t, "nft", "list", "ruleset") + ns.Run(t, "ip", "rule") + ns.Run(t, "ip", "-6", "rule") +
					ns.Run(t, "ip", "route", "show", "table", "all")
			}
			before := state()
			c := tc.child
			c.Test, c.NS = "TestApplyCommandFailures", ns
			res := netnstest.RunChild(t, c)
			if res.ExitCode == 0 {
				t.Fatalf("apply succeeded: %s", res.Stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Stderr, w) {
					t.Errorf("stderr %q does not mention %q", res.Stderr, w)
				}
			}
			if after := state(); after != before {
				t.Errorf("the failed apply left something:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}
