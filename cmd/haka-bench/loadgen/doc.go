// Package loadgen holds the two ends of every haka-bench measurement: the
// servers (a TLS 1.3 server that streams or echoes, and a server that
// replays a recorded TLS 1.2 connection), the clients that load them
// directly or through a proxy, the minimal Go splice proxy used as an
// anchor, and the /proc readings of a proxy's memory and descriptors.
//
// Everything runs on loopback only (CheckLoopback), every load loop is
// bounded in count and in time, and every result is a plain struct with JSON
// tags, so the comparison driver can run each measurement in a fresh process
// and read its result back.
//
// The measurements:
//
//   - Stream: bulk TLS 1.3 application data from server to client over K
//     connections, either a fixed number of bytes per connection or for a
//     fixed time; the result is Gbit/s of plaintext.
//   - Handshakes: full TLS 1.3 handshakes (no resumption, the client
//     verifies the chain), a 100-byte echo and a close, N of them at
//     concurrency C, then LatN at concurrency 1 for unloaded latency.
//   - Exchanges: the connection rate of a TLS-shaped conversation that
//     costs no cryptography: a TLS 1.2 connection recorded once (Flight)
//     and replayed byte for byte by both ends, so a TLS inspector in the
//     path sees a real ClientHello, a real certificate flight and real
//     records.
//   - Idle: N connections opened through a proxy, each after one replayed
//     exchange, then held; the proxy's VmRSS and descriptor count are read
//     from /proc before and after.
package loadgen
