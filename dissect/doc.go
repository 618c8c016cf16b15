// Package dissect is the SSL/TLS grammar of haka-proxy: bytes of one
// direction of a connection in, typed records and handshake messages out.
//
// It owns record framing, handshake reassembly across records, the parsers
// of every cleartext message, the named protocol anomalies and the client
// and server fingerprints. It does no I/O, no logging, starts no goroutine
// and holds no policy: deciding what a record means for the connection is
// the job of the TLS state machine (package dissect/tlssm) and of the rules.
package dissect
