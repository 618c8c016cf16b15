package tlssm

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// TestSplitInvariance feeds every stream of every shared capture as
// captured, one byte at a time and in random pieces: the events, the final
// state, the decision and the bytes forwarded must not depend on how the
// bytes arrive, and no event may ever concern a byte already forwarded
// (runStream checks it on every event).
func TestSplitInvariance(t *testing.T) {
	root, names := sharedCaptures(t)
	type run struct {
		name string
		lim  dissect.Limits
	}
	var runs []run
	for _, name := range names {
		runs = append(runs, run{name: name})
	}
	// Reassembled whole, the 340 KB Certificate of this capture is held
	// over 21 records until its last one arrives.
	runs = append(runs, run{"zeek/tls-fragmented-handshake.pcap.gz", dissect.Limits{MaxMessage: 512 << 10}})
	for _, c := range runs {
		name := c.name
		if c.lim != (dissect.Limits{}) {
			name += "/MaxMessage=512KiB"
		}
		t.Run(name, func(t *testing.T) {
			streams, err := pcaptest.Read(filepath.Join(root, c.name))
			if err != nil && len(streams) == 0 {
				t.Skipf("unreadable: %v", err)
			}
			for i, s := range streams {
				whole := runStream(t, s, c.lim, nil)
				if bytewise := runStream(t, s, c.lim, byteSplit); bytewise != whole {
					t.Errorf("stream %d: one byte at a time differs:\n%s", i, diffLines(whole, bytewise))
				}
				for seed := range uint64(8) {
					r := rand.New(rand.NewPCG(seed, uint64(i)))
					if got := runStream(t, s, c.lim, randomSplit(r)); got != whole {
						t.Errorf("stream %d, seed %d: random split differs:\n%s", i, seed, diffLines(whole, got))
					}
				}
			}
		})
	}
}
