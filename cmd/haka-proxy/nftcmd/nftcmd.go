// Package nftcmd is the `haka-proxy nft apply|remove|show` command and the
// nftables flags it shares with the run command's --nft.
//
// The root command adds it with one line:
//
//	root.AddCommand(nftcmd.New(nftcmd.DefaultOptions(), os.Stdout, os.Stderr))
//
// and the run command binds the same flags and brackets the proxy's life
// with the rules:
//
//	nftcmd.AddFlags(cmd.Flags(), &opts.NFT)       // --nft-ports, --nft-iface, ...
//	...
//	if opts.UseNFT {
//		opts.NFT.Listen = opts.Listen
//		return nftcmd.With(opts.NFT, log, func() error { return serve(ctx) })
//	}
package nftcmd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/proxy/nft"
)

// DefaultListen is the transparent listener's address when --listen is not
// given: every address, an unprivileged port outside the usual ephemeral
// range (32768-60999) so that no outgoing connection takes it first.
const DefaultListen = ":15001"

// Options are the flags. The values given to New and AddFlags are the
// flags' defaults (a config file can set them before the flags are
// parsed).
type Options struct {
	// Listen is the transparent listener's address (--listen); only its
	// port goes into the rules, and its host must be empty or a wildcard.
	Listen string
	// Ports are the intercepted destination ports (--nft-ports).
	Ports []uint16
	// Interfaces are the intercepted input interfaces (--nft-iface);
	// empty means every interface but lo.
	Interfaces []string
	// Mark and MarkMask are --nft-mark MARK[/MASK].
	Mark, MarkMask uint32
	// RouteTable is --nft-route-table.
	RouteTable uint32
	// IPv6 is --ipv6 (default) / --no-ipv6.
	IPv6 bool
	// FailOpen is --nft-fail-open.
	FailOpen bool
}

// DefaultOptions returns the defaults of every flag.
func DefaultOptions() Options {
	c := nft.DefaultConfig()
	return Options{
		Listen:     DefaultListen,
		Ports:      c.Ports,
		Mark:       c.Mark,
		MarkMask:   c.MarkMask,
		RouteTable: c.RouteTable,
		IPv6:       c.IPv6,
	}
}

// AddFlags binds the nftables flags to o: --nft-ports, --nft-iface,
// --nft-mark, --nft-route-table, --ipv6/--no-ipv6 and --nft-fail-open. It
// does not add --listen, which the run command has already.
func AddFlags(fs *pflag.FlagSet, o *Options) {
	fs.Var((*portsValue)(&o.Ports), "nft-ports", "intercepted TCP destination ports, comma-separated")
	fs.StringSliceVar(&o.Interfaces, "nft-iface", o.Interfaces, "intercepted input interfaces, comma-separated (default: every interface but lo)")
	fs.Var(&markValue{mark: &o.Mark, mask: &o.MarkMask}, "nft-mark", "packet mark for the policy route, MARK or MARK/MASK (the mask keeps other owners' bits)")
	fs.Var((*uint32Value)(&o.RouteTable), "nft-route-table", "policy routing table for the local route (not 253, 254 or 255)")
	fs.BoolVar(&o.IPv6, "ipv6", o.IPv6, "intercept IPv6 too")
	f := fs.VarPF(noValue{&o.IPv6}, "no-ipv6", "", "intercept IPv4 only (same as --ipv6=false)")
	f.NoOptDefVal = "true"
	fs.BoolVar(&o.FailOpen, "nft-fail-open", o.FailOpen, "let intercepted connections through uninspected while no proxy listens (default: refuse them with a TCP reset)")
}

// Config turns the options into the nftables configuration.
func (o Options) Config() (nft.Config, error) {
	port, err := listenPort(o.Listen)
	if err != nil {
		return nft.Config{}, err
	}
	return nft.Config{
		Table:      nft.DefaultTable,
		Ports:      o.Ports,
		Interfaces: o.Interfaces,
		ListenPort: port,
		Mark:       o.Mark,
		MarkMask:   o.MarkMask,
		RouteTable: o.RouteTable,
		IPv6:       o.IPv6,
		FailOpen:   o.FailOpen,
	}, nil
}

// listenPort takes the port of --listen. TPROXY hands a connection to the
// listener on the address of the interface it came in on, which only a
// wildcard listener is sure to cover.
func listenPort(listen string) (uint16, error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return 0, fmt.Errorf("--listen %q: want [HOST]:PORT, e.g. %s: %w", listen, DefaultListen, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("--listen %q: port %q is not 1-65535", listen, p)
	}
	switch host {
	case "", "0.0.0.0", "::":
	default:
		return 0, fmt.Errorf("--listen %q: a transparent listener must listen on every address "+
			"(TPROXY hands it connections on the address of the interface they arrive on): use --listen :%d", listen, n)
	}
	return uint16(n), nil
}

// operations are what the subcommands do; tests replace them.
type operations struct {
	apply  func(nft.Config) error
	remove func(nft.Config) error
	show   func(io.Writer, nft.Config) error
}

// systemOps are the operations on the running system.
func systemOps() operations {
	return operations{apply: nft.Apply, remove: nft.Remove, show: nft.Show}
}

// New returns the `nft` command with its apply, remove and show
// subcommands. The flags start from o and are shared by the subcommands.
// Results go to stdout; errors are returned to the caller (cobra's
// Execute), which prints them and exits non-zero.
func New(o Options, stdout, stderr io.Writer) *cobra.Command {
	return newCmd(o, stdout, stderr, systemOps())
}

func newCmd(o Options, stdout, stderr io.Writer, ops operations) *cobra.Command {
	opts := &o
	cmd := &cobra.Command{
		Use:   "nft",
		Short: "Install, remove or print the transparent gateway's nftables rules and policy routing",
		Long: `The gateway deployment: nftables TPROXY on the forwarding path hands TCP
connections to the intercepted ports (--nft-ports, default 443) to the
transparent listener (--listen), and a policy route (fwmark --nft-mark, table
--nft-route-table) delivers them locally.

  haka-proxy nft apply    install or replace the table inet haka and the routing
  haka-proxy nft remove   remove them, leaving no trace
  haka-proxy nft show     print them as nft and ip commands, changing nothing

apply and remove need CAP_NET_ADMIN. "haka-proxy run --tproxy --nft" does apply at
start and remove at exit by itself.`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	pf := cmd.PersistentFlags()
	pf.StringVar(&opts.Listen, "listen", opts.Listen, "the proxy's transparent listener, [::]:PORT or :PORT (only the port is used)")
	AddFlags(pf, opts)

	sub := func(use, short string, run func(nft.Config) error) *cobra.Command {
		return &cobra.Command{
			Use:          use,
			Short:        short,
			Args:         cobra.NoArgs,
			SilenceUsage: true,
			RunE: func(*cobra.Command, []string) error {
				c, err := opts.Config()
				if err != nil {
					return err
				}
				return run(c)
			},
		}
	}
	cmd.AddCommand(
		sub("apply", "Install or replace the rules and the policy routing (idempotent)", func(c nft.Config) error {
			if err := ops.apply(c); err != nil {
				return fmt.Errorf("nft apply: %w", err)
			}
			_, err := fmt.Fprintf(stdout, "applied: %s\n", describe(c))
			return err
		}),
		sub("remove", "Remove the rules and the policy routing", func(c nft.Config) error {
			if err := ops.remove(c); err != nil {
				return fmt.Errorf("nft remove: %w", err)
			}
			_, err := fmt.Fprintf(stdout, "removed: table inet %s and the policy routing tagged proto %d\n", c.Table, nft.RouteProtocol)
			return err
		}),
		sub("show", "Print the rules and the policy routing as nft and ip commands", func(c nft.Config) error {
			return ops.show(stdout, c)
		}),
	)
	return cmd
}

// describe says in one line what apply installed.
func describe(c nft.Config) string {
	fams := "IPv4 and IPv6"
	if !c.IPv6 {
		fams = "IPv4 only"
	}
	ifaces := "every interface but lo"
	if len(c.Interfaces) > 0 {
		ifaces = strings.Join(c.Interfaces, ", ")
	}
	ports := make([]string, len(c.Ports))
	for i, p := range c.Ports {
		ports[i] = strconv.Itoa(int(p))
	}
	if len(ports) == 0 {
		ports = []string{strconv.Itoa(nft.DefaultPort)}
	}
	mark := fmt.Sprintf("0x%x", c.Mark)
	if c.MarkMask != 0 && c.MarkMask != 0xffffffff {
		mark += fmt.Sprintf("/0x%x", c.MarkMask)
	}
	return fmt.Sprintf("table inet %s: TCP ports %s on %s → :%d (%s), fwmark %s lookup %d",
		c.Table, strings.Join(ports, ","), ifaces, c.ListenPort, fams, mark, c.RouteTable)
}

// Up installs the rules for o and returns the function that removes them.
// On error nothing is left installed. Both steps are logged to log (nil
// logs nothing): the run command's log is the proxy's, JSON or console.
func Up(o Options, log *zap.Logger) (down func() error, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	c, err := o.Config()
	if err != nil {
		return nil, err
	}
	if err := nft.Apply(c); err != nil {
		return nil, fmt.Errorf("--nft: %w", err)
	}
	log.Info("nftables rules applied", zap.String("rules", describe(c)))
	return func() error {
		if err := nft.Remove(c); err != nil {
			return fmt.Errorf("--nft: remove the rules: %w (remove them by hand with `haka-proxy nft remove`)", err)
		}
		log.Info("nftables rules removed", zap.String("table", "inet "+c.Table))
		return nil
	}, nil
}

// With installs the rules for o, runs fn, and removes the rules however fn
// ends: an error, a panic (re-raised after the removal) or success. It
// returns fn's error joined with the removal's. A process killed by
// SIGKILL cannot remove anything: the rules stay, and with the default
// fail-closed rule the intercepted ports are refused until the next start
// (whose apply replaces them) or `haka-proxy nft remove`.
func With(o Options, log *zap.Logger, fn func() error) (err error) {
	down, err := Up(o, log)
	if err != nil {
		return err
	}
	defer func() {
		if derr := down(); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	return fn()
}

// FlagNames returns the names of the flags AddFlags binds, for callers
// that must tell whether any of them was given.
func FlagNames() []string {
	return []string{"nft-ports", "nft-iface", "nft-mark", "nft-route-table", "ipv6", "no-ipv6", "nft-fail-open"}
}

// portsValue is --nft-ports: a comma-separated list of 1-65535.
type portsValue []uint16

func (p *portsValue) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ",")
}

func (p *portsValue) Set(v string) error {
	var out []uint16
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q is not 1-65535", f)
		}
		out = append(out, uint16(n))
	}
	*p = out
	return nil
}

func (p *portsValue) Type() string { return "ports" }

// markValue is --nft-mark MARK[/MASK], in hex (0x) or decimal.
type markValue struct{ mark, mask *uint32 }

func (m *markValue) String() string {
	if m.mark == nil {
		return ""
	}
	if *m.mask == 0 || *m.mask == 0xffffffff {
		return fmt.Sprintf("0x%x", *m.mark)
	}
	return fmt.Sprintf("0x%x/0x%x", *m.mark, *m.mask)
}

func (m *markValue) Set(v string) error {
	ms, masks, hasMask := strings.Cut(v, "/")
	mark, err := strconv.ParseUint(ms, 0, 32)
	if err != nil || mark == 0 {
		return fmt.Errorf("mark %q is not a non-zero 32-bit number (e.g. 0x1)", ms)
	}
	mask := uint64(0xffffffff)
	if hasMask {
		if mask, err = strconv.ParseUint(masks, 0, 32); err != nil || mask == 0 {
			return fmt.Errorf("mask %q is not a non-zero 32-bit number (e.g. 0xff)", masks)
		}
	}
	if mark&^mask != 0 {
		return fmt.Errorf("mark 0x%x has bits outside its mask 0x%x", mark, mask)
	}
	*m.mark, *m.mask = uint32(mark), uint32(mask)
	return nil
}

func (m *markValue) Type() string { return "mark" }

// uint32Value is a decimal uint32 flag.
type uint32Value uint32

func (u *uint32Value) String() string { return strconv.FormatUint(uint64(*u), 10) }

func (u *uint32Value) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return fmt.Errorf("%q is not a routing table number", v)
	}
	*u = uint32Value(n)
	return nil
}

func (u *uint32Value) Type() string { return "table" }

// noValue is a --no-X flag: setting it true sets X false.
type noValue struct{ p *bool }

func (n noValue) String() string {
	if n.p == nil {
		return "false"
	}
	return strconv.FormatBool(!*n.p)
}

func (n noValue) Set(v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return err
	}
	*n.p = !b
	return nil
}

func (n noValue) Type() string     { return "bool" }
func (n noValue) IsBoolFlag() bool { return true }
