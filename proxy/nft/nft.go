// Package nft owns the system side of the transparent gateway: the
// nftables table that hands TCP connections passing through the host to
// the proxy's transparent listener (TPROXY), and the policy routing that
// delivers those packets locally.
//
//	cfg := nft.DefaultConfig()
//	cfg.ListenPort = 15001
//	if err := nft.Apply(cfg); err != nil { ... }   // idempotent
//	defer nft.Remove(cfg)                          // leaves no trace
//	nft.Show(os.Stdout, cfg)                       // the same, as nft and ip commands
//
// What it installs, in the network namespace of the calling thread:
//
//	table inet haka {                         # ours alone, replaced whole
//		set ports { type inet_service; elements = { 443 } }
//		chain prerouting {
//			type filter hook prerouting priority mangle; policy accept;
//			meta l4proto tcp socket transparent 1 socket wildcard 0 meta mark set 0x00000001 accept
//			iifname != "lo" meta nfproto ipv4 tcp dport @ports tproxy ip to :15001 meta mark set 0x00000001 accept
//			iifname != "lo" meta nfproto ipv6 tcp dport @ports tproxy ip6 to :15001 meta mark set 0x00000001 accept
//			iifname != "lo" tcp dport @ports reject with tcp reset
//		}
//	}
//	ip rule add fwmark 0x1 lookup 100                  (and ip -6)
//	ip route add local 0.0.0.0/0 dev lo table 100      (and ::/0)
//
// Netfilter behaviour that surprises people:
//
//   - tproxy does not rewrite the packet; it assigns it to a socket. The
//     packet still has the server's address, so the routing decision that
//     follows prerouting would forward it. The mark and the `local` route
//     in the policy table make the host deliver it to itself instead.
//   - `accept` ends the packet's walk through this chain only. Other
//     tables' prerouting chains at the same hook still see it (an accept is
//     not final across tables; a drop is), so another owner's rules can
//     still drop intercepted traffic, and ours never override theirs.
//   - Priority mangle (-150) runs after conntrack (-200) and before DNAT
//     (-100): a DNAT rule elsewhere cannot redirect a packet we took.
//   - When no proxy listens, tproxy finds no socket and the rule does not
//     match. The reject rule after it then refuses the connection (fail
//     closed) rather than letting it reach the server uninspected, unless
//     Config.FailOpen.
//
// Coexistence: Apply only ever touches the table named Config.Table, ip
// rules and routes tagged with RouteProtocol, and refuses to start when an
// existing ip rule or route would collide with the mark or the route table
// (ErrConflict). Other tables, rules and routes are never modified.
package nft

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// Defaults, the values of DefaultConfig.
const (
	// DefaultTable is the name of our nftables table (family inet).
	DefaultTable = "haka"
	// DefaultPort is the one intercepted port: HTTPS.
	DefaultPort = 443
	// DefaultMark is the packet mark that selects the policy route, as in
	// the kernel's tproxy documentation.
	DefaultMark = 0x1
	// DefaultRouteTable is the policy routing table holding the local
	// default route, as in the kernel's tproxy documentation.
	DefaultRouteTable = 100
)

// fullMask is a mark that owns all 32 bits of skb->mark.
const fullMask = 0xffffffff

// Config is what Apply installs.
type Config struct {
	// Table is the name of the nftables table (family inet). Empty means
	// DefaultTable.
	Table string
	// Ports are the intercepted TCP destination ports. Empty means 443.
	Ports []uint16
	// Interfaces are the input interfaces whose traffic is intercepted.
	// Empty means every interface but loopback.
	Interfaces []string
	// ListenPort is the port of the proxy's transparent listener, which
	// must listen on the wildcard address (":PORT"). Required.
	ListenPort uint16
	// Mark is the packet mark set on intercepted packets and selected by
	// the ip rule. Zero means DefaultMark.
	Mark uint32
	// MarkMask is the part of the 32-bit mark that Mark owns; the other
	// bits are kept. Zero means all 32 bits.
	MarkMask uint32
	// RouteTable is the policy routing table for the local route. Zero
	// means DefaultRouteTable. The kernel's own tables (253 default, 254
	// main, 255 local) are refused.
	RouteTable uint32
	// IPv6 intercepts IPv6 too. The zero value intercepts IPv4 only;
	// DefaultConfig and the command line turn it on.
	IPv6 bool
	// FailOpen lets connections to the intercepted ports through,
	// uninspected, while no proxy listens. By default they are refused
	// with a TCP reset.
	FailOpen bool
}

// DefaultConfig returns the defaults: port 443 on every interface but
// loopback, mark 0x1, route table 100, IPv4 and IPv6, fail closed.
// ListenPort is left for the caller.
func DefaultConfig() Config {
	return Config{
		Table:      DefaultTable,
		Ports:      []uint16{DefaultPort},
		Mark:       DefaultMark,
		MarkMask:   fullMask,
		RouteTable: DefaultRouteTable,
		IPv6:       true,
	}
}

// The kernel's reserved routing tables.
const (
	rtTableUnspec  = 0
	rtTableDefault = 253
	rtTableMain    = 254
	rtTableLocal   = 255
)

// tableNameRE is what nft accepts unquoted as a table name.
var tableNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,63}$`)

// ErrInvalidConfig is wrapped by the errors of a Config that cannot work.
var ErrInvalidConfig = errors.New("invalid nftables configuration")

// normalize fills the defaults and checks the config; ports and interfaces
// come back sorted and without duplicates, as nft lists them.
func (c Config) normalize() (Config, error) {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if !tableNameRE.MatchString(c.Table) {
		return c, fmt.Errorf("%w: table name %q: use letters, digits and _ (at most 64)", ErrInvalidConfig, c.Table)
	}
	if len(c.Ports) == 0 {
		c.Ports = []uint16{DefaultPort}
	}
	c.Ports = slices.Clone(c.Ports)
	slices.Sort(c.Ports)
	c.Ports = slices.Compact(c.Ports)
	if c.Ports[0] == 0 {
		return c, fmt.Errorf("%w: port 0 cannot be intercepted (--nft-ports takes ports 1-65535)", ErrInvalidConfig)
	}
	c.Interfaces = slices.Clone(c.Interfaces)
	slices.Sort(c.Interfaces)
	c.Interfaces = slices.Compact(c.Interfaces)
	for _, n := range c.Interfaces {
		if n == "" || len(n) >= ifNameSize || strings.ContainsAny(n, "/ \t\n\"\\") {
			return c, fmt.Errorf("%w: interface name %q (--nft-iface): at most %d characters, no spaces, quotes or /", ErrInvalidConfig, n, ifNameSize-1)
		}
	}
	if c.ListenPort == 0 {
		return c, fmt.Errorf("%w: no listen port: pass the transparent listener's address with --listen :PORT", ErrInvalidConfig)
	}
	if slices.Contains(c.Ports, c.ListenPort) {
		// The proxy's upstream connections go to the intercepted ports;
		// a listener on one of them would see its own traffic again
		// under some topologies and is an easy mistake to make.
		return c, fmt.Errorf("%w: the listen port %d is also an intercepted port: choose another --listen port, or leave %d out of --nft-ports", ErrInvalidConfig, c.ListenPort, c.ListenPort)
	}
	if c.MarkMask == 0 {
		c.MarkMask = fullMask
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.Mark&^c.MarkMask != 0 {
		return c, fmt.Errorf("%w: mark 0x%x has bits outside its mask 0x%x (--nft-mark MARK/MASK)", ErrInvalidConfig, c.Mark, c.MarkMask)
	}
	if c.RouteTable == rtTableUnspec {
		c.RouteTable = DefaultRouteTable
	}
	switch c.RouteTable {
	case rtTableDefault, rtTableMain, rtTableLocal:
		return c, fmt.Errorf("%w: route table %d is one of the kernel's own (default 253, main 254, local 255): choose another --nft-route-table, e.g. 100", ErrInvalidConfig, c.RouteTable)
	}
	return c, nil
}

// Show writes what Apply installs for cfg: the nftables ruleset as
// `nft -f` reads it (and `nft list table` prints it), then the policy
// routing as ip commands. It needs no privilege and changes nothing.
func Show(w io.Writer, cfg Config) error {
	rs, err := Ruleset(cfg)
	if err != nil {
		return err
	}
	cmds, err := RoutingCommands(cfg)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "# nftables: nft -f FILE\n%s\n# policy routing\n%s\n", rs, strings.Join(cmds, "\n"))
	return err
}

// Ruleset returns the nftables table Apply installs for cfg, in the text
// form `nft -f` reads and `nft list table inet NAME` prints.
func Ruleset(cfg Config) (string, error) {
	c, err := cfg.normalize()
	if err != nil {
		return "", err
	}
	return buildRuleset(c).text(), nil
}

// Apply installs the interception for cfg in the calling thread's network
// namespace: the nftables table, replaced atomically if it exists, and the
// policy routing for IPv4 (and IPv6). Applying the same config twice is
// the same as applying it once; applying another config replaces the
// previous one.
//
// Before changing anything it checks that nftables answers, that the
// process may change it, and that no existing ip rule or route collides
// with the mark or the table; each failure names the cause and the fix,
// and leaves the system untouched. If installing fails midway, what was
// installed is removed again, so nothing is left half-installed.
//
// It needs CAP_NET_ADMIN.
func Apply(cfg Config) error {
	c, err := cfg.normalize()
	if err != nil {
		return err
	}
	s, err := openSystem()
	if err != nil {
		return err
	}
	defer s.close()
	return s.apply(c)
}

// Remove deletes what Apply installed: the nftables table and every ip
// rule and route tagged with RouteProtocol, whatever mark and route table
// they were installed with, so a Remove with other flags than the Apply
// still leaves no trace. Removing what is not there is not an error.
//
// It needs CAP_NET_ADMIN.
func Remove(cfg Config) error {
	// Only the table name matters: a config too broken to Apply must still
	// be able to remove what an earlier one installed.
	table := cfg.Table
	if table == "" {
		table = DefaultTable
	}
	if !tableNameRE.MatchString(table) {
		return fmt.Errorf("%w: table name %q: use letters, digits and _ (at most 64)", ErrInvalidConfig, table)
	}
	s, err := openSystem()
	if err != nil {
		return err
	}
	defer s.close()
	return s.remove(table)
}

// system is the kernel interfaces Apply and Remove talk to. Tests give it
// a netlink connection that records the messages instead of sending them.
type system struct {
	nft   *nftables.Conn
	route routing
}

func openSystem() (*system, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, classifyNFT(err)
	}
	r, err := openRouting()
	if err != nil {
		return nil, err
	}
	return &system{nft: c, route: r}, nil
}

func (s *system) close() { s.route.close() }

func (s *system) apply(c Config) error {
	// Probe nftables first: a listing needs the same capability as a
	// change and fails the same way when nftables is missing.
	if _, err := s.nft.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return classifyNFT(err)
	}
	if err := s.route.checkConflicts(c); err != nil {
		return err
	}
	if err := s.route.install(c); err != nil {
		return errors.Join(err, s.route.removeOurs())
	}
	rs := buildRuleset(c)
	if err := queueApply(s.nft, rs); err != nil {
		return errors.Join(err, s.route.removeOurs())
	}
	if err := s.nft.Flush(); err != nil {
		// The batch failed whole: the kernel kept the table as it was.
		// Drop it too, with the routes, so nothing is left half-way.
		err = classifyNFT(err)
		return errors.Join(err, s.removeTable(c.Table), s.route.removeOurs())
	}
	return nil
}

func (s *system) remove(table string) error {
	return errors.Join(s.removeTable(table), s.route.removeOurs())
}

func (s *system) removeTable(table string) error {
	queueRemove(s.nft, table)
	if err := s.nft.Flush(); err != nil {
		return fmt.Errorf("remove nftables table inet %s: %w", table, classifyNFT(err))
	}
	return nil
}
