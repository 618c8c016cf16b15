package nft

import (
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
)

// BenchmarkApply measures a re-apply of the default config in a namespace
// where it is already installed (the restart path of `run --nft`): the
// probe, the conflict check, the routing comparison and the batch that
// replaces the table.
func BenchmarkApply(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.New(b, "bench")
	cfg := defaultWithListen()
	if err := ns.Do(func() error { return Apply(cfg) }); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := ns.Do(func() error {
		for i := 0; i < b.N; i++ {
			if err := Apply(cfg); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkApplyRemove measures a full install and removal.
func BenchmarkApplyRemove(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.New(b, "bench")
	cfg := defaultWithListen()
	if err := ns.Do(func() error {
		for i := 0; i < b.N; i++ {
			if err := Apply(cfg); err != nil {
				return err
			}
			if err := Remove(cfg); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}
