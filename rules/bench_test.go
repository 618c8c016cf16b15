package rules

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Benchmarks of the per-connection path with the stock rules:
//
//	go test ./rules -run '^$' -bench . -benchmem

// benchEngine runs the stock rules. Its deadline is long: on a loaded
// machine the wall-clock deadline would stop an evaluation whose thread
// the kernel descheduled, and a benchmark measures cost, not load.
func benchEngine(b *testing.B) *harness {
	return newHarness(b, nil, Options{PoolSize: 8, Deadline: time.Minute})
}

// heartbeat is a heartbeat record as the TLS machine knows it.
type heartbeat struct {
	dir           string
	recordLength  int
	encrypted     bool
	typ           string
	payloadLength int
	overflow      bool
	leak          bool
}

var heartbeatObject = NewObject("hb", map[string]func(*lua.LState, *heartbeat) lua.LValue{
	"direction":     func(L *lua.LState, h *heartbeat) lua.LValue { return lua.LString(h.dir) },
	"record_length": func(L *lua.LState, h *heartbeat) lua.LValue { return lua.LNumber(h.recordLength) },
	"encrypted":     func(L *lua.LState, h *heartbeat) lua.LValue { return lua.LBool(h.encrypted) },
	"type": func(L *lua.LState, h *heartbeat) lua.LValue {
		if h.encrypted {
			return nil
		}
		return lua.LString(h.typ)
	},
	"payload_length": func(L *lua.LState, h *heartbeat) lua.LValue {
		if h.encrypted {
			return nil
		}
		return lua.LNumber(h.payloadLength)
	},
	"overflow": func(L *lua.LState, h *heartbeat) lua.LValue { return lua.LBool(h.overflow) },
	"leak":     func(L *lua.LState, h *heartbeat) lua.LValue { return lua.LBool(h.leak) },
})

// A ClientHello evaluated by the stock rules (a modern browser's hello:
// 16 ciphers, 17 extensions), its parameter made as an Object (what the
// TLS machine does) and, for comparison, as a full table.
func BenchmarkClientHello(b *testing.B) {
	h := benchEngine(b)
	hl := chromeHello()
	for _, bc := range []struct {
		name  string
		build func(*lua.LState) lua.LValue
	}{
		{"object", func(L *lua.LState) lua.LValue { return helloObject.Value(L, hl) }},
		{"table", func(L *lua.LState) lua.LValue { return buildHello(L, hl) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := h.NewFlow(meta(1), &flowInfo{})
			defer f.Close()
			for b.Loop() {
				if d := f.Eval(TLS(tlssm.EvClientHello), bc.build); d.Verdict != inspect.Pass {
					b.Fatal(d)
				}
			}
		})
	}
}

// A heartbeat record (encrypted, benign) evaluated by the stock rules, as
// an Object and as a table.
func BenchmarkHeartbeat(b *testing.B) {
	h := benchEngine(b)
	hb := &heartbeat{dir: "up", recordLength: 64, encrypted: true}
	for _, bc := range []struct {
		name  string
		build func(*lua.LState) lua.LValue
	}{
		{"object", func(L *lua.LState) lua.LValue { return heartbeatObject.Value(L, hb) }},
		{"table", func(L *lua.LState) lua.LValue {
			t := L.CreateTable(0, 5)
			t.RawSetString("direction", lua.LString(hb.dir))
			t.RawSetString("record_length", lua.LNumber(hb.recordLength))
			t.RawSetString("encrypted", lua.LBool(hb.encrypted))
			t.RawSetString("overflow", lua.LBool(hb.overflow))
			t.RawSetString("leak", lua.LBool(hb.leak))
			return t
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := h.NewFlow(meta(1), &flowInfo{})
			defer f.Close()
			for b.Loop() {
				if d := f.Eval(TLS(tlssm.EvHeartbeat), bc.build); d.Verdict != inspect.Pass {
					b.Fatal(d)
				}
			}
		})
	}
}

// An event no rule hooks (record, with the stock rules): what every record
// header costs the machine when it asks.
func BenchmarkUnhooked(b *testing.B) {
	h := benchEngine(b)
	f := h.NewFlow(meta(1), &flowInfo{})
	defer f.Close()
	build := func(L *lua.LState) lua.LValue { b.Fatal("built"); return nil }
	ev := TLS(tlssm.EvRecord)
	for b.Loop() {
		if f.Hooked(ev) {
			b.Fatal("hooked")
		}
		f.Eval(ev, build)
	}
}

// A connection's life as the rules see it, with no event: NewFlow and
// Close.
func BenchmarkFlow(b *testing.B) {
	h := benchEngine(b)
	m := meta(1)
	for b.Loop() {
		h.NewFlow(m, nil).Close()
	}
}

type shello struct {
	version string
	cipher  uint16
	retry   bool
}

var serverHelloObject = NewObject("hello", map[string]func(*lua.LState, *shello) lua.LValue{
	"version": func(L *lua.LState, h *shello) lua.LValue { return lua.LString(h.version) },
	"cipher":  func(L *lua.LState, h *shello) lua.LValue { return lua.LNumber(h.cipher) },
	"retry":   func(L *lua.LState, h *shello) lua.LValue { return lua.LBool(h.retry) },
})

// A whole TLS 1.3 connection through the stock rules, every event the
// machine raises for it (those no rule hooks cost a Hooked call), from
// many goroutines sharing the engine: NewFlow, the events, Close.
func BenchmarkConnectionParallel(b *testing.B) {
	h := benchEngine(b)
	hl := chromeHello()
	sh := &shello{version: "TLS1.3", cipher: 0x1301}
	events := []event{
		{TLS(tlssm.EvNewConnection), nil},
		{TLS(tlssm.EvRecord), nil},
		{TLS(tlssm.EvClientHello), func(L *lua.LState) lua.LValue { return helloObject.Value(L, hl) }},
		{TLS(tlssm.EvHandshake), nil},
		{TLS(tlssm.EvServerHello), func(L *lua.LState) lua.LValue { return serverHelloObject.Value(L, sh) }},
		{TLS(tlssm.EvHandshake), nil},
		{TLS(tlssm.EvChangeCipherSpec), nil},
		{TLS(tlssm.EvChangeCipherSpec), nil},
		{TLS(tlssm.EvEstablished), nil},
		{TLS(tlssm.EvEndConnection), nil},
	}
	var id atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		info := &flowInfo{}
		for pb.Next() {
			f := h.NewFlow(meta(id.Add(1)), info)
			for _, e := range events {
				if f.Hooked(e.ev) {
					if d := f.Eval(e.ev, e.build); d.Verdict != inspect.Pass {
						b.Error(d)
					}
				}
			}
			f.Close()
		}
	})
}

// The deadline of one evaluation: a context.WithTimeout per event against
// the per-state context re-armed per event.
func BenchmarkDeadline(b *testing.B) {
	b.Run("WithTimeout", func(b *testing.B) {
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), DefaultDeadline)
			select { // what one instruction does
			case <-ctx.Done():
			default:
			}
			cancel()
		}
	})
	b.Run("rearmed", func(b *testing.B) {
		d := newDeadline()
		for b.Loop() {
			d.arm(DefaultDeadline)
			select {
			case <-d.Done():
			default:
			}
			d.disarm()
		}
	})
}
