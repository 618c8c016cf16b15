package replay

import (
	"bytes"
	"net/netip"
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/reassembly"
)

// Limits on the pages the reassembly keeps for bytes that arrived after a
// hole. When one is reached the oldest hole is declared a gap at once.
const (
	// maxPagesPerStream: a sender cannot have more in flight beyond a
	// hole than the receiver's window; Linux's default maximum receive
	// buffer (tcp_rmem) is 6 MiB, and 4096 pages of 1900 bytes hold
	// 7.4 MiB.
	maxPagesPerStream = 4096
	// maxPagesTotal bounds all streams together to about 240 MiB.
	maxPagesTotal = 1 << 17
)

// tupleKey is a TCP 4-tuple with its two ends in a fixed order, so that
// both directions find the same stream. IPv4 addresses are stored
// v4-mapped.
type tupleKey struct {
	a, b   [16]byte
	pa, pb uint16
}

// endpoint is one end of a stream.
type endpoint struct {
	ip   [16]byte
	port uint16
}

func (e endpoint) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(e.ip).Unmap(), e.port)
}

// sideFlows are the network flows handed to the reassembly for the two
// directions of a stream: one byte naming the sender's side. The stream's
// ID goes in the endpoint type, so a reused 4-tuple is a new connection to
// the reassembly as well.
var sideBytes = [2][1]byte{{0}, {1}}

// packetContext is the AssemblerContext of the packet being assembled.
type packetContext struct{ ci gopacket.CaptureInfo }

func (c *packetContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// event is a reassembly callback met during a flush, kept to be played
// in stream order: a flush visits streams in map order.
type event struct {
	s        *stream
	side     int
	data     []byte
	skip     int
	end      bool
	complete bool
}

// run is the replay of one capture.
type run struct {
	r       *Replayer
	asm     *reassembly.Assembler
	streams map[tupleKey]*stream

	// clock is the stream time: the latest packet time seen, so that
	// it never goes back when a capture's timestamps do.
	clock     time.Time
	nextSweep time.Time

	// tcp is the segment being assembled, decoded again from the
	// reader's bytes.
	tcp layers.TCP
	// The packet being assembled, for the reassembly's callbacks.
	ctx     packetContext
	cur     *stream
	curSide int
	curTCP  *layers.TCP

	deferring bool
	deferred  []event

	stats    Stats
	linkErrs []*LinkTypeError
	werr     error
}

func newRun(r *Replayer) *run {
	ru := &run{
		r:       r,
		streams: make(map[tupleKey]*stream),
	}
	ru.asm = reassembly.NewAssembler(reassembly.NewStreamPool(ru))
	ru.asm.MaxBufferedPagesPerConnection = maxPagesPerStream
	ru.asm.MaxBufferedPagesTotal = maxPagesTotal
	return ru
}

// New implements reassembly.StreamFactory: the stream was chosen by
// packet before the reassembly was called.
func (ru *run) New(_, _ gopacket.Flow, _ *layers.TCP, _ reassembly.AssemblerContext) reassembly.Stream {
	return ru.cur
}

func (ru *run) unsupported(link layers.LinkType) {
	ru.stats.Unsupported++
	for _, e := range ru.linkErrs {
		if e.LinkType == link {
			e.Packets++
			return
		}
	}
	ru.linkErrs = append(ru.linkErrs, &LinkTypeError{LinkType: link, Packets: 1})
}

// packet replays one frame.
func (ru *run) packet(f *frame) {
	ru.stats.Packets++
	ru.stats.Bytes += int64(f.size)
	switch f.res {
	case unsupportedLink:
		ru.unsupported(f.link)
		return
	case notTCP:
		ru.stats.NotTCP++
		return
	case fragment:
		return
	case malformed:
		ru.stats.Malformed++
		return
	}
	// The reader decoded the segment already: this cannot fail.
	tcp := &ru.tcp
	if err := tcp.DecodeFromBytes(f.seg, gopacket.NilDecodeFeedback); err != nil {
		ru.stats.Malformed++
		return
	}
	ru.stats.TCP++

	now := f.ts
	if now.Before(ru.clock) {
		now = ru.clock
	}
	ru.clock = now
	if ru.nextSweep.IsZero() {
		ru.nextSweep = now.Add(sweepInterval)
	} else if !now.Before(ru.nextSweep) {
		ru.sweep(now)
		if ru.werr != nil {
			return
		}
	}

	src := endpoint{f.src, uint16(tcp.SrcPort)}
	dst := endpoint{f.dst, uint16(tcp.DstPort)}
	k := tupleKey{a: src.ip, pa: src.port, b: dst.ip, pb: dst.port}
	if c := bytes.Compare(src.ip[:], dst.ip[:]); c > 0 || c == 0 && src.port > dst.port {
		k = tupleKey{a: dst.ip, pa: dst.port, b: src.ip, pb: src.port}
	}
	s := ru.streams[k]
	side := 0
	if s != nil {
		if src != s.first {
			side = 1
		}
		if s.reusedBy(tcp, side) {
			ru.retire(s, s.last)
			s = nil
		}
	}
	if s == nil {
		s = newStream(ru, k, src, dst, now)
		ru.streams[k] = s
		ru.stats.Streams++
		side = 0
	}
	s.count(side, f.wire, len(tcp.Payload), now)
	if !s.clientKnown {
		s.decideClient(side, tcp, now)
	}

	ru.cur, ru.curSide, ru.curTCP = s, side, tcp
	ru.ctx.ci = gopacket.CaptureInfo{Timestamp: now, CaptureLength: f.size, Length: f.wire}
	flow := gopacket.NewFlow(gopacket.EndpointType(s.id), sideBytes[side][:], sideBytes[1-side][:])
	ru.asm.AssembleWithContext(flow, tcp, &ru.ctx)
	ru.cur, ru.curTCP = nil, nil
	s.applyKill(now)
}

// sweep declares holes older than the reorder window gaps and ends idle
// streams.
func (ru *run) sweep(now time.Time) {
	ru.nextSweep = now.Add(sweepInterval)
	ru.flush(reassembly.FlushOptions{T: now.Add(-ru.r.opts.ReorderWindow)}, func(*stream) time.Time { return now })
	if ru.werr != nil || ru.r.opts.IdleTimeout < 0 {
		return
	}
	cutoff := now.Add(-ru.r.opts.IdleTimeout)
	var idle []*stream
	for _, s := range ru.streams {
		if s.last.Before(cutoff) {
			idle = append(idle, s)
		}
	}
	if len(idle) == 0 {
		return
	}
	slices.SortFunc(idle, func(x, y *stream) int { return cmpID(x.id, y.id) })
	for _, s := range idle {
		ru.retire(s, s.last)
	}
	// Let the reassembly forget them too; what it still calls them with
	// is ignored, they are retired.
	ru.flush(reassembly.FlushOptions{T: cutoff, TC: cutoff}, func(s *stream) time.Time { return s.last })
}

// end closes every stream still open at the end of the capture, in the
// order of their first packet.
func (ru *run) end() {
	ru.flush(reassembly.FlushOptions{}, func(s *stream) time.Time { return s.last })
	if ru.werr != nil {
		return
	}
	open := make([]*stream, 0, len(ru.streams))
	for _, s := range ru.streams {
		open = append(open, s)
	}
	slices.SortFunc(open, func(x, y *stream) int { return cmpID(x.id, y.id) })
	for _, s := range open {
		ru.retire(s, s.last)
		if ru.werr != nil {
			return
		}
	}
}

// flush runs a reassembly flush (FlushAll for zero options) and plays
// what it produced in the order of the streams' first packets.
func (ru *run) flush(opt reassembly.FlushOptions, at func(*stream) time.Time) {
	ru.deferring = true
	if opt.T.IsZero() && opt.TC.IsZero() {
		ru.asm.FlushAll()
	} else {
		ru.asm.FlushWithOptions(opt)
	}
	ru.deferring = false
	evs := ru.deferred
	ru.deferred = nil
	slices.SortStableFunc(evs, func(x, y event) int { return cmpID(x.s.id, y.s.id) })
	for _, e := range evs {
		if e.s.retired {
			continue
		}
		now := at(e.s)
		if e.complete {
			e.s.finish(now)
		} else {
			e.s.deliver(e.side, e.data, e.skip, e.end, false, now)
		}
		if ru.werr != nil {
			return
		}
	}
}

// retire ends s (if it is still open) and takes it out of the table.
func (ru *run) retire(s *stream, now time.Time) {
	s.finish(now)
	s.retired = true
	if ru.streams[s.key] == s {
		delete(ru.streams, s.key)
	}
	if ru.r.opts.OnStream != nil {
		ru.r.opts.OnStream(s.statsOut())
	}
	s.release()
}

func cmpID(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
