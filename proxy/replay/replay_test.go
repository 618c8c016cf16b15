package replay

import (
	"bufio"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// replayAll replays one capture file with f and returns the stream
// figures in flow ID order.
func replayFile(t *testing.T, path string, opts Options) ([]*StreamStats, Stats, error) {
	t.Helper()
	var streams []*StreamStats
	opts.OnStream = func(s *StreamStats) { streams = append(streams, s) }
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.ReplayFile(path)
	slices.SortFunc(streams, func(a, b *StreamStats) int { return cmpID(a.ID, b.ID) })
	return streams, st, err
}

// damagedCaptures are the captures known to be damaged part way.
var damagedCaptures = map[string]bool{
	"suricata-verify/bug-1450-04/tls_DER-incomplete-header.pcap": true,
}

// TestCapturesMatchTshark replays every shared capture with a recording
// inspector and compares streams, per-direction segment and byte counts
// and the reassembled bytes themselves with what tshark reports
// (testdata/tshark.json, made with -update).
func TestCapturesMatchTshark(t *testing.T) {
	golden := loadGolden(t)
	root, names := captures(t)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			want, ok := golden[name]
			if !ok {
				t.Fatalf("%s is not in %s: run with -update", name, goldenPath)
			}
			rec := &recorder{}
			// Midstream: tls13-ech's first stream was caught after its
			// start, and the reassembly of all of it is compared.
			streams, st, err := replayFile(t, filepath.Join(root, name), Options{Factory: rec, Midstream: true})
			var dmg *DamagedError
			if damagedCaptures[name] {
				if !errors.As(err, &dmg) {
					t.Fatalf("err = %v, want a *DamagedError", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if st.Packets != want.Packets {
				t.Errorf("read %d packets, tshark %d", st.Packets, want.Packets)
			}
			if len(streams) != len(want.Streams) || len(streams) != want.ConvStreams {
				t.Fatalf("%d streams, tshark %d (conv,tcp %d)", len(streams), len(want.Streams), want.ConvStreams)
			}
			if len(rec.conns) != len(streams) {
				t.Fatalf("%d inspectors for %d streams", len(rec.conns), len(streams))
			}
			for i, s := range streams {
				w := want.Streams[i]
				// Direction 0 of tshark's is from A.
				dirs := [2]dissect.Direction{dissect.Up, dissect.Down}
				switch {
				case s.Client.String() == w.A && s.Server.String() == w.B:
				case s.Client.String() == w.B && s.Server.String() == w.A:
					dirs = [2]dissect.Direction{dissect.Down, dissect.Up}
				default:
					t.Fatalf("stream %d: %v -> %v, tshark %s <-> %s", i, s.Client, s.Server, w.A, w.B)
				}
				c := rec.conns[i]
				if c.flow.ID != s.ID || c.closes != 1 {
					t.Fatalf("stream %d: inspector of flow %d closed %d times", s.ID, c.flow.ID, c.closes)
				}
				for j, d := range dirs {
					if s.Packets[d] != w.Frames[j] || s.WireBytes[d] != w.Wire[j] || s.Payload[d] != w.Payload[j] {
						t.Errorf("stream %d %v: packets/wire/payload %d/%d/%d, tshark %d/%d/%d", i, d,
							s.Packets[d], s.WireBytes[d], s.Payload[d], w.Frames[j], w.Wire[j], w.Payload[j])
					}
					if s.Stream[d] != w.Stream[j] || s.Forwarded[d] != w.Stream[j] {
						t.Errorf("stream %d %v: %d bytes reassembled, %d forwarded, tshark follows %d", i, d, s.Stream[d], s.Forwarded[d], w.Stream[j])
					}
					if got := hex.EncodeToString(c.sum[d].Sum(nil)); got != w.SHA256[j] {
						t.Errorf("stream %d %v: reassembled bytes differ from tshark's", i, d)
					}
					if c.summary.BytesUp != s.Forwarded[dissect.Up] || c.summary.BytesDown != s.Forwarded[dissect.Down] {
						t.Errorf("stream %d: summary %+v, forwarded %v", i, *c.summary, s.Forwarded)
					}
				}
			}
		})
	}
}

// TestManifestCounts checks the packet and stream counts that
// MANIFEST.md gives for every capture (the damaged one is read up to its
// 6 readable packets).
func TestManifestCounts(t *testing.T) {
	root, names := captures(t)
	f, err := os.Open(filepath.Join(root, "MANIFEST.md"))
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	type counts struct{ packets, streams int64 }
	manifest := map[string]counts{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "|")
		if len(cols) < 8 || !strings.HasPrefix(strings.TrimSpace(cols[1]), "`") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cols[1]), "`")
		p, err1 := strconv.ParseInt(strings.Fields(cols[5])[0], 10, 64)
		s, err2 := strconv.ParseInt(strings.TrimSpace(cols[6]), 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("MANIFEST row %q: %v %v", name, err1, err2)
		}
		manifest[name] = counts{p, s}
	}
	if len(manifest) != len(names) {
		t.Fatalf("MANIFEST lists %d captures, %d files found", len(manifest), len(names))
	}
	// The counts the replay must meet whatever else changes.
	for name, n := range map[string]int64{
		"suricata-verify/ssl_version_negated/input.pcap": 7,
		"zeek/tls13-ech.pcap":                            3,
		"suricata-verify/tls-duplicate-hello/input.pcap": 2,
	} {
		if manifest[name].streams != n {
			t.Errorf("MANIFEST gives %s %d streams, want %d", name, manifest[name].streams, n)
		}
	}
	for name, want := range manifest {
		streams, st, err := replayFile(t, filepath.Join(root, name), Options{Factory: inspect.PassThrough{}})
		if err != nil && !damagedCaptures[name] {
			t.Errorf("%s: %v", name, err)
		}
		if st.Packets != want.packets || int64(len(streams)) != want.streams || st.Streams != want.streams {
			t.Errorf("%s: %d packets, %d streams; MANIFEST %d, %d", name, st.Packets, len(streams), want.packets, want.streams)
		}
	}
}
