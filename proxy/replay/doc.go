// Package replay plays packet captures through the inspector contract of
// package inspect, so that a capture meets the same dissector, state
// machine and rules as live traffic and yields the same alert and
// connection lines. It owns everything between a capture file and the
// inspectors: reading the file, decoding frames, TCP reassembly, and
// driving each stream's Inspector as the live pump does.
//
//	r, err := replay.New(replay.Options{Factory: f, Output: output.NewWriter(os.Stdout, output.JSON)})
//	...
//	stats, err := r.ReplayFile("capture.pcap.gz")
//
// # Captures
//
// pcap and pcapng, gzip-compressed or not, are recognised by their magic
// numbers, not their names. Link types: Ethernet (with 802.1Q and QinQ
// tags), Linux cooked (SLL and SLL2), raw IP (LINKTYPE_RAW, DLT_RAW 12/14,
// LINKTYPE_IPV4/IPV6) and BSD loopback (DLT_NULL, DLT_LOOP). A pcapng may
// mix interfaces of different link types. Frames of another link type are
// skipped and reported as a *LinkTypeError. IPv4 and IPv6 fragments are
// reassembled (gopacket's ip4defrag and ip6defrag). A file that cannot be
// read to its end gives a *DamagedError after everything before the damage
// has been replayed.
//
// Frames are read and decoded on a goroutine of their own, ahead of the
// reassembly, and handed over in order: a second core takes that third
// of the work, and the output is the same. A classic pcap file is read in
// place, its bytes going from the file straight into the buffers the
// frames are sliced from. From a pipe (a live tcpdump), frames are handed
// over as soon as they are read.
//
// # Streams
//
// TCP is reassembled by gopacket's reassembly: out-of-order segments are
// put back in order and retransmitted bytes are delivered once (the first
// copy wins). Bytes that arrived after a hole wait for the missing segment
// for Options.ReorderWindow of packet time (or until a per-stream or total
// memory bound is reached, or the capture ends); the hole is then a gap of
// that direction (see GapHandler). A half whose first bytes were not
// captured (no SYN) starts at its first segment with data, FIN or RST (a
// bare ACK captured ahead of the SYN does not anchor it).
//
// A stream whose start was not captured (no SYN of either side before its
// first bytes) is not inspected, as Suricata's default stream.midstream
// false: its first bytes may be the middle of a TLS session or of a
// record, which no inspector can judge. Its bytes are forwarded unseen
// and its connection line names the anomaly "midstream".
// Options.Midstream inspects such streams all the same.
//
// The client is the sender of the SYN (or the receiver of the SYN-ACK);
// without a captured handshake, the side of a well-known port (below 1024,
// when only one is) is the server, then the sender of the first payload is
// the client, and as a last resort the lower port is the server's.
//
// A SYN with a new ISN on the 4-tuple of a stream that is over (or that
// carried data) opens a new stream, as in Wireshark; a retransmitted SYN
// does not. A stream is over when both sides sent FIN, either side sent
// an in-sequence RST, a verdict killed it, it has been idle for
// Options.IdleTimeout of packet time, or its capture ends. The streams of
// one capture do not continue into the next.
//
// # The pump
//
// Each stream gets one Inspector from the Factory once its client is
// known: inspect.Flow carries the client and server addresses and Start,
// the time of the stream's first packet. Every run of new in-order bytes of
// a direction is one read: the pump appends it to that direction's pending
// bytes (or shows it as it is when nothing is pending) and calls Feed,
// forwards (counts as delivered) the Result.Forward bytes at the head,
// keeps the rest, and lets the next Result.Pass bytes through unseen. A
// killing verdict forwards what the Result cleared and ends the connection:
// pending and later bytes are dropped. Bypass forwards everything pending
// and stops inspecting. A FIN or RST gives the EOF of its direction (a RST
// both), and the end of the stream gives Close with the bytes forwarded
// each way, the duration and the decision. HelloDone has no effect: the
// replay applies no handshake timeout. Results that break the contract
// (Forward outside pending, a negative Pass, Pass while bytes are still
// pending) are clamped or ignored and counted in StreamStats.
//
// # Time and order
//
// Stream time is packet time, kept monotonic: a timestamp earlier than one
// already seen counts as the latest seen. Output is written in the order
// the replay meets it, which is deterministic: alerts as the rules raise
// them during Feed, a connection line when its stream closes (a line's
// "time" is the close). Where several streams close or receive flushed
// bytes at once (a sweep for gaps and idle streams, the end of a capture),
// they go in the order of their first packet. Flow IDs count streams in
// the order of their first packet, from 1, across all the captures a
// Replayer plays.
package replay
