package dissect

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// recFuzzLimits are small so that inputs of a few KB reach the caps.
var recFuzzLimits = Limits{MaxClientHello: 512, MaxMessage: 2048}

// recFuzzRun feeds data to a Conn as dir in pieces ending at cuts and
// returns the units in a split-independent form. It checks, after every
// call, that units lie where they say in data, that a NeedMore never comes
// with MaxUnitBytes pending (the pump would buffer without bound), and that
// the reassembly buffer stays within the caps.
func recFuzzRun(t *testing.T, dir Direction, data []byte, cuts []int) []string {
	c := NewConn(recFuzzLimits)
	var lines []string
	var pending []byte
	fed, payload := 0, 0
	failed := false
	maxMsg := rlMsgHeaderLen + max(recFuzzLimits.MaxClientHello, recFuzzLimits.MaxMessage)
	feed := func(end int) {
		if failed {
			return
		}
		pending = append(pending, data[fed:end]...)
		fed = end
		for {
			u, n, err := c.Next(dir, pending)
			if n < 0 || n > len(pending) {
				t.Fatalf("consumed %d of %d", n, len(pending))
			}
			if cap(c.dirs[dir].r.buf) > maxMsg {
				t.Fatalf("reassembly buffer of %d bytes, caps %+v", cap(c.dirs[dir].r.buf), recFuzzLimits)
			}
			if err != nil {
				lines = append(lines, "error "+err.Error())
				failed = true
				return
			}
			if u.Kind == NeedMore {
				if n != 0 || len(pending) >= MaxUnitBytes {
					t.Fatalf("NeedMore with %d bytes pending, %d consumed", len(pending), n)
				}
				return
			}
			consumedBefore := int64(fed - len(pending))
			switch u.Kind {
			case UnitRecord, UnitSSLv2, UnitHeader:
				if u.Start != consumedBefore || len(u.Raw) != n || !bytes.Equal(u.Raw, data[u.Start:u.Start+int64(n)]) {
					t.Fatalf("%s at %d: not the bytes of the stream at %d", u.Kind, u.Start, consumedBefore)
				}
				lines = append(lines, fmt.Sprintf("%s %s v=%#04x len=%d @%d enc=%v hb=%+v alerts=%v sslv2=%d/%d", u.Kind, u.Header.Type, u.Header.Version, u.Header.Length, u.Start, u.Encrypted, u.Heartbeat, u.Alerts, u.SSLv2.MsgType, len(u.SSLv2.Body)))
				payload = 0
			case UnitChunk:
				at := u.Start + HeaderLen + int64(u.Offset)
				if at != consumedBefore || u.Offset != payload || !bytes.Equal(u.Fragment, data[at:at+int64(n)]) {
					t.Fatalf("chunk at %d: not the bytes of the stream", at)
				}
				payload += n
			case UnitMessage:
				m := u.Msg
				if n != 0 || (!m.TooLarge && (len(m.Body) != m.Length || len(m.Raw) != m.Length+4 || m.Length > recFuzzLimits.capFor(m.Type))) {
					t.Fatalf("message %+v consumed %d", m, n)
				}
				lines = append(lines, fmt.Sprintf("msg %d len=%d large=%v @%d raw=%08x", m.Type, m.Length, m.TooLarge, u.Start, crc32.ChecksumIEEE(m.Raw)))
			}
			for _, a := range u.Anomalies {
				lines = append(lines, "! "+a.String())
			}
			pending = pending[n:]
		}
	}
	for _, cut := range cuts {
		feed(cut)
	}
	feed(len(data))
	if _, inc := c.Incomplete(dir); inc {
		lines = append(lines, "incomplete")
	}
	for _, a := range c.EOF(dir, pending) {
		lines = append(lines, "eof "+a.String())
	}
	return lines
}

// FuzzFramer feeds an input to the record layer whole and in two pieces:
// it must not panic, must give the same units both ways and must keep its
// memory within the caps.
func FuzzFramer(f *testing.F) {
	for _, seed := range recFuzzSeeds(f) {
		f.Add(seed, uint16(len(seed)/2), false)
		f.Add(seed, uint16(7), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, cut uint16, down bool) {
		dir := Up
		if down {
			dir = Down
		}
		one := recFuzzRun(t, dir, data, nil)
		two := recFuzzRun(t, dir, data, []int{int(cut) % (len(data) + 1)})
		if !slices.Equal(one, two) {
			t.Fatalf("cut at %d:\n%q\nwhole:\n%q", int(cut)%(len(data)+1), two, one)
		}
	})
}

// recFuzzSeeds are the first KBs of each direction of the shared captures,
// when they are there, and a few streams built here.
func recFuzzSeeds(f *testing.F) [][]byte {
	seeds := [][]byte{
		slices.Concat(recCH, recCCS, recRecord(TypeHeartbeat, VersionTLS12, recHeartbeat(1, 16365, 16, 0))),
		slices.Concat(recRecord(TypeHandshake, VersionTLS12, recServerHello(VersionTLS12, helloRetryRequestRandom, VersionTLS13)), recCCS,
			recRecord(TypeHandshake, VersionTLS12, recServerHello(VersionTLS12, recRandom, VersionTLS13)), recAppData, recEncAlert),
		slices.Concat(recSSLv2Record(recSSLv2ClientHello(VersionTLS10), -1), recRecord(TypeHandshake, VersionTLS10, recMsg(16, recBytes(70, 1)))),
		slices.Concat(recRecord(TypeHandshake, VersionTLS12, recMsg(11, recBytes(3000, 1))[:1000]), recRecord(TypeAlert, VersionTLS12, []byte{2, 40, 1})),
	}
	root := os.Getenv("HAKA_PCAPS")
	if root == "" {
		var err error
		if root, err = pcaptest.Root(); err != nil {
			return seeds
		}
	}
	const seedLen = 4 << 10
	for _, c := range recCaptures {
		streams, err := pcaptest.Read(filepath.Join(root, c.name))
		if err != nil && len(streams) == 0 {
			continue // no captures here: the committed corpus still runs
		}
		for _, s := range streams {
			for _, up := range []bool{true, false} {
				if p := s.Payload(up); len(p) > 0 {
					seeds = append(seeds, p[:min(len(p), seedLen)])
				}
			}
		}
	}
	return seeds
}
