package nft

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrPermission is wrapped by the errors of Apply and Remove when the
// process may not change nftables or the routing tables.
var ErrPermission = errors.New("changing nftables and policy routing needs CAP_NET_ADMIN: " +
	"run as root, or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN; " +
	"Kubernetes securityContext.capabilities.add: [NET_ADMIN])")

// ErrUnavailable is wrapped by the errors of Apply and Remove when the
// kernel lacks nftables or a part of it that the ruleset needs.
var ErrUnavailable = errors.New("nftables not available")

// classifyNFT turns the errno of an nftables netlink exchange into an error
// that names the cause and the fix. The kernel answers:
//   - EPERM to any nfnetlink message from a process without CAP_NET_ADMIN;
//   - EPROTONOSUPPORT to socket(AF_NETLINK, NETLINK_NETFILTER) when it was
//     built without nfnetlink;
//   - EINVAL to a request, EOPNOTSUPP to a batch, for the nf_tables
//     subsystem when nfnetlink is there but nf_tables is not (not built,
//     or a module that could not be loaded);
//   - EAFNOSUPPORT to a table of the inet family without
//     CONFIG_NF_TABLES_INET;
//   - ENOENT to a rule using an expression type it does not know (tproxy,
//     socket, reject) once loading its module failed.
func classifyNFT(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return fmt.Errorf("%w: the kernel has no netfilter netlink: load nfnetlink and nf_tables (modprobe nf_tables) or check the kernel config (CONFIG_NETFILTER_NETLINK, CONFIG_NF_TABLES): %w", ErrUnavailable, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: load nf_tables (modprobe nf_tables) or check the kernel config (CONFIG_NF_TABLES): %w", ErrUnavailable, err)
	case errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w: the inet family is missing: load nf_tables_inet or check the kernel config (CONFIG_NF_TABLES_INET): %w", ErrUnavailable, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: the kernel lacks the tproxy, socket or reject expression: load nft_tproxy, nft_socket and nft_reject_inet (CONFIG_NFT_TPROXY, CONFIG_NFT_SOCKET, CONFIG_NFT_REJECT_INET; Linux 4.19 or later): %w", ErrUnavailable, err)
	}
	return fmt.Errorf("nftables: %w", err)
}

// explainNetlink adds the fix to the rtnetlink errors a user can cause.
func explainNetlink(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w: %w", ErrNoIPv6, err)
	}
	return err
}
