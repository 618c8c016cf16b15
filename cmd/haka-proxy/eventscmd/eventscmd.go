// Package eventscmd is the `haka-proxy events` command: the events rules
// can hook, with the fields of their parameter, the fields of flow and the
// anomaly names, from the contract the TLS machine raises (tlssm.Events).
//
//	root.AddCommand(eventscmd.New(os.Stdout))
package eventscmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
)

// Formats of the listing.
const (
	FormatText     = "text"
	FormatJSON     = "json"
	FormatMarkdown = "markdown"
)

// New returns the events command, which writes to stdout.
func New(stdout io.Writer) *cobra.Command {
	format := FormatText
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List the events rules can hook, with their fields",
		Long: `List the events of the tls dissector that rules hook (haka.rule{on =
tls.events.NAME, ...}): when each is raised, the name of its second
parameter and that parameter's fields. Every event's first parameter is
flow, whose fields come first; the names an anomaly event's a.name takes
come last.`,
		Example: `  haka-proxy events
  haka-proxy events --format json | jq '.events[].name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Write(stdout, format)
		},
	}
	cmd.Flags().StringVar(&format, "format", format, "output format: text, json or markdown")
	return cmd
}

// Write lists the contract in the given format.
func Write(w io.Writer, format string) error {
	switch strings.ToLower(format) {
	case FormatText, "":
		return writeText(w)
	case FormatJSON:
		return writeJSON(w)
	case FormatMarkdown, "md":
		return writeMarkdown(w)
	}
	return fmt.Errorf("--format %q: want text, json or markdown", format)
}

func writeText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fields := func(prefix string, fs []tlssm.Field) {
		for _, f := range fs {
			fmt.Fprintf(tw, "  %s%s\t%s\t%s\n", prefix, f.Name, f.Type, f.Doc)
		}
	}
	fmt.Fprintln(tw, "flow: the first parameter of every event")
	fields("flow.", tlssm.FlowFields)
	for _, e := range tlssm.Events {
		fmt.Fprintln(tw)
		if e.Param == "" {
			fmt.Fprintf(tw, "%s(flow)\n", e.Name)
		} else {
			fmt.Fprintf(tw, "%s(flow, %s)\n", e.Name, e.Param)
		}
		fmt.Fprintf(tw, "  raised: %s\n", e.Raised)
		fields(e.Param+".", e.Fields)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "anomaly names (a.name)")
	for _, a := range tlssm.AnomalyNames {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", a.Name, a.Type, a.Doc)
	}
	return tw.Flush()
}

type jsonEvent struct {
	Name   string        `json:"name"`
	Param  string        `json:"param,omitempty"`
	Raised string        `json:"raised"`
	Fields []tlssm.Field `json:"fields,omitempty"`
}

func writeJSON(w io.Writer) error {
	out := struct {
		Dissector string        `json:"dissector"`
		Flow      []tlssm.Field `json:"flow"`
		Events    []jsonEvent   `json:"events"`
		Anomalies []tlssm.Field `json:"anomalies"`
	}{Dissector: "tls", Flow: tlssm.FlowFields, Anomalies: tlssm.AnomalyNames}
	for _, e := range tlssm.Events {
		out.Events = append(out.Events, jsonEvent{Name: e.Name, Param: e.Param, Raised: e.Raised, Fields: e.Fields})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeMarkdown(w io.Writer) error {
	var b strings.Builder
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	table := func(prefix string, fs []tlssm.Field) {
		b.WriteString("| field | type | meaning |\n|---|---|---|\n")
		for _, f := range fs {
			fmt.Fprintf(&b, "| `%s%s` | %s | %s |\n", prefix, f.Name, cell(f.Type), cell(f.Doc))
		}
	}
	b.WriteString("# Events of the tls dissector\n\n## flow\n\nThe first parameter of every event.\n\n")
	table("flow.", tlssm.FlowFields)
	for _, e := range tlssm.Events {
		fmt.Fprintf(&b, "\n## %s\n\n", e.Name)
		if e.Param == "" {
			fmt.Fprintf(&b, "`%s(flow)`: %s.\n", e.Name, e.Raised)
			continue
		}
		fmt.Fprintf(&b, "`%s(flow, %s)`: %s.\n", e.Name, e.Param, e.Raised)
		if len(e.Fields) > 0 {
			b.WriteString("\n")
			table(e.Param+".", e.Fields)
		}
	}
	b.WriteString("\n## Anomaly names\n\n| name | found by | meaning |\n|---|---|---|\n")
	for _, a := range tlssm.AnomalyNames {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", a.Name, a.Type, cell(a.Doc))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
