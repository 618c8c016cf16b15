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
	"go.uber.org/zap"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/rules"
)

// names are the built-in machines.
func names() []string { return []string{"tls"} }

// write draws the named machine: a built-in one, or one written in Lua in
// the rules of dir.
func write(w io.Writer, name, dir string) error {
	if name == "tls" {
		return tlssm.WriteDOT(w)
	}
	if dir == "" {
		return fmt.Errorf("unknown state machine %q (built in: %s; machines written in Lua need --rules DIR)", name, strings.Join(names(), ", "))
	}
	e, err := rules.New(rules.Options{Dir: dir, Logger: zap.NewNop(), PoolSize: 1})
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.WriteMachineDOT(name, w); err != nil {
		return fmt.Errorf("%w (machines in %s: %s)", err, dir, strings.Join(e.Machines(), ", "))
	}
	return nil
}

// New returns the sm command, which writes to stdout.
func New(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sm",
		Short: "Show the state machines",
	}
	var dir string
	graph := &cobra.Command{
		Use:   "graph MACHINE",
		Short: "Print a state machine as a Graphviz digraph",
		Long: `Print a state machine as a Graphviz (DOT) digraph: states as boxes with the
grammar element each binds per direction, transitions as edges labelled with
their events ("[when]" when guarded), the defaults of every state drawn from
the dashed "any" node. Built-in machines: ` + strings.Join(names(), ", ") + `; with
--rules DIR, also the machines of the dissectors written in Lua in DIR.`,
		Example: `  haka-proxy sm graph tls | dot -Tsvg > tls.svg
  haka-proxy sm graph --rules rules/examples ssl`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: names(),
		RunE: func(_ *cobra.Command, args []string) error {
			return write(stdout, args[0], dir)
		},
	}
	graph.Flags().StringVar(&dir, "rules", "", "directory of Lua rule files whose state machines may be drawn")
	cmd.AddCommand(graph)
	return cmd
}
