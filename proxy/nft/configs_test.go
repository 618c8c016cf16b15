package nft

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/netnstest"
)

// repoFile returns the path of a file of the repository, found by walking
// up to go.mod.
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func defaultWithListen() Config {
	c := DefaultConfig()
	c.ListenPort = 15001
	return c
}

// TestReferenceRuleset: configs/nftables-haka.nft holds exactly what Apply
// installs with the default flags.
func TestReferenceRuleset(t *testing.T) {
	b, err := os.ReadFile(repoFile(t, "configs/nftables-haka.nft"))
	if err != nil {
		t.Fatal(err)
	}
	const replace = "table inet haka {}\ndelete table inet haka\n\n"
	_, table, ok := strings.Cut(string(b), replace)
	if !ok {
		t.Fatalf("configs/nftables-haka.nft lacks the replace idiom %q", replace)
	}
	want, err := Ruleset(defaultWithListen())
	if err != nil {
		t.Fatal(err)
	}
	if table != want {
		t.Errorf("configs/nftables-haka.nft:\n%s\nApply installs:\n%s", table, want)
	}
}

// TestReferenceFilesInstallWhatApplyInstalls loads configs/nftables-haka.nft
// (twice) and runs configs/policy-routing.sh in one namespace, Apply in
// another, and compares what nft and ip list; then Remove cleans up what
// the operator's files installed.
func TestReferenceFilesInstallWhatApplyInstalls(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTool(t, "nft", "ip", "sh")
	t.Parallel()
	byHand := netnstest.New(t, "byhand")
	byApply := netnstest.New(t, "byapply")
	before := takeSnapshot(t, byHand)
	nftFile := repoFile(t, "configs/nftables-haka.nft")
	byHand.Run(t, "nft", "-f", nftFile)
	byHand.Run(t, "nft", "-f", nftFile)
	byHand.Run(t, "sh", repoFile(t, "configs/policy-routing.sh"), "add")
	if err := apply(t, byApply, defaultWithListen()); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, byHand).diff(t, takeSnapshot(t, byApply))

	if err := remove(t, byHand, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, byHand).diff(t, before)

	// The script's del undoes its add.
	byHand.Run(t, "sh", repoFile(t, "configs/policy-routing.sh"), "add")
	byHand.Run(t, "sh", repoFile(t, "configs/policy-routing.sh"), "del")
	takeSnapshot(t, byHand).diff(t, before)
}
