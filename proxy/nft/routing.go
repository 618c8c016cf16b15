package nft

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol tags the ip rules and routes we install (the `proto` of
// `ip rule` and `ip route`). Remove deletes what carries it and nothing
// else, and the conflict checks skip it. 104 is unassigned in iproute2's
// rt_protos (the kernel reserves 0-4 and routing daemons use 8-18, 42,
// 99 and 186-192); it is the code of 'h'.
const RouteProtocol = 104

// families are the address families a config installs routing for.
func families(c Config) []int {
	if c.IPv6 {
		return []int{unix.AF_INET, unix.AF_INET6}
	}
	return []int{unix.AF_INET}
}

func familyFlag(fam int) string {
	if fam == unix.AF_INET6 {
		return "-6"
	}
	return "-4"
}

func defaultDst(fam int) *net.IPNet {
	if fam == unix.AF_INET6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

// RoutingCommands returns the ip commands equivalent to the policy
// routing Apply installs for cfg.
func RoutingCommands(cfg Config) ([]string, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	var cmds []string
	for _, fam := range families(c) {
		dst := "0.0.0.0/0"
		if fam == unix.AF_INET6 {
			dst = "::/0"
		}
		cmds = append(cmds,
			fmt.Sprintf("ip %s rule add fwmark %s lookup %d protocol %d", familyFlag(fam), markText(c.Mark, c.MarkMask), c.RouteTable, RouteProtocol),
			fmt.Sprintf("ip %s route add local %s dev lo table %d protocol %d", familyFlag(fam), dst, c.RouteTable, RouteProtocol),
		)
	}
	return cmds, nil
}

func markText(mark, mask uint32) string {
	if mask == fullMask {
		return fmt.Sprintf("0x%x", mark)
	}
	return fmt.Sprintf("0x%x/0x%x", mark, mask)
}

// routing installs and removes the policy routing over rtnetlink.
type routing struct {
	h *netlink.Handle
}

func openRouting() (routing, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return routing{}, fmt.Errorf("rtnetlink: %w", err)
	}
	return routing{h: h}, nil
}

func (r routing) close() { r.h.Close() }

// ErrConflict is wrapped by the errors of Apply when an existing ip rule
// or route would collide with the mark or the route table.
var ErrConflict = errors.New("policy routing conflict")

// ErrNoIPv6 is wrapped by the errors of Apply when IPv6 is requested on a
// host where it is disabled.
var ErrNoIPv6 = errors.New("IPv6 is disabled on this host (ipv6.disable=1 or no IPv6 support): pass --no-ipv6")

func (r routing) listRules(fam int) ([]netlink.Rule, error) {
	rules, err := r.h.RuleList(fam)
	if err != nil {
		if fam == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, ErrNoIPv6
		}
		return nil, fmt.Errorf("list ip %s rules: %w", familyFlag(fam), err)
	}
	return rules, nil
}

// listRoutes lists the routes of table (all tables when table is 0) whose
// protocol is proto (any when proto is negative).
func (r routing) listRoutes(fam, table, proto int) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: table}
	mask := netlink.RT_FILTER_TABLE
	if proto >= 0 {
		filter.Protocol = netlink.RouteProtocol(proto)
		mask |= netlink.RT_FILTER_PROTOCOL
	}
	routes, err := r.h.RouteListFiltered(fam, filter, mask)
	if err != nil {
		if fam == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, ErrNoIPv6
		}
		return nil, fmt.Errorf("list ip %s routes: %w", familyFlag(fam), err)
	}
	return routes, nil
}

// checkConflicts refuses a mark or a route table that another owner's ip
// rule or route already uses: sharing either would send our packets to
// their table or theirs to ours.
func (r routing) checkConflicts(c Config) error {
	for _, fam := range families(c) {
		rules, err := r.listRules(fam)
		if err != nil {
			return err
		}
		for _, rule := range rules {
			if rule.Protocol == RouteProtocol {
				continue
			}
			if uint32(rule.Table) == c.RouteTable {
				return fmt.Errorf("%w: ip %s rule `%s` already looks up table %d: choose another --nft-route-table",
					ErrConflict, familyFlag(fam), formatRule(rule), c.RouteTable)
			}
			if markCollides(rule, c.Mark, c.MarkMask) {
				return fmt.Errorf("%w: ip %s rule `%s` already selects packets marked %s: choose another --nft-mark",
					ErrConflict, familyFlag(fam), formatRule(rule), markText(c.Mark, c.MarkMask))
			}
		}
		routes, err := r.listRoutes(fam, int(c.RouteTable), -1)
		if err != nil {
			return err
		}
		for _, rt := range routes {
			if rt.Protocol == RouteProtocol {
				continue
			}
			return fmt.Errorf("%w: route table %d already holds `ip %s route %s`: choose another --nft-route-table",
				ErrConflict, c.RouteTable, familyFlag(fam), r.formatRoute(rt))
		}
	}
	return nil
}

// markCollides reports whether the rule selects packets by a mark that
// overlaps ours: it would match a packet carrying only our mark, or ours
// would match one carrying only its mark. The kernel matches a rule when
// (skb->mark ^ rule.mark) & rule.mask == 0.
func markCollides(rule netlink.Rule, mark, mask uint32) bool {
	if rule.Mark == 0 && rule.Mask == nil {
		return false // no fwmark selector
	}
	theirMask := uint32(fullMask)
	if rule.Mask != nil {
		theirMask = *rule.Mask
	}
	return (mark^rule.Mark)&theirMask == 0 || (rule.Mark^mark)&mask == 0
}

func (r routing) wantRule(c Config, fam int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = fam
	rule.Table = int(c.RouteTable)
	rule.Mark = c.Mark
	mask := c.MarkMask
	rule.Mask = &mask
	rule.Protocol = RouteProtocol
	return rule
}

func (r routing) wantRoute(c Config, fam int, lo int) *netlink.Route {
	return &netlink.Route{
		Family:    fam,
		Table:     int(c.RouteTable),
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Dst:       defaultDst(fam),
		LinkIndex: lo,
		Protocol:  RouteProtocol,
	}
}

func isOurRule(rule netlink.Rule, c Config) bool {
	return rule.Protocol == RouteProtocol && uint32(rule.Table) == c.RouteTable &&
		rule.Mark == c.Mark && rule.Mask != nil && *rule.Mask == c.MarkMask
}

func isOurRoute(rt netlink.Route, c Config, lo int) bool {
	ones, _ := rt.Dst.Mask.Size()
	return rt.Protocol == RouteProtocol && uint32(rt.Table) == c.RouteTable &&
		rt.Type == unix.RTN_LOCAL && rt.LinkIndex == lo && rt.Dst != nil && ones == 0
}

// install makes our rules and routes exactly those of c: it keeps what is
// already right, deletes what an earlier config left, and adds the rest.
// Routes go in before the rule that selects them, so the table is never
// selected empty.
func (r routing) install(c Config) error {
	lo, err := r.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback interface: %w", err)
	}
	loIdx := lo.Attrs().Index
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		want := fam == unix.AF_INET || c.IPv6
		routes, err := r.listRoutes(fam, 0, RouteProtocol)
		if errors.Is(err, ErrNoIPv6) && !want {
			continue
		}
		if err != nil {
			return err
		}
		haveRoute := false
		for _, rt := range routes {
			if want && !haveRoute && isOurRoute(rt, c, loIdx) {
				haveRoute = true
				continue
			}
			if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("delete stale route ip %s route %s: %w", familyFlag(fam), r.formatRoute(rt), err)
			}
		}
		rules, err := r.listRules(fam)
		if err != nil {
			return err
		}
		haveRule := false
		for _, rule := range rules {
			if rule.Protocol != RouteProtocol {
				continue
			}
			if want && !haveRule && isOurRule(rule, c) {
				haveRule = true
				continue
			}
			if err := r.h.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete stale rule ip %s rule %s: %w", familyFlag(fam), formatRule(rule), err)
			}
		}
		if !want {
			continue
		}
		if !haveRoute {
			if err := r.h.RouteAdd(r.wantRoute(c, fam, loIdx)); err != nil {
				return fmt.Errorf("ip %s route add local %s dev lo table %d: %w", familyFlag(fam), defaultDst(fam), c.RouteTable, explainNetlink(err))
			}
		}
		if !haveRule {
			if err := r.h.RuleAdd(r.wantRule(c, fam)); err != nil {
				return fmt.Errorf("ip %s rule add fwmark %s lookup %d: %w", familyFlag(fam), markText(c.Mark, c.MarkMask), c.RouteTable, explainNetlink(err))
			}
		}
	}
	return nil
}

// removeOurs deletes every rule and route tagged RouteProtocol, rules
// first so that no rule selects a table being emptied.
func (r routing) removeOurs() error {
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := r.listRules(fam)
		if errors.Is(err, ErrNoIPv6) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rule := range rules {
			if rule.Protocol != RouteProtocol {
				continue
			}
			if err := r.h.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("ip %s rule del %s: %w", familyFlag(fam), formatRule(rule), explainNetlink(err)))
			}
		}
		routes, err := r.listRoutes(fam, 0, RouteProtocol)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rt := range routes {
			if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("ip %s route del %s: %w", familyFlag(fam), r.formatRoute(rt), explainNetlink(err)))
			}
		}
	}
	return errors.Join(errs...)
}

// formatRule renders a rule as `ip rule` prints it, for error messages.
func formatRule(rule netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", rule.Priority)
	if rule.Invert {
		b.WriteString(" not")
	}
	from := "all"
	if rule.Src != nil {
		from = rule.Src.String()
	}
	fmt.Fprintf(&b, " from %s", from)
	if rule.Dst != nil {
		fmt.Fprintf(&b, " to %s", rule.Dst)
	}
	if rule.Mark != 0 || rule.Mask != nil {
		mask := uint32(fullMask)
		if rule.Mask != nil {
			mask = *rule.Mask
		}
		fmt.Fprintf(&b, " fwmark %s", markText(rule.Mark, mask))
	}
	if rule.IifName != "" {
		fmt.Fprintf(&b, " iif %s", rule.IifName)
	}
	if rule.OifName != "" {
		fmt.Fprintf(&b, " oif %s", rule.OifName)
	}
	switch {
	case rule.Goto >= 0:
		fmt.Fprintf(&b, " goto %d", rule.Goto)
	case rule.Table != 0:
		fmt.Fprintf(&b, " lookup %s", tableName(rule.Table))
	}
	if rule.Protocol != 0 && rule.Protocol != unix.RTPROT_BOOT {
		fmt.Fprintf(&b, " proto %d", rule.Protocol)
	}
	return b.String()
}

func tableName(t int) string {
	switch t {
	case rtTableDefault:
		return "default"
	case rtTableMain:
		return "main"
	case rtTableLocal:
		return "local"
	}
	return fmt.Sprint(t)
}

// formatRoute renders a route roughly as `ip route` prints it.
func (r routing) formatRoute(rt netlink.Route) string {
	var b strings.Builder
	switch rt.Type {
	case unix.RTN_LOCAL:
		b.WriteString("local ")
	case unix.RTN_BLACKHOLE:
		b.WriteString("blackhole ")
	case unix.RTN_UNREACHABLE:
		b.WriteString("unreachable ")
	}
	dst := "default"
	if rt.Dst != nil {
		if ones, _ := rt.Dst.Mask.Size(); ones != 0 {
			dst = rt.Dst.String()
		}
	}
	b.WriteString(dst)
	if rt.Gw != nil {
		fmt.Fprintf(&b, " via %s", rt.Gw)
	}
	if rt.LinkIndex > 0 {
		if l, err := r.h.LinkByIndex(rt.LinkIndex); err == nil {
			fmt.Fprintf(&b, " dev %s", l.Attrs().Name)
		} else {
			fmt.Fprintf(&b, " dev #%d", rt.LinkIndex)
		}
	}
	fmt.Fprintf(&b, " table %s", tableName(rt.Table))
	if rt.Protocol != 0 {
		fmt.Fprintf(&b, " proto %d", rt.Protocol)
	}
	return b.String()
}
