// Package replaycmd is the `haka-proxy replay` command: captures played
// through the inspectors and rules of the live proxy, for testing rules
// before they are deployed (as `suricata -r` or `zeek -r`).
//
//	root.AddCommand(replaycmd.New(&replaycmd.Options{}, os.Stdout, os.Stderr, replayFactory))
//
// Alert and connection lines go to stdout, one JSON object (or text line)
// each; diagnostics go to stderr. The command fails (exit status 1 from
// the root) when a capture could not be read to its end; what could be
// read of it has been replayed and printed all the same.
package replaycmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/replay"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// Options are the command's flags; values set before New are the
// defaults the flags show.
type Options struct {
	// Rules is the directory of Lua rules; empty means the built-in set.
	Rules string
	// RuleErrorPolicy is "drop" or "pass": what a rule that fails does
	// to its connection (rules.ParseErrorPolicy).
	RuleErrorPolicy string
	// Format is "json" or "text".
	Format string
	// ReorderWindow and IdleTimeout are replay.Options' (packet time).
	ReorderWindow time.Duration
	IdleTimeout   time.Duration
	// Midstream inspects streams whose start was not captured
	// (replay.Options.Midstream).
	Midstream bool
	// Stats prints what each capture held to stderr.
	Stats bool
}

// Inspection is what a replay's inspection is made from.
type Inspection struct {
	// Rules is the --rules directory, "" for the built-in rule set.
	Rules string
	// RuleErrorPolicy is --rule-error-policy.
	RuleErrorPolicy string
	// Alerts is where the rules' alerts are written: the writer of the
	// connection lines.
	Alerts *output.Writer
	// Log is where rule errors and the rules' log lines go (stderr).
	Log io.Writer
}

// BuildFactory makes the inspector factory of a replay. If the factory
// has a Close method, the replay calls it once done.
type BuildFactory func(Inspection) (inspect.Factory, error)

// PassThrough is a BuildFactory of inspectors that judge nothing; it
// refuses --rules, which it could not honour.
func PassThrough(in Inspection) (inspect.Factory, error) {
	if in.Rules != "" {
		return nil, errors.New("--rules: this build has no rule engine")
	}
	return inspect.PassThrough{}, nil
}

// New returns the replay command. opts may be nil; build nil means
// PassThrough.
func New(opts *Options, stdout, stderr io.Writer, build BuildFactory) *cobra.Command {
	if opts == nil {
		opts = &Options{}
	}
	if opts.Format == "" {
		opts.Format = "json"
	}
	if build == nil {
		build = PassThrough
	}
	cmd := &cobra.Command{
		Use:   "replay [flags] FILE...",
		Short: "Run packet captures through the TLS inspection and the rules",
		Long: `Replay reads pcap and pcapng captures (gzip-compressed or not; - is stdin),
reassembles their TCP streams and runs each through the same dissector, state
machine and rules as the live proxy. Alerts and one line per connection are
written to stdout; diagnostics to stderr.

The exit status is 1 when a capture could not be read to its end (what could be
read of it is replayed all the same).`,
		Example: `  haka-proxy replay capture.pcap
  haka-proxy replay --rules ./rules --format text heartbleed.pcap.gz
  tcpdump -i eth0 -w - port 443 | haka-proxy replay -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			// Usage is for mistakes in the command line, which cobra
			// reports before RunE; what fails from here is not one.
			cmd.SilenceUsage = true
			return run(opts, files, stdout, stderr, build)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Rules, "rules", opts.Rules, "directory of Lua rules (default: the built-in rules)")
	f.StringVar(&opts.RuleErrorPolicy, "rule-error-policy", opts.RuleErrorPolicy,
		"what a rule that fails (an error, its deadline) does to its connection: drop or pass (default drop)")
	f.StringVar(&opts.Format, "format", opts.Format, "output format: json or text")
	f.DurationVar(&opts.ReorderWindow, "reorder-window", opts.ReorderWindow,
		fmt.Sprintf("how long (packet time) bytes after a hole wait for the missing segment (0: %v)", replay.DefaultReorderWindow))
	f.DurationVar(&opts.IdleTimeout, "idle-timeout", opts.IdleTimeout,
		fmt.Sprintf("end a stream idle for this long in packet time (0: %v, negative: never)", replay.DefaultIdleTimeout))
	f.BoolVar(&opts.Midstream, "midstream", opts.Midstream,
		"inspect streams whose start was not captured (no SYN), whose first bytes may be the middle of a record (default: forwarded uninspected, anomaly \"midstream\")")
	f.BoolVar(&opts.Stats, "stats", opts.Stats, "print what each capture held to stderr")
	return cmd
}

func run(opts *Options, files []string, stdout, stderr io.Writer, build BuildFactory) error {
	format, err := output.ParseFormat(opts.Format)
	if err != nil {
		return err
	}
	w := output.NewWriter(stdout, format)
	factory, err := build(Inspection{Rules: opts.Rules, RuleErrorPolicy: opts.RuleErrorPolicy, Alerts: w, Log: stderr})
	if err != nil {
		return err
	}
	if c, ok := factory.(interface{ Close() }); ok {
		defer c.Close()
	}
	r, err := replay.New(replay.Options{
		Factory:       factory,
		Output:        w,
		ReorderWindow: opts.ReorderWindow,
		IdleTimeout:   opts.IdleTimeout,
		Midstream:     opts.Midstream,
	})
	if err != nil {
		return err
	}
	failed := 0
	for _, name := range files {
		var st replay.Stats
		if name == "-" {
			name = "stdin"
			st, err = r.Replay(os.Stdin)
		} else {
			st, err = r.ReplayFile(name)
		}
		if err != nil {
			if errors.Is(err, replay.ErrOutput) {
				return err
			}
			failed++
			for _, e := range flatten(err) {
				fmt.Fprintf(stderr, "replay: %s: %v\n", name, e)
			}
		}
		// A capture that did not open has nothing to tell.
		notes(stderr, name, st, opts.Stats && (err == nil || st.Packets > 0))
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d captures could not be read to the end", failed, len(files))
	}
	return nil
}

// flatten splits a joined error into its parts, one diagnostic line each.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// notes reports frames the replay could not use, which may explain a
// missing connection, and with --stats what the capture held.
func notes(stderr io.Writer, name string, st replay.Stats, all bool) {
	if st.Gaps > 0 {
		fmt.Fprintf(stderr, "replay: %s: %d gaps in TCP streams (%d bytes missing from the capture)\n", name, st.Gaps, st.GapBytes)
	}
	if st.Malformed > 0 {
		fmt.Fprintf(stderr, "replay: %s: %d frames with malformed headers skipped\n", name, st.Malformed)
	}
	if all {
		fmt.Fprintf(stderr, "replay: %s: %d packets (%d bytes), %d TCP segments in %d streams, %d gaps (%d bytes), %d IP fragments (%d datagrams rebuilt), %d other frames\n",
			name, st.Packets, st.Bytes, st.TCP, st.Streams, st.Gaps, st.GapBytes, st.Fragments, st.Defragmented, st.NotTCP)
	}
}
