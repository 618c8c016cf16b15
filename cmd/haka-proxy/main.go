// Command haka-proxy is a transparent TCP proxy that inspects TLS without
// terminating it. See README.md, or run haka-proxy --help.
package main

import "os"

func main() {
	os.Exit(execute(os.Args[1:], defaultDeps()))
}
