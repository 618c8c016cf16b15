package replay

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// This file builds captures for the tests: frames written byte by byte
// (so that the encapsulations under test are exactly what real capture
// tools write, not what gopacket's serialisers think), TCP sessions made
// of them, and pcap/pcapng files.

// TCP flag bits as they sit in byte 13 of the header.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// encap is how frames are encapsulated.
type encap struct {
	link layers.LinkType
	// vlans are 802.1Q tags, outermost first; with two, the outer one is
	// an 802.1ad (QinQ) S-tag.
	vlans []uint16
	// loopFamilyV6 is the AF_INET6 value of a DLT_NULL capture (it
	// depends on the OS that wrote it).
	loopFamilyV6 uint32
}

var (
	encEthernet = encap{link: layers.LinkTypeEthernet}
	encRaw      = encap{link: layers.LinkTypeRaw}
)

// linkHeader appends the link-layer header for a packet of ethertype et.
func (e encap) linkHeader(b []byte, v6 bool) []byte {
	et := uint16(layers.EthernetTypeIPv4)
	if v6 {
		et = uint16(layers.EthernetTypeIPv6)
	}
	switch e.link {
	case layers.LinkTypeEthernet:
		b = append(b, 0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01)
		for i, v := range e.vlans {
			tpid := uint16(layers.EthernetTypeDot1Q)
			if len(e.vlans) > 1 && i == 0 {
				tpid = uint16(layers.EthernetTypeQinQ)
			}
			b = binary.BigEndian.AppendUint16(b, tpid)
			b = binary.BigEndian.AppendUint16(b, v&0x0fff)
		}
		return binary.BigEndian.AppendUint16(b, et)
	case layers.LinkTypeLinuxSLL:
		b = binary.BigEndian.AppendUint16(b, 0) // to us
		b = binary.BigEndian.AppendUint16(b, 1) // ARPHRD_ETHER
		b = binary.BigEndian.AppendUint16(b, 6)
		b = append(b, 0x02, 0, 0, 0, 0, 0x01, 0, 0)
		return binary.BigEndian.AppendUint16(b, et)
	case layers.LinkTypeLinuxSLL2:
		b = binary.BigEndian.AppendUint16(b, et)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint32(b, 3) // ifindex
		b = binary.BigEndian.AppendUint16(b, 1) // ARPHRD_ETHER
		b = append(b, 0, 6)
		return append(b, 0x02, 0, 0, 0, 0, 0x01, 0, 0)
	case layers.LinkTypeNull:
		fam := uint32(2)
		if v6 {
			fam = e.loopFamilyV6
		}
		return binary.LittleEndian.AppendUint32(b, fam) // host order, written on x86
	case layers.LinkTypeLoop:
		fam := uint32(2)
		if v6 {
			fam = 24
		}
		return binary.BigEndian.AppendUint32(b, fam)
	}
	return b // raw IP
}

// segment is one TCP segment to frame.
type segment struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    uint8
	payload  []byte
}

// frame appends the frame of seg to b.
func (e encap) frame(b []byte, seg segment) []byte {
	v6 := seg.src.Addr().Is6() && !seg.src.Addr().Is4In6()
	b = e.linkHeader(b, v6)
	ipStart := len(b)
	tcpLen := 20 + len(seg.payload)
	if v6 {
		b = append(b, 0x60, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(tcpLen))
		b = append(b, byte(layers.IPProtocolTCP), 64)
		s16, d16 := seg.src.Addr().As16(), seg.dst.Addr().As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	} else {
		b = append(b, 0x45, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(20+tcpLen))
		b = append(b, 0, 1, 0x40, 0, 64, byte(layers.IPProtocolTCP), 0, 0)
		s4, d4 := seg.src.Addr().As4(), seg.dst.Addr().As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
		binary.BigEndian.PutUint16(b[ipStart+10:], ^checksum(0, b[ipStart:ipStart+20]))
	}
	tcpStart := len(b)
	b = binary.BigEndian.AppendUint16(b, seg.src.Port())
	b = binary.BigEndian.AppendUint16(b, seg.dst.Port())
	b = binary.BigEndian.AppendUint32(b, seg.seq)
	b = binary.BigEndian.AppendUint32(b, seg.ack)
	b = append(b, 5<<4, seg.flags)
	b = binary.BigEndian.AppendUint16(b, 65535)
	b = append(b, 0, 0, 0, 0)
	b = append(b, seg.payload...)
	// The pseudo-header, then the segment.
	var ph []byte
	if v6 {
		ph = append(ph, b[ipStart+8:ipStart+40]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(tcpLen))
		ph = append(ph, 0, 0, 0, byte(layers.IPProtocolTCP))
	} else {
		ph = append(ph, b[ipStart+12:ipStart+20]...)
		ph = append(ph, 0, byte(layers.IPProtocolTCP))
		ph = binary.BigEndian.AppendUint16(ph, uint16(tcpLen))
	}
	binary.BigEndian.PutUint16(b[tcpStart+16:], ^checksum(uint32(checksum(0, ph)), b[tcpStart:]))
	return b
}

// checksum adds b to the one's complement sum s (RFC 1071).
func checksum(s uint32, b []byte) uint16 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// pkt is a frame and its capture time.
type pkt struct {
	ts   time.Time
	data []byte
	// seg is what the frame carries, for tests that rewrite sessions.
	seg segment
}

// session writes a TCP connection packet by packet.
type session struct {
	enc  encap
	ends [2]netip.AddrPort // client, server
	next [2]uint32         // next sequence number of each side
	t    time.Time
	step time.Duration
	mss  int
	pkts []pkt
}

func newSession(enc encap, client, server netip.AddrPort, t time.Time) *session {
	return &session{enc: enc, ends: [2]netip.AddrPort{client, server},
		next: [2]uint32{1000, 50000}, t: t, step: time.Millisecond, mss: 1448}
}

func (s *session) emit(side int, flags uint8, payload []byte) {
	seg := segment{src: s.ends[side], dst: s.ends[1-side], seq: s.next[side], ack: s.next[1-side], flags: flags, payload: payload}
	if flags&flagACK == 0 {
		seg.ack = 0
	}
	s.pkts = append(s.pkts, pkt{ts: s.t, data: s.enc.frame(nil, seg), seg: seg})
	s.t = s.t.Add(s.step)
	s.next[side] += uint32(len(payload))
	if flags&(flagSYN|flagFIN) != 0 {
		s.next[side]++
	}
}

func (s *session) handshake() *session {
	s.emit(0, flagSYN, nil)
	s.emit(1, flagSYN|flagACK, nil)
	s.emit(0, flagACK, nil)
	return s
}

// send writes b from side in MSS-sized segments, each acknowledged.
func (s *session) send(side int, b []byte) *session {
	for len(b) > 0 {
		n := min(len(b), s.mss)
		fl := uint8(flagACK)
		if n == len(b) {
			fl |= flagPSH
		}
		s.emit(side, fl, b[:n])
		b = b[n:]
		s.emit(1-side, flagACK, nil)
	}
	return s
}

func (s *session) close() *session {
	s.emit(0, flagFIN|flagACK, nil)
	s.emit(1, flagFIN|flagACK, nil)
	s.emit(0, flagACK, nil)
	return s
}

func (s *session) reset(side int) *session {
	s.emit(side, flagRST|flagACK, nil)
	return s
}

// writePcap writes pkts as a pcap file of link type link.
func writePcap(t testing.TB, w io.Writer, link layers.LinkType, pkts []pkt) {
	t.Helper()
	pw := pcapgo.NewWriterNanos(w)
	if err := pw.WriteFileHeader(262144, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		if err := pw.WritePacket(gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.data), Length: len(p.data)}, p.data); err != nil {
			t.Fatal(err)
		}
	}
}

func pcapBytes(t testing.TB, link layers.LinkType, pkts []pkt) []byte {
	var b bytes.Buffer
	writePcap(t, &b, link, pkts)
	return b.Bytes()
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// t0 is the start of the synthetic captures.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fragmentFrames frames seg and cuts its IP datagram into fragments of
// unit bytes of payload (a multiple of 8), in order.
func (e encap) fragmentFrames(seg segment, unit int, id uint32) [][]byte {
	v6 := seg.src.Addr().Is6() && !seg.src.Addr().Is4In6()
	full := e.frame(nil, seg)
	link := e.linkHeader(nil, v6)
	ip := full[len(link):]
	hlen := 20
	if v6 {
		hlen = 40
	}
	hdr, payload := ip[:hlen], ip[hlen:]
	var frames [][]byte
	for off := 0; off < len(payload); off += unit {
		piece := payload[off:min(off+unit, len(payload))]
		more := off+unit < len(payload)
		b := slices.Clone(link)
		h := slices.Clone(hdr)
		if v6 {
			h[6] = 44 // a fragment header follows
			binary.BigEndian.PutUint16(h[4:], uint16(8+len(piece)))
			b = append(b, h...)
			fo := uint16(off/8) << 3
			if more {
				fo |= 1
			}
			b = append(b, byte(layers.IPProtocolTCP), 0)
			b = binary.BigEndian.AppendUint16(b, fo)
			b = binary.BigEndian.AppendUint32(b, id)
		} else {
			binary.BigEndian.PutUint16(h[2:], uint16(20+len(piece)))
			binary.BigEndian.PutUint16(h[4:], uint16(id))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(h[6:], fo)
			h[10], h[11] = 0, 0
			binary.BigEndian.PutUint16(h[10:], ^checksum(0, h))
			b = append(b, h...)
		}
		frames = append(frames, append(b, piece...))
	}
	return frames
}
