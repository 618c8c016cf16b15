package proxy_test

import (
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/hakaproxy/haka-proxy/proxy"
)

// BenchmarkIdleConnections measures what an idle proxied connection
// costs the proxy after one 100-byte exchange each way: goroutine stack,
// heap, goroutines and descriptors per connection. The clients and the
// backend hold their sockets without goroutines, and the same number of
// direct connections is measured first and subtracted, so that what is
// left is the proxy's share.
//
//	go test -run '^$' -bench IdleConnections -benchtime 1x ./proxy/
func BenchmarkIdleConnections(b *testing.B) {
	const n = 2000
	var kept []net.Conn
	var mu sync.Mutex
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 100)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write(buf)
				}
				mu.Lock()
				kept = append(kept, c) // held, with no goroutine
				mu.Unlock()
			}()
		}
	}()
	open := func(addr string) []net.Conn {
		cs := make([]net.Conn, 0, n)
		buf := make([]byte, 100)
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
		mu.Lock()
		for _, c := range kept {
			c.Close()
		}
		kept = kept[:0]
		mu.Unlock()
	}
	type sample struct {
		stack, heap int64
		goroutines  int
		fds         int
	}
	measure := func() sample {
		runtime.GC()
		runtime.GC() // twice: sync.Pool's victim cache, stack shrinking
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		ents, _ := os.ReadDir("/proc/self/fd")
		return sample{int64(ms.StackInuse), int64(ms.HeapInuse), runtime.NumGoroutine(), len(ents)}
	}
	delta := func(a, z sample) sample {
		return sample{z.stack - a.stack, z.heap - a.heap, z.goroutines - a.goroutines, z.fds - a.fds}
	}

	p, err := proxy.New(proxy.Config{Upstream: ln.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	pln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.Serve(pln)
	defer p.Shutdown(context.Background())

	for range b.N {
		s0 := measure()
		direct := open(ln.Addr().String())
		d0 := delta(s0, measure())
		closeAll(direct)

		s1 := measure()
		proxied := open(pln.Addr().String())
		d1 := delta(s1, measure())
		closeAll(proxied)

		b.ReportMetric(float64(d1.stack-d0.stack)/n, "stack-B/conn")
		b.ReportMetric(float64(d1.heap-d0.heap)/n, "heap-B/conn")
		b.ReportMetric(float64(d1.goroutines-d0.goroutines)/n, "goroutines/conn")
		b.ReportMetric(float64(d1.fds-d0.fds)/n, "fds/conn")
	}
}
