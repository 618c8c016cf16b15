package replay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// readBufferSize is the read-ahead on a capture file, for its magic
// number and pcapng's small reads. A classic pcap file's records are read
// a batch at a time (batchBytes), which bufio does straight into the
// batch, without a copy, once its own buffer is empty and the read is at
// least as large as it.
const readBufferSize = 64 << 10

// gzipChunk is how much decompressed data the decompressing goroutine hands
// over at a time: large enough that the hand-over costs nothing next to
// inflating it.
const gzipChunk = 256 << 10

// Magic numbers at the start of a capture file, as they appear on disk.
var (
	magicGzip   = []byte{0x1f, 0x8b}
	magicPcapng = []byte{0x0a, 0x0d, 0x0d, 0x0a}
)

// pcap file magics in both byte orders, microsecond and nanosecond.
var pcapMagics = [][]byte{
	{0xd4, 0xc3, 0xb2, 0xa1}, {0xa1, 0xb2, 0xc3, 0xd4},
	{0x4d, 0x3c, 0xb2, 0xa1}, {0xa1, 0xb2, 0x3c, 0x4d},
}

// LinkTypeError reports frames whose link-layer type the replay cannot
// decode. The packets of that link type are skipped; the error names it so
// that the user knows which interface of the capture was not replayed.
type LinkTypeError struct {
	LinkType layers.LinkType
	// Packets is how many frames of that link type were skipped.
	Packets int64
}

func (e *LinkTypeError) Error() string {
	name := e.LinkType.String()
	s := fmt.Sprintf("unsupported link type %d (%s)", uint16(e.LinkType), name)
	if e.Packets > 0 {
		s += fmt.Sprintf(": %d packets skipped", e.Packets)
	}
	return s + "; supported: Ethernet, Linux cooked (SLL, SLL2), raw IP, BSD loopback (NULL, LOOP)"
}

// DamagedError reports a capture that cannot be read past a point: a record
// header that makes no sense, or a file cut short. Everything before it was
// replayed.
type DamagedError struct {
	// Packets is how many packets were read before the damage.
	Packets int64
	// Offset is where the record that could not be read starts in the
	// (decompressed) capture; -1 for pcapng, whose blocks are not counted.
	Offset int64
	Err    error
}

func (e *DamagedError) Error() string {
	what := "damaged"
	if errors.Is(e.Err, io.ErrUnexpectedEOF) {
		what = "truncated"
	}
	at := ""
	if e.Offset >= 0 {
		at = fmt.Sprintf(" (record at byte %d)", e.Offset)
	}
	return fmt.Sprintf("capture %s after packet %d%s: %v", what, e.Packets, at, e.Err)
}

func (e *DamagedError) Unwrap() error { return e.Err }

// source yields the frames of one capture file.
type source struct {
	// pcap reads a classic pcap file in place; nil for a pcapng.
	pcap *pcapReader
	// next returns a pcapng's next frame and its link type; data is valid
	// until the following call.
	next func() (data []byte, ci gopacket.CaptureInfo, link layers.LinkType, err error)
	// buffered says how many bytes a pcapng's next frames can be read
	// from without reading the file (or pipe) again.
	buffered func() int
	close    func()
	// fixed: every frame has link type link (pcap); a pcapng gives one
	// per interface.
	fixed bool
	link  layers.LinkType
}

// pcapFileHeader and pcapRecordHeader are the sizes of the classic pcap
// headers, from which the position of a record follows.
const (
	pcapFileHeader   = 24
	pcapRecordHeader = 16
)

// openCapture recognises a capture by its magic number (not its name):
// gzip-compressed or not, pcap or pcapng.
func openCapture(r io.Reader) (*source, error) {
	br := bufio.NewReaderSize(r, readBufferSize)
	stop := func() {}
	head, err := br.Peek(4)
	if len(head) >= 2 && bytes.Equal(head[:2], magicGzip) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		var pr io.Reader
		pr, stop = inflate(zr)
		br = bufio.NewReaderSize(pr, readBufferSize)
		head, err = br.Peek(4)
		if len(head) < 4 {
			stop()
			return nil, notACapture(head, err)
		}
	} else if len(head) < 4 {
		return nil, notACapture(head, err)
	}

	// pcapgo's pcapng reader uses a *bufio.Reader as it is when it is
	// at least its default size, so there is one buffer and no second
	// copy.
	switch {
	case bytes.Equal(head, magicPcapng):
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			stop()
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		return &source{
			next: func() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
				data, ci, err := ng.ZeroCopyReadPacketData()
				var link layers.LinkType
				if err == nil && len(ci.AncillaryData) > 0 {
					link, _ = ci.AncillaryData[0].(layers.LinkType)
				}
				return data, ci, link, err
			},
			buffered: br.Buffered,
			close:    stop,
		}, nil
	case isPcapMagic(head):
		p, err := newPcapReader(br)
		if err != nil {
			stop()
			return nil, fmt.Errorf("pcap: %w", err)
		}
		return &source{pcap: p, close: stop, fixed: true, link: p.link}, nil
	}
	stop()
	return nil, notACapture(head, nil)
}

func isPcapMagic(head []byte) bool {
	for _, m := range pcapMagics {
		if bytes.Equal(head, m) {
			return true
		}
	}
	return false
}

func notACapture(head []byte, err error) error {
	if err != nil && err != io.EOF {
		return fmt.Errorf("reading the capture header: %w", err)
	}
	if len(head) < 4 {
		return fmt.Errorf("not a capture file: %d bytes", len(head))
	}
	return fmt.Errorf("not a pcap or pcapng capture (magic %08x)", binary.BigEndian.Uint32(head))
}

// inflate decompresses on its own goroutine, so that inflating and
// replaying use both cores. stop ends the goroutine early.
func inflate(zr *gzip.Reader) (io.Reader, func()) {
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, gzipChunk)
		for {
			// Fill the chunk: gzip returns a window at a time, and
			// every hand-over through the pipe costs a wake-up.
			n := 0
			var err error
			for n < len(buf) && err == nil {
				var m int
				m, err = zr.Read(buf[n:])
				n += m
			}
			if n > 0 {
				if _, werr := pw.Write(buf[:n]); werr != nil {
					return // the reader stopped
				}
			}
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(fmt.Errorf("gzip: %w", err))
				return
			}
		}
	}()
	return pr, func() { pr.CloseWithError(errors.New("replay stopped")) }
}
