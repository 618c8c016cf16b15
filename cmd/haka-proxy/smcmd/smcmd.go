// Package smcmd is the `haka-proxy sm` command: the state machines of
// haka-proxy, for people. `haka-proxy sm graph tls` prints the TLS machine
// as a Graphviz digraph:
//
//	haka-proxy sm graph tls | dot -Tsvg > tls.svg
//
// The root command adds it with one line:
//
//	root.AddCommand(smcmd.New(os.Stdout))
package smcmd

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
)

// machine returns the DOT writer of the named machine.
func machine(name string) (func(io.Writer) error, bool) {
	switch name {
	case "tls":
		return tlssm.WriteDOT, true
	}
	return nil, false
}

// names are the machines the command knows.
func names() []string { return []string{"tls"} }

// New returns the sm command, which writes to stdout.
func New(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sm",
		Short: "Show the state machines",
	}
	graph := &cobra.Command{
		Use:   "graph MACHINE",
		Short: "Print a state machine as a Graphviz digraph",
		Long: `Print a state machine as a Graphviz (DOT) digraph: states as boxes with the
grammar element each binds per direction, transitions as edges labelled with
their events ("[when]" when guarded), the defaults of every state drawn from
the dashed "any" node. Machines: ` + strings.Join(names(), ", ") + `.`,
		Example:   `  haka-proxy sm graph tls | dot -Tsvg > tls.svg`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: names(),
		RunE: func(_ *cobra.Command, args []string) error {
			write, ok := machine(args[0])
			if !ok {
				return fmt.Errorf("unknown state machine %q (known: %s)", args[0], strings.Join(names(), ", "))
			}
			return write(stdout)
		},
	}
	cmd.AddCommand(graph)
	return cmd
}
