package replay

import (
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/reassembly"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// maxPending bounds the bytes an inspector may hold in one direction. A
// TLS handshake message is at most 2^24-1 bytes (its length is a uint24)
// and the headers of the records that carry it add under 64 KiB: an
// inspector that holds more is not waiting for a message, and the stream
// is dropped rather than the replay's memory.
const maxPending = 1<<24 + 1<<16

// Anomalies the replay names in the connection line.
const (
	// anomalyGap: a hole in the capture ended the inspection of a
	// direction.
	anomalyGap = "gap"
	// anomalyMidstream: the stream's start was not captured, and it was
	// not inspected (Options.Midstream).
	anomalyMidstream = "midstream"
)

// wellKnownPorts: below this, a port is a service's (IANA's system
// ports), which tells the server of a stream whose handshake was not
// captured.
const wellKnownPorts = 1024

// half is the pump of one direction.
type half struct {
	// pending holds the bytes read and not yet forwarded.
	pending []byte
	// pass counts the next bytes to forward unseen (Result.Pass).
	pass int64
	// ended: the direction's EOF was given (FIN, RST, end of stream).
	ended bool
	// blind: a gap ended the inspection of this direction; its bytes
	// are forwarded unseen.
	blind bool

	stream, forwarded, dropped int64
	gaps, gapBytes             int64
}

// stream is one TCP connection of a capture and its inspector. It
// implements reassembly.Stream.
type stream struct {
	ru  *run
	id  uint64
	key tupleKey
	// first sent the stream's first packet; side 0 is first's direction,
	// which is also the reassembly's TCPDirClientToServer.
	first, second endpoint

	// clientIsFirst tells which side is the client, once clientKnown.
	clientKnown, clientIsFirst bool
	// syn records the ISN of each side's SYN, to tell a retransmitted
	// SYN from a new connection on the same 4-tuple.
	synSeen    [2]bool
	synSeq     [2]uint32
	hadPayload bool
	// started: bytes were delivered, and whether the stream is
	// inspected has been decided (Options.Midstream).
	started bool

	start, last time.Time
	flow        inspect.Flow
	insp        inspect.Inspector
	decision    inspect.Decision
	// killReq holds a decision given through the Factory's kill func,
	// which may be called from any goroutine.
	killReq atomic.Pointer[inspect.Decision]

	bypassed bool
	// done: the connection is over for the inspector (Close was
	// called); later bytes are dropped.
	done    bool
	retired bool

	halves     [2]half // by dissect.Direction
	anomalies  []string
	violations int64

	// Capture figures by side (0: first's direction).
	packets, wire, payload [2]int64
}

func newStream(ru *run, k tupleKey, src, dst endpoint, now time.Time) *stream {
	s := &stream{ru: ru, id: ru.r.nextID, key: k, first: src, second: dst, start: now, last: now}
	ru.r.nextID++
	return s
}

func (s *stream) count(side, wire, payload int, now time.Time) {
	s.packets[side]++
	s.wire[side] += int64(wire)
	s.payload[side] += int64(payload)
	s.last = now
}

// dirOf maps a side to a direction.
func (s *stream) dirOf(side int) dissect.Direction {
	if (side == 0) == s.clientIsFirst {
		return dissect.Up
	}
	return dissect.Down
}

// reusedBy reports whether tcp, sent by side, opens a new connection on
// the stream's 4-tuple: a SYN whose ISN is not the one this side already
// sent, or any SYN once the stream is over or has carried data.
func (s *stream) reusedBy(tcp *layers.TCP, side int) bool {
	if !tcp.SYN || tcp.ACK {
		return false
	}
	if s.synSeen[side] {
		return tcp.Seq != s.synSeq[side]
	}
	return s.done || s.hadPayload
}

// decideClient tells client from server, Suricata/Zeek style:
//  1. the sender of a SYN is the client, the sender of a SYN-ACK the
//     server;
//  2. without them, on the stream's first packet: when exactly one port
//     is a well-known one (below 1024), that side is the server;
//  3. otherwise the sender of the first payload is the client (TLS
//     clients speak first);
//  4. a stream that ends without any of these: the lower port is the
//     server's (ephemeral ports are allocated high), and with equal ports
//     the first packet's sender is the client.
//
// The inspector is created as soon as the client is known.
func (s *stream) decideClient(side int, tcp *layers.TCP, now time.Time) {
	switch {
	case tcp.SYN && !tcp.ACK:
		s.clientIsFirst = side == 0
	case tcp.SYN && tcp.ACK:
		s.clientIsFirst = side == 1
	case s.packets[0]+s.packets[1] == 1 && (s.first.port < wellKnownPorts) != (s.second.port < wellKnownPorts):
		s.clientIsFirst = s.second.port < wellKnownPorts
	case len(tcp.Payload) > 0:
		s.clientIsFirst = side == 0
	default:
		return
	}
	s.clientKnown = true
	s.create(now)
}

// decideByPorts is rule 4 of decideClient.
func (s *stream) decideByPorts(now time.Time) {
	s.clientIsFirst = s.first.port >= s.second.port
	if s.first.port == s.second.port {
		s.clientIsFirst = true
	}
	s.clientKnown = true
	s.create(now)
}

// create makes the stream's inspector (new_connection).
func (s *stream) create(now time.Time) {
	client, server := s.first, s.second
	if !s.clientIsFirst {
		client, server = server, client
	}
	s.flow = inspect.Flow{ID: s.id, Src: client.addrPort(), Dst: server.addrPort(), Start: s.start}
	insp, dec := s.ru.r.opts.Factory.New(&s.flow, s.requestKill)
	s.insp = insp
	if insp == nil && !dec.Verdict.Kills() {
		// A factory that returns no inspector and no verdict judges
		// nothing: the connection passes.
		s.insp, _ = inspect.PassThrough{}.New(&s.flow, nil)
	}
	if dec.Verdict.Kills() {
		s.decision = dec
		s.close(now)
	}
}

// requestKill is the kill func given to the Factory.
func (s *stream) requestKill(d inspect.Decision) {
	s.killReq.CompareAndSwap(nil, &d)
}

// applyKill carries out a kill requested outside a Feed call.
func (s *stream) applyKill(now time.Time) {
	if d := s.killReq.Load(); d != nil && !s.done {
		s.kill(*d, now)
	}
}

// Accept implements reassembly.Stream. A half whose start was not
// captured starts at its first segment.
func (s *stream) Accept(tcp *layers.TCP, _ gopacket.CaptureInfo, dir reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, _ reassembly.AssemblerContext) bool {
	// The reassembly orients a connection by its first packet, as the
	// stream does; a retransmitted SYN after both FINs makes it start
	// over from that SYN, which may be the other side. Such a packet
	// does not belong to this stream's bytes.
	if (dir == reassembly.TCPDirServerToClient) != (s.ru.curSide == 1) {
		return false
	}
	if tcp.SYN {
		side := s.ru.curSide
		if !s.synSeen[side] {
			s.synSeen[side], s.synSeq[side] = true, tcp.Seq
		}
	}
	if len(tcp.Payload) > 0 {
		s.hadPayload = true
	}
	// A bare ACK does not start a half: one captured ahead of the SYN
	// (a capture out of order) would anchor the half one byte before
	// the data, which would then follow a hole.
	if nextSeq == -1 && !tcp.SYN && (len(tcp.Payload) > 0 || tcp.FIN || tcp.RST) {
		*start = true
	}
	return true
}

// ReassembledSG implements reassembly.Stream: bytes of one side, in
// order, after skip missing ones.
func (s *stream) ReassembledSG(sg reassembly.ScatterGather, _ reassembly.AssemblerContext) {
	if s.retired {
		return
	}
	dir, _, end, skip := sg.Info()
	side := 0
	if dir == reassembly.TCPDirServerToClient {
		side = 1
	}
	n, _ := sg.Lengths()
	var data []byte
	if n > 0 {
		data = sg.Fetch(n)
	}
	ru := s.ru
	if ru.deferring {
		ru.deferred = append(ru.deferred, event{s: s, side: side, data: append([]byte(nil), data...), skip: skip, end: end})
		return
	}
	// Only the segment being assembled can end a side with a RST: a
	// RST out of order is never queued.
	rst := end && ru.curTCP != nil && ru.curTCP.RST && ru.cur == s && ru.curSide == side
	s.deliver(side, data, skip, end, rst, ru.clock)
}

// ReassemblyComplete implements reassembly.Stream. The connection stays
// known to the reassembly, so that its last ACKs do not open a new one.
func (s *stream) ReassemblyComplete(reassembly.AssemblerContext) bool {
	if s.retired {
		return false
	}
	if s.ru.deferring {
		s.ru.deferred = append(s.ru.deferred, event{s: s, complete: true})
		return false
	}
	s.finish(s.ru.clock)
	return false
}

// deliver plays what the reassembly produced for one side.
func (s *stream) deliver(side int, data []byte, skip int, end, rst bool, now time.Time) {
	if !s.clientKnown {
		// Bytes came before any packet decided: only possible for a
		// flush of a stream that never carried payload in order.
		s.decideByPorts(now)
	}
	d := s.dirOf(side)
	if !s.started && (skip > 0 || len(data) > 0) {
		s.firstBytes()
	}
	if skip > 0 {
		s.gap(d, skip, now)
	}
	if len(data) > 0 {
		s.data(d, data, now)
	}
	if end {
		s.eof(d, now)
		if rst {
			s.eof(d.Opposite(), now)
		}
		if s.halves[0].ended && s.halves[1].ended {
			s.finish(now)
		}
	}
}

// firstBytes is the arrival of the stream's first bytes. Unless a SYN of
// either side came before them, they need not be the first the client
// sent: without Options.Midstream the stream is not inspected.
func (s *stream) firstBytes() {
	s.started = true
	if s.synSeen[0] || s.synSeen[1] || s.ru.r.opts.Midstream || s.done {
		return
	}
	s.note(anomalyMidstream)
	s.bypassed = true
}

// data is the pump's read: b are the next bytes of d.
func (s *stream) data(d dissect.Direction, b []byte, now time.Time) {
	h := &s.halves[d]
	h.stream += int64(len(b))
	s.applyKill(now)
	switch {
	case s.done:
		h.dropped += int64(len(b))
		return
	case s.bypassed || h.blind || h.ended:
		h.forwarded += int64(len(b))
		return
	}
	if h.pass > 0 {
		k := min(h.pass, int64(len(b)))
		h.forwarded += k
		h.pass -= k
		b = b[k:]
		if len(b) == 0 {
			return
		}
	}
	// With nothing pending, the inspector is shown the reassembly's
	// bytes as they are, and only what it keeps is copied.
	buf, held := b, false
	if len(h.pending) > 0 {
		h.pending = append(h.pending, b...)
		buf, held = h.pending, true
	}
	res := s.insp.Feed(d, buf, now)
	s.settle(d, buf, held, res, now)
}

// settle applies an inspector's Result to the bytes it was shown; held
// tells whether buf is the pending buffer itself.
func (s *stream) settle(d dissect.Direction, buf []byte, held bool, res inspect.Result, now time.Time) {
	h := &s.halves[d]
	fwd := s.clamp(res.Forward, len(buf))
	h.forwarded += int64(fwd)
	rest := buf[fwd:]
	if held {
		h.pending = h.pending[:copy(h.pending, rest)]
	} else {
		h.pending = append(h.pending[:0], rest...)
	}
	switch {
	case res.Pass < 0:
		s.violations++
	case res.Pass > 0 && len(h.pending) > 0:
		// Bytes not yet read cannot overtake pending ones.
		s.violations++
	default:
		h.pass = res.Pass
	}
	s.decide(res.Decision, now)
	if !s.done && len(h.pending) > maxPending {
		s.kill(inspect.Decision{Verdict: inspect.Drop, Reason: "inspector held more than the largest TLS handshake message", Rule: "builtin:pending-limit"}, now)
	}
}

func (s *stream) clamp(forward, n int) int {
	switch {
	case forward < 0:
		s.violations++
		return 0
	case forward > n:
		s.violations++
		return n
	}
	return forward
}

// decide enforces a Result's decision and any kill requested meanwhile.
func (s *stream) decide(dec inspect.Decision, now time.Time) {
	switch {
	case s.done:
	case dec.Verdict.Kills():
		s.kill(dec, now)
	case dec.Verdict == inspect.Bypass:
		s.decision = dec
		s.bypassed = true
		for i := range s.halves {
			h := &s.halves[i]
			h.forwarded += int64(len(h.pending))
			h.pending = h.pending[:0]
		}
	}
	s.applyKill(now)
}

// gap reports n bytes of d missing from the capture.
func (s *stream) gap(d dissect.Direction, n int, now time.Time) {
	h := &s.halves[d]
	h.gaps++
	h.gapBytes += int64(n)
	s.ru.stats.Gaps++
	s.ru.stats.GapBytes += int64(n)
	if s.done || s.bypassed || h.blind || h.ended {
		return
	}
	// Bytes the inspector let pass unseen need not be seen.
	if h.pass >= int64(n) {
		h.pass -= int64(n)
		return
	}
	n -= int(h.pass)
	h.pass = 0
	s.note(anomalyGap)
	if gh, ok := s.insp.(GapHandler); ok {
		res := gh.Gap(d, n, now)
		fwd := s.clamp(res.Forward, len(h.pending))
		h.forwarded += int64(fwd)
		h.dropped += int64(len(h.pending) - fwd)
		h.pending = h.pending[:0]
		if res.Pass < 0 {
			s.violations++
		} else {
			h.pass = res.Pass
		}
		s.decide(res.Decision, now)
		return
	}
	s.endInspection(d, now)
	h.blind = true
}

// eof is the end of d's stream.
func (s *stream) eof(d dissect.Direction, now time.Time) {
	h := &s.halves[d]
	if h.ended {
		return
	}
	h.ended = true
	if s.done || s.bypassed || h.blind {
		return
	}
	s.endInspection(d, now)
}

// endInspection gives the inspector the EOF of d: it forwards what the
// Result clears of the pending bytes, the rest is dropped.
func (s *stream) endInspection(d dissect.Direction, now time.Time) {
	h := &s.halves[d]
	res := s.insp.EOF(d, h.pending, now)
	fwd := s.clamp(res.Forward, len(h.pending))
	h.forwarded += int64(fwd)
	h.dropped += int64(len(h.pending) - fwd)
	h.pending = h.pending[:0]
	s.decide(res.Decision, now)
}

// finish ends the stream: the EOF of each direction still open, then
// Close.
func (s *stream) finish(now time.Time) {
	if s.done {
		return
	}
	if !s.clientKnown {
		s.decideByPorts(now)
		if s.done {
			return
		}
	}
	s.applyKill(now)
	for _, d := range []dissect.Direction{dissect.Up, dissect.Down} {
		s.eof(d, now)
	}
	s.close(now)
}

// kill ends the connection on a killing verdict: pending bytes are
// dropped, and so is everything after.
func (s *stream) kill(dec inspect.Decision, now time.Time) {
	if s.done {
		return
	}
	s.decision = dec
	for i := range s.halves {
		h := &s.halves[i]
		h.dropped += int64(len(h.pending))
		h.pending = h.pending[:0]
	}
	s.close(now)
}

func (s *stream) note(name string) {
	for _, a := range s.anomalies {
		if a == name {
			return
		}
	}
	s.anomalies = append(s.anomalies, name)
}

// close calls the inspector's Close and writes the connection line.
func (s *stream) close(now time.Time) {
	if s.done {
		return
	}
	s.done = true
	up, down := &s.halves[dissect.Up], &s.halves[dissect.Down]
	var info inspect.Info
	var found []dissect.Anomaly
	if s.insp != nil {
		info = s.insp.Info()
		if al, ok := s.insp.(AnomalyLister); ok {
			found = al.Anomalies()
		}
		s.insp.Close(inspect.Summary{
			BytesUp:   up.forwarded,
			BytesDown: down.forwarded,
			Duration:  now.Sub(s.start),
			Decision:  s.decision,
		})
	}
	var names []string
	for _, a := range found {
		names = append(names, a.Name)
	}
	names = append(names, s.anomalies...)
	c := output.Connection{
		Time:      now,
		Flow:      output.FlowRef{ID: s.id, Src: s.flow.Src.String(), Dst: s.flow.Dst.String(), SNI: info.SNI},
		BytesUp:   up.forwarded,
		BytesDown: down.forwarded,
		Duration:  now.Sub(s.start).Seconds(),
		Verdict:   s.decision.Verdict.String(),
		Reason:    s.decision.Reason,
		Rule:      s.decision.Rule,
		Version:   info.Version,
		ALPN:      info.ALPN,
		JA3:       info.JA3,
		JA4:       info.JA4,
		Anomalies: names,
	}
	if err := s.ru.r.opts.Output.Connection(&c); err != nil && s.ru.werr == nil {
		s.ru.werr = err
	}
}

// statsOut returns the stream's figures.
func (s *stream) statsOut() *StreamStats {
	st := &StreamStats{
		ID:                 s.id,
		Client:             s.flow.Src,
		Server:             s.flow.Dst,
		First:              s.start,
		Last:               s.last,
		Decision:           s.decision,
		ContractViolations: s.violations,
	}
	for side := range 2 {
		d := s.dirOf(side)
		st.Packets[d] = s.packets[side]
		st.WireBytes[d] = s.wire[side]
		st.Payload[d] = s.payload[side]
	}
	for d := range s.halves {
		h := &s.halves[d]
		st.Stream[d] = h.stream
		st.Forwarded[d] = h.forwarded
		st.Dropped[d] = h.dropped
		st.Gaps[d] = h.gaps
		st.GapBytes[d] = h.gapBytes
	}
	return st
}

// release lets go of what a retired stream no longer needs.
func (s *stream) release() {
	s.insp = nil
	for i := range s.halves {
		s.halves[i].pending = nil
	}
}
