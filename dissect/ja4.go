package dissect

import (
	"crypto/sha256"
	"slices"
)

// JA4 (FoxIO, BSD-3-Clause; JA4S and the rest of JA4+ are under another
// licence and are not implemented): the TLS client fingerprint
//
//	t13d1516h2_8daaf6152771_e5627efa2ab1
//	a: protocol ("t": TLS over TCP), version, "d" with server_name or "i"
//	   without, number of ciphers and of extensions (2 digits, at most
//	   99), first and last character of the first ALPN value ("00" none)
//	b: first 12 hex digits of SHA-256 over the ciphers as 4-digit lowercase
//	   hex, sorted, comma-separated
//	c: the same over the extensions, sorted, without server_name (0000)
//	   and ALPN (0010), then "_" and the signature algorithms in wire order
//
// The protocol is always "t": the reference implementation prints "q" for
// a hello that carries quic_transport_parameters, but every hello this
// package sees came over TCP. "d" means the server_name extension is
// present, whatever it holds (an IP literal included), as in the reference.
//
// GREASE values are left out everywhere. b and c are "000000000000" when
// their list is empty. The version is the highest of supported_versions,
// else the hello's version; an SSLv2-format hello is fingerprinted from its
// version field, its TLS cipher suites and no extensions.

// ja4HashLen is the number of hex digits of a JA4 hash part.
const ja4HashLen = 12

// ja4Sorted is the number of values sorted on the stack: browsers offer
// about 16 ciphers and extensions, old OpenSSL clients up to 80 ciphers,
// which spill to the heap.
const ja4Sorted = 64

// ja4Version maps a version to its 2-character JA4 form.
func ja4Version(v uint16) string {
	switch v {
	case VersionTLS13:
		return "13"
	case VersionTLS12:
		return "12"
	case VersionTLS11:
		return "11"
	case VersionTLS10:
		return "10"
	case VersionSSL30:
		return "s3"
	case VersionSSL20:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

// appendJA4A appends the a part of JA4.
func (h *ClientHello) appendJA4A(dst []byte) []byte {
	dst = append(dst, 't')
	dst = append(dst, ja4Version(h.HighestVersion())...)
	sni := byte('i')
	exts := 0
	for _, e := range h.Extensions {
		if IsGREASE(e.Type) {
			continue
		}
		exts++
		if e.Type == ExtServerName {
			sni = 'd'
		}
	}
	dst = append(dst, sni)
	ciphers := 0
	for _, c := range h.CipherSuites {
		if !IsGREASE(c) {
			ciphers++
		}
	}
	dst = append2Digits(dst, ciphers)
	dst = append2Digits(dst, exts)
	if len(h.ALPN) == 0 || len(h.ALPN[0]) == 0 {
		return append(dst, '0', '0')
	}
	p := h.ALPN[0]
	first, last := p[0], p[len(p)-1]
	if isAlnum(first) && isAlnum(last) {
		return append(dst, lower(first), lower(last))
	}
	return append(dst, lowerHex[first>>4], lowerHex[last&0xf])
}

// lower folds an ASCII letter to lower case. The JA4 text does not say so,
// but the reference implementation and Arkime both print "h2" for the
// "H2" that arkime/badcurveball.pcap offers (see the capture tests).
func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func append2Digits(dst []byte, n int) []byte {
	if n > 99 {
		n = 99
	}
	return append(dst, byte('0'+n/10), byte('0'+n%10))
}

// sortedNonGREASE copies vs without GREASE values (and without the values
// skip reports) into scratch, sorts and returns it.
func sortedNonGREASE(scratch []uint16, vs []uint16, skipSNIALPN bool) []uint16 {
	out := scratch[:0]
	for _, v := range vs {
		if IsGREASE(v) || skipSNIALPN && (v == ExtServerName || v == ExtALPN) {
			continue
		}
		out = append(out, v)
	}
	sortSmall(out)
	return out
}

// sortSmall sorts in place. The lists of a hello are a few dozen values:
// insertion sort beats the general pdqsort there, and slices.Sort takes the
// rare long list.
func sortSmall(vs []uint16) {
	if len(vs) > 2*ja4Sorted {
		slices.Sort(vs)
		return
	}
	for i := 1; i < len(vs); i++ {
		v := vs[i]
		j := i
		for ; j > 0 && vs[j-1] > v; j-- {
			vs[j] = vs[j-1]
		}
		vs[j] = v
	}
}

func appendHexList(dst []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendHex16(dst, v)
	}
	return dst
}

// appendJA4Lists appends the raw b and c inputs ("002f,0035..." and
// "0005,000a..._0403,...") to dst and returns where c starts; an empty list
// gives an empty part.
func (h *ClientHello) appendJA4Lists(dst []byte) (out []byte, cStart int) {
	var scratch [ja4Sorted]uint16
	ciphers := sortedNonGREASE(scratch[:0], h.CipherSuites, false)
	dst = appendHexList(dst, ciphers)
	cStart = len(dst)
	var types [ja4Sorted]uint16
	ts := types[:0]
	for _, e := range h.Extensions {
		ts = append(ts, e.Type)
	}
	exts := sortedNonGREASE(ts, ts, true)
	if len(exts) == 0 {
		return dst, cStart
	}
	dst = appendHexList(dst, exts)
	first := true
	for _, a := range h.SignatureAlgorithms {
		if IsGREASE(a) {
			continue
		}
		if first {
			dst = append(dst, '_')
			first = false
		} else {
			dst = append(dst, ',')
		}
		dst = appendHex16(dst, a)
	}
	return dst, cStart
}

// appendJA4Hash appends the 12-digit truncated SHA-256 of b, or
// "000000000000" when b is empty.
func appendJA4Hash(dst, b []byte) []byte {
	if len(b) == 0 {
		return append(dst, "000000000000"...)
	}
	sum := sha256.Sum256(b)
	return appendHexBytes(dst, sum[:ja4HashLen/2])
}

// AppendJA4 appends the JA4 fingerprint of h to dst.
func (h *ClientHello) AppendJA4(dst []byte) []byte {
	var buf [jaScratch]byte
	lists, c := h.appendJA4Lists(buf[:0])
	dst = h.appendJA4A(dst)
	dst = append(dst, '_')
	dst = appendJA4Hash(dst, lists[:c])
	dst = append(dst, '_')
	return appendJA4Hash(dst, lists[c:])
}

// JA4 returns the JA4 fingerprint of h.
func (h *ClientHello) JA4() string {
	var buf [64]byte
	return string(h.AppendJA4(buf[:0]))
}

// JA4R returns the raw form of JA4 (JA4_r): the a part and the unhashed,
// sorted lists, "t13d1516h2_002f,0035,..._0005,000a,..._0403,...".
func (h *ClientHello) JA4R() string {
	var buf [jaScratch]byte
	lists, c := h.appendJA4Lists(buf[:0])
	out := h.appendJA4A(make([]byte, 0, 12+len(lists)))
	out = append(out, '_')
	out = append(out, lists[:c]...)
	out = append(out, '_')
	return string(append(out, lists[c:]...))
}

// ClientFingerprint holds the fingerprints of a ClientHello, as the
// client_hello event and the flow carry them.
type ClientFingerprint struct {
	JA3, JA3Hash, JA4 string
}

// Fingerprint computes JA3, its MD5 and JA4 of h.
func (h *ClientHello) Fingerprint() ClientFingerprint {
	var fp ClientFingerprint
	fp.JA3, fp.JA3Hash = h.JA3()
	fp.JA4 = h.JA4()
	return fp
}
