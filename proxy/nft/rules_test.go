package nft

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// recorder is an nftables connection that records the netlink messages it
// would send and acknowledges them, or answers with errno when it is set.
type recorder struct {
	msgs  []netlink.Message
	errno unix.Errno
}

func (r *recorder) conn(t *testing.T) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		r.msgs = append(r.msgs, req...)
		if r.errno != 0 && len(req) > 0 {
			return nltest.Error(int(r.errno), req)
		}
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var nftMsgNames = map[netlink.HeaderType]string{
	unix.NFNL_MSG_BATCH_BEGIN: "NFNL_MSG_BATCH_BEGIN",
	unix.NFNL_MSG_BATCH_END:   "NFNL_MSG_BATCH_END",
}

func msgName(h netlink.HeaderType) string {
	if n, ok := nftMsgNames[h]; ok {
		return n
	}
	switch h & 0xff {
	case unix.NFT_MSG_NEWTABLE:
		return "NFT_MSG_NEWTABLE"
	case unix.NFT_MSG_DELTABLE:
		return "NFT_MSG_DELTABLE"
	case unix.NFT_MSG_NEWCHAIN:
		return "NFT_MSG_NEWCHAIN"
	case unix.NFT_MSG_NEWRULE:
		return "NFT_MSG_NEWRULE"
	case unix.NFT_MSG_NEWSET:
		return "NFT_MSG_NEWSET"
	case unix.NFT_MSG_NEWSETELEM:
		return "NFT_MSG_NEWSETELEM"
	}
	return fmt.Sprintf("type 0x%04x", uint16(h))
}

// dump renders messages for a golden file: for each, its type and flags
// (the sequence number and port ID vary and are left out), the nft
// command it stands for, and its payload in hex.
func dump(msgs []netlink.Message, comments []string) string {
	var b strings.Builder
	ci := 0
	for _, m := range msgs {
		fmt.Fprintf(&b, "# %s flags=0x%04x\n", msgName(m.Header.Type), uint16(m.Header.Flags))
		if m.Header.Type != unix.NFNL_MSG_BATCH_BEGIN && m.Header.Type != unix.NFNL_MSG_BATCH_END {
			if ci < len(comments) {
				fmt.Fprintf(&b, "# nft %s\n", comments[ci])
			}
			ci++
		}
		for off := 0; off < len(m.Data); off += 16 {
			end := min(off+16, len(m.Data))
			fmt.Fprintf(&b, "%s\n", hex.EncodeToString(m.Data[off:end]))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// commands is the nft command each message of queueApply stands for.
func commands(rs ruleset) []string {
	tbl := "inet " + rs.table.Name
	cmds := []string{"add table " + tbl, "delete table " + tbl, "add table " + tbl}
	for _, s := range rs.sets {
		cmds = append(cmds,
			fmt.Sprintf("add set %s %s { type %s; }", tbl, s.set.Name, s.set.KeyType.Name),
			fmt.Sprintf("add element %s %s { ... } (the elements of the set above)", tbl, s.set.Name))
	}
	cmds = append(cmds, fmt.Sprintf("add chain %s %s { type filter hook prerouting priority mangle; policy accept; }", tbl, rs.chain.Name))
	for _, r := range rs.rules {
		cmds = append(cmds, fmt.Sprintf("add rule %s %s %s", tbl, rs.chain.Name, r.nft))
	}
	return cmds
}

// TestApplyBatchBytes compares the netlink batch of each test config,
// byte for byte, with its golden file.
func TestApplyBatchBytes(t *testing.T) {
	for _, tc := range testConfigs {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.cfg.normalize()
			if err != nil {
				t.Fatal(err)
			}
			var rec recorder
			conn := rec.conn(t)
			rs := buildRuleset(c)
			if err := queueApply(conn, rs); err != nil {
				t.Fatal(err)
			}
			if err := conn.Flush(); err != nil {
				t.Fatal(err)
			}
			cmds := commands(rs)
			if got := len(rec.msgs) - 2; got != len(cmds) {
				t.Fatalf("%d messages between the batch markers, want %d", got, len(cmds))
			}
			golden(t, tc.name+".batch", dump(rec.msgs, cmds))
		})
	}
}

// TestRuleBytes pins the text of each rule builder and, byte for byte, the
// netlink form of two of them on their own. That the expressions mean what
// the text says is checked by TestNetlinkMatchesNftText, which has the
// kernel and nft compare them with nft's own reading of the text.
func TestRuleBytes(t *testing.T) {
	c, _ := Config{ListenPort: 15001, IPv6: true}.normalize()
	rs := buildRuleset(c)
	ports := rs.sets[0].set
	for _, tc := range []struct {
		r    textRule
		want string // nft text
	}{
		{socketRule(rs.table, rs.chain, 0x1, fullMask),
			"meta l4proto tcp socket transparent 1 socket wildcard 0 meta mark set 0x00000001 accept"},
		{socketRule(rs.table, rs.chain, 0x100, 0xff00),
			"meta l4proto tcp socket transparent 1 socket wildcard 0 meta mark set meta mark & 0xffff01ff | 0x00000100 accept"},
		{tproxyRule(rs.table, rs.chain, nil, ports, unix.NFPROTO_IPV4, 15001, 0x1, fullMask),
			`iifname != "lo" meta nfproto ipv4 tcp dport @ports tproxy ip to :15001 meta mark set 0x00000001 accept`},
		{tproxyRule(rs.table, rs.chain, nil, ports, unix.NFPROTO_IPV6, 15001, 0x1, fullMask),
			`iifname != "lo" meta nfproto ipv6 tcp dport @ports tproxy ip6 to :15001 meta mark set 0x00000001 accept`},
		{rejectRule(rs.table, rs.chain, nil, ports, unix.NFPROTO_UNSPEC),
			`iifname != "lo" tcp dport @ports reject with tcp reset`},
		{rejectRule(rs.table, rs.chain, nil, ports, unix.NFPROTO_IPV4),
			`iifname != "lo" meta nfproto != ipv6 tcp dport @ports reject with tcp reset`},
	} {
		if tc.r.nft != tc.want {
			t.Errorf("text %q, want %q", tc.r.nft, tc.want)
		}
	}
	var rec recorder
	conn := rec.conn(t)
	conn.AddRule(socketRule(rs.table, rs.chain, 0x1, fullMask).rule)
	conn.AddRule(tproxyRule(rs.table, rs.chain, nil, ports, unix.NFPROTO_IPV6, 15001, 0x1, fullMask).rule)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	golden(t, "rules.batch", dump(rec.msgs, []string{
		"add rule inet haka prerouting meta l4proto tcp socket transparent 1 socket wildcard 0 meta mark set 0x00000001 accept",
		`add rule inet haka prerouting iifname != "lo" meta nfproto ipv6 tcp dport @ports tproxy ip6 to :15001 meta mark set 0x00000001 accept`,
	}))
}

// TestShow pins the text of Show for the default config.
func TestShow(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ListenPort = 15001
	var b strings.Builder
	if err := Show(&b, cfg); err != nil {
		t.Fatal(err)
	}
	golden(t, "show-default.txt", b.String())
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "--listen :PORT"},
		{Config{ListenPort: 443}, "also an intercepted port"},
		{Config{ListenPort: 1, Ports: []uint16{0}}, "port 0"},
		{Config{ListenPort: 1, RouteTable: 254}, "kernel's own"},
		{Config{ListenPort: 1, RouteTable: 255}, "kernel's own"},
		{Config{ListenPort: 1, Mark: 0x3, MarkMask: 0x1}, "outside its mask"},
		{Config{ListenPort: 1, Interfaces: []string{"a-very-long-interface"}}, "at most 15"},
		{Config{ListenPort: 1, Interfaces: []string{`x"y`}}, "quotes"},
		{Config{ListenPort: 1, Table: "bad name"}, "table name"},
	} {
		_, err := tc.cfg.normalize()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an ErrInvalidConfig mentioning %q", tc.cfg, err, tc.want)
		}
		// Apply refuses it before touching anything, root or not.
		if err := Apply(tc.cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Apply(%+v) = %v, want ErrInvalidConfig", tc.cfg, err)
		}
	}
	c, err := Config{ListenPort: 15001, Ports: []uint16{8443, 443, 8443}, Interfaces: []string{"b", "a", "b"}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(c.Ports) != "[443 8443]" || fmt.Sprint(c.Interfaces) != "[a b]" {
		t.Errorf("normalize kept duplicates or order: %v %v", c.Ports, c.Interfaces)
	}
	if c.Table != DefaultTable || c.Mark != DefaultMark || c.MarkMask != fullMask || c.RouteTable != DefaultRouteTable {
		t.Errorf("defaults not filled: %+v", c)
	}
}

// TestClassifyNFT feeds the batch the answers a kernel gives when parts of
// nftables are missing (see classifyNFT) through the real netlink decoding
// of the library, and checks the error names cause and fix.
func TestClassifyNFT(t *testing.T) {
	for _, tc := range []struct {
		errno unix.Errno
		is    error
		want  string
	}{
		{unix.EPERM, ErrPermission, "CAP_NET_ADMIN"},
		{unix.EOPNOTSUPP, ErrUnavailable, "nftables not available: load nf_tables"},
		{unix.EINVAL, ErrUnavailable, "CONFIG_NF_TABLES"},
		{unix.EAFNOSUPPORT, ErrUnavailable, "CONFIG_NF_TABLES_INET"},
		{unix.ENOENT, ErrUnavailable, "nft_tproxy"},
	} {
		rec := recorder{errno: tc.errno}
		conn := rec.conn(t)
		c, _ := Config{ListenPort: 15001}.normalize()
		if err := queueApply(conn, buildRuleset(c)); err != nil {
			t.Fatal(err)
		}
		err := classifyNFT(conn.Flush())
		if !errors.Is(err, tc.is) || !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("errno %v: %v, want %v mentioning %q", tc.errno, err, tc.is, tc.want)
		}
	}
}
