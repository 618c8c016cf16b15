package rules

import (
	"crypto/tls"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// The cost of the example Lua machine beside the built-in one, per
// message it judges, on the same connections: a Session made, the
// connection fed as its reads came, the Session closed, with the built-in
// machine alone (no rules), and with the example machine and its rules.
// ns/msg divides a connection's time by the handshake messages in it,
// ns/unit by every unit the Lua machine judges (messages and the other
// records); the difference between the runs is the Lua machine's: the
// example's, and a minimal machine's that takes every unit and runs no
// Lua (what the binding costs).
//
//	go test ./rules -run '^$' -bench LuaMachine -benchmem -benchtime 2s

// unitCounter is a UnitHandler that counts what a Lua machine would be
// given.
type unitCounter struct{ units, msgs int }

func (c *unitCounter) Hooked(tlssm.EventID) bool           { return false }
func (c *unitCounter) Event(*tlssm.Event) inspect.Decision { return inspect.Decision{} }
func (c *unitCounter) Close()                              {}
func (c *unitCounter) Advance(time.Time) inspect.Decision  { return inspect.Decision{} }
func (c *unitCounter) NextDeadline() (time.Time, bool)     { return time.Time{}, false }
func (c *unitCounter) Unit(u *tlssm.Unit) inspect.Decision {
	c.units++
	if u.Kind == tlssm.KindMessage || u.Kind == tlssm.KindSSLv2Hello {
		c.msgs++
	}
	return inspect.Decision{}
}

// captureChunks returns the reads of the first stream of a shared
// capture, or nil when the captures are not there.
func captureChunks(tb testing.TB, name string) []chunk {
	tb.Helper()
	p, err := pcaptest.Path(name)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	streams, err := pcaptest.Read(p)
	if err != nil || len(streams) == 0 {
		tb.Fatalf("%s: %v", p, err)
	}
	var out []chunk
	for _, c := range streams[0].Chunks {
		d := dissect.Down
		if c.Up {
			d = dissect.Up
		}
		out = append(out, chunk{d, c.Data})
	}
	return out
}

// benchFlow is the connection of the benchmarks.
var benchFlow = inspect.Flow{ID: 1, Src: meta(1).Src, Dst: meta(1).Dst, Start: time.Unix(1000, 0)}

// feedConn runs one connection through a Session of f and returns its
// decision.
func feedConn(f *tlssm.Factory, chunks []chunk) inspect.Decision {
	flow := benchFlow
	s, d := f.New(&flow, nil)
	var pending [2][]byte
	for _, c := range chunks {
		if d.Verdict.Kills() {
			break
		}
		p := append(pending[c.dir], c.data...)
		res := s.Feed(c.dir, p, flow.Start)
		d = res.Decision
		pending[c.dir] = p[res.Forward:]
	}
	s.Close(inspect.Summary{})
	return d
}

// benchLuaEngine is an engine as the proxy runs it: logging at info (the
// example's debug lines cost nothing), one interpreter state, a deadline
// a loaded machine cannot trip.
func benchLuaEngine(b *testing.B, opts Options) *Engine {
	b.Helper()
	core, _ := observer.New(zapcore.InfoLevel)
	opts.Logger, opts.PoolSize, opts.Deadline = zap.New(core), 1, time.Minute
	e, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	return e
}

// minimalMachine takes every unit and runs no Lua: the cost of the
// binding itself (a unit matched and dispatched, no result made).
const minimalMachine = `
local d = haka.dissector.new{ name = "minimal" }
d.states = haka.state_machine.new("minimal", function ()
  all = state(tls.grammar.record, tls.grammar.record)
  all:on{ events = { events.up, events.down }, when = tls.grammar.handshake, jump = all }
  initial(all)
end)
d:install()
`

func BenchmarkLuaMachine(b *testing.B) {
	conns := map[string][]chunk{
		"crypto-tls-1.2": tlsTranscript(b, tls.VersionTLS12),
		"crypto-tls-1.3": tlsTranscript(b, tls.VersionTLS13),
	}
	// A real TLS 1.2 connection (to raw.githubusercontent.com), from a
	// shared capture.
	if c := captureChunks(b, "suricata-verify/bug-7264-tcp-3whs-ack-data-tls-01/input.pcap"); c != nil {
		conns["capture-tls1.2"] = c
	}
	dir := exampleDir(b)
	for name, chunks := range conns {
		counter := &unitCounter{}
		cf, err := tlssm.NewFactory(tlssm.Options{NoTimers: true, NewHandler: func(*inspect.Flow, *tlssm.Session) tlssm.Handler { return counter }})
		if err != nil {
			b.Fatal(err)
		}
		if d := feedConn(cf, chunks); d.Verdict != inspect.Pass {
			b.Fatalf("%s: %+v", name, d)
		}
		for _, variant := range []string{"builtin", "builtin+lua-minimal", "builtin+lua-example"} {
			label := name + "/" + variant
			opts := tlssm.Options{NoTimers: true}
			switch variant {
			case "builtin+lua-minimal":
				opts.NewHandler = benchLuaEngine(b, Options{FS: ruleFS(map[string]string{"min.lua": minimalMachine})}).NewTLSHandler
			case "builtin+lua-example":
				opts.NewHandler = benchLuaEngine(b, Options{Dir: dir}).NewTLSHandler
			}
			f, err := tlssm.NewFactory(opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(label, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if d := feedConn(f, chunks); d.Verdict != inspect.Pass {
						b.Fatal(d)
					}
				}
				ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				b.ReportMetric(ns/float64(counter.msgs), "ns/msg")
				b.ReportMetric(ns/float64(counter.units), "ns/unit")
				b.ReportMetric(float64(counter.msgs), "msgs/conn")
				b.ReportMetric(float64(counter.units), "units/conn")
			})
		}
	}
}

// BenchmarkLuaMachineRecord: an established TLS 1.2 session, then
// application_data records one at a time, each direction in turn: the
// per-record cost once the handshake is over, with the built-in machine
// alone and with the example machine beside it (its streaming state runs
// no Lua for them).
func BenchmarkLuaMachineRecord(b *testing.B) {
	transcript := tlsTranscript(b, tls.VersionTLS12)
	rec := make([]byte, 5+64)
	copy(rec, []byte{23, 3, 3, 0, 64})
	for _, lua := range []bool{false, true} {
		label, opts := "builtin", tlssm.Options{NoTimers: true}
		if lua {
			label = "builtin+lua-example"
			opts.NewHandler = benchLuaEngine(b, Options{Dir: exampleDir(b)}).NewTLSHandler
		}
		f, err := tlssm.NewFactory(opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(label, func(b *testing.B) {
			flow := &inspect.Flow{ID: 1, Src: meta(1).Src, Dst: meta(1).Dst, Start: time.Unix(1000, 0)}
			s, _ := f.New(flow, nil)
			defer s.Close(inspect.Summary{})
			fd := &feeder{tb: b, s: s, now: flow.Start}
			for _, c := range transcript {
				fd.feed(c.dir, c.data)
			}
			b.ReportAllocs()
			for b.Loop() {
				fd.feed(dissect.Up, rec)
				fd.feed(dissect.Down, rec)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/record")
		})
	}
}
