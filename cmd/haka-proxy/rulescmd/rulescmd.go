// Package rulescmd is the `haka-proxy rules` command: tools for rule sets
// that do not need a running proxy.
package rulescmd

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/rules"
)

// NewCmdRules returns the `rules` command and its subcommands.
func NewCmdRules() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "Work with Lua rule sets",
	}
	cmd.AddCommand(NewCmdCheck(nil))
	return cmd
}

// CheckOptions are the inputs of `rules check`.
type CheckOptions struct {
	// Dir is the rule directory; empty checks the stock rules.
	Dir    string
	Out    io.Writer
	ErrOut io.Writer
}

// NewCmdCheck returns `rules check [DIR]`. runF replaces the command's
// action in tests; nil runs CheckRun.
func NewCmdCheck(runF func(*CheckOptions) error) *cobra.Command {
	opts := &CheckOptions{}
	cmd := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Check a rule directory for mistakes without running it",
		Long: `Load the *.lua files of DIR as the proxy would (sandboxed, in name order)
and report every mistake found, one per line as FILE:LINE: MESSAGE:
syntax errors, hooks on unknown events, rules without an eval function,
unknown keys in haka.rule{...}, requires of missing modules, errors raised
by top-level code, and reads of globals nothing defines (typos that the
proxy would only find on the traffic that takes their branch). Without
DIR, the stock rules are checked.

The exit status is non-zero when there is a mistake.`,
		Args:         cobra.MaximumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.Dir = args[0]
			}
			opts.Out, opts.ErrOut = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if runF != nil {
				return runF(opts)
			}
			return CheckRun(opts)
		},
	}
	return cmd
}

// CheckRun checks opts.Dir: each mistake on ErrOut as FILE:LINE: MESSAGE,
// a summary on Out when there is none.
func CheckRun(opts *CheckOptions) error {
	res, err := rules.Check(rules.Options{Dir: opts.Dir})
	if err != nil {
		return err
	}
	where := opts.Dir
	if where == "" {
		where = "stock rules"
	}
	if len(res.Problems) > 0 {
		for _, p := range res.Problems {
			if opts.Dir != "" {
				p.File = filepath.Join(opts.Dir, filepath.FromSlash(p.File))
			}
			fmt.Fprintln(opts.ErrOut, p.Error())
		}
		s := "s"
		if len(res.Problems) == 1 {
			s = ""
		}
		return fmt.Errorf("%s: %d mistake%s", where, len(res.Problems), s)
	}
	fmt.Fprintf(opts.Out, "%s: %d rules in %d files, no mistakes\n", where, len(res.Rules), len(res.Files))
	return nil
}
