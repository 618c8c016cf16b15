// Package hardening holds haka-proxy's fault, load and hostile-input
// suite. It has no code of its own: its tests drive the proxy the way
// production does, through package proxy's public API with the real TLS
// inspector (dissect/tlssm) and the Lua rules (package rules), or as the
// haka-proxy binary in a process of its own, with real sockets on
// loopback and real peers on the other ends.
//
// What the tests hold the proxy to: no byte forwarded is lost, reordered
// or duplicated (SHA-256 at both ends); a fault on one connection leaves
// the others served (a background client completes exchanges during
// every case); every limit ends what it bounds with a verdict and a reason
// that name it; memory, goroutines, descriptors, timers and Lua states
// come back once connections end.
//
//	go test ./internal/hardening/                                  # the fault and hostile-input suite
//	HAKA_LOAD=1 go test -run TestLoad -timeout 30m ./internal/hardening/  # the load test
//
// The load test is off by default: it holds about 10,000 connections and
// needs the whole machine for a minute or two. See README, "Operating
// under load".
package hardening
