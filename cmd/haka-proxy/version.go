package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

type versionInfo struct {
	Version, Commit, Go string
	Modified            bool
}

// buildVersion reads what the Go toolchain recorded in the binary: the
// module version (a tag when installed with go install ...@vX, "(devel)"
// from a checkout) and the VCS commit (absent when built with
// -buildvcs=false or outside a repository).
func buildVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Commit: "unknown", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func newCmdVersion(d *deps, runF func(versionInfo) error) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the commit and the Go version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := buildVersion()
			if runF != nil {
				return runF(v)
			}
			commit := v.Commit
			if v.Modified {
				commit += " (modified)"
			}
			_, err := fmt.Fprintf(d.Stdout, "haka-proxy %s\ncommit %s\n%s %s/%s\n", v.Version, commit, v.Go, runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
