package replay

import (
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

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
	// fragment: an IP fragment; fragments are not reassembled.
	fragment
	// malformed: a header that does not parse.
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
// (LayerTypeZero: raw IP, version from the first nibble).
func (d *decoder) decode(data []byte, first gopacket.LayerType) decodeResult {
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
	var sawTCP, sawIP4, sawFrag bool
	// With IP in IP, the last IP layer is the one TCP rode on; its
	// struct holds the inner header, since a layer type met twice is
	// decoded into the same struct.
	lastIP := gopacket.LayerTypeZero
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeTCP:
			sawTCP = true
		case layers.LayerTypeIPv4:
			sawIP4 = true
			lastIP = t
		case layers.LayerTypeIPv6:
			lastIP = t
		case layers.LayerTypeIPv6Fragment:
			sawFrag = true
		}
	}
	if sawIP4 && (d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0) {
		return fragment
	}
	if sawFrag && (d.ip6frag.FragmentOffset != 0 || d.ip6frag.MoreFragments) {
		return fragment
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
