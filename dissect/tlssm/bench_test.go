package tlssm

import (
	"runtime"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/sm"
)

// hookOnly is a Handler that hooks the given events and passes.
type hookOnly struct {
	ids   uint32
	count int
}

func (h *hookOnly) Hooked(id EventID) bool { return h.ids&(1<<id) != 0 }
func (h *hookOnly) Event(ev *Event) inspect.Decision {
	h.count++
	return inspect.Decision{}
}
func (h *hookOnly) Close() {}

// establishedSession returns a Session through a TLS 1.2 handshake.
func establishedSession(tb testing.TB, h Handler) *Session {
	tb.Helper()
	f, err := NewFactory(Options{NoTimers: true, NewHandler: func(*inspect.Flow, *Session) Handler { return h }})
	if err != nil {
		tb.Fatal(err)
	}
	insp, _ := f.New(&inspect.Flow{Start: t0}, nil)
	s := insp.(*Session)
	c := newConv()
	tls12(c)
	for _, r := range c.reads {
		if res := s.Feed(r.dir, r.data, t0); res.Forward != len(r.data) {
			tb.Fatalf("handshake: %+v", res)
		}
	}
	if s.State() != StateEstablished {
		tb.Fatalf("state %s", s.State())
	}
	return s
}

// The hot path: one application_data record, header and payload in one
// read, through a Session with no rule hooking records.
func BenchmarkApplicationDataRecord(b *testing.B) {
	for _, bc := range []struct {
		name string
		h    Handler
		size int
	}{
		{"1KiB", nil, 1 << 10},
		{"16KiB", nil, 16 << 10},
		{"16KiB/record-hooked", &hookOnly{ids: 1 << EvRecord}, 16 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := establishedSession(b, bc.h)
			record := rec(dissect.TypeApplicationData, random(bc.size))
			b.SetBytes(int64(len(record)))
			b.ReportAllocs()
			for b.Loop() {
				if res := s.Feed(dissect.Up, record, t0); res.Forward != len(record) {
					b.Fatalf("%+v", res)
				}
			}
		})
	}
	// The header alone, the payload passed unseen (spliced live).
	b.Run("header-pass", func(b *testing.B) {
		s := establishedSession(b, nil)
		record := rec(dissect.TypeApplicationData, random(16<<10))
		b.ReportAllocs()
		for b.Loop() {
			if res := s.Feed(dissect.Up, record[:dissect.HeaderLen], t0); res.Pass != int64(len(record)-dissect.HeaderLen) {
				b.Fatalf("%+v", res)
			}
		}
	})
}

// TestApplicationDataAllocs holds the hot path to zero allocations.
func TestApplicationDataAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	for _, h := range []Handler{nil, &hookOnly{}, &hookOnly{ids: 1 << EvRecord}} {
		s := establishedSession(t, h)
		record := rec(dissect.TypeApplicationData, random(4000))
		if n := testing.AllocsPerRun(1000, func() { s.Feed(dissect.Down, record, t0) }); n != 0 {
			t.Errorf("%T: %v allocations per application_data record", h, n)
		}
		if n := testing.AllocsPerRun(1000, func() { s.Feed(dissect.Down, record[:5], t0) }); n != 0 {
			t.Errorf("%T: %v allocations per passed record", h, n)
		}
	}
}

// captureReads returns the reads of a capture's first stream, the
// consecutive chunks of one direction merged.
func captureReads(tb testing.TB, name string) []read {
	tb.Helper()
	path, err := pcaptest.Path(name)
	if err != nil {
		tb.Fatal(err)
	}
	streams, err := pcaptest.Read(path)
	if err != nil || len(streams) == 0 {
		tb.Skipf("%s: %v", name, err)
	}
	var out []read
	for _, r := range streamReads(streams[0], nil) {
		if n := len(out); n > 0 && out[n-1].dir == r.dir {
			out[n-1].data = append(out[n-1].data, r.data...)
			continue
		}
		out = append(out, read{r.dir, append([]byte(nil), r.data...), r.at})
	}
	return out
}

// A full TLS 1.3 connection as the proxy sees it: a Chrome ClientHello
// with a post-quantum key share (1.7 KB) and the server's flight, parsed,
// fingerprinted (JA3, JA4), with client_hello hooked by a rule, then the
// encrypted records and the close.
func BenchmarkTLS13Handshake(b *testing.B) {
	reads := captureReads(b, "zeek/chrome-1250-tls-x25519-kyber.pcap")
	h := &hookOnly{ids: 1 << EvClientHello}
	f, err := NewFactory(Options{NoTimers: true, NewHandler: func(*inspect.Flow, *Session) Handler { return h }})
	if err != nil {
		b.Fatal(err)
	}
	flow := &inspect.Flow{Start: t0}
	b.ReportAllocs()
	for b.Loop() {
		insp, _ := f.New(flow, nil)
		for _, r := range reads {
			if res := insp.Feed(r.dir, r.data, t0); res.Forward != len(r.data) {
				b.Fatalf("%s: %+v", r.dir, res)
			}
		}
		insp.Close(inspect.Summary{})
	}
	if s := f.Machine(); s == nil || h.count == 0 {
		b.Fatal("no client_hello raised")
	}
}

// The state machine alone, per event: a unit fed to the instance in the
// established state (element, guards, the action), and a registered event
// triggered to a hooked handler.
func BenchmarkMachineEvent(b *testing.B) {
	b.Run("unit", func(b *testing.B) {
		s := establishedSession(b, nil)
		in := &Input{Unit: &dissect.Unit{Kind: dissect.UnitHeader, Encrypted: true,
			Header: dissect.Header{Type: dissect.TypeApplicationData, Version: dissect.VersionTLS12, Length: 100}}}
		now := t0.Add(time.Second)
		b.ReportAllocs()
		for b.Loop() {
			s.in.Feed(sm.Up, in, now)
		}
	})
	b.Run("trigger", func(b *testing.B) {
		h := &hookOnly{ids: 1 << EvAnomaly}
		s := establishedSession(b, h)
		ev := &Event{ID: EvAnomaly, Anomaly: dissect.Anomaly{Name: "x"}}
		id := s.def.ids[EvAnomaly]
		b.ReportAllocs()
		for b.Loop() {
			s.in.Trigger(id, Param{Event: ev})
		}
		if h.count == 0 {
			b.Fatal("not delivered")
		}
	})
}

// The memory an established, idle connection keeps: the Session, its
// record layer and machine instance, after the handshake's scratch is
// released.
func BenchmarkSessionFootprint(b *testing.B) {
	c := newConv()
	tls12(c)
	f, err := NewFactory(Options{NoTimers: true})
	if err != nil {
		b.Fatal(err)
	}
	const n = 1000
	var before, after runtime.MemStats
	keep := make([]inspect.Inspector, n)
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keep {
		insp, _ := f.New(&inspect.Flow{Start: t0}, nil)
		for _, r := range c.reads {
			insp.Feed(r.dir, r.data, t0)
		}
		keep[i] = insp
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	for b.Loop() {
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/conn")
	b.ReportMetric(0, "ns/op")
}
