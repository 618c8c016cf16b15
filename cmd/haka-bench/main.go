// Command haka-bench is haka-proxy's load generator and the side-by-side
// comparison of haka-proxy against a direct connection, HAProxy in TCP mode
// and a minimal Go splice proxy, on one machine, in one run. See README.md.
//
//	haka-bench serve                     the far end (TLS, replayed flight)
//	haka-bench stream|hs|connrate|idle   one measurement against an address
//	haka-bench compare                   everything, interleaved, as a table
//
// It only ever talks to loopback addresses.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit status. Ctrl-C and
// SIGTERM cancel the command's context: every command stops its load,
// closes its connections and stops the processes it started.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "haka-bench: interrupted")
			return 130
		}
		fmt.Fprintln(stderr, "haka-bench:", err)
		return 1
	}
	return 0
}
