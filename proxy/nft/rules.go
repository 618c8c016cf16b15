package nft

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The pure functions of this file build the nftables objects of a Config.
// Each object carries the text `nft list table` prints for it: Show prints
// that text, the golden files carry it next to the netlink bytes, and the
// root-only tests check that the kernel, listed by nft, agrees with it.

// Names inside our table. The chain and the sets are ours alone: the table
// holds nothing else, so Apply can replace it whole.
const (
	chainName  = "prerouting"
	portsSet   = "ports"
	ifacesSet  = "ifaces"
	loopback   = "lo"
	ifNameSize = unix.IFNAMSIZ
)

// Set IDs name the sets inside one batch (the rules refer to a set added
// in the same batch by ID). They are fixed rather than left to the
// library's process-wide counter so the batch is the same bytes every time.
const (
	portsSetID  = 1
	ifacesSetID = 2
)

// textRule is a rule and the nft text of it.
type textRule struct {
	nft  string
	rule *nftables.Rule
}

// textSet is a set with its elements and its nft text.
type textSet struct {
	nft   string
	set   *nftables.Set
	elems []nftables.SetElement
}

// ruleset is everything Apply puts in the table.
type ruleset struct {
	table *nftables.Table
	chain *nftables.Chain
	sets  []textSet
	rules []textRule
}

func buildRuleset(c Config) ruleset {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: c.Table}
	ch := &nftables.Chain{
		Name:     chainName,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityMangle,
		Policy:   policyRef(nftables.ChainPolicyAccept),
	}
	rs := ruleset{table: t, chain: ch}
	ports := buildPortsSet(t, c.Ports)
	rs.sets = append(rs.sets, ports)
	var ifaces *nftables.Set
	if len(c.Interfaces) > 0 {
		s := buildIfacesSet(t, c.Interfaces)
		rs.sets = append(rs.sets, s)
		ifaces = s.set
	}
	rs.rules = append(rs.rules, socketRule(t, ch, c.Mark, c.MarkMask))
	rs.rules = append(rs.rules, tproxyRule(t, ch, ifaces, ports.set, unix.NFPROTO_IPV4, c.ListenPort, c.Mark, c.MarkMask))
	if c.IPv6 {
		rs.rules = append(rs.rules, tproxyRule(t, ch, ifaces, ports.set, unix.NFPROTO_IPV6, c.ListenPort, c.Mark, c.MarkMask))
	}
	if !c.FailOpen {
		fam := byte(unix.NFPROTO_UNSPEC)
		if !c.IPv6 {
			fam = unix.NFPROTO_IPV4
		}
		rs.rules = append(rs.rules, rejectRule(t, ch, ifaces, ports.set, fam))
	}
	return rs
}

func policyRef(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

// text renders the ruleset as `nft list table inet NAME` prints it.
func (rs ruleset) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.table.Name)
	for _, s := range rs.sets {
		b.WriteString(s.nft)
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\tchain %s {\n", rs.chain.Name)
	b.WriteString("\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	for _, r := range rs.rules {
		fmt.Fprintf(&b, "\t\t%s\n", r.nft)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// buildPortsSet is
//
//	set ports { type inet_service; elements = { 443, ... } }
func buildPortsSet(t *nftables.Table, ports []uint16) textSet {
	// The key byte order goes into the set's user data, where nft looks
	// for it to print the elements: ports are in network order.
	s := &nftables.Set{Table: t, Name: portsSet, ID: portsSetID, KeyType: nftables.TypeInetService,
		KeyByteOrder: binaryutil.BigEndian}
	elems := make([]nftables.SetElement, len(ports))
	texts := make([]string, len(ports))
	for i, p := range ports {
		elems[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
		texts[i] = fmt.Sprint(p)
	}
	return textSet{set: s, elems: elems, nft: setText(portsSet, "inet_service", texts, nftIntsPerLine)}
}

// buildIfacesSet is
//
//	set ifaces { type ifname; elements = { "eth1", ... } }
func buildIfacesSet(t *nftables.Table, names []string) textSet {
	// Interface names are strings, which nft keeps in host order; without
	// this it prints every element as "".
	s := &nftables.Set{Table: t, Name: ifacesSet, ID: ifacesSetID, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian}
	elems := make([]nftables.SetElement, len(names))
	texts := make([]string, len(names))
	for i, n := range names {
		elems[i] = nftables.SetElement{Key: ifname(n)}
		texts[i] = fmt.Sprintf("%q", n)
	}
	return textSet{set: s, elems: elems, nft: setText(ifacesSet, "ifname", texts, 1)}
}

// nftIntsPerLine is how many integer-like elements (ports) nft prints on
// one line of a named set before it breaks the line; strings (interface
// names) go one per line.
const nftIntsPerLine = 5

// setText lays a named set out as nft lists it.
func setText(name, typ string, elems []string, perLine int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\telements = { ", name, typ)
	for i, e := range elems {
		if i > 0 {
			if i%perLine == 0 {
				b.WriteString(",\n\t\t\t     ")
			} else {
				b.WriteString(", ")
			}
		}
		b.WriteString(e)
	}
	b.WriteString(" }\n\t}\n")
	return b.String()
}

// ifname is an interface name as the kernel compares it: IFNAMSIZ bytes,
// zero padded.
func ifname(n string) []byte {
	b := make([]byte, ifNameSize)
	copy(b, n)
	return b
}

// socketRule is
//
//	meta l4proto tcp socket transparent 1 socket wildcard 0 meta mark set MARK accept
//
// It matches a TCP packet that belongs to a connected socket with
// IP_TRANSPARENT: the
// later packets of a connection TPROXY already handed to the proxy (a
// shortcut past the tproxy rule), and, essential with --spoof-source, the
// server's replies to an upstream connection dialled from the client's
// address. Those are addressed to the client, not to this host, so without
// the mark and the policy route they would be forwarded to the client
// instead of reaching the proxy's socket. It is not limited to the
// intercepted interfaces because the replies come in on the server side.
//
// `socket wildcard 0` leaves out the transparent listener itself: the
// socket lookup also finds listeners, and the proxy's, bound to the
// wildcard address, would otherwise take every forwarded connection to a
// server on the listen port. (The kernel's tproxy documentation omits it;
// iptables' socket match skips wildcard listeners by default. The
// wildcard key needs Linux 5.6.)
func socketRule(t *nftables.Table, ch *nftables.Chain, mark, mask uint32) textRule {
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		&expr.Socket{Key: expr.SocketKeyWildcard, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
	}
	markExprs, markText := setMark(mark, mask)
	exprs = append(exprs, markExprs...)
	exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictAccept})
	return textRule{
		nft:  "meta l4proto tcp socket transparent 1 socket wildcard 0 " + markText + " accept",
		rule: &nftables.Rule{Table: t, Chain: ch, Exprs: exprs},
	}
}

// tproxyRule is, for family ip or ip6,
//
//	iifname != "lo" meta nfproto ipv4 tcp dport @ports tproxy ip to :PORT meta mark set MARK accept
//	iifname @ifaces meta nfproto ipv6 tcp dport @ports tproxy ip6 to :PORT meta mark set MARK accept
//
// tproxy assigns the packet to the socket of the connection it belongs to
// or else to the transparent listener on PORT, without rewriting it. When
// no such socket exists (the proxy is not running) it does not match, and
// the rule goes no further: no mark, no accept.
func tproxyRule(t *nftables.Table, ch *nftables.Chain, ifaces, ports *nftables.Set, family byte, listenPort uint16, mark, mask uint32) textRule {
	exprs, text := ifaceMatch(ifaces)
	famName, tproxyFam := "ipv4", "ip"
	if family == unix.NFPROTO_IPV6 {
		famName, tproxyFam = "ipv6", "ip6"
	}
	exprs = append(exprs,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
	)
	exprs = append(exprs, portMatch(ports)...)
	exprs = append(exprs,
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(listenPort)},
		&expr.TProxy{Family: family, TableFamily: byte(nftables.TableFamilyINet), RegPort: 1},
	)
	markExprs, markText := setMark(mark, mask)
	exprs = append(exprs, markExprs...)
	exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictAccept})
	return textRule{
		nft: fmt.Sprintf("%s meta nfproto %s tcp dport @%s tproxy %s to :%d %s accept",
			text, famName, portsSet, tproxyFam, listenPort, markText),
		rule: &nftables.Rule{Table: t, Chain: ch, Exprs: exprs},
	}
}

// rejectRule is
//
//	iifname != "lo" tcp dport @ports reject with tcp reset
//
// (with `meta nfproto != ipv6` when IPv6 is not intercepted: nft 1.0
// hides an equivalent `meta nfproto ipv4` in front of a reject when it
// lists the rule, which would make the listing lie). It is reached
// only by a packet to an intercepted port that the tproxy rules did not
// take, that is when no proxy listens: the connection is refused instead
// of going to the server uninspected (fail closed). Config.FailOpen leaves
// it out.
func rejectRule(t *nftables.Table, ch *nftables.Chain, ifaces, ports *nftables.Set, family byte) textRule {
	exprs, text := ifaceMatch(ifaces)
	if family == unix.NFPROTO_IPV4 {
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		)
		text += " meta nfproto != ipv6"
	}
	exprs = append(exprs, portMatch(ports)...)
	exprs = append(exprs, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	return textRule{
		nft:  fmt.Sprintf("%s tcp dport @%s reject with tcp reset", text, portsSet),
		rule: &nftables.Rule{Table: t, Chain: ch, Exprs: exprs},
	}
}

// ifaceMatch is `iifname @ifaces`, or `iifname != "lo"` without a set.
func ifaceMatch(ifaces *nftables.Set) ([]expr.Any, string) {
	load := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}
	if ifaces == nil {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(loopback)}},
			fmt.Sprintf("iifname != %q", loopback)
	}
	return []expr.Any{load, &expr.Lookup{SourceRegister: 1, SetName: ifaces.Name, SetID: ifaces.ID}},
		"iifname @" + ifaces.Name
}

// portMatch is `tcp dport @ports`: the l4proto dependency nft adds in an
// inet table, then the destination port (2 bytes at offset 2 of the
// transport header) looked up in the set.
func portMatch(ports *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
	}
}

// setMark is `meta mark set MARK` when the mark owns the whole 32 bits,
// else `meta mark set meta mark & ^MASK | MARK`, which keeps the bits other
// software (kube-proxy, a CNI, a VPN) put in the mark. The mark is in host
// byte order, as the kernel keeps skb->mark. The kernel computes
// (mark & ^MASK) ^ MARK; nft prints that as `& (^MASK | MARK) | MARK`,
// which is the same thing, so the text is written the way nft prints it.
func setMark(mark, mask uint32) ([]expr.Any, string) {
	if mask == fullMask {
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}, fmt.Sprintf("meta mark set 0x%08x", mark)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mask),
			Xor:  binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}, fmt.Sprintf("meta mark set meta mark & 0x%08x | 0x%08x", ^mask|mark, mark)
}

// queueApply queues, for one batch, the replacement of our table by the
// ruleset: add the table (a no-op when it exists), delete it with
// everything in it, add it again with its sets, chain and rules. The
// kernel applies a batch as one transaction, so packets see either the old
// table or the new one, never an empty or half-built one, and a batch that
// fails anywhere changes nothing.
func queueApply(c *nftables.Conn, rs ruleset) error {
	c.AddTable(rs.table)
	c.DelTable(rs.table)
	c.AddTable(rs.table)
	for _, s := range rs.sets {
		if err := c.AddSet(s.set, s.elems); err != nil {
			return fmt.Errorf("set %s: %w", s.set.Name, err)
		}
	}
	c.AddChain(rs.chain)
	for _, r := range rs.rules {
		c.AddRule(r.rule)
	}
	return nil
}

// queueRemove queues the deletion of our table, present or not: adding it
// first makes the delete succeed when it is absent, in the same
// transaction.
func queueRemove(c *nftables.Conn, table string) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	c.AddTable(t)
	c.DelTable(t)
}
