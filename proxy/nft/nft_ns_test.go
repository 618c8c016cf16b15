package nft

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { netnstest.Main(m) }

// testConfigs are the configurations the golden files cover.
var testConfigs = []struct {
	name string
	cfg  Config
}{
	{"default", func() Config { c := DefaultConfig(); c.ListenPort = 15001; return c }()},
	{"custom", Config{
		Table:      "gw",
		Ports:      []uint16{8443, 443, 993, 465, 995, 636, 443},
		Interfaces: []string{"lan1", "lan0"},
		ListenPort: 15443,
		Mark:       0x100,
		MarkMask:   0xff00,
		RouteTable: 4242,
		IPv6:       false,
	}},
	{"failopen", Config{ListenPort: 15001, IPv6: true, FailOpen: true, Interfaces: []string{"eth1"}}},
}

// snapshot is the state Remove must restore exactly.
type snapshot struct {
	ruleset, rules4, rules6, routes4, routes6 string
}

func takeSnapshot(t *testing.T, ns *netnstest.NS) snapshot {
	t.Helper()
	return snapshot{
		ruleset: ns.Run(t, "nft", "list", "ruleset"),
		rules4:  ns.Run(t, "ip", "-4", "rule", "show"),
		rules6:  ns.Run(t, "ip", "-6", "rule", "show"),
		routes4: ns.Run(t, "ip", "-4", "route", "show", "table", "all"),
		routes6: ns.Run(t, "ip", "-6", "route", "show", "table", "all"),
	}
}

func (s snapshot) diff(t *testing.T, o snapshot) {
	t.Helper()
	for _, f := range []struct{ name, a, b string }{
		{"nft list ruleset", s.ruleset, o.ruleset},
		{"ip -4 rule", s.rules4, o.rules4},
		{"ip -6 rule", s.rules6, o.rules6},
		{"ip -4 route show table all", s.routes4, o.routes4},
		{"ip -6 route show table all", s.routes6, o.routes6},
	} {
		if f.a != f.b {
			t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", f.name, f.a, f.b)
		}
	}
}

// normalizeJSON drops what differs between two listings of the same
// ruleset (handles, the nft version) and re-encodes with sorted keys.
func normalizeJSON(t *testing.T, b string) string {
	t.Helper()
	var doc struct {
		Nftables []map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(b), &doc); err != nil {
		t.Fatalf("nft -j output: %v\n%s", err, b)
	}
	var out []any
	for _, o := range doc.Nftables {
		if _, ok := o["metainfo"]; ok {
			continue
		}
		out = append(out, dropHandles(o))
	}
	j, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(j) + "\n"
}

func dropHandles(v any) any {
	switch x := v.(type) {
	case map[string]any:
		delete(x, "handle")
		for k, e := range x {
			x[k] = dropHandles(e)
		}
	case []any:
		for i, e := range x {
			x[i] = dropHandles(e)
		}
	}
	return v
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

func apply(t *testing.T, ns *netnstest.NS, cfg Config) error {
	t.Helper()
	return ns.Do(func() error { return Apply(cfg) })
}

func remove(t *testing.T, ns *netnstest.NS, cfg Config) error {
	t.Helper()
	return ns.Do(func() error { return Remove(cfg) })
}

// TestApplyInNamespace installs each config in a fresh namespace next to
// somebody else's table, checks what nft and ip list, applies again, and
// removes.
func TestApplyInNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	for _, tc := range testConfigs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := netnstest.New(t, "apply")
			// Another owner's table and rule, which we must not touch.
			ns.Run(t, "nft", "add table inet other; add chain inet other pre { type filter hook prerouting priority 0; }; add rule inet other pre tcp dport 22 counter accept")
			ns.Run(t, "ip", "rule", "add", "from", "203.0.113.0/24", "lookup", "main", "priority", "1000")
			before := takeSnapshot(t, ns)
			other := ns.Run(t, "nft", "list", "table", "inet", "other")

			if err := apply(t, ns, tc.cfg); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			c, _ := tc.cfg.normalize()
			want, err := Ruleset(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := ns.Run(t, "nft", "list", "table", "inet", c.Table)
			if got != want {
				t.Errorf("nft list table inet %s:\n%s\nwant (Ruleset):\n%s", c.Table, got, want)
			}
			golden(t, tc.name+".json", normalizeJSON(t, ns.Run(t, "nft", "-j", "list", "table", "inet", c.Table)))
			checkRouting(t, ns, c)
			if o := ns.Run(t, "nft", "list", "table", "inet", "other"); o != other {
				t.Errorf("Apply changed another table:\n%s\nwas:\n%s", o, other)
			}

			// Apply twice is Apply once.
			once := takeSnapshot(t, ns)
			if err := apply(t, ns, tc.cfg); err != nil {
				t.Fatalf("second Apply: %v", err)
			}
			takeSnapshot(t, ns).diff(t, once)

			if err := remove(t, ns, tc.cfg); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			takeSnapshot(t, ns).diff(t, before)
			// Removing again finds nothing and is not an error.
			if err := remove(t, ns, tc.cfg); err != nil {
				t.Fatalf("second Remove: %v", err)
			}
		})
	}
}

func checkRouting(t *testing.T, ns *netnstest.NS, c Config) {
	t.Helper()
	fams := map[string]bool{"-4": true, "-6": c.IPv6}
	for fam, want := range fams {
		rules := ns.Run(t, "ip", fam, "rule", "show")
		rule := "fwmark " + markText(c.Mark, c.MarkMask) + " lookup " + itoa(c.RouteTable) + " proto 104"
		if got := strings.Contains(rules, rule); got != want {
			t.Errorf("ip %s rule has %q: %v, want %v:\n%s", fam, rule, got, want, rules)
		}
		routes := ns.Run(t, "ip", fam, "route", "show", "table", "all")
		route := "local default dev lo table " + itoa(c.RouteTable) + " proto 104 scope host"
		if fam == "-6" {
			route = "local default dev lo table " + itoa(c.RouteTable) + " proto 104 metric 1024 pref medium"
		}
		if got := strings.Contains(routes, route); got != want {
			t.Errorf("ip %s route show table all has %q: %v, want %v:\n%s", fam, route, got, want, routes)
		}
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// TestNetlinkMatchesNftText loads Ruleset's text with nft itself in one
// namespace and applies the netlink version in another: the kernel must
// hold the same thing in both, as nft -j lists it.
func TestNetlinkMatchesNftText(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft")
	for _, tc := range testConfigs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ours := netnstest.New(t, "ours")
			theirs := netnstest.New(t, "theirs")
			text, err := Ruleset(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(t.TempDir(), "ruleset.nft")
			if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			theirs.Run(t, "nft", "-f", f)
			if err := apply(t, ours, tc.cfg); err != nil {
				t.Fatal(err)
			}
			c, _ := tc.cfg.normalize()
			a := normalizeJSON(t, ours.Run(t, "nft", "-j", "list", "table", "inet", c.Table))
			b := normalizeJSON(t, theirs.Run(t, "nft", "-j", "list", "table", "inet", c.Table))
			if a != b {
				t.Errorf("the netlink ruleset differs from nft's reading of the text:\nnetlink:\n%s\nnft -f:\n%s", a, b)
			}
		})
	}
}

func TestApplyReplacesAnEarlierConfig(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	t.Parallel()
	ns := netnstest.New(t, "replace")
	before := takeSnapshot(t, ns)
	first := DefaultConfig()
	first.ListenPort = 15001
	if err := apply(t, ns, first); err != nil {
		t.Fatal(err)
	}
	second := Config{ListenPort: 16001, Mark: 0x2, RouteTable: 200, IPv6: false, Ports: []uint16{8443}}
	if err := apply(t, ns, second); err != nil {
		t.Fatal(err)
	}
	c, _ := second.normalize()
	checkRouting(t, ns, c)
	for _, fam := range []string{"-4", "-6"} {
		if out := ns.Run(t, "ip", fam, "rule", "show"); strings.Contains(out, "lookup 100") {
			t.Errorf("the first config's ip %s rule survived:\n%s", fam, out)
		}
		if out := ns.Run(t, "ip", fam, "route", "show", "table", "all"); strings.Contains(out, "table 100") {
			t.Errorf("the first config's ip %s route survived:\n%s", fam, out)
		}
	}
	// Remove with the defaults removes what the second config installed.
	if err := remove(t, ns, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, ns).diff(t, before)
}

// TestApplyRefusesConflicts: an ip rule or route that already uses the
// mark or the table stops Apply before it changes anything, and the error
// names the rule and the flag to change.
func TestApplyRefusesConflicts(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip")
	for _, tc := range []struct {
		name  string
		setup [][]string
		cfg   Config
		want  []string
	}{
		{
			name:  "mark",
			setup: [][]string{{"ip", "rule", "add", "fwmark", "0x1", "lookup", "200"}},
			want:  []string{"from all fwmark 0x1 lookup 200", "--nft-mark"},
		},
		{
			name:  "masked mark",
			setup: [][]string{{"ip", "rule", "add", "fwmark", "0x1/0x1", "lookup", "300"}},
			cfg:   Config{Mark: 0x3},
			want:  []string{"fwmark 0x1/0x1 lookup 300", "--nft-mark"},
		},
		{
			name:  "table in a rule",
			setup: [][]string{{"ip", "rule", "add", "from", "203.0.113.0/24", "lookup", "100"}},
			want:  []string{"from 203.0.113.0/24 lookup 100", "--nft-route-table"},
		},
		{
			name:  "ipv6 rule",
			setup: [][]string{{"ip", "-6", "rule", "add", "fwmark", "0x1", "lookup", "7"}},
			want:  []string{"ip -6 rule", "fwmark 0x1 lookup 7", "--nft-mark"},
		},
		{
			name:  "route in the table",
			setup: [][]string{{"ip", "route", "add", "blackhole", "203.0.113.0/24", "table", "100"}},
			want:  []string{"route table 100 already holds", "blackhole 203.0.113.0/24", "--nft-route-table"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := netnstest.New(t, "conflict")
			for _, s := range tc.setup {
				ns.Run(t, s[0], s[1:]...)
			}
			before := takeSnapshot(t, ns)
			cfg := tc.cfg
			cfg.ListenPort = 15001
			cfg.IPv6 = true
			err := apply(t, ns, cfg)
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("Apply: %v, want a conflict", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			takeSnapshot(t, ns).diff(t, before)
		})
	}
	t.Run("no conflict with a disjoint masked mark", func(t *testing.T) {
		t.Parallel()
		ns := netnstest.New(t, "disjoint")
		// kube-proxy style: bit 0x4000 of the mark belongs to somebody
		// else; our 0x1/0x1 leaves it alone.
		ns.Run(t, "ip", "rule", "add", "fwmark", "0x4000/0x4000", "lookup", "main")
		if err := apply(t, ns, Config{ListenPort: 15001, Mark: 0x1, MarkMask: 0x1}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	})
}

// TestApplyWithoutNetAdmin runs Apply in a child without CAP_NET_ADMIN:
// it fails with the capability named and leaves nothing behind.
func TestApplyWithoutNetAdmin(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		cfg := DefaultConfig()
		cfg.ListenPort = 15001
		err = ns.Do(func() error { return Apply(cfg) })
		if err != nil && !errors.Is(err, ErrPermission) {
			netnstest.ExitChild(errors.New("not ErrPermission: " + err.Error()))
		}
		netnstest.ExitChild(err)
	}
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "nocap")
	before := takeSnapshot(t, ns)
	res := netnstest.RunChild(t, netnstest.Child{Test: t.Name(), NS: ns, DropCaps: []int{unix.CAP_NET_ADMIN}})
	if res.ExitCode != 1 {
		t.Fatalf("child exited %d, want 1: %s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	for _, w := range []string{"CAP_NET_ADMIN", "operation not permitted"} {
		if !strings.Contains(res.Stderr, w) {
			t.Errorf("error %q does not mention %q", res.Stderr, w)
		}
	}
	takeSnapshot(t, ns).diff(t, before)
}

// TestApplyWithoutNftables runs Apply in a child where the kernel refuses
// netfilter netlink sockets, as one built without nfnetlink does.
func TestApplyWithoutNftables(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		cfg := DefaultConfig()
		cfg.ListenPort = 15001
		err = ns.Do(func() error { return Apply(cfg) })
		if err != nil && !errors.Is(err, ErrUnavailable) {
			netnstest.ExitChild(errors.New("not ErrUnavailable: " + err.Error()))
		}
		netnstest.ExitChild(err)
	}
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "nonft")
	before := takeSnapshot(t, ns)
	res := netnstest.RunChild(t, netnstest.Child{Test: t.Name(), NS: ns, NoNetfilterNetlink: true})
	if res.ExitCode != 1 {
		t.Fatalf("child exited %d, want 1: %s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	for _, w := range []string{"nftables not available", "nf_tables", "protocol not supported"} {
		if !strings.Contains(res.Stderr, w) {
			t.Errorf("error %q does not mention %q", res.Stderr, w)
		}
	}
	takeSnapshot(t, ns).diff(t, before)
}

// TestRoutingCapabilities measures the rtnetlink side on its own, in a
// child without CAP_NET_ADMIN: listing rules and routes (the conflict
// check) needs no capability, adding them needs CAP_NET_ADMIN.
func TestRoutingCapabilities(t *testing.T) {
	if netnstest.InChild() {
		ns, err := netnstest.ChildNS()
		if err != nil {
			netnstest.ExitChild(err)
		}
		c, _ := defaultWithListen().normalize()
		err = ns.Do(func() error {
			r, err := openRouting()
			if err != nil {
				return err
			}
			defer r.close()
			if err := r.checkConflicts(c); err != nil {
				return errors.New("listing without CAP_NET_ADMIN: " + err.Error())
			}
			if err := r.install(c); !errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) {
				return errors.New("install without CAP_NET_ADMIN: want ErrPermission, got " + errString(err))
			}
			return nil
		})
		netnstest.ExitChild(err)
	}
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "rtcaps")
	before := takeSnapshot(t, ns)
	res := netnstest.RunChild(t, netnstest.Child{Test: t.Name(), NS: ns, DropCaps: []int{unix.CAP_NET_ADMIN}})
	if res.ExitCode != 0 {
		t.Fatalf("child exited %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	takeSnapshot(t, ns).diff(t, before)
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
