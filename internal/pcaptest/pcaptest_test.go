package pcaptest

import (
	"bytes"
	"testing"
)

func TestHeartbleedStream(t *testing.T) {
	p, err := Path("zeek/heartbleed.pcap")
	if err != nil {
		t.Fatal(err)
	}
	streams, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(streams) != 1 {
		t.Fatalf("got %d streams, want 1", len(streams))
	}
	up := streams[0].Payload(true)
	// The ClientHello record opens the client's stream.
	if len(up) < 5 || up[0] != 22 || up[1] != 3 {
		t.Fatalf("client stream does not start with a handshake record: % x", up[:5])
	}
	// The attack: a 16368-byte heartbeat record (type 24).
	if !bytes.Contains(up, []byte{24, 3, 2, 0x3f, 0xf0}) && !bytes.Contains(up, []byte{24, 3, 3, 0x3f, 0xf0}) && !bytes.Contains(up, []byte{24, 3, 1, 0x3f, 0xf0}) {
		t.Fatal("heartbeat record header of length 16368 not found in the client stream")
	}
}

func TestOutOfOrderServerSegments(t *testing.T) {
	p, err := Path("zeek/hrr.pcap")
	if err != nil {
		t.Fatal(err)
	}
	streams, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	down := streams[0].Payload(false)
	// Walk the server's records: every header must be a TLS record header,
	// which fails if reordering put bytes in the wrong place.
	for off := 0; off+5 <= len(down); {
		if down[off] < 20 || down[off] > 24 || down[off+1] != 3 {
			t.Fatalf("bad record header at %d: % x", off, down[off:off+5])
		}
		off += 5 + (int(down[off+3])<<8 | int(down[off+4]))
	}
}

func TestDamagedCaptureGivesStreamsAndError(t *testing.T) {
	p, err := Path("suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap")
	if err != nil {
		t.Fatal(err)
	}
	streams, err := Read(p)
	if err == nil {
		t.Fatal("want an error for the damaged capture")
	}
	if len(streams) != 1 || len(streams[0].Payload(true)) == 0 {
		t.Fatalf("want the readable stream before the damage, got %d streams", len(streams))
	}
}
