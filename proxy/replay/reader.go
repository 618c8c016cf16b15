package replay

import (
	"slices"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// Reading and decoding a capture run on their own goroutine, ahead of the
// replay: the frames go from one to the other in batches, in capture
// order, and only the reader touches the decoder, so that the output is
// that of one goroutine. Reading and decoding the frames is about a
// third of the processor time of a replay through the TLS inspector; on
// a second core it no longer delays the reassembly and the inspectors.
const (
	// batchBytes is the room for frame bytes in a batch: a few hundred
	// full-size frames, so that the hand-over costs little per frame,
	// and little enough to stay in a core's cache.
	batchBytes = 256 << 10
	// batchFrames bounds the frames of a batch of small frames (bare
	// ACKs, 4000 of which would fit in batchBytes): a batch is handed
	// over at least every 512 frames.
	batchFrames = 512
	// batchesAhead is how many batches the reader may fill before the
	// replay has used them: 4 MiB, a few milliseconds of the replay's
	// work, so that the two goroutines are not held to each other's
	// pace when the scheduler gives the processors to other work for a
	// time slice. With the one the replay is at and the one being
	// filled, batches are made at most batchesAhead+2 times, and reused.
	batchesAhead = 16
	// ownBuffer: a frame larger than this gets its own buffer rather
	// than a batch's room (jumbo frames, offloaded segments).
	ownBuffer = batchBytes / 4
)

// unsupportedLink is the decodeResult of a frame whose link type the
// replay cannot decode.
const unsupportedLink decodeResult = 255

// frame is a frame read and decoded ahead of the replay. It is small, as
// it crosses from one core to the other: the replay decodes the TCP
// header again from seg, which costs less than carrying the decoded one.
type frame struct {
	ts         time.Time
	size, wire int // captured length, length on the wire
	link       layers.LinkType
	res        decodeResult
	// seg is the TCP segment of a decodedTCP frame, header included: a
	// slice of the batch's buffer or of a datagram rebuilt from
	// fragments. src and dst are its addresses (IPv4 v4-mapped).
	seg      []byte
	src, dst [16]byte
}

// batch is a run of frames handed from the reader to the replay.
type batch struct {
	buf    []byte
	frames []frame
	// err ends the capture after the frames: io.EOF, or the error that
	// stopped the reading, for the record at errOff (-1 where the
	// format does not tell).
	err    error
	errOff int64
}

// reader reads and decodes the frames of one capture on its own
// goroutine.
type reader struct {
	src  *source
	dec  *decoder
	out  chan *batch
	free chan *batch
	stop chan struct{}
	done chan struct{}
	// made counts the batches made.
	made int

	// The IPv4 fragments that wait for the rest of their datagram are
	// let go every sweepInterval of packet time.
	clock, nextExpiry time.Time
}

// startReader starts reading src; the batches come on r.out, which is
// closed after the one that carries the end or the error.
func startReader(src *source) *reader {
	r := &reader{
		src:  src,
		dec:  newDecoder(),
		out:  make(chan *batch, batchesAhead),
		free: make(chan *batch, batchesAhead+2),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go r.run()
	return r
}

// recycle gives a used batch back to the reader. The free list holds
// every batch made, so this never blocks.
func (r *reader) recycle(b *batch) { r.free <- b }

// wait waits for the reader, which has sent its last batch; the
// decoder's figures may be read once it returns.
func (r *reader) wait() { <-r.done }

// abandon tells the reader to stop without waiting for it: it ends once
// the read it may be blocked in returns.
func (r *reader) abandon() { close(r.stop) }

func (r *reader) run() {
	defer close(r.done)
	defer close(r.out)
	for {
		b := r.batch()
		if b == nil {
			return
		}
		end := r.fill(b)
		select {
		case r.out <- b:
		case <-r.stop:
			return
		}
		if end {
			return
		}
	}
}

// batch returns an empty batch: a used one, or a new one while fewer
// than batchesAhead+2 were made; nil when told to stop.
func (r *reader) batch() *batch {
	var b *batch
	select {
	case b = <-r.free:
	default:
		if r.made < batchesAhead+2 {
			r.made++
			return &batch{buf: make([]byte, 0, batchBytes), frames: make([]frame, 0, batchFrames)}
		}
		select {
		case b = <-r.free:
		case <-r.stop:
			return nil
		}
	}
	b.buf, b.frames, b.err = b.buf[:0], b.frames[:0], nil
	return b
}

// fill reads frames into b until it is full or the capture ends; it
// reports the end.
func (r *reader) fill(b *batch) bool {
	if p := r.src.pcap; p != nil {
		var err error
		b.buf, b.errOff, err = p.fill(b.buf, func(rec pcapRecord) bool {
			b.frames = append(b.frames, frame{})
			r.decode(&b.frames[len(b.frames)-1], rec.data, rec.ts, rec.wireLength, p.link)
			return len(b.frames) < cap(b.frames)
		})
		b.err = err
		return err != nil
	}
	for len(b.frames) < cap(b.frames) {
		data, ci, link, err := r.src.next()
		if err != nil {
			b.err, b.errOff = err, -1
			return true
		}
		// The source's bytes are valid until its next call: they are
		// copied into the batch's room or, for a frame too large for
		// it or for what is left of it, into a buffer of their own.
		var own []byte
		fits := len(data) <= cap(b.buf)-len(b.buf)
		if fits && len(data) <= ownBuffer {
			n := len(b.buf)
			b.buf = append(b.buf, data...)
			own = b.buf[n:len(b.buf):len(b.buf)]
		} else {
			own = slices.Clone(data)
		}
		b.frames = append(b.frames, frame{})
		r.decode(&b.frames[len(b.frames)-1], own, ci.Timestamp, ci.Length, link)
		// A frame not yet buffered may have to wait for a live
		// capture: the ones read go first.
		if !fits || r.src.buffered() == 0 {
			return false
		}
	}
	return false
}

// decode decodes data into f.
func (r *reader) decode(f *frame, data []byte, ts time.Time, wire int, link layers.LinkType) {
	f.ts, f.size, f.wire, f.link = ts, len(data), wire, link
	first, ok := firstLayer(link)
	if !ok {
		f.res = unsupportedLink
		return
	}
	if ts.After(r.clock) {
		r.clock = ts
	}
	if r.nextExpiry.IsZero() {
		r.nextExpiry = r.clock.Add(sweepInterval)
	} else if !r.clock.Before(r.nextExpiry) {
		r.nextExpiry = r.clock.Add(sweepInterval)
		r.dec.expireFragments(r.clock)
	}
	d := r.dec
	f.res = d.decode(data, first, ts)
	if f.res == decodedTCP {
		// The TCP layer's bytes: its header, then its payload.
		n := len(d.tcp.Contents) + len(d.tcp.Payload)
		f.seg = d.tcp.Contents[:n:n]
		f.src, f.dst = d.src, d.dst
	}
}
