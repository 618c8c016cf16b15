package loadgen

import (
	"context"
	"errors"
	"io"
	"net"
	"time"
)

// SpliceProxy is the minimal Go proxy the comparison measures against:
// for every connection accepted on ln it dials upstream and copies both
// ways between the two *net.TCPConn with io.Copy, which Linux does with
// splice(2) through a pipe, never copying through user space; each
// direction's end is passed on with CloseWrite. It returns when ctx ends
// (closing ln) or ln fails; connections in flight finish on their own.
func SpliceProxy(ctx context.Context, ln net.Listener, upstream string) error {
	if err := CheckLoopback(upstream); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	d := &net.Dialer{Timeout: dialTimeout}
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return ctx.Err()
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), acceptBackoffMax)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go splicePair(c.(*net.TCPConn), d, upstream)
	}
}

func splicePair(client *net.TCPConn, d *net.Dialer, upstream string) {
	defer client.Close()
	uc, err := d.Dial("tcp", upstream)
	if err != nil {
		return
	}
	server := uc.(*net.TCPConn)
	defer server.Close()
	done := make(chan struct{})
	go func() {
		spliceOneWay(server, client)
		close(done)
	}()
	spliceOneWay(client, server)
	<-done
}

// spliceOneWay copies src to dst until src ends, then ends dst's
// direction. The concrete types matter: io.Copy(*TCPConn, *TCPConn) is
// what takes the splice path.
func spliceOneWay(dst, src *net.TCPConn) {
	io.Copy(dst, src)
	dst.CloseWrite()
}
