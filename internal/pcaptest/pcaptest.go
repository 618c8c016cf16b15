// Package pcaptest extracts the TCP payloads of the captures under
// ../shared/testdata/pcaps for tests of the grammar and the state machine.
// It is a test helper, not the replay reader: segments are ordered by
// sequence number with a small reorder buffer, retransmitted bytes are
// dropped and nothing else of TCP is modelled.
package pcaptest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Chunk is a run of new payload bytes of one direction, in capture order.
// Up is client to server.
type Chunk struct {
	Up   bool
	Data []byte
	Time time.Time
}

// Stream is one TCP connection of a capture.
type Stream struct {
	Client, Server netip.AddrPort
	Chunks         []Chunk
	// Gaps counts bytes that were never captured in either direction.
	Gaps int
}

// Payload returns the concatenated bytes of one direction.
func (s *Stream) Payload(up bool) []byte {
	var b []byte
	for _, c := range s.Chunks {
		if c.Up == up {
			b = append(b, c.Data...)
		}
	}
	return b
}

// Root returns the directory that holds the captures: the repository's
// testdata/pcaps (a copy of the shared corpus, with its MANIFEST and
// licence notes), found by walking up from the working directory to
// go.mod, so that a checkout needs nothing beside it. Without that copy,
// ../shared/testdata/pcaps from the repository root.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			own := filepath.Join(dir, "testdata", "pcaps")
			if _, err := os.Stat(filepath.Join(own, "MANIFEST.md")); err == nil {
				return own, nil
			}
			return filepath.Join(dir, "..", "shared", "testdata", "pcaps"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("pcaptest: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Path returns the full path of a capture named relative to Root.
func Path(name string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, name), nil
}

// Read returns the TCP streams of a capture (pcap or pcapng, optionally
// gzip-compressed), in the order of their first packet. A capture damaged
// part way returns the streams read so far and the error.
func Read(path string) ([]*Stream, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("pcaptest: %s: %w", path, err)
		}
		if raw, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("pcaptest: %s: %w", path, err)
		}
	}
	src, link, err := open(raw)
	if err != nil {
		return nil, fmt.Errorf("pcaptest: %s: %w", path, err)
	}
	a := &assembler{streams: map[key]*stream{}}
	for {
		data, ci, err := src.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.result(), fmt.Errorf("pcaptest: %s: %w", path, err)
		}
		a.packet(gopacket.NewPacket(data, link, gopacket.DecodeOptions{Lazy: true, NoCopy: true}), ci.Timestamp)
	}
	return a.result(), nil
}

type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

func open(raw []byte) (packetSource, layers.LinkType, error) {
	if len(raw) >= 4 && bytes.Equal(raw[:4], []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		r, err := pcapgo.NewNgReader(bytes.NewReader(raw), pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, 0, err
		}
		return r, r.LinkType(), nil
	}
	r, err := pcapgo.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, 0, err
	}
	return r, r.LinkType(), nil
}

type key struct{ a, b netip.AddrPort }

type segment struct {
	seq  uint32
	data []byte
	t    time.Time
}

type half struct {
	started bool
	next    uint32
	pending []segment
}

type stream struct {
	s      *Stream
	dirs   [2]half // 0 = up
	client netip.AddrPort
}

type assembler struct {
	streams map[key]*stream
	order   []*stream
}

func (a *assembler) packet(p gopacket.Packet, t time.Time) {
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil {
		return
	}
	var src, dst netip.Addr
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
	case *layers.IPv6:
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
	default:
		return
	}
	from := netip.AddrPortFrom(src, uint16(tcp.SrcPort))
	to := netip.AddrPortFrom(dst, uint16(tcp.DstPort))
	k := key{from, to}
	if to.Compare(from) < 0 {
		k = key{to, from}
	}
	st := a.streams[k]
	if st == nil {
		// The first packet's sender is the client unless it is a SYN-ACK.
		client, server := from, to
		if tcp.SYN && tcp.ACK {
			client, server = to, from
		}
		st = &stream{s: &Stream{Client: client, Server: server}, client: client}
		a.streams[k] = st
		a.order = append(a.order, st)
	}
	d := 1
	if from == st.client {
		d = 0
	}
	h := &st.dirs[d]
	if tcp.SYN {
		h.started, h.next = true, tcp.Seq+1
		return
	}
	if len(tcp.Payload) == 0 {
		return
	}
	if !h.started {
		h.started, h.next = true, tcp.Seq
	}
	h.pending = append(h.pending, segment{tcp.Seq, append([]byte(nil), tcp.Payload...), t})
	a.drain(st, d, false)
}

// drain appends the pending segments of a direction that continue its
// stream; with force it also takes segments after a hole, counting the hole.
func (a *assembler) drain(st *stream, d int, force bool) {
	h := &st.dirs[d]
	for len(h.pending) > 0 {
		sort.Slice(h.pending, func(i, j int) bool { return int32(h.pending[i].seq-h.pending[j].seq) < 0 })
		seg := h.pending[0]
		off := int32(h.next - seg.seq)
		if off < 0 && !force {
			return
		}
		h.pending = h.pending[1:]
		if off < 0 {
			st.s.Gaps += int(-off)
			off = 0
		}
		if int(off) >= len(seg.data) {
			continue // retransmission
		}
		data := seg.data[off:]
		st.s.Chunks = append(st.s.Chunks, Chunk{Up: d == 0, Data: data, Time: seg.t})
		h.next = seg.seq + uint32(len(seg.data))
	}
}

func (a *assembler) result() []*Stream {
	out := make([]*Stream, 0, len(a.order))
	for _, st := range a.order {
		a.drain(st, 0, true)
		a.drain(st, 1, true)
		out = append(out, st.s)
	}
	return out
}
