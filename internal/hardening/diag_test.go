package hardening

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockDiag asks the kernel (NETLINK_SOCK_DIAG) how many bytes wait in a
// TCP socket's receive queue: the bytes its owner has not read yet. A
// writer that waits for the proxy's socket to be empty after each write
// makes every write one read of the proxy, whatever the speeds of the
// two — which one-byte writes alone do not: a fast writer's bytes
// coalesce in the queue.
type sockDiag struct {
	mu  sync.Mutex
	fd  int
	seq uint32
}

func newSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	return &sockDiag{fd: fd}, nil
}

func (s *sockDiag) close() { unix.Close(s.fd) }

// Sizes and offsets of struct nlmsghdr, inet_diag_req_v2 and
// inet_diag_msg (linux/inet_diag.h).
const (
	nlmsgHdrLen      = 16
	inetDiagReqLen   = 56
	inetDiagRQueueAt = nlmsgHdrLen + 4 + 48 + 4
)

// rqueue returns the receive queue of the IPv4 TCP socket whose own
// address is local and whose peer is remote.
func (s *sockDiag) rqueue(local, remote netip.AddrPort) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	req := make([]byte, nlmsgHdrLen+inetDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], s.seq)
	r := req[nlmsgHdrLen:]
	r[0], r[1] = unix.AF_INET, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	l4, r4 := local.Addr().As4(), remote.Addr().As4()
	copy(id[4:], l4[:])
	copy(id[20:], r4[:])
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 512)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		b := buf[:n]
		if len(b) < nlmsgHdrLen || ne.Uint32(b[8:]) != s.seq {
			continue
		}
		switch ne.Uint16(b[4:]) {
		case unix.NLMSG_ERROR:
			if errno := int32(ne.Uint32(b[nlmsgHdrLen:])); errno != 0 {
				return 0, fmt.Errorf("sock_diag %v→%v: %w", local, remote, syscall.Errno(-errno))
			}
			return 0, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(b) < inetDiagRQueueAt+4 {
				return 0, fmt.Errorf("sock_diag: short answer of %d bytes", len(b))
			}
			return int(ne.Uint32(b[inetDiagRQueueAt:])), nil
		}
	}
}
