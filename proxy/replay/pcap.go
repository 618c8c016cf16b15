package replay

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// A classic pcap file is read in place: its bytes go from the file
// straight into a batch's buffer, and each frame is a slice of it. The
// checks are pcapgo's, so that a damaged file is reported at the same
// record with the same words.

// pcapMaxCaptureLength is the capture length accepted whatever the file
// header's snap length says, as pcapgo does: some writers put 0 there.
const pcapMaxCaptureLength = 262144

// maxEmptyReads bounds the reads in a row that return nothing and no
// error, which the io.Reader contract discourages but does not forbid.
const maxEmptyReads = 100

// pcapReader reads the records of a classic pcap file after its header.
type pcapReader struct {
	r     io.Reader
	order binary.ByteOrder
	// fracUnit is the nanoseconds in a unit of a timestamp's fraction:
	// 1000 (microseconds) or 1.
	fracUnit uint32
	snaplen  uint32
	maxCap   int
	link     layers.LinkType
	// off is the file offset of the next record.
	off int64
	// tail holds the bytes read past the last whole record of a batch:
	// the start of the next one.
	tail []byte
	// err is the error that ended the reading (io.EOF at the end), kept
	// until the records read before it are handed out; bad is a record
	// header that makes no sense, which ends the file there.
	err, bad error
}

// newPcapReader reads the 24-byte file header from r.
func newPcapReader(r io.Reader) (*pcapReader, error) {
	var h [pcapFileHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	p := &pcapReader{r: r, off: pcapFileHeader, fracUnit: 1000}
	switch binary.LittleEndian.Uint32(h[0:4]) {
	case 0xa1b2c3d4:
		p.order = binary.LittleEndian
	case 0xa1b23c4d:
		p.order, p.fracUnit = binary.LittleEndian, 1
	case 0xd4c3b2a1:
		p.order = binary.BigEndian
	case 0x4d3cb2a1:
		p.order, p.fracUnit = binary.BigEndian, 1
	default:
		return nil, fmt.Errorf("unknown magic %x", h[0:4])
	}
	if major, minor := p.order.Uint16(h[4:6]), p.order.Uint16(h[6:8]); major != 2 || minor != 4 {
		return nil, fmt.Errorf("unknown version %d.%d", major, minor)
	}
	p.snaplen = p.order.Uint32(h[16:20])
	p.maxCap = max(int(min(p.snaplen, 1<<31-1)), pcapMaxCaptureLength)
	p.link = layers.LinkType(p.order.Uint32(h[20:24]))
	return p, nil
}

// pcapRecord is one record found by fill.
type pcapRecord struct {
	data       []byte
	ts         time.Time
	wireLength int
}

// fill reads records into buf (from its length up to its capacity) and
// calls each for every whole record, in order, until buf is full, each
// returns false or the file ends. The records' data are slices of buf,
// or of a buffer of their own for a record larger than buf. It returns
// buf with the bytes of the records handed out; the error that ended the
// file (io.EOF at a clean end) once every record before it was handed
// out, with the offset of the record it stopped at.
//
// Once it has handed out a record, fill returns rather than read again:
// from a pipe (a live capture), a read waits for more packets, and the
// ones read must not wait with it. A file fills the buffer in one read.
func (p *pcapReader) fill(buf []byte, each func(pcapRecord) bool) ([]byte, int64, error) {
	buf = append(buf, p.tail...)
	p.tail = p.tail[:0]
	pos, handed, empty := 0, 0, 0
	for {
	records:
		for p.bad == nil && len(buf)-pos >= pcapRecordHeader {
			h := buf[pos : pos+pcapRecordHeader]
			caplen, wirelen := int(p.order.Uint32(h[8:12])), int(p.order.Uint32(h[12:16]))
			if err := p.check(caplen, wirelen); err != nil {
				p.bad = err
				break
			}
			n := pcapRecordHeader + caplen
			var data []byte
			switch {
			case n <= len(buf)-pos:
				data = buf[pos+pcapRecordHeader : pos+n : pos+n]
				pos += n
			case pos > 0 || n <= cap(buf) || p.err != nil:
				// The rest is yet to be read, into this buffer or,
				// when full, the next batch's; or never will be.
				break records
			default:
				// Larger than a batch: read into its own buffer.
				own := make([]byte, n)
				copy(own, buf[pos:])
				if _, err := io.ReadFull(p.r, own[len(buf)-pos:]); err != nil {
					if err == io.EOF {
						err = io.ErrUnexpectedEOF
					}
					p.err = err
					break records
				}
				data = own[pcapRecordHeader:]
				buf = buf[:pos]
			}
			// The nanoseconds are computed as pcapgo does, in 32 bits,
			// which wraps for a fraction that is not one (a million
			// microseconds or more): the same file gives the same times.
			sec, frac := p.order.Uint32(h[0:4]), p.order.Uint32(h[4:8])*p.fracUnit
			p.off += int64(n)
			handed++
			if !each(pcapRecord{data: data, ts: time.Unix(int64(sec), int64(frac)).UTC(), wireLength: wirelen}) {
				p.tail = append(p.tail, buf[pos:]...)
				return buf[:pos], p.off, nil
			}
		}
		switch {
		case p.bad != nil:
			return buf[:pos], p.off, p.bad
		case p.err != nil:
			err := p.err
			if pos < len(buf) && err == io.EOF {
				// The file ends inside a record.
				err = io.ErrUnexpectedEOF
			}
			return buf[:pos], p.off, err
		case len(buf) == cap(buf) || handed > 0:
			// Full, or records to hand over: the partial record goes
			// to the next batch.
			p.tail = append(p.tail, buf[pos:]...)
			return buf[:pos], p.off, nil
		}
		n, err := p.r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err != nil:
			p.err = err
		case n == 0:
			if empty++; empty == maxEmptyReads {
				p.err = io.ErrNoProgress
			}
		default:
			empty = 0
		}
	}
}

// check applies pcapgo's checks to a record header.
func (p *pcapReader) check(caplen, wirelen int) error {
	if caplen > p.maxCap {
		return fmt.Errorf("capture length exceeds snap length: %d > %d", caplen, p.snaplen)
	}
	if caplen > wirelen {
		return fmt.Errorf("capture length exceeds original packet length: %d > %d", caplen, wirelen)
	}
	return nil
}
