package replay

import (
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/ip4defrag"
	"github.com/gopacket/gopacket/ip6defrag"
	"github.com/gopacket/gopacket/layers"
)

// fragmentTimeout is how long, in packet time, the fragments of an IPv4
// datagram wait for the rest: Linux's ipfrag_time.
const fragmentTimeout = 30 * time.Second

// Link types that pcap files carry under other numbers than gopacket's
// names: DLT_RAW is 12 in most libpcaps and 14 in OpenBSD's, and older
// files kept the DLT value instead of LINKTYPE_RAW (101).
const (
	linkTypeRawDLT12 layers.LinkType = 12
	linkTypeRawDLT14 layers.LinkType = 14
)

// firstLayer maps a supported link type to the layer its frames start
// with; raw IP gets LayerTypeZero because the version nibble decides.
func firstLayer(link layers.LinkType) (gopacket.LayerType, bool) {
	switch link {
	case layers.LinkTypeEthernet:
		return layers.LayerTypeEthernet, true
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		return layers.LayerTypeLoopback, true
	case layers.LinkTypeLinuxSLL:
		return layers.LayerTypeLinuxSLL, true
	case layers.LinkTypeLinuxSLL2:
		return layers.LayerTypeLinuxSLL2, true
	case layers.LinkTypeRaw, linkTypeRawDLT12, linkTypeRawDLT14:
		return gopacket.LayerTypeZero, true
	case layers.LinkTypeIPv4:
		return layers.LayerTypeIPv4, true
	case layers.LinkTypeIPv6:
		return layers.LayerTypeIPv6, true
	}
	return gopacket.LayerTypeZero, false
}

// v4InV6Prefix is the start of an IPv4-mapped IPv6 address (RFC 4291).
var v4InV6Prefix = [16]byte{10: 0xff, 11: 0xff}

// decodeResult says what a frame turned out to be.
type decodeResult uint8

const (
	decodedTCP decodeResult = iota
	// notTCP: a frame decoded fine but carries no TCP (ARP, UDP, ...).
	notTCP
	// fragment: an IP fragment kept until its datagram is complete.
	fragment
	// malformed: a header that does not parse, or a fragment that
	// contradicts the others of its datagram.
	malformed
)

// decoder turns frames into TCP segments without allocating: one set of
// layer structs is overwritten by every frame (gopacket's
// DecodingLayerParser), and the results are valid until the next frame.
type decoder struct {
	eth     layers.Ethernet
	dot1q   layers.Dot1Q
	sll     layers.LinuxSLL
	sll2    layers.LinuxSLL2
	lo      layers.Loopback
	ip4     layers.IPv4
	ip6     layers.IPv6
	ip6ext  layers.IPv6ExtensionSkipper
	ip6frag layers.IPv6Fragment
	tcp     layers.TCP

	parsers map[gopacket.LayerType]*gopacket.DecodingLayerParser
	decoded []gopacket.LayerType

	// IP fragments are rare: the defragmenters and the parser of the
	// TCP segment in a rebuilt datagram are made when one is met.
	def4      *ip4defrag.IPv4Defragmenter
	def6      *ip6defrag.IPv6Defragmenter
	tcpParser *gopacket.DecodingLayerParser
	// fragments counts IP fragments, defragmented the datagrams rebuilt
	// from them.
	fragments, defragmented int64

	// Set by decode for decodedTCP: the addresses, IPv4 ones v4-mapped.
	src, dst [16]byte
}

func newDecoder() *decoder {
	return &decoder{
		parsers: make(map[gopacket.LayerType]*gopacket.DecodingLayerParser, 4),
		decoded: make([]gopacket.LayerType, 0, 8),
	}
}

// parser returns the parser for frames starting with first, made once.
func (d *decoder) parser(first gopacket.LayerType) *gopacket.DecodingLayerParser {
	if p := d.parsers[first]; p != nil {
		return p
	}
	p := gopacket.NewDecodingLayerParser(first)
	// The sparse container indexes decoders by layer type: the fastest
	// lookup gopacket has for the few types met here.
	p.SetDecodingLayerContainer(gopacket.DecodingLayerSparse(nil))
	// The extension skipper is added before the fragment header so that
	// the latter wins for its own type: a fragment must not be read as
	// TCP.
	for _, l := range []gopacket.DecodingLayer{&d.eth, &d.dot1q, &d.sll, &d.sll2, &d.lo,
		&d.ip4, &d.ip6, &d.ip6ext, &d.ip6frag, &d.tcp} {
		p.AddDecodingLayer(l)
	}
	// A frame that goes on into a layer nobody here decodes (UDP, ARP,
	// an IPv6 extension beyond the ones above) is simply not TCP.
	p.IgnoreUnsupported = true
	d.parsers[first] = p
	return p
}

// decode parses one frame whose link layer starts with first
// (LayerTypeZero: raw IP, version from the first nibble), captured at ts.
func (d *decoder) decode(data []byte, first gopacket.LayerType, ts time.Time) decodeResult {
	if first == gopacket.LayerTypeZero {
		if len(data) == 0 {
			return malformed
		}
		switch data[0] >> 4 {
		case 4:
			first = layers.LayerTypeIPv4
		case 6:
			first = layers.LayerTypeIPv6
		default:
			return malformed
		}
	}
	err := d.parser(first).DecodeLayers(data, &d.decoded)
	var sawTCP, sawFrag bool
	// With IP in IP, the last IP layer is the one TCP rode on; its
	// struct holds the inner header, since a layer type met twice is
	// decoded into the same struct.
	lastIP := gopacket.LayerTypeZero
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeTCP:
			sawTCP = true
		case layers.LayerTypeIPv4:
			lastIP = t
		case layers.LayerTypeIPv6:
			lastIP = t
		case layers.LayerTypeIPv6Fragment:
			sawFrag = true
		}
	}
	if lastIP == layers.LayerTypeIPv4 && (d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0) {
		return d.defrag4(ts)
	}
	if lastIP == layers.LayerTypeIPv6 && sawFrag && (d.ip6frag.FragmentOffset != 0 || d.ip6frag.MoreFragments) {
		return d.defrag6()
	}
	if err != nil {
		return malformed
	}
	if !sawTCP || lastIP == gopacket.LayerTypeZero {
		return notTCP
	}
	if lastIP == layers.LayerTypeIPv4 {
		d.src, d.dst = v4InV6Prefix, v4InV6Prefix
		copy(d.src[12:], d.ip4.SrcIP)
		copy(d.dst[12:], d.ip4.DstIP)
	} else {
		copy(d.src[:], d.ip6.SrcIP)
		copy(d.dst[:], d.ip6.DstIP)
	}
	return decodedTCP
}

// defrag4 keeps an IPv4 fragment; when it completes its datagram, the TCP
// segment in it is decoded. The defragmenter keeps what it is given, so
// it is given copies: the frame's bytes are the reader's.
func (d *decoder) defrag4(ts time.Time) decodeResult {
	d.fragments++
	if d.def4 == nil {
		d.def4 = ip4defrag.NewIPv4Defragmenter()
	}
	in := d.ip4
	in.Contents, in.Payload = slices.Clone(in.Contents), slices.Clone(in.Payload)
	in.SrcIP, in.DstIP = slices.Clone(in.SrcIP), slices.Clone(in.DstIP)
	in.Options, in.Padding = nil, nil
	out, err := d.def4.DefragIPv4WithTimestamp(&in, ts)
	switch {
	case err != nil:
		return malformed
	case out == nil:
		return fragment
	}
	d.defragmented++
	if out.Protocol != layers.IPProtocolTCP {
		return notTCP
	}
	d.src, d.dst = v4InV6Prefix, v4InV6Prefix
	copy(d.src[12:], out.SrcIP)
	copy(d.dst[12:], out.DstIP)
	return d.decodeTCP(out.Payload)
}

// defrag6 is defrag4 for IPv6.
func (d *decoder) defrag6() decodeResult {
	d.fragments++
	if d.def6 == nil {
		d.def6 = ip6defrag.NewIPv6Defragmenter()
	}
	ip := d.ip6
	ip.Contents, ip.Payload = slices.Clone(ip.Contents), nil
	ip.SrcIP, ip.DstIP = slices.Clone(ip.SrcIP), slices.Clone(ip.DstIP)
	ip.HopByHop = nil
	fg := d.ip6frag
	fg.Contents, fg.Payload = slices.Clone(fg.Contents), slices.Clone(fg.Payload)
	out := d.def6.DefragIPv6(&ip, &fg)
	if out == nil {
		return fragment
	}
	d.defragmented++
	if out.NextHeader != layers.IPProtocolTCP {
		return notTCP
	}
	copy(d.src[:], out.SrcIP)
	copy(d.dst[:], out.DstIP)
	return d.decodeTCP(out.Payload)
}

// decodeTCP decodes the TCP segment of a rebuilt datagram.
func (d *decoder) decodeTCP(b []byte) decodeResult {
	if d.tcpParser == nil {
		d.tcpParser = gopacket.NewDecodingLayerParser(layers.LayerTypeTCP, &d.tcp)
		d.tcpParser.IgnoreUnsupported = true
	}
	if err := d.tcpParser.DecodeLayers(b, &d.decoded); err != nil || len(d.decoded) == 0 {
		return malformed
	}
	return decodedTCP
}

// expireFragments forgets IPv4 fragments that waited too long. The IPv6
// defragmenter times fragments by the wall clock, not the capture's, so
// its incomplete datagrams are kept until the capture ends.
func (d *decoder) expireFragments(now time.Time) {
	if d.def4 != nil {
		d.def4.DiscardOlderThan(now.Add(-fragmentTimeout))
	}
}
