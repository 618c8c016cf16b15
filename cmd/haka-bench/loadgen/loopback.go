package loadgen

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// CheckLoopback returns an error unless addr is IP:PORT with a loopback IP
// (127.0.0.0/8 or ::1) and a port in 0-65535. Names are refused, even
// "localhost": what a name resolves to is not ours to trust, and a load
// generator pointed at someone else's host is an attack.
func CheckLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want IP:PORT, e.g. 127.0.0.1:15400: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("address %q: port %q is not 0-65535", addr, port)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: not a loopback IP: haka-bench only sends load to 127.0.0.0/8 or ::1", addr)
	}
	return nil
}
