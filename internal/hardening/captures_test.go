package hardening

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/replay"
	"github.com/hakaproxy/haka-proxy/rules"
)

// captureFiles lists the shared captures.
func captureFiles(t *testing.T) []string {
	t.Helper()
	root, err := pcaptest.Root()
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".pcap") || strings.HasSuffix(path, ".pcap.gz") || strings.HasSuffix(path, ".pcapng")) {
			files = append(files, path)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) || len(files) == 0 {
		t.Skipf("no shared captures under %s", root)
	}
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// replayVerdicts replays a capture through the replay pipeline with the
// stock rules and returns each stream's decision by its addresses, in
// the order they ended.
func replayVerdicts(t *testing.T, path string) map[[2]netip.AddrPort][]inspect.Decision {
	t.Helper()
	engine, err := rules.New(rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	f, err := tlssm.NewFactory(tlssm.Options{NewHandler: engine.NewTLSHandler, NoTimers: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]netip.AddrPort][]inspect.Decision{}
	// Midstream: a stream whose start was not captured is inspected, as
	// the live proxy inspects its first bytes when they are played to it.
	r, err := replay.New(replay.Options{Factory: f, Midstream: true, OnStream: func(s *replay.StreamStats) {
		k := [2]netip.AddrPort{s.Client, s.Server}
		out[k] = append(out[k], s.Decision)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReplayFile(path); err != nil {
		t.Logf("replay: %v", err)
	}
	return out
}

// splitter cuts a chunk of a capture into the writes that send it; d is
// its direction, 0 up and 1 down.
type splitter func(d int, b []byte) [][]byte

func whole(_ int, b []byte) [][]byte { return [][]byte{b} }

// bytewiseFor is how many bytes of each direction go a byte at a time;
// the rest goes in segments. Each byte costs a round trip through the
// proxy (hundreds of µs on a busy machine): the first 8 KiB hold the
// handshake of every shared capture but the one with a 340 KB
// certificate, whose rest would take minutes.
const bytewiseFor = 8 << 10

// bytewise cuts the first bytewiseFor bytes of each direction a byte at a
// time.
func bytewise() splitter {
	var seen [2]int
	return func(d int, b []byte) [][]byte {
		var out [][]byte
		for len(b) > 0 && seen[d] < bytewiseFor {
			out, b = append(out, b[:1]), b[1:]
			seen[d]++
		}
		if len(b) > 0 {
			out = append(out, b)
		}
		return out
	}
}

func randomSplits(seed uint64) splitter {
	rng := rand.New(rand.NewPCG(seed, 99))
	return func(_ int, b []byte) [][]byte {
		var out [][]byte
		for len(b) > 0 {
			k := min(len(b), 1+rng.IntN(min(len(b), 700)))
			out, b = append(out, b[:k]), b[k:]
		}
		return out
	}
}

// side is one end of a replayed stream: it writes its chunks when told
// and counts what it reads.
type side struct {
	c    *net.TCPConn
	mu   sync.Mutex
	got  int64
	done bool // the read side ended
	more chan struct{}
}

func newSide(c *net.TCPConn) *side {
	s := &side{c: c, more: make(chan struct{})}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			s.mu.Lock()
			s.got += int64(n)
			if err != nil {
				s.done = true
			}
			close(s.more)
			s.more = make(chan struct{})
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return s
}

// quiet is how long a side may receive nothing before the other side's
// turn is taken to be held by the proxy (a record or message it has not
// judged yet), not in flight: the OS gives no event for bytes a proxy
// holds.
const quiet = 300 * time.Millisecond

// await waits until the side has read want bytes, its read side ended,
// or nothing came for the quiet period.
func (s *side) await(want int64) {
	for {
		s.mu.Lock()
		got, done, more := s.got, s.done, s.more
		s.mu.Unlock()
		if got >= want || done {
			return
		}
		select {
		case <-more:
		case <-time.After(quiet):
			return
		}
	}
}

func (s *side) ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// replayLive plays one stream through the proxy: the client's bytes from
// a client, the server's from a backend, each chunk cut by split, in the
// capture's order; at every change of direction the receiving side first
// gets what the other sent (or the proxy is found holding it).
func replayLive(t *testing.T, r *rig, diag *sockDiag, src netip.Addr, st *pcaptest.Stream, split splitter) (got [2]int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r.route(src, ln.Addr().String())
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.(*net.TCPConn)
	}()
	cc := r.connect(src)
	defer cc.Close()
	var sc *net.TCPConn
	select {
	case sc = <-accepted:
	case <-time.After(waitFor):
		t.Fatal("the proxy did not connect to the backend")
	}
	if sc == nil {
		t.Fatal("accept failed")
	}
	defer sc.Close()
	cc.SetNoDelay(true)
	sc.SetNoDelay(true)
	// A stream played a byte at a time takes its time.
	cc.SetDeadline(time.Time{})
	sc.SetDeadline(time.Time{})
	client, server := newSide(cc), newSide(sc)
	// The proxy's ends of the two connections, as (own, peer) addresses.
	proxyEnd := [2][2]netip.AddrPort{
		{addrPort(cc.RemoteAddr()), addrPort(cc.LocalAddr())},
		{addrPort(sc.RemoteAddr()), addrPort(sc.LocalAddr())},
	}
	var sent [2]int64 // up, down
	for i, ch := range st.Chunks {
		from, to, d := cc, server, 0
		if !ch.Up {
			from, to, d = sc, client, 1
		}
		if client.ended() || server.ended() {
			break
		}
		for _, w := range split(d, ch.Data) {
			if _, err := from.Write(w); err != nil {
				break
			}
			// One write, one read of the proxy.
			drained(t, diag, proxyEnd[d])
		}
		sent[d] += int64(len(ch.Data))
		if i+1 < len(st.Chunks) && st.Chunks[i+1].Up != ch.Up {
			to.await(sent[d])
		}
	}
	cc.CloseWrite()
	sc.CloseWrite()
	client.await(sent[1])
	server.await(sent[0])
	server.mu.Lock()
	got[0] = server.got
	server.mu.Unlock()
	client.mu.Lock()
	got[1] = client.got
	client.mu.Unlock()
	return got
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// drained waits until the proxy has read everything sent to its socket
// end (own, peer), or the socket is gone (the proxy closed it).
func drained(t *testing.T, diag *sockDiag, end [2]netip.AddrPort) {
	deadline := time.Now().Add(waitFor)
	for spins := 0; ; spins++ {
		n, err := diag.rqueue(end[0], end[1])
		if err != nil || n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy left %d bytes unread on %v for %v", n, end, waitFor)
		}
		// The proxy's goroutines run in this process: let them. Only
		// yielding would keep a single processor busy, and the runtime
		// then looks for network readiness only every 10 ms (sysmon):
		// after a few yields, park a little, which lets it poll.
		if spins < 8 {
			runtime.Gosched()
		} else {
			time.Sleep(min(time.Duration(spins)*5*time.Microsecond, time.Millisecond))
		}
	}
}

// Every TCP stream of every shared capture, played through the live proxy
// — the client's bytes by a client, the server's by a backend, in the
// capture's order — in one piece per segment, one byte per write, and in
// random splits, gets the verdict the replay of the same capture gives.
// Each write is one read of the proxy: the writer waits for the proxy's
// socket to be empty before the next (sockDiag).
func TestCapturesLive(t *testing.T) {
	files := captureFiles(t)
	r := newRig(t, "127.0.0.1:1", rigConfig{})
	diag, err := newSockDiag()
	if err != nil {
		t.Skip(err)
	}
	defer diag.close()
	modes := []struct {
		name  string
		split func(i int) splitter
	}{
		{"segments", func(int) splitter { return whole }},
		{"bytes", func(int) splitter { return bytewise() }},
		{"random", func(i int) splitter { return randomSplits(uint64(i)) }},
	}
	next := 0
	srcFor := func() netip.Addr {
		next++
		return netip.AddrFrom4([4]byte{127, 1, byte(next >> 8), byte(next)})
	}
	var compared, skipped int
	for _, path := range files {
		name := strings.TrimPrefix(path, filepath.Dir(filepath.Dir(path))+string(os.PathSeparator))
		streams, err := pcaptest.Read(path)
		if err != nil {
			t.Logf("%s: %v (the streams read before are played)", name, err)
		}
		want := replayVerdicts(t, path)
		for i, st := range streams {
			k := [2]netip.AddrPort{st.Client, st.Server}
			switch {
			case st.Gaps > 0:
				t.Logf("%s stream %d: %d bytes missing from the capture; a live connection has no gaps", name, i, st.Gaps)
				skipped++
				continue
			case len(st.Chunks) == 0:
				skipped++
				continue
			case len(want[k]) != 1:
				t.Logf("%s stream %d: %d replay verdicts for %v", name, i, len(want[k]), k)
				skipped++
				continue
			}
			w := want[k][0]
			for _, m := range modes {
				src := srcFor()
				start := time.Now()
				got := replayLive(t, r, diag, src, st, m.split(i))
				took := time.Since(start)
				rec := r.waitRecords("record", 1, fromAddr(src))[0]
				compared++
				up, down := int64(len(st.Payload(true))), int64(len(st.Payload(false)))
				if rec.Verdict == "pass" && (rec.BytesUp != up || rec.BytesDown != down || got != [2]int64{up, down}) {
					t.Errorf("%s stream %d, %s: passed with %d of %d bytes up and %d of %d down forwarded, %v received",
						name, i, m.name, rec.BytesUp, up, rec.BytesDown, down, got)
				}
				if took > time.Second {
					t.Logf("%s stream %d, %s: %v", name, i, m.name, took)
				}
				if rec.Verdict != w.Verdict.String() || rec.Rule != w.Rule {
					t.Errorf("%s stream %d, %s: live %s %q (%s), replay %s %q (%s)",
						name, i, m.name, rec.Verdict, rec.Rule, rec.Reason, w.Verdict, w.Rule, w.Reason)
				} else if m.name == "segments" {
					t.Logf("%s stream %d: %s %s %s", name, i, rec.Verdict, rec.Rule, rec.Reason)
				}
			}
		}
	}
	t.Logf("%d live replays compared with the replay's verdict, %d streams skipped", compared, skipped)
}
