package proxy

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// bypassAll bypasses every connection from its first byte.
type bypassAll struct{}

func (bypassAll) New(*inspect.Flow, func(inspect.Decision)) (inspect.Inspector, inspect.Decision) {
	return bypassAll{}, inspect.Decision{Verdict: inspect.Bypass, Reason: "trusted", Rule: "acl.lua:1"}
}
func (bypassAll) Feed(dissect.Direction, []byte, time.Time) inspect.Result {
	panic("fed after a bypass at accept")
}
func (bypassAll) EOF(dissect.Direction, []byte, time.Time) inspect.Result {
	panic("fed after a bypass at accept")
}
func (bypassAll) Info() inspect.Info    { return inspect.Info{} }
func (bypassAll) Close(inspect.Summary) {}

// A bypassed connection is spliced through pipes borrowed from the pool
// and given back once empty; no pipe stays with an idle connection.
func TestBypassSplicesThroughPooledPipes(t *testing.T) {
	if !spliceSupported {
		t.Skip("no splice on this system")
	}
	be, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	go func() {
		for {
			c, err := be.Accept()
			if err != nil {
				return
			}
			go func() {
				// A user-space echo: io.Copy would splice, with pipes
				// of its own that would blur the count below.
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
						break
					}
				}
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	p, err := New(Config{Upstream: be.Addr().String(), Factory: bypassAll{}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	defer p.Shutdown(context.Background())

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 4<<20)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != msg[i] {
			t.Fatalf("byte %d differs", i)
		}
	}
	// The connection is open and idle: every pipe is back in the pool.
	p.pipes.mu.Lock()
	free, lent := len(p.pipes.free), p.pipes.lent
	p.pipes.mu.Unlock()
	if free == 0 {
		t.Fatal("no pipe in the pool: the bypass did not splice")
	}
	if lent != 0 {
		t.Fatalf("%d pipes lent out: an idle connection holds a pipe", lent)
	}
}
