package proxy

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestDialCause(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err         error
		label, text string
	}{
		{op(syscall.ECONNREFUSED), DialRefused, "refused"},
		{op(syscall.EHOSTUNREACH), DialNoRoute, "no route"},
		{op(syscall.ENETUNREACH), DialUnreachable, "network unreachable"},
		{op(syscall.ETIMEDOUT), DialTimeout, "timeout"},
		{&net.OpError{Op: "dial", Err: context.DeadlineExceeded}, DialTimeout, "timeout"},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}, DialResolve, "name resolution failed"},
		{op(syscall.EACCES), DialOther, "dial failed"},
	} {
		label, text := dialCause(tc.err)
		if label != tc.label || text != tc.text {
			t.Errorf("%v: got %s/%q, want %s/%q", tc.err, label, text, tc.label, tc.text)
		}
	}
}
