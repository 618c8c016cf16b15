package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/nftcmd"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/nft"
	"github.com/hakaproxy/haka-proxy/proxy/tproxy"
)

// The transparent gateway: --tproxy, --spoof-source and --nft.
//
// One rule decides where a connection goes: with --tproxy, to the address
// its client connected to (the original destination, which TPROXY keeps as
// the accepted socket's local address); without it, to --upstream. The two
// exclude each other, so that a config file written for one mode cannot
// quietly send a gateway's traffic to a single backend. A service that
// listens on loopback only behind a TPROXY sidecar should listen on the
// pod's address instead.

// resolve fills in what depends on other settings, once the config file
// is merged into the flags.
func (o *rootOptions) resolve(fs *pflag.FlagSet) {
	// The transparent listener's port is where the nftables rules send
	// the connections: default to the one `haka-proxy nft` uses, so that
	// `nft apply` and `run --tproxy` agree without flags. A plain proxy
	// keeps :8443, which its clients connect to.
	if o.TProxy && !fs.Changed("listen") {
		o.Listen = nftcmd.DefaultListen
	}
	o.NFTOptions.Listen = o.Listen
	o.nftFlagsGiven = o.nftFlagsGiven[:0]
	for _, n := range nftcmd.FlagNames() {
		if fs.Changed(n) {
			o.nftFlagsGiven = append(o.nftFlagsGiven, "--"+n)
		}
	}
}

// validateGateway checks the settings of --tproxy.
func (o *rootOptions) validateGateway() []error {
	var errs []error
	if o.Upstream != "" {
		errs = append(errs, fmt.Errorf("--upstream %q and --tproxy exclude each other: with --tproxy every connection goes to the address its client connected to (remove --upstream, or the upstream key of the config file)", o.Upstream))
	}
	if o.ProxyProtocolIn {
		errs = append(errs, errors.New("--proxy-protocol-in and --tproxy exclude each other: a transparent gateway sees the clients' own connections, not a load balancer's"))
	}
	if checkHostPort(o.Listen) != nil {
		return errs // validate reports it
	}
	// The listener must be on every address and a real port, with or
	// without --nft: TPROXY rules installed by someone else need the same.
	c, err := o.NFTOptions.Config()
	if err != nil {
		return append(errs, err)
	}
	if o.NFT {
		if _, err := nft.Ruleset(c); err != nil {
			errs = append(errs, err)
		}
		// An IPv4 socket gets no IPv6 connection: the rules would hand
		// them to nobody, and the reject rule would refuse them all.
		if host, _, _ := net.SplitHostPort(o.Listen); host == "0.0.0.0" && c.IPv6 {
			errs = append(errs, fmt.Errorf("--listen %q listens on IPv4 only but the rules intercept IPv6 too: use --listen :%d, or --no-ipv6", o.Listen, c.ListenPort))
		}
	}
	return errs
}

// listen opens the proxy's listener: transparent with --tproxy.
func (o *rootOptions) listen(ctx context.Context) (*net.TCPListener, error) {
	if !o.TProxy {
		return proxy.Listen(ctx, o.Listen)
	}
	// Keep-alive probes off, as proxy.Listen does: the idle timeout reaps
	// dead peers.
	return tproxy.Listen(ctx, o.Listen, tproxy.ListenOptions{KeepAlive: -1})
}

// gatewayDial connects each flow to its original destination, from the
// client's own address with --spoof-source.
//
// A connection whose original destination port is the listener's did not
// come through the TPROXY rules (nft refuses to intercept the listen
// port): a client connected to the proxy itself, and dialling "the
// original destination" would connect the proxy to itself, again and
// again until max-conns. It is refused instead.
func (o *rootOptions) gatewayDial() proxy.DialFunc {
	d := &tproxy.Dialer{Spoof: o.SpoofSource, Timeout: o.DialTimeout, KeepAlive: -1}
	_, p, _ := net.SplitHostPort(o.Listen)
	port, _ := strconv.ParseUint(p, 10, 16) // checked by validate
	return func(ctx context.Context, f *inspect.Flow) (*net.TCPConn, error) {
		if uint64(f.Dst.Port()) == port {
			return nil, fmt.Errorf("%s is the transparent listener itself: the client connected to haka-proxy, not through it", f.Dst)
		}
		return d.DialFlow(ctx, f)
	}
}

// describeFactory names the inspection for the "listening" line, so that
// an operator (and a test) can tell whether connections are inspected.
func describeFactory(f inspect.Factory) string {
	switch f := f.(type) {
	case inspect.PassThrough:
		return "pass-through"
	case fmt.Stringer:
		return f.String()
	}
	return fmt.Sprintf("%T", f)
}
